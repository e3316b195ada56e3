"""/api/admin/...: the `mta queue` operations over HTTP (JSON in and out, token scope `admin`), each
a call of mta.app.admin in a thread of its own pool, so this worker's loop keeps serving its own
shard's control socket meanwhile. An AdminError becomes its status; every error body is JSON."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from mta.app import admin, control
from mta.app.httpauth import Gate, error, json_body

log = logging.getLogger("mta.http")

PREFIX = "/api/admin"
THREADS = 4  # admin calls at once per worker; the control socket serves 8 clients at once
MAX_IDS = 10_000  # queue ids in one request (admin.change sends them control.MAX_IDS per control request)


def add_routes(app: web.Application, gate: Gate, spool_dir: str, cfg=None) -> AdminRoutes:
    """Add the /api/admin routes to `app` (before it starts), guarded by `gate` (scope admin).

    GET  /api/admin/queue                        the queue (`mta queue list --json`)
    GET  /api/admin/queue/summary?by=&top=       its shape (`mta queue summary --json`)
    GET  /api/admin/queue/{id}                   one message's envelope
    GET  /api/admin/queue/{id}/message           its stored bytes (message/rfc822)
    POST /api/admin/queue/{hold|release|delete|flush}   {"ids": [...]} or {"all": true}
    POST /api/admin/suspend {"domain"|"site", "duration"}, /resume {"domain"|"site"},
         /bounce {"domain"}, /reload {}
    `cfg`: the server's configuration, for summary by site (its [dns] and routes)."""
    routes = AdminRoutes(spool_dir, cfg)

    def guarded(handler):
        return gate.guard("admin", handler)

    r = app.router
    r.add_get(f"{PREFIX}/queue", guarded(routes.list))
    r.add_get(f"{PREFIX}/queue/summary", guarded(routes.summary))  # before {id}: it wins
    r.add_get(f"{PREFIX}/queue/{{id}}", guarded(routes.show))
    r.add_get(f"{PREFIX}/queue/{{id}}/message", guarded(routes.message))
    for op in admin.QUEUE_OPS:
        r.add_post(f"{PREFIX}/queue/{op}", guarded(functools.partial(routes.change, op)))
    for name in ("suspend", "resume", "bounce", "reload"):
        r.add_post(f"{PREFIX}/{name}", guarded(getattr(routes, name)))
    app.on_cleanup.append(routes.close)
    return routes


# --- the request bodies: each a JSON object, checked field by field ------------------

def fields(body, allowed: tuple[str, ...]) -> dict:
    """The body as a dict holding no field but `allowed`, else BadArgument naming the field."""
    if not isinstance(body, dict):
        raise admin.BadArgument("body", "expected a JSON object")
    for key in body:
        if key not in allowed:
            raise admin.BadArgument(str(key)[:100], f"unknown field (expected {', '.join(allowed) or 'none'})")
    return body


def parse_change(op: str, body) -> tuple[list[str], bool]:
    """(the queue ids, every message) of a hold/release/delete/flush body. Flush without
    either means every message, as `mta queue flush` without ids does."""
    obj = fields(body, ("ids", "all"))
    ids, every = obj.get("ids"), obj.get("all", False)
    if not isinstance(every, bool):
        raise admin.BadArgument("all", "expected true or false")
    if every:
        if "ids" in obj:
            raise admin.BadArgument("ids", "give either ids or all: true, not both")
        return [], True
    if "ids" not in obj:
        if op == "flush" and "all" not in obj:
            return [], True
        raise admin.BadArgument("ids", "give a list of queue ids, or all: true")
    if not isinstance(ids, list) or not ids:
        raise admin.BadArgument("ids", "expected a non-empty list of queue ids")
    if len(ids) > MAX_IDS:
        raise admin.BadArgument("ids", f"at most {MAX_IDS} queue ids in one request, not {len(ids)}")
    for i, q in enumerate(ids):
        if not isinstance(q, str) or not control.QUEUE_ID.fullmatch(q):
            raise admin.BadArgument(f"ids[{i}]", f"bad queue id {str(q)[:80]!r}: expected 1-64 letters and digits")
    return ids, False


