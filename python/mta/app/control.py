"""The control channel: a unix socket per spool shard (0600) through which `mta queue
list|hold|release|delete|flush|suspend|resume|bounce|summary` and `mta reload` reach the running server, one
bounded JSON line each way (a page's bytes follow its line); a reply names only changes already durable."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable

from mta.app.control_pages import (
    ALL_FIELDS,
    FIELDS,
    PAGE_OPS,
    SHAPE_BUCKETS,
    PageFieldError,
    page_fields,
    serve_page,
    whole,
)
from mta.config.kinds import domain_name
from mta.delivery import FINAL, Outcome
from mta.delivery.router import split

if TYPE_CHECKING:
    from mta.delivery.deliverylog import DeliveryLog
    from mta.queue.manager import QueueManager
    from mta.queue.store import SpoolService

log = logging.getLogger("mta.control")

SOCKET_NAME = "control.sock"
MAX_LINE = 64 * 1024  # bytes in a request line, newline included
MAX_REPLY = 1024 * 1024  # bytes in a reply line (at most MAX_IDS results of bounded size)
MAX_IDS = 1000  # queue ids in one request (the CLI sends more in several requests)
MAX_CLIENTS = 8  # control connections served at once; more are refused with an error
READ_TIMEOUT = 5.0  # seconds for a client to send its request line
WRITE_TIMEOUT = 5.0
DELETE_WAIT = 10.0  # seconds delete (and bounce) wait for an attempt in flight before answering "busy"
CLIENT_TIMEOUT = 60.0  # the CLI's bound on one request's reply
PING_ENV = "MTA_PING_TIMEOUT"  # seconds (0.1..600) a shard's server has to answer "ping"
DEFAULT_PING_TIMEOUT = 10.0


def ping_timeout() -> float:
    """Seconds a shard's server has to answer "ping" before it counts as not answering (and a
    listing reads its files instead): $MTA_PING_TIMEOUT, else 10; ValueError (without the
    variable's name) when malformed."""
    raw = os.environ.get(PING_ENV, "").strip()
    if not raw:
        return DEFAULT_PING_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 600:
        raise ValueError(f"expected seconds from 0.1 to 600, not {raw[:40]!r}")
    return value

OPS = ("ping", "hold", "release", "delete", "flush", "suspend", "resume", "flags", "bounce", "reload",
       "page", "shape", "ids")
MAX_PAGE_REPLY = 1 << 30  # bytes of a page's reply the client takes (line and data each)
WALK_CHUNK = 5000  # messages an "all" request (and resume, bounce) acts on at once
QUEUE_ID = re.compile(r"[A-Za-z0-9]{1,64}")
MAX_SITE = 255  # characters of a site text (a [[shaping.rule]] site glob, or MX host names joined by ",")
MAX_UNTIL = 2.0 ** 32  # a wall time beyond this (year 2106) is a mistake, not a suspension
BOUNCE_TEXT = "bounced by the administrator (mta queue bounce)"
BOUNCE_CONCURRENCY = 32  # messages bounced at once (each a DSN injected, then a record)
# What the worker records for a recipient its site's (or domain's) suspension holds back
# (mta.delivery.shaping.signals): the site last, so `resume` finds the ones it held.
SUSPENDED_REPLY = re.compile(r"shaping: site suspended until \d+(?:\.\d+)?: (.+)$")
_SUN_PATH_MAX = 107  # sun_path is 108 bytes with its NUL


class RequestError(ValueError):
    """A request line the server refuses; the text goes back as the error reply."""


@dataclass(frozen=True)
class Request:
    op: str
    ids: tuple[str, ...] = ()
    all: bool = False  # every message of the shard instead of `ids`
    domain: str | None = None  # suspend, resume, bounce: a recipient domain (lower case)
    site: str | None = None  # suspend, resume: a destination site
    until: float | None = None  # suspend: the wall time the suspension ends (0: clear it)
    cursor: int = 0  # page, shape, ids: where to go on (0: the start; else a reply's "next")
    limit: int = 0  # page, shape, ids: messages at most (1..MAX_PAGE)
    form: str = ""  # page: "json" or "text"
    now: float | None = None  # shape: ages at this unix time (default: the server's clock)
    buckets: tuple[int, ...] = SHAPE_BUCKETS  # shape: the age columns' bounds, minutes


def flag_key(kind: str, site: str) -> str:
    """The throttle flag of a site, kind "suspend" or "slow" (as mta.delivery.shaping.signals)."""
    return f"{kind}|{site}"


def _target(req: Request) -> str:
    """The site a suspend/resume names: the site itself, or "@<domain>" for a domain."""
    return req.site if req.site is not None else f"@{req.domain}"


def parse_request(line: bytes) -> Request:
    """One request line → Request, or RequestError saying what is wrong.

    Forms: {"op": "ping"}; {"op": "reload"}; {"op": OP, "ids": [ID, ...]}; {"op": OP, "all": true},
    OP one of hold, release, delete, flush; 1..MAX_IDS ids of [A-Za-z0-9]{1,64};
    {"op": "suspend", "domain": D | "site": S, "until": T}; {"op": "resume", "domain": D |
    "site": S}; {"op": "flags"}; {"op": "bounce", "domain": D}. D a domain name, S at most
    MAX_SITE printable characters without spaces, T a unix time (0: clear). Pages of the queue:
    {"op": "page", "cursor": C, "limit": N, "form": "json"|"text"}; {"op": "shape", "cursor": C,
    "limit": N[, "now": T][, "buckets": [minutes, ...]]}; {"op": "ids", "cursor": C, "limit": N};
    C 0 or a reply's "next", N 1..MAX_PAGE.
    """
    if len(line) > MAX_LINE:
        raise RequestError(f"request longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("request is not a JSON object on one line") from None
    if not isinstance(obj, dict):
        raise RequestError("request is not a JSON object on one line")
    unknown = sorted(set(obj) - {"op", "ids", "all", "domain", "site", "until"} - set(ALL_FIELDS))
    if unknown:
        raise RequestError(f"unknown request field(s): {', '.join(map(repr, unknown))}")
    op = obj.get("op")
    if op not in OPS:
        raise RequestError(f"op must be one of {', '.join(OPS)}, not {op!r}")
    ids, every = obj.get("ids"), obj.get("all", False)
    if every not in (True, False):
        raise RequestError("all must be true or false")
    try:
        paging = page_fields(op, obj)
    except PageFieldError as e:
        raise RequestError(str(e)) from None
    if op in PAGE_OPS:
        if ids is not None or every or set(obj) & {"domain", "site", "until"}:
            raise RequestError(f"{op} takes only {', '.join(FIELDS[op])}")
        return Request(op, **paging)
    shaping = _shaping_fields(op, obj)
    if op in ("suspend", "resume", "flags", "bounce"):
        if ids is not None or every:
            raise RequestError(f"{op} takes no ids and no all")
        return Request(op, **shaping)
    if shaping:
        raise RequestError(f"{op} takes no {', '.join(sorted(shaping))}")
    if op in ("ping", "reload"):
        if ids is not None or every:
            raise RequestError(f"{op} takes no ids and no all")
        return Request(op)
    if every:
        if ids is not None:
            raise RequestError("give either ids or all, not both")
        return Request(op, all=True)
    if not isinstance(ids, list) or not ids:
        raise RequestError(f"{op} needs ids (a non-empty list of queue ids) or all: true")
    if len(ids) > MAX_IDS:
        raise RequestError(f"at most {MAX_IDS} ids in one request, not {len(ids)}")
    for q in ids:
        if not isinstance(q, str) or not QUEUE_ID.fullmatch(q):
            raise RequestError(f"bad queue id {q!r}: expected 1-64 letters and digits")
    return Request(op, tuple(dict.fromkeys(ids)))


# op -> (the fields it needs or allows, as "domain|site" for exactly one of the two, "until")
_SHAPING_FIELDS = {"suspend": ("domain|site", "until"), "resume": ("domain|site",), "bounce": ("domain",),
                   "flags": ()}


def _shaping_fields(op: str, obj: dict) -> dict:
    """The domain, site and until fields of a request, each checked; RequestError when one
    is malformed, missing or not for this op (a non-shaping op gets them back to refuse)."""
    out: dict = {}
    if "domain" in obj:
        raw = obj["domain"]
        name = domain_name(raw) if isinstance(raw, str) else None
        if name is None:
            raise RequestError(f"bad domain {raw!r}: expected a domain name (ASCII labels; IDNs as xn--)")
        out["domain"] = name
    if "site" in obj:
        raw = obj["site"]
        if not isinstance(raw, str) or not 0 < len(raw) <= MAX_SITE or not raw.isprintable() or " " in raw:
            raise RequestError(f"bad site {str(raw)[:300]!r}: expected 1-{MAX_SITE} printable characters, no spaces")
        out["site"] = raw.lower()
    if "until" in obj:
        raw = obj["until"]
        if (isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw)
                or not 0 <= raw < MAX_UNTIL):
            raise RequestError(f"bad until {raw!r}: expected a unix time as a number (0: clear)")
        out["until"] = float(raw)
    if op not in _SHAPING_FIELDS:
        return out
    wanted = _SHAPING_FIELDS[op]
    extra = sorted(set(out) - {f for w in wanted for f in w.split("|")})
    if extra:
        raise RequestError(f"{op} takes no {', '.join(extra)}")
    if "domain|site" in wanted and ("domain" in out) == ("site" in out):
        raise RequestError(f"{op} needs either domain or site (one of the two)")
    for need in ("domain", "until"):
        if need in wanted and need not in out:
            raise RequestError(f"{op} needs {need}")
    return out


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def socket_path(spool_dir: str, shard: int) -> str:
    return os.path.join(spool_dir, str(shard), SOCKET_NAME)


class _SunPath:
    """A path usable in bind/connect: the path itself, or for one longer than
    sun_path allows, /proc/self/fd/<dir fd>/<name> (Linux) while the fd is open."""

    def __init__(self, path: str):
        self.path, self._fd = path, None
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            self._fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.path = f"/proc/self/fd/{self._fd}/{os.path.basename(path)}"

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)


