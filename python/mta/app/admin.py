"""The `mta queue` operations as plain functions returning JSON-able data, one implementation for
the CLI and /api/admin: listings go a page at a time (mta.app.pages), changes go to every running
shard's control socket. Nothing here prints or writes the spool; what cannot be done raises an AdminError."""

from __future__ import annotations

import datetime as _dt
import os
import time

from mta.app import control, pages
from mta.config import schema as config
from mta.config.kinds import Duration, Errors, domain_name
from mta.delivery import FINAL

QUEUE_OPS = ("hold", "release", "delete", "flush")
# Seconds a shard has to answer a request that walks its whole queue (ALL, resume, bounce): about
# 45 s per million messages for delete ALL here, so the usual 60 s would give up on a big backlog.
WALK_TIMEOUT = 3600.0
# Age buckets in minutes, as qshape's: a message goes in the first whose bound its age is
# below; "1280+" holds the rest. T is the total.
BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
LABELS = ("T",) + tuple(str(b) for b in BUCKETS) + (f"{BUCKETS[-1]}+",)
DEFAULT_TOP = 50
MX_CONCURRENCY = 16  # MX lookups in flight at once (summary by site)
DEFAULT_DURATION = "1h"
MAX_DURATION = 365 * 86400.0


# --- errors: each names the HTTP status that says the same ---------------------------

class AdminError(Exception):
    """An operation that cannot be done at all. `fields` go into the HTTP error body."""

    status = 500

    def __init__(self, text: str, **fields):
        super().__init__(text)
        self.text = text
        self.fields = fields


class BadArgument(AdminError):
    """An argument out of its range; `field` names it (its JSON name: "domain", "ids", ...)."""

    status = 400

    def __init__(self, field: str, text: str):
        super().__init__(f"{field}: {text}", field=field)
        self.field = field
        self.reason = text  # without the field's name (the CLI names its flag instead)


class NoSuchMessage(AdminError):
    status = 404

    def __init__(self, queue_id: str):
        super().__init__(f"no message with queue id {queue_id!r}", id=queue_id)


class NotRunning(AdminError):
    """No shard's server answers. `problems`: what asking them met (empty: none runs at all)."""

    status = 503

    def __init__(self, root: str, what: str, problems: list[str]):
        text = problems[0] if problems else (
            f"no server is running on the spool {root} (no control socket answers); "
            f"{what} needs the running server: start `mta run --spool {root}` first")
        super().__init__(text, problems=list(problems))
        self.problems = list(problems)


class SpoolUnreadable(AdminError):
    status = 500


class ShardFailed(AdminError):
    """A shard's server failed while a listing asked it for pages (stopped, or broke off)."""

    status = 503


# --- reading the spool ---------------------------------------------------------------

class _NoSpool:
    """A spool directory that does not exist yet holds no mail."""

    def list(self) -> list:
        return []

    def get(self, _queue_id):
        return None

    def message_bytes(self, _queue_id):
        return None


def reader(root: str):
    """A read-only view of every shard under `root` (safe while the server runs)."""
    from mta import _native

    if not os.path.isdir(root):
        return _NoSpool()
    try:
        return _native.SpoolReader(root)
    except _native.SpoolError as e:
        raise SpoolUnreadable(f"cannot read the spool: {e}") from None