def parse_target(body, extra: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """({"domain": D} or {"site": S}, the body) of a suspend/resume body."""
    obj = fields(body, ("domain", "site") + extra)
    return admin.target(obj.get("domain"), obj.get("site")), obj


def parse_summary(query) -> tuple[str, int]:
    """(by, top) from the query string (?by=domain|site&top=N), defaults as the CLI's."""
    for key in query:
        if key not in ("by", "top"):
            raise admin.BadArgument(str(key)[:100], "unknown parameter (expected by, top)")
    by = query.get("by", "domain")
    raw = query.get("top", str(admin.DEFAULT_TOP))
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        raise admin.BadArgument("top", f"a whole number, 0 or more, not {raw[:80]!r}")
    return by, int(raw)


def judge(done: dict) -> tuple[int, str | None]:
    """The status of an operation's result, and the error text for one that is not 200: 503
    when a shard's server did not answer, 404 for an unknown queue id, 409 when the rest was
    done but something was not (a message being delivered, held, gone meanwhile; a configuration
    with errors, which reload refuses)."""
    if done.get("problems"):
        return 503, done["problems"][0]
    for u in done.get("untouched", ()):
        return 503, f"shard {u['shard']} holds {u['messages']} message(s) but no server owns it: not touched"
    results = done.get("results", ())
    for want, status in (("no server", 503), ("unknown", 404)):
        for r in results:
            if r["status"] == want:
                return status, r["text"]
    if done.get("ok", True):
        return 200, None
    for r in results:
        if not r["ok"]:
            return 409, r["text"]
    for s in done.get("shards", ()):
        if not s["applied"]:
            first = f": {s['messages'][0]}" if s["messages"] else ""
            return 409, f"shard {s['shard']} refused the configuration (the running one stays){first}"
    counts = done.get("counts", {})
    for status, n in counts.items():
        if status in ("busy", "failed") or ("op" in done and not admin.verdict(done["op"], status, True)[0]):
            return 409, f"{n} message(s): {status} (see the server log; run the request again for busy ones)"
    return 409, "not everything was done: see the reply"


class AdminRoutes:
    """The handlers; the blocking admin functions run in `pool`, never on the loop."""

    def __init__(self, spool_dir: str, cfg=None):
        self.root = os.path.abspath(spool_dir)  # a later chdir (privileges) must not move it
        self.cfg = cfg
        self.pool = ThreadPoolExecutor(THREADS, thread_name_prefix="mta-admin")

    async def close(self, _app=None) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args))

    async def answer(self, fn, *args) -> web.Response:
        """Run admin `fn`; its data as JSON (200), or the error its result or exception says."""
        try:
            done = await self.call(fn, *args)
        except admin.AdminError as e:
            return error(e.status, e.text, **e.fields)
        except Exception as e:  # a bug: said as JSON, logged with its traceback
            log.exception("http admin %s failed", getattr(fn, "__name__", fn))
            return error(500, f"internal error: {e}")
        if not isinstance(done, dict):
            return web.json_response(done)
        status, text = judge(done)
        return web.json_response(done if text is None else {"error": text, **done}, status=status)

    async def body(self, request: web.Request):
        """The JSON body ({} when there is none), or the error reply to send."""
        if not request.body_exists:
            return {}
        return await json_body(request)

    # --- the routes --------------------------------------------------------------

    async def list(self, request: web.Request, token) -> web.StreamResponse:
        """The queue as one JSON array written a page at a time (admin.list_pages), so a big
        backlog is never held here whole. An error before the first page is its own status;
        one after it can only cut the reply short (the array is left unclosed), and is logged."""
        pages = admin.list_pages(self.root, "json")
        try:
            first = await self.call(next, pages, None)
        except admin.AdminError as e:
            return error(e.status, e.text, **e.fields)
        resp = web.StreamResponse(headers={"Content-Type": "application/json; charset=utf-8"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"[")
        got, sent = first, False
        try:
            while got is not None:
                await resp.write(b", " + got[0] if sent else got[0])
                sent = True
                got = await self.call(next, pages, None)
        except admin.AdminError as e:
            log.warning("http admin list: cut short after a page was sent: %s", e.text)
            if request.transport is not None:
                request.transport.abort()
            return resp
        finally:
            if not pages.gi_running:  # a cancelled request's page may still be made in its thread
                pages.close()
        await resp.write(b"]")
        await resp.write_eof()
        return resp

    async def summary(self, request: web.Request, token) -> web.Response:
        try:
            by, top = parse_summary(request.query)
        except admin.BadArgument as e:
            return error(400, e.text, field=e.field)
        return await self.answer(admin.summary, self.root, by, top, self.cfg)

    async def show(self, request: web.Request, token) -> web.Response:
        qid = request.match_info["id"]
        try:
            env, _ = await self.call(admin.show, self.root, qid, False)
        except admin.AdminError as e:
            return error(e.status, e.text, **e.fields)
        return web.json_response(env)

    async def message(self, request: web.Request, token) -> web.Response:
        qid = request.match_info["id"]
        try:
            _, data = await self.call(admin.show, self.root, qid)
        except admin.AdminError as e:
            return error(e.status, e.text, **e.fields)
        return web.Response(body=data, content_type="message/rfc822")

    async def change(self, op: str, request: web.Request, token) -> web.Response:
        body = await self.body(request)
        if isinstance(body, web.Response):
            return body
        try:
            ids, every = parse_change(op, body)
        except admin.BadArgument as e:
            return error(400, e.text, field=e.field)
        log.info("http admin %s by token %r: %s", op, token.name, "all" if every else f"{len(ids)} id(s)")
        return await self.answer(admin.change, self.root, op, ids, every)

    async def suspend(self, request: web.Request, token) -> web.Response:
        body = await self.body(request)
        if isinstance(body, web.Response):
            return body
        try:
            t, obj = parse_target(body, ("duration",))
            seconds = admin.duration(obj.get("duration", admin.DEFAULT_DURATION))
        except admin.BadArgument as e:
            return error(400, e.text, field=e.field)
        log.info("http admin suspend %s by token %r", admin.named(t), token.name)
        return await self.answer(admin.suspend, self.root, t, seconds)

    async def resume(self, request: web.Request, token) -> web.Response:
        body = await self.body(request)
        if isinstance(body, web.Response):
            return body
        try:
            t, _ = parse_target(body)
        except admin.BadArgument as e:
            return error(400, e.text, field=e.field)
        log.info("http admin resume %s by token %r", admin.named(t), token.name)
        return await self.answer(admin.resume, self.root, t)

    async def bounce(self, request: web.Request, token) -> web.Response:
        body = await self.body(request)
        if isinstance(body, web.Response):
            return body
        try:
            domain = fields(body, ("domain",)).get("domain")
            if domain is None:
                raise admin.BadArgument("domain", "required: the recipient domain whose mail is bounced")
            admin.target(domain, None)
        except admin.BadArgument as e:
            return error(400, e.text, field=e.field)
        log.info("http admin bounce domain %s by token %r", domain, token.name)
        return await self.answer(admin.bounce, self.root, domain)

    async def reload(self, request: web.Request, token) -> web.Response:
        body = await self.body(request)
        if isinstance(body, web.Response):
            return body
        try:
            fields(body, ())
        except admin.BadArgument as e:
            return error(400, e.text, field=e.field)
        return await self.answer(admin.reload, self.root)
