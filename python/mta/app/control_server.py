"""The server side of the control channel (mta.app.control has the protocol and the client): one
ControlServer per worker, next to its queue manager, serving its shard's socket. A reply names
only changes already durable."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from mta.app.control import MAX_LINE, SHAPING_FIELDS, Request, RequestError, SunPath, encode, parse_request
from mta.app.control_pages import PAGE_OPS
from mta.delivery import FINAL, Outcome
from mta.delivery.router import split
from mta.delivery.shaping.signals import flag_key

if TYPE_CHECKING:
    from mta.delivery.deliverylog import DeliveryLog
    from mta.queue.manager import QueueManager
    from mta.queue.store import SpoolService

log = logging.getLogger("mta.control")

MAX_CLIENTS = 8  # control connections served at once; more are refused with an error
READ_TIMEOUT = 5.0  # seconds for a client to send its request line
WRITE_TIMEOUT = 5.0
DELETE_WAIT = 10.0  # seconds delete (and bounce) wait for an attempt in flight before answering "busy"
WALK_CHUNK = 5000  # messages an "all" request (and resume, bounce) acts on at once
BOUNCE_TEXT = "bounced by the administrator (mta queue bounce)"
BOUNCE_CONCURRENCY = 32  # messages bounced at once (each a DSN injected, then a record)
# What the worker records for a recipient its site's (or domain's) suspension holds back
# (mta.delivery.shaping.signals): the site last, so `resume` finds the ones it held.
SUSPENDED_REPLY = re.compile(r"shaping: site suspended until \d+(?:\.\d+)?: (.+)$")


def _target(req: Request) -> str:
    """The site a suspend/resume names: the site itself, or "@<domain>" for a domain."""
    return req.site if req.site is not None else f"@{req.domain}"


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
            with SunPath(self.path) as p:
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
        if req.op in SHAPING_FIELDS:
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


async def serve_page(spool, req) -> dict:
    """The reply to a page request `req` (mta.app.control.Request) from the native `spool`, made
    in a worker thread (the native call releases the GIL), so a listing of any size neither blocks
    the event loop nor copies the queue; a page's bytes go under "data" (sent after the reply line)."""
    if req.op == "page":
        data, count, nxt = await asyncio.to_thread(spool.page, req.cursor, req.limit, req.form)
        return {"ok": True, "count": count, "next": nxt, "data": data}
    if req.op == "shape":
        now = req.now if req.now is not None else time.time()
        table, rcpts, nxt = await asyncio.to_thread(spool.shape, req.cursor, req.limit, now, list(req.buckets))
        return {"ok": True, "table": table, "rcpts": rcpts, "next": nxt}
    ids, nxt = await asyncio.to_thread(spool.ids, req.cursor, req.limit)
    return {"ok": True, "ids": ids, "next": nxt}