def rfc3339(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def entry(env) -> dict:
    """One message as `mta queue list --json` prints it."""
    return {
        "id": env.queue_id,
        "arrival": rfc3339(env.arrival),
        "size": env.size,
        "sender": env.sender,
        "held": env.held,
        "recipients": [{"address": r.address, "state": r.state} for r in env.recipients],
    }


def details(env) -> dict:
    """The whole envelope: `entry` plus the transaction's parameters and each recipient's
    delivery state (attempts, next attempt, last reply)."""
    out = entry(env)
    out.update(body=env.body, ret=env.ret, envid=env.envid, smtputf8=env.smtputf8, helo=env.helo,
               client_ip=env.client_ip, shard=env.shard, delay_warned=env.delay_warned)
    out["recipients"] = [{
        "address": r.address, "state": r.state, "notify": list(r.notify) if r.notify is not None else None,
        "orcpt": r.orcpt, "attempts": r.attempts,
        "next_attempt": rfc3339(r.next_attempt) if r.next_attempt else None, "last_reply": r.last_reply,
    } for r in env.recipients]
    return out


def list_pages(root: str, form: str = "json", online: bool = True):
    """The queue as (data, messages) pages, as `mta queue list` writes them: form "json" the
    `entry` objects joined by ", " (a JSON array's inside), "text" the plain lines. A running
    shard's server is asked (its index), the others' files read (all of them, without
    `online`); see pages.pages for the order. The page size is pages.page_size()."""
    from mta import _native

    limit, ping = paging()
    try:
        yield from pages.pages(pages.sources(root, online, ping), form, limit)
    except _native.SpoolError as e:
        raise SpoolUnreadable(f"cannot read the spool: {e}") from None
    except (control.NoServer, control.ControlError) as e:
        raise ShardFailed(f"listing the queue failed: {e}") from None


def show(root: str, queue_id: str, with_bytes: bool = True) -> tuple[dict, bytes | None]:
    """(`details` of one message, its stored bytes exactly, or None without `with_bytes`)."""
    r = reader(root)
    env = r.get(queue_id)
    data = r.message_bytes(queue_id) if env is not None and with_bytes else None
    if env is None or (with_bytes and data is None):
        raise NoSuchMessage(queue_id)
    return details(env), data


# --- the running shards ----------------------------------------------------------------

def paging() -> tuple[int, float]:
    """(messages per page, seconds a shard has to answer "ping") for a listing, from the
    environment; a malformed value is a BadArgument naming its variable."""
    try:
        limit = pages.page_size()
    except ValueError as e:
        raise BadArgument(pages.PAGE_ENV, str(e)) from None
    return limit, ping_timeout()


def ping_timeout() -> float:
    """control.ping_timeout(), its malformed environment value a BadArgument naming the variable."""
    try:
        return control.ping_timeout()
    except ValueError as e:
        raise BadArgument(control.PING_ENV, str(e)) from None


def running(root: str) -> tuple[list[int], list[int], list[str]]:
    """(the shards a server answers on, those no server owns, the problems met asking the rest)."""
    ping = ping_timeout()
    up, down, problems = [], [], []
    try:
        present = control.shards(root)
    except OSError as e:
        return [], [], [(f"cannot read the spool {root}: {e.strerror or e} "
                         "(run as the user the server runs as, or root)")]
    for shard in present:
        try:
            control.call(root, shard, {"op": "ping"}, timeout=ping)
            up.append(shard)
        except control.NoServer:
            down.append(shard)
        except control.ControlError as e:
            problems.append(str(e))
    return up, down, problems


def everywhere(root: str, request: dict, what: str, timeout: float = control.CLIENT_TIMEOUT
               ) -> tuple[list[dict], list[str]]:
    """`request` to every running shard: (their replies, the problems met). NotRunning when none runs."""
    up, _down, problems = running(root)
    if not up:
        raise NotRunning(root, what, problems)
    replies = []
    for shard in up:
        try:
            replies.append(control.call(root, shard, request, timeout))
        except (control.NoServer, control.ControlError) as e:
            problems.append(str(e))
    return replies, problems


# status -> (is it success, what to say); "{id}" is the queue id.
_STATUS = {
    "held": (True, "{id}: held"),
    "released": (True, "{id}: released, due now"),
    "not held": (True, "{id}: was not held"),
    "deleted": (True, "{id}: deleted"),
    "flushed": (True, "{id}: due now"),
    "active": (True, "{id}: being delivered right now"),
    "busy": (False, ("{id}: being delivered right now; it is held, so it will not be retried: "
                     "run delete again once the attempt ends")),
    "gone": (False, "{id}: left the queue meanwhile (its delivery attempt ended)"),
}
_STATUS_FLUSH = {"held": (False, "{id}: held, not flushed (mta queue release {id})")}


def verdict(op: str, status: str, every: bool = False) -> tuple[bool, str]:
    """Whether a shard's per-message `status` for `op` is a success, and its text ("{id}" in it)."""
    if op == "flush" and status == "held" and every:
        return True, "held, left alone"
    if op == "flush" and status in _STATUS_FLUSH:
        return _STATUS_FLUSH[status]
    return _STATUS.get(status, (False, "{id}: " + status))


def change(root: str, op: str, ids: tuple[str, ...] | list[str] = (), every: bool = False) -> dict:
    """hold, release, delete or flush the messages `ids` (or every one) in every running shard.

    Named: {"op", "results": [{"id", "status", "ok", "text"[, "shard"]}] in the order given
    (status "unknown": no such message; "no server": it is in a shard no server owns),
    "problems", "ok"}. All: {"op", "all": true, "counts": {status: n}, "untouched":
    [{"shard", "messages"}] (shards no server owns), "problems", "ok"}."""
    if op not in QUEUE_OPS:
        raise BadArgument("op", f"one of {', '.join(QUEUE_OPS)}, not {op!r}")
    if not every and not ids:
        raise BadArgument("ids", "give one or more queue ids, or all")
    up, down, problems = running(root)
    if not up:
        raise NotRunning(root, op, problems)

    def ask(shard: int, request: dict, timeout: float = control.CLIENT_TIMEOUT) -> dict:
        try:
            return control.call(root, shard, request, timeout)
        except (control.NoServer, control.ControlError) as e:
            problems.append(f"shard {shard}: {e}")
            return {}

    if every:
        counts: dict[str, int] = {}
        for shard in up:
            for status, n in ask(shard, {"op": op, "all": True}, WALK_TIMEOUT).get("counts", {}).items():
                counts[status] = counts.get(status, 0) + n
        untouched = [{"shard": s, "messages": n} for s, n in sorted(_messages_in(root, down).items())]
        ok = not problems and not untouched and all(verdict(op, s, True)[0] for s in counts)
        return {"op": op, "all": True, "counts": dict(sorted(counts.items())), "untouched": untouched,
                "problems": problems, "ok": ok}

    wanted = list(dict.fromkeys(ids))
    valid = [q for q in wanted if control.QUEUE_ID.fullmatch(q)]
    found: dict[str, str] = {}
    for shard in up:
        for i in range(0, len(valid), control.MAX_IDS):
            for q, status in ask(shard, {"op": op, "ids": valid[i:i + control.MAX_IDS]}).get("results", {}).items():
                if status != "unknown" or q not in found:
                    found[q] = status
    missing = [q for q in wanted if found.get(q, "unknown") == "unknown"]
    where = _shard_of(root, down, missing) if down and missing else {}
    results = []
    for q in wanted:
        status = found.get(q, "unknown")
        if status == "unknown" and q in where:
            results.append({"id": q, "status": "no server", "ok": False, "shard": where[q],
                            "text": f"{q} is in shard {where[q]}, and no server owns that shard"})
        elif status == "unknown":
            results.append({"id": q, "status": status, "ok": False, "text": f"no message with queue id {q!r}"})
        else:
            ok, text = verdict(op, status)
            results.append({"id": q, "status": status, "ok": ok, "text": text.format(id=q)})
    return {"op": op, "results": results, "problems": problems,
            "ok": not problems and all(r["ok"] for r in results)}


def _down_ids(root: str, down: list[int]):
    """(shard, queue id) of every message in the shards no server owns, a page at a time."""
    from mta import _native

    if not down:
        return
    try:
        for src in pages.sources(root, online=False):
            if src.shard in down:
                for q in pages.ids(src, pages.DEFAULT_PAGE):
                    yield src.shard, q
    except _native.SpoolError:
        return


def _messages_in(root: str, down: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for shard, _q in _down_ids(root, down):
        out[shard] = out.get(shard, 0) + 1
    return out


def _shard_of(root: str, down: list[int], wanted) -> dict[str, int]:
    """{queue id: shard} of the `wanted` ids that are in a shard no server owns."""
    wanted = set(wanted)
    return {q: shard for shard, q in _down_ids(root, down) if q in wanted}


# --- suspend, resume, bounce, reload ---------------------------------------------------

def target(domain: str | None, site: str | None) -> dict:
    """{"domain": D} or {"site": S}, checked and lower-cased; exactly one of the two."""
    if (domain is None) == (site is None):
        raise BadArgument("domain", "give either domain or site (one of the two)")
    if domain is not None:
        name = domain_name(domain) if isinstance(domain, str) else None
        if name is None:
            raise BadArgument("domain", f"{domain!r} is not a domain name")
        return {"domain": name}
    if not isinstance(site, str) or not 0 < len(site) <= control.MAX_SITE or not site.isprintable() or " " in site:
        raise BadArgument("site", f"expected 1-{control.MAX_SITE} printable characters, no spaces")
    return {"site": site.lower()}


def named(t: dict) -> str:
    return f"domain {t['domain']}" if "domain" in t else f"site {t['site']}"


def duration(raw) -> float:
    """Seconds from a number or a text such as "30m" or "2h" (at most a year)."""
    errs = Errors()
    seconds = Duration(max=MAX_DURATION).parse("duration", raw, errs)
    if errs.items:
        raise BadArgument("duration", errs.items[0].partition(": ")[2])
    return seconds


def suspend(root: str, t: dict, seconds: float) -> dict:
    """Suspend the target (`target`) for `seconds` in every running worker."""
    until = time.time() + seconds
    replies, problems = everywhere(root, {"op": "suspend", **t, "until": until}, "suspend")
    return {**t, "until": until, "until_text": rfc3339(until), "seconds": seconds, "workers": len(replies),
            "problems": problems, "ok": not problems}


def resume(root: str, t: dict) -> dict:
    """End the target's suspension in every running worker; what it held back is due now.
    "counts": messages made "due", "active" (being delivered), "failed", "gone"."""
    replies, problems = everywhere(root, {"op": "resume", **t}, "resume", WALK_TIMEOUT)
    counts: dict[str, int] = {}
    was = 0.0
    for r in replies:
        was = max(was, float(r.get("was") or 0.0))
        for k, n in r.get("counts", {}).items():
            counts[k] = counts.get(k, 0) + n
    return {**t, "was": was, "was_suspended": was > time.time(), "counts": counts, "workers": len(replies),
            "problems": problems, "ok": not problems and not counts.get("failed")}


def bounce(root: str, domain: str) -> dict:
    """Bounce every queued recipient of `domain` (a DSN to each sender). "counts": messages
    "bounced", "busy" (being delivered: run again), "failed", "gone"."""
    t = target(domain, None)
    replies, problems = everywhere(root, {"op": "bounce", **t}, "bounce", WALK_TIMEOUT)
    counts: dict[str, int] = {}
    recipients = 0
    for r in replies:
        recipients += int(r.get("recipients", 0))
        for k, n in r.get("counts", {}).items():
            counts[k] = counts.get(k, 0) + n
    return {**t, "recipients": recipients, "counts": counts, "workers": len(replies), "problems": problems,
            "ok": not problems and not counts.get("busy") and not counts.get("failed")}


def reload(root: str) -> dict:
    """Ask every running worker to re-read its configuration (the control op "reload"), as
    SIGHUP does: {"workers", "shards": [{"shard", "applied", "messages"}], "problems", "ok"};
    a worker that finds errors in the file refuses it ("applied": false, the errors its messages)."""
    replies, problems = everywhere(root, {"op": "reload"}, "reload")
    shards = [{"shard": r.get("shard"), "applied": bool(r.get("applied")),
               "messages": [str(m) for m in r.get("messages", [])]} for r in replies]
    return {"workers": len(shards), "shards": shards, "problems": problems,
            "ok": not problems and all(s["applied"] for s in shards)}


def flags_of(root: str) -> tuple[dict[str, float] | None, str | None]:
    """(the flags set in the running workers, merged; or None), and why they are unknown."""
    up, _down, problems = running(root)
    if not up:
        return None, problems[0] if problems else "no server running: flags unknown"
    merged: dict[str, float] = {}
    for shard in up:
        try:
            reply = control.call(root, shard, {"op": "flags"})
        except (control.NoServer, control.ControlError) as e:
            return None, f"flags unknown: {e}"
        for key, until in reply.get("flags", {}).items():
            if key.startswith(("suspend|", "slow|")):  # not the clients' own "want|" signals
                merged[key] = max(merged.get(key, 0.0), float(until))
    return merged, None


# --- summary: the queue's shape, like Postfix's qshape -----------------------------------

def bucket(age: float) -> int:
    """The age column (1 .. len(BUCKETS)+1; 0 is the total) of a message `age` seconds old."""
    minutes = age / 60.0
    for i, bound in enumerate(BUCKETS):
        if minutes < bound:
            return i + 1
    return len(BUCKETS) + 1


def shape(envelopes, now: float) -> tuple[dict[str, list[int]], dict[str, int]]:
    """({domain: [total, per age column...]}, {domain: recipients}) of the recipients not yet
    final: a message counts once per domain it still has recipients in. Takes any iterable
    and keeps nothing of an envelope, only the counters."""
    table: dict[str, list[int]] = {}
    rcpts: dict[str, int] = {}
    width = len(LABELS)
    for env in envelopes:
        seen: set[str] = set()
        for r in env.recipients:
            if r.state in FINAL:
                continue
            domain = r.address.rpartition("@")[2].lower() or "(no domain)"
            rcpts[domain] = rcpts.get(domain, 0) + 1
            seen.add(domain)
        if not seen:
            continue
        col = bucket(now - env.arrival)
        for domain in seen:
            row = table.get(domain)
            if row is None:
                row = table[domain] = [0] * width
            row[0] += 1
            row[col] += 1
    return table, rcpts


def ranked(table: dict[str, list[int]], top: int) -> tuple[list[tuple[str, list[int]]], list[int], int]:
    """(the `top` biggest rows by total, then name; 0: all), the sum of the rest, how many rest."""
    rows = sorted(table.items(), key=lambda kv: (-kv[1][0], kv[0]))
    shown, rest = (rows, []) if top <= 0 else (rows[:top], rows[top:])
    return shown, total_of(r for _, r in rest), len(rest)


def total_of(rows) -> list[int]:
    out = [0] * len(LABELS)
    for r in rows:
        for i, n in enumerate(r):
            out[i] += n
    return out


async def sites_of(domains: list[str], cfg) -> dict[str, str]:
    """{domain: its destination site}, as the worker names it (site_name of the MX hosts,
    or the smarthost of a transport route); looked up concurrently, at most MX_CONCURRENCY
    at once, through the config's [dns]. Failures get a site in parentheses."""
    from mta.delivery.mx import MxResolver
    import asyncio

    from mta.delivery.router import Router
    from mta.delivery.shaping.shaper import site_name

    globs = tuple(r.site for r in getattr(getattr(cfg, "shaping", None), "rule", ()) if getattr(r, "site", None))
    router = Router(cfg)  # the tables only: route hooks need the running server
    d = cfg.dns
    resolver = MxResolver(list(d.nameservers) or None, port=d.port, timeout=d.timeout)
    gate = asyncio.Semaphore(MX_CONCURRENCY)

    async def one(domain: str) -> str:
        spec = router.lookup(domain)
        if spec.kind in ("smarthost", "lmtp"):
            return site_name([spec.host], globs)
        if spec.kind != "mx":
            return f"({spec.kind})"
        async with gate:
            status, records = await resolver.query(domain, "MX")
        if status == "nodata":  # no MX: the domain itself is its mail host
            return site_name([domain], globs)
        if status == "nxdomain":
            return "(no such domain)"
        if status != "ok":
            return "(DNS lookup failed)"
        hosts = [h for _pref, h in records if h not in (".", "")]
        return site_name(hosts, globs) if hosts else "(null MX)"

    found = await asyncio.gather(*(one(dom) for dom in domains))
    return dict(zip(domains, found))


def shape_of(root: str, now: float) -> tuple[dict[str, list[int]], dict[str, int]]:
    """`shape` of every queued message under `root`, counted a page at a time where the
    messages are (the running servers' indexes, the files of the other shards)."""
    from mta import _native

    limit, ping = paging()
    try:
        return pages.shape(pages.sources(root, True, ping), now, BUCKETS, limit)
    except _native.SpoolError as e:
        raise SpoolUnreadable(f"cannot read the spool: {e}") from None
    except (control.NoServer, control.ControlError) as e:
        raise ShardFailed(f"summing up the queue failed: {e}") from None


def summary(root: str, by: str = "domain", top: int = DEFAULT_TOP, cfg=None) -> dict:
    """The queue's shape per recipient domain (or destination site), by age, with the flags
    of the running workers: {"by", "buckets", "total", "ages", "rows": [{"name", "total",
    "ages", "recipients"[, "domains"]}], "rest": {"count", "total", "ages"}, "flags", "flags_note"}.
    By site, the `top` biggest domains are looked up through `cfg` (default: the defaults)."""
    if by not in ("domain", "site"):
        raise BadArgument("by", f"domain or site, not {by!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise BadArgument("top", f"a whole number, 0 or more, not {top!r}")
    now = time.time()
    table, rcpts = shape_of(root, now)
    total = total_of(table.values())
    groups: dict[str, list[str]] = {}
    if by == "site":
        cfg = cfg if cfg is not None else config.load(None)
        shown, _rest, _n = ranked(table, top)
        looked = [d for d, _ in shown]
        import asyncio  # only here: the other queue commands start without it

        sites = asyncio.run(sites_of(looked, cfg)) if looked else {}
        site_table: dict[str, list[int]] = {}
        by_site: dict[str, int] = {}
        for domain in looked:
            site = sites[domain]
            groups.setdefault(site, []).append(domain)
            site_table[site] = total_of([site_table.get(site, [0] * len(LABELS)), table[domain]])
            by_site[site] = by_site.get(site, 0) + rcpts[domain]
        rcpts = by_site
        rows, _, _ = ranked(site_table, 0)
        rest = total_of(table[d] for d in table if d not in sites)
        rest_n = len(table) - len(looked)
    else:
        rows, rest, rest_n = ranked(table, top)
    flags, note = flags_of(root)
    return {"by": by, "buckets": list(LABELS), "total": total[0], "ages": total[1:],
            "rows": [dict({"name": name, "total": r[0], "ages": r[1:], "recipients": rcpts.get(name, 0)},
                          **({"domains": groups[name]} if by == "site" else {})) for name, r in rows],
            "rest": {"count": rest_n, "total": rest[0], "ages": rest[1:]},
            "flags": flags, "flags_note": note}