# ---------------------------------------------------------------------------
# the server side: one ControlServer per worker, next to its queue manager
# ---------------------------------------------------------------------------

class ControlServer:
    """Serves one shard's socket at `path`: changes go to `store`, and `queue` is told
    (which ids are in flight, which to leave alone, what to retry now)."""

    def __init__(self, store: SpoolService, queue: QueueManager, dlog: DeliveryLog | None, path: str,
                 shard: int, *, throttle=None, flags_changed: Callable[[], None] | None = None,
                 reload: Callable[[], Awaitable[tuple[bool, list[str]]]] | None = None):
        self.store = store
        self.reload = reload  # the server's reload (mta.app.server): {"op": "reload"}
        self.flags_changed = flags_changed  # told after suspend/resume: this worker sees them at once
        # The worker's shaping throttle (mta.delivery.shaping.throttle.Throttle): suspend,
        # resume and flags set, clear and list its flags; None: no shaping, they fail.
        self.throttle = throttle
        self.queue = queue
        self.dlog = dlog
        self.shard = shard
        self.path = path
        self._srv: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        # We hold the shard's lock, so a socket already there is a dead server's.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with _SunPath(self.path) as p:
                sock.bind(p)
            # Nobody can connect before listen(), and the shard directory is 0700.
            os.chmod(self.path, 0o600)
            sock.listen(16)
            sock.setblocking(False)
            self._srv = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            raise
        log.info("control socket %s", self.path)

    async def stop(self, grace: float = 2.0) -> None:
        if self._srv is None:
            return
        self._srv.close()
        self._srv = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        if self._clients:
            _, pending = await asyncio.wait(set(self._clients), timeout=grace)
            for t in pending:  # records already handed to the spool are still written
                t.cancel()

    def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, len(self._clients)))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _serve(self, reader, writer, others: int) -> None:
        try:
            if others >= MAX_CLIENTS:
                reply = {"ok": False, "error": f"busy: {MAX_CLIENTS} control requests in progress, try again"}
            else:
                reply = await self._answer(reader)
            if reply is not None:
                reply.setdefault("shard", self.shard)
                data = reply.pop("data", None)  # a page: its bytes follow the line
                if data is not None:
                    reply["bytes"] = len(data)
                writer.write(encode(reply))
                if data:
                    writer.write(data)
                await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
        except (ConnectionError, asyncio.TimeoutError):
            pass
        except Exception:  # a bug here must not reach the event loop
            log.exception("control connection failed")
        finally:
            writer.close()

    async def _answer(self, reader) -> dict | None:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        except asyncio.TimeoutError:
            return {"ok": False, "error": f"no request line within {READ_TIMEOUT:g} s"}
        except (ValueError, asyncio.LimitOverrunError):
            return {"ok": False, "error": f"request longer than {MAX_LINE} bytes"}
        if not line.strip():
            return None if not line else {"ok": False, "error": "empty request"}
        try:
            req = parse_request(line)
        except RequestError as e:
            return {"ok": False, "error": str(e)}
        try:
            return await self.handle(req)
        except RequestError as e:  # a request this server cannot serve (no throttle)
            return {"ok": False, "error": str(e)}
        except Exception as e:
            log.exception("control request %s failed", req.op)
            return {"ok": False, "error": f"{req.op} failed: {e}"}

    # --- the operations ---------------------------------------------------------

    @property
    def _active(self) -> set[str]:
        return self.queue.active

    async def handle(self, req: Request) -> dict:
        if req.op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if req.op == "reload":
            if self.reload is None:
                raise RequestError("reload: this server cannot reload its configuration")
            # A refusal is an answer, not a failed request: "applied" says which it was.
            applied, messages = await self.reload()
            return {"ok": True, "applied": applied, "messages": messages}
        if req.op in _SHAPING_FIELDS:
            return await getattr(self, f"_op_{req.op}")(req)
        if req.op in PAGE_OPS:
            return await serve_page(self.store.spool, req)
        op = getattr(self, f"_op_{req.op}")
        if req.all:
            counts: dict[str, int] = {}
            async for found in self._walk():
                for s in (await op(found)).values():
                    counts[s] = counts.get(s, 0) + 1
            return {"ok": True, "counts": counts}
        ids = list(req.ids)
        envs = [self.store.get(q) for q in ids]
        found = {e.queue_id: e for e in envs if e is not None}
        results = {q: "unknown" for q in ids if q not in found}
        results.update(await op(found))
        return {"ok": True, "results": results}

    async def _walk(self, chunk: int | None = None):
        """{queue id: envelope} of the shard's messages, `chunk` at a time in log order, so an
        "all" request never holds the whole queue. Only those that arrived before the walk
        began, as a snapshot would: not the mail that comes in meanwhile, nor the DSNs a bounce
        makes (a message copied forward by compaction meanwhile may come twice)."""
        started = time.time()
        cursor: int | None = 0
        while cursor is not None:
            ids, cursor = await asyncio.to_thread(self.store.spool.ids, cursor, chunk or WALK_CHUNK)
            found = {}
            for q in ids:
                e = self.store.get(q)
                if e is not None and e.arrival <= started:
                    found[q] = e
            if found:
                yield found

    async def _settle(self, futs: dict[str, list[asyncio.Future]], ok: str) -> dict[str, str]:
        """Await every id's records; `ok`, "gone" (finished meanwhile) or the error."""
        out = {q: ok for q in futs}
        flat = [(q, f) for q, fs in futs.items() for f in fs]
        done = await asyncio.gather(*(f for _, f in flat), return_exceptions=True)
        for (q, _), res in zip(flat, done):
            if isinstance(res, BaseException):
                out[q] = f"error: {res}"[:200]
        for q, s in out.items():
            if s == ok and self.store.get(q) is None:
                out[q] = "gone"
        return out

    def _due_now(self, env) -> asyncio.Future | None:
        """Make every deferred recipient due now (one STATE record), or None."""
        now = time.time()
        changes = [(i, "deferred", r.attempts, now, r.last_reply, r.route) for i, r in enumerate(env.recipients)
                   if r.state == "deferred" and (r.next_attempt or 0) > now]
        return self.store.update(env.queue_id, changes) if changes else None

    async def _op_hold(self, found: dict) -> dict[str, str]:
        # A message in flight: the record is written now; that attempt finishes,
        # and the queue manager does not start another while it is held.
        futs = {q: [self.store.hold(q, True)] if not e.held else [] for q, e in found.items()}
        out = await self._settle(futs, "held")
        for q, s in out.items():
            if s == "held":
                log.info("%s: held by the administrator", q)
        return out

    async def _op_release(self, found: dict) -> dict[str, str]:
        futs: dict[str, list] = {}
        out: dict[str, str] = {}
        for q, e in found.items():
            if not e.held:
                out[q] = "not held"
                continue
            futs[q] = [self.store.hold(q, False)]
            due = None if q in self._active else self._due_now(e)
            if due is not None:
                futs[q].append(due)
        settled = await self._settle(futs, "released")
        for q, s in settled.items():
            if s == "released":
                log.info("%s: released by the administrator", q)
        out.update(settled)
        if futs:
            self._kick()
        return out

    async def _op_flush(self, found: dict) -> dict[str, str]:
        futs: dict[str, list] = {}
        out: dict[str, str] = {}
        active = self._active
        for q, e in found.items():
            if e.held:
                out[q] = "held"
            elif q in active:
                out[q] = "active"  # being attempted right now
            else:
                due = self._due_now(e)
                futs[q] = [due] if due is not None else []
        out.update(await self._settle(futs, "flushed"))
        self.queue.retry_now([q for q, s in out.items() if s == "flushed"])
        return out

    async def _op_delete(self, found: dict) -> dict[str, str]:
        out: dict[str, str] = {}
        active = self._active
        busy = {q: e for q, e in found.items() if q in active}
        idle = {q: e for q, e in found.items() if q not in active}
        out.update(await self._delete(idle))
        if busy:
            # An attempt is in flight: hold the message so no other starts, wait
            # (bounded) for the attempt to end, then delete what is left of it.
            held = await self._settle({q: [self.store.hold(q, True)] if not e.held else []
                                       for q, e in busy.items()}, "held")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DELETE_WAIT
            waiting = {q for q, s in held.items() if s == "held"}
            out.update({q: s for q, s in held.items() if s != "held"})
            while waiting & self._active and loop.time() < deadline:
                await asyncio.sleep(0.05)
            still = waiting & self._active
            out.update({q: "busy" for q in still})
            rest = {q: self.store.get(q) for q in waiting - still}
            out.update({q: "gone" for q, e in rest.items() if e is None})
            out.update(await self._delete({q: e for q, e in rest.items() if e is not None}))
        return out

    async def _delete(self, found: dict) -> dict[str, str]:
        self.queue.exclude(found)  # no attempt may start while the DELETE is being synced
        try:
            out = await self._settle({q: [self.store.delete(q)] for q in found}, "deleted")
        finally:
            self.queue.include(found)
        for q, s in list(out.items()):
            if s == "gone":  # our DELETE made it gone: that is the success case here
                out[q] = "deleted"
            if out[q] == "deleted":
                _log_delete(found[q], q in self._active, self.dlog)
        return out

    def _kick(self) -> None:
        self.queue.kick()

    # --- shaping: suspend, resume, flags, bounce ------------------------------------

    def _need_throttle(self, op: str):
        if self.throttle is None:
            raise RequestError(f"{op}: this server has no shaping throttle (traffic shaping is not running)")
        return self.throttle

    async def _op_suspend(self, req: Request) -> dict:
        throttle = self._need_throttle("suspend")
        target, until = _target(req), req.until
        await throttle.set_until(flag_key("suspend", target), until)
        if self.flags_changed is not None:
            self.flags_changed()
        if until:
            log.warning("%s suspended by the administrator (mta queue suspend) until %.0f", target, until)
        else:
            log.warning("%s: suspension cleared by the administrator (mta queue suspend)", target)
        return {"ok": True, "key": flag_key("suspend", target), "until": until}

    async def _op_resume(self, req: Request) -> dict:
        throttle = self._need_throttle("resume")
        target = _target(req)
        key = flag_key("suspend", target)
        was = throttle.until(key)
        await throttle.set_until(key, 0.0)
        if self.flags_changed is not None:
            self.flags_changed()
        # The messages that suspension held back wait until its end: make them due now.
        counts = {"due": 0, "active": 0}
        async for found in self._walk():
            futs: dict[str, list] = {}
            active = self._active
            for env in found.values():
                held = [i for i, r in enumerate(env.recipients) if _held_by(r, target)]
                if not held:
                    continue
                if env.queue_id in active:  # its attempt ends soon and sees the flag cleared
                    counts["active"] += 1
                    continue
                now = time.time()
                rs = env.recipients
                futs[env.queue_id] = [self.store.update(env.queue_id, [
                    (i, "deferred", rs[i].attempts, now, rs[i].last_reply, rs[i].route) for i in held])]
            settled = await self._settle(futs, "due")
            for s in settled.values():
                s = s if s in ("due", "gone") else "failed"
                counts[s] = counts.get(s, 0) + 1
            if futs:
                self.queue.retry_now([q for q, s in settled.items() if s == "due"])
        log.warning("%s resumed by the administrator (mta queue resume): %d message(s) due now",
                    target, counts["due"])
        return {"ok": True, "key": key, "was": was, "counts": counts}

    async def _op_flags(self, req: Request) -> dict:
        return {"ok": True, "flags": dict(self._need_throttle("flags").flags())}

    async def _op_bounce(self, req: Request) -> dict:
        domain = req.domain
        reply = Outcome.of(550, "5.0.0", BOUNCE_TEXT)
        counts: dict[str, int] = {}
        bounced = 0
        gate = asyncio.Semaphore(BOUNCE_CONCURRENCY)

        async def one(qid: str, idx: list[int]) -> None:
            nonlocal bounced
            async with gate:
                try:
                    n = await self.queue.bounce_recipients(qid, idx, reply, wait=DELETE_WAIT)
                except Exception as e:  # noqa: BLE001 - reported per message; the others go on
                    log.error("%s: bounce by the administrator failed: %s", qid, e)
                    status = "failed"
                else:
                    status = "busy" if n is None else "bounced" if n else "gone"
                    bounced += n or 0
            counts[status] = counts.get(status, 0) + 1

        async for found in self._walk():
            todo = []
            for env in found.values():
                idx = [i for i, r in enumerate(env.recipients)
                       if r.state not in FINAL and split(r.address)[1] == domain]
                if idx:
                    todo.append((env.queue_id, idx))
            await asyncio.gather(*(one(q, i) for q, i in todo))
        log.warning("domain %s bounced by the administrator (mta queue bounce): %d recipient(s) in %d message(s)",
                    domain, bounced, counts.get("bounced", 0))
        return {"ok": True, "counts": counts, "recipients": bounced}


def _held_by(rcpt, target: str) -> bool:
    """Whether this recipient waits for the suspension of `target` (a site or "@domain")."""
    if rcpt.state != "deferred" or not rcpt.last_reply:
        return False
    m = SUSPENDED_REPLY.search(rcpt.last_reply)
    return m is not None and m[1] == target


def _log_delete(env, raced: bool, dlog=None) -> None:
    """The server log says who deleted what; the delivery log gets the outcome
    ("deleted") of every recipient that was still waiting (invariant 5)."""
    pending = [r for r in env.recipients if r.state in ("queued", "deferred")]
    waiting = [r.address for r in pending]
    if dlog is not None:
        for r in pending:
            dlog.record(queue_id=env.queue_id, recipient=r.address, status="deleted", result=None,
                        attempt=r.attempts, arrival=env.arrival)
    shown = ",".join(f"<{a}>" for a in waiting[:10]) + (f" and {len(waiting) - 10} more" if len(waiting) > 10 else "")
    log.warning("%s: deleted by the administrator (mta queue delete), no bounce: from=<%s> size=%d "
                "undelivered=%d %s", env.queue_id, env.sender, env.size, len(waiting), shown)
    if raced:
        log.warning("%s: a delivery attempt started while the delete was being written; "
                    "its outcome is in the delivery log", env.queue_id)


# ---------------------------------------------------------------------------
# the client side, for the CLI
# ---------------------------------------------------------------------------

class NoServer(Exception):
    """No server answers on this shard's socket (none, or a dead one's)."""


class ControlError(Exception):
    """The server answered with an error, or broke the protocol."""


def shards(spool_dir: str) -> list[int]:
    """The shard numbers present in the spool directory."""
    try:
        names = os.listdir(spool_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(spool_dir, n)))


def _connect(spool_dir: str, shard: int, timeout: float) -> socket.socket:
    """A connected socket to a shard's server, or NoServer / ControlError saying why not."""
    path = socket_path(spool_dir, shard)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with _SunPath(path) as p:
            s.connect(p)
    except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError) as e:
        s.close()
        raise NoServer(f"{path}: {e.strerror}") from None
    except PermissionError as e:
        s.close()
        raise ControlError(f"{path}: {e.strerror} (run as the user the server runs as, or root)") from None
    except BaseException:
        s.close()
        raise
    return s


def call(spool_dir: str, shard: int, request: dict, timeout: float = CLIENT_TIMEOUT) -> dict:
    """Send one request to a shard's server; its reply (ok true), or NoServer / ControlError."""
    data = encode(request)
    if len(data) > MAX_LINE:
        raise ValueError("request too long")
    with _connect(spool_dir, shard, timeout) as s:
        try:
            s.sendall(data)
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise ControlError(f"shard {shard}: reply longer than {MAX_REPLY} bytes")
        except socket.timeout:
            raise ControlError(f"shard {shard}: no reply within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"shard {shard}: {e.strerror or e}") from None
    return _reply(shard, bytes(buf))


def _reply(shard: int, buf: bytes) -> dict:
    """A reply line as a dict (ok true), or ControlError saying what it was."""
    if not buf:
        raise ControlError(f"shard {shard}: the server closed the connection without a reply (stopping?)")
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"shard {shard}: unreadable reply {bytes(buf[:200])!r}") from None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        err = reply.get("error") if isinstance(reply, dict) else None
        raise ControlError(f"shard {shard}: {err or 'bad reply'}")
    return reply


def fetch(spool_dir: str, shard: int, request: dict, timeout: float = CLIENT_TIMEOUT) -> tuple[dict, bytes]:
    """`call` for the page ops: (the reply, the bytes after its line: a page's data, else b"").
    Their replies may be big (up to MAX_PAGE_REPLY): a page of a big queue, a shape of many domains."""
    with _connect(spool_dir, shard, timeout) as s:
        try:
            s.sendall(encode(request))
            with s.makefile("rb") as f:
                reply = _reply(shard, f.readline(MAX_PAGE_REPLY))
                size = reply.get("bytes", 0)
                if not whole(size, 0, MAX_PAGE_REPLY):
                    raise ControlError(f"shard {shard}: bad reply (bytes {str(size)[:40]})")
                data = f.read(size) if size else b""
        except socket.timeout:
            raise ControlError(f"shard {shard}: no reply within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"shard {shard}: {e.strerror or e}") from None
    if len(data) != size:
        raise ControlError(f"shard {shard}: the server closed the connection {size - len(data)} bytes short")
    return reply, data
