"""POST /api/inject/v1 (scope `inject`): messages over HTTP through the same hook chain, Received
header and spool as an authenticated SMTP submission. Invariant: the 200 goes out only once every
message it reports as queued is durable in the spool, like SMTP's 250; a refused one is not stored."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from aiohttp import web

from mta import _native, plugin
from mta import log as fastlog
from mta.app import inject_request
from mta.app.httpauth import Gate, error, json_body
from mta.auth.headers import add_missing_headers
from mta.auth.tokens import Token
from mta.config.listeners import Listener
from mta.policy.chain import FAILED
from mta.smtp.seams import AcceptStore, Hooks, OnDurable, SessionSettings, Trust
from mta.smtp.session import Transaction
from mta.smtp.stages import NOTES_MAX, HeaderBlock, InflightMessage
from mta.smtp.tls import TlsInfo

log = logging.getLogger("mta.http")

PATH = "/api/inject/v1"
STORE_FAILED = (451, "4.3.0", "queue file write error, try again later")
HOPS = (554, "5.4.0", "too many hops")
HEADER_TOO_BIG = (552, "5.3.4", "message header too big")


def add_routes(app: web.Application, gate: Gate, *, store: AcceptStore, hooks: Hooks, on_durable: OnDurable,
               settings: SessionSettings, trust: Trust, stopping: Callable[[], bool]) -> Injector:
    """Route POST /api/inject/v1 (before the app starts) to a new Injector; returns it."""
    injector = Injector(store, hooks, on_durable, settings, trust, stopping)
    app.router.add_post(PATH, gate.guard("inject", injector.handle))
    return injector


class Setup(NamedTuple):
    """What a request runs with from its start to its end (a reload makes a new one)."""

    hooks: Hooks
    settings: SessionSettings
    on_mail: tuple  # hooks.on_mail without the SMTP sender-login map


@dataclass
class Outcome:
    """One message's result: queued (queue_id) or refused (code, enhanced, text)."""

    index: int
    where: str  # "message" or "messages[i]"
    addresses: list[str]  # the recipients as given
    queue_id: str | None = None
    recipients: int = 0
    held: bool = False
    stage: str = ""  # where it was refused: connect, helo, auth, mail, rcpt, data, message, store
    code: int = 0
    enhanced: str = ""
    text: str = ""
    failed_recipients: list[dict] = field(default_factory=list)

    def refuse(self, stage: str, code: int, enhanced: str, text: str) -> Outcome:
        self.queue_id, self.stage, self.code, self.enhanced, self.text = None, stage, code, enhanced, text
        return self

    def json(self) -> dict:
        if self.queue_id is not None:
            return {"index": self.index, "status": "queued", "queue_id": self.queue_id,
                    "recipients": self.recipients, "held": self.held}
        out = {"index": self.index, "status": "refused", "stage": self.stage, "code": self.code,
               "enhanced": self.enhanced, "text": self.text}
        if self.failed_recipients:
            out["failed_recipients"] = self.failed_recipients
        return out


class Injector:
    """The handler and what it is handed by the wiring: the accept side of the spool, the hook
    chain, the queue's on_durable (which also counts mta_messages_accepted_total), the session
    settings (hostname, limits), trust (mynetworks) and whether the server is stopping."""

    def __init__(self, store: AcceptStore, hooks: Hooks, on_durable: OnDurable, settings: SessionSettings,
                 trust: Trust, stopping: Callable[[], bool]):
        self.store = store
        self.on_durable = on_durable
        self.trust = trust
        self.stopping = stopping
        self.use(hooks, settings)

    def use(self, hooks: Hooks, settings: SessionSettings, trust: Trust | None = None) -> None:
        """The chain, settings and trust for the requests that start from now on (a reload
        calls it again; requests in progress finish with the ones they started with)."""
        if trust is not None:
            self.trust = trust
        # A token's --senders list is the sender rule here; the SMTP users' sender-login map
        # knows logins, not token names (it would refuse every token it does not list).
        on_mail = tuple(c for c in hooks.on_mail if c[0].name != "sender_login")
        self.setup = Setup(hooks, settings, on_mail)

    async def handle(self, request: web.Request, token: Token) -> web.Response:
        if self.stopping():
            return error(503, "the server is stopping; nothing was stored")
        doc = await json_body(request)
        if isinstance(doc, web.Response):
            return doc
        setup = self.setup
        s = setup.settings
        try:
            drafts = inject_request.parse(doc, max_message_size=s.max_message_size, max_line=s.max_line_length,
                                          hostname=s.hostname)
        except inject_request.Invalid as e:
            return error(400, str(e), field=e.field)
        for d in drafts:
            if not token.allows_sender(d.sender):
                where = inject_request.field_path(d.where, "envelope_sender")
                return error(403, f"{where}: <{d.sender}> is not a sender token {token.name!r} may use",
                             field=where, senders=list(token.senders))
        if not self.store.has_room():
            return error(507, "the spool is below spool.min_free_space; nothing was stored")
        outcomes = await self._inject(setup, request, token, drafts)
        return self._reply(outcomes)

    # --- the session's stages, once per request (connect, helo, auth) and per message --------

    async def _inject(self, setup: Setup, request: web.Request, token: Token, drafts: list) -> list[Outcome]:
        outcomes = [Outcome(d.index, d.where or "message", [r.address for r in d.rcpts]) for d in drafts]
        transport = request.transport
        peer = (transport.get_extra_info("peername") if transport is not None else None) or ("", 0)
        sock = (transport.get_extra_info("sockname") if transport is not None else None) or ("", 0)
        tls = TlsInfo.of(transport) if transport is not None else None
        listener = Listener(sock[0], sock[1], "submission", "implicit" if tls else "none")
        conn = plugin.Connection(peer[0], peer[1], listener, self.trust.trusted(peer[0]))
        conn.tls = tls
        hooks = setup.hooks
        # HTTP has no HELO: the token's name stands where the client's EHLO name would.
        stage, v = "connect", await _verdict(hooks, hooks.on_connect, (conn,))
        if v is None:
            stage, v = "helo", await _verdict(hooks, hooks.on_helo, (conn, token.name))
            conn.helo = token.name
        if v is None:
            conn.auth_user = token.name
            stage, v = "auth", await _verdict(hooks, hooks.on_auth, (conn, token.name))
        if v is not None:
            return [o.refuse(stage, v.code, v.enhanced, v.text) for o in outcomes]
        waits = []
        for d, out in zip(drafts, outcomes):
            if self.stopping():
                out.refuse("store", 421, "4.3.2", "the server is stopping")
                continue
            fut = await self._message(setup, conn, token, d, out, tls)
            if fut is not None:
                waits.append(fut)
        if waits:
            await asyncio.gather(*waits)
        return outcomes

    async def _message(self, setup: Setup, conn, token: Token, d, out: Outcome, tls) -> asyncio.Future | None:
        """Run the hooks for one message and hand it to the store; the future completes once
        it is durable (or failed). None: refused, `out` says why."""
        tx = Transaction(conn, d.mail)
        hooks, settings, store = setup.hooks, setup.settings, self.store
        v = await _verdict(hooks, setup.on_mail, (tx, d.sender))
        if v is not None:
            out.refuse("mail", v.code, v.enhanced, v.text)
            return None
        for r in d.rcpts:
            address = r.address
            tx.expansion = [address]
            v = await _verdict(hooks, hooks.on_rcpt, (tx, address))
            if v is not None:
                out.failed_recipients.append({"recipient": address, "code": v.code, "enhanced": v.enhanced,
                                              "text": v.text})
                continue
            tx.recipients.append(address)
            tx.rcpts.append(r)
            final = tx.expansion
            if len(final) == 1 and final[0] == address:
                tx.final.append((address, r.notify, r.orcpt))
            else:
                tx.final.extend((a, r.notify, r.orcpt or f"rfc822;{address}") for a in final)
        if out.failed_recipients:
            # All or nothing per message: a retry of it cannot duplicate mail to the others.
            first = out.failed_recipients[0]
            n = len(out.failed_recipients)
            out.refuse("rcpt", first["code"], first["enhanced"],
                       f"{n} recipient(s) refused, first <{first['recipient']}>: {first['text']}")
            return None
        tx.queue_id = store.new_queue_id()
        msg = tx.message = store.new_message()
        msg.push(d.data)
        msg.finish_headers()
        if msg.header_too_big:
            out.refuse("data", *HEADER_TOO_BIG)
            return None
        if msg.received_count > settings.max_hops:
            out.refuse("data", *HOPS)
            return None
        if not d.composed:  # content mode: what an authenticated submission lacks (RFC 6409 8)
            fixup = add_missing_headers(msg.header_block(), hostname=settings.hostname)
            if fixup:
                msg.replace_header_block(fixup + msg.header_block())
        if hooks.on_data:
            v = await _verdict(hooks, hooks.on_data, (tx, HeaderBlock(msg)))
            if v is not None:
                msg.discard()
                out.refuse("data", v.code, v.enhanced, v.text)
                return None
        if hooks.on_message:
            view = InflightMessage(tx)
            v = await _verdict(hooks, hooks.on_message, (tx, view))
            if v is not None:
                msg.discard()
                out.refuse("message", v.code, v.enhanced, v.text)
                return None
            if view.edited:
                try:
                    msg.replace_header_block(view.headers.block())
                except Exception as e:  # noqa: BLE001 - as a failed hook: nothing stored
                    log.error("header edits of the on_message hooks cannot be applied to %s: %s", tx.queue_id, e)
                    out.refuse("message", FAILED.code, FAILED.enhanced, FAILED.text)
                    return None
            for trace in view.trace:  # above the edited block: Authentication-Results, DKIM-Signature
                store.prepend(msg, trace)
        try:
            notes = _notes(tx.notes)
        except (TypeError, ValueError) as e:  # the plugins' fault, as in the session
            log.error("transaction notes of %s cannot be stored: %s", tx.queue_id, e)
            out.refuse("message", FAILED.code, FAILED.enhanced, FAILED.text)
            return None
        store.prepend(msg, _native.received_header(
            helo=token.name, reverse_name=None, ip=conn.peer_ip, hostname=settings.hostname,
            protocol="HTTPSA" if tls is not None else "HTTPA", queue_id=tx.queue_id,
            recipient=tx.recipients[0] if len(tx.recipients) == 1 else None, timestamp=time.time(),
            tls=str(tls) if tls is not None else None))
        size = msg.size
        fut = asyncio.get_running_loop().create_future()
        on_durable = self.on_durable

        def stored(err: str | None) -> None:
            if err is None:
                out.queue_id, out.recipients, out.held = tx.queue_id, len(tx.final), tx.hold
                fastlog.info(f"queued {tx.queue_id} from=<{d.sender}> nrcpt={len(tx.rcpts)} size={size}"
                             f" client=http:{token.name}[{conn.peer_ip}]")
                if not tx.hold:  # a held message waits for `mta queue release`
                    on_durable(tx.queue_id, tx.final, tx.notes)
            else:
                log.error("spool write failed for %s: %s", tx.queue_id, err)
                out.refuse("store", *STORE_FAILED)
            if not fut.done():
                fut.set_result(None)

        m = d.mail
        store.submit(tx.queue_id, msg, stored, sender=m.address, recipients=tx.final, body=m.body,
                     smtputf8=m.smtputf8, ret=m.ret, envid=m.envid, helo=token.name, client_ip=conn.peer_ip,
                     arrival=tx.started, notes=notes, held=tx.hold)
        return fut

    @staticmethod
    def _reply(outcomes: list[Outcome]) -> web.Response:
        """200 when at least one message was stored (the body says which were not); none
        stored: 503 when a failure is temporary (4xx: retry later), else 422."""
        queued = [o for o in outcomes if o.queue_id is not None]
        refused = [o for o in outcomes if o.queue_id is None]
        if queued:
            status = 200
        else:
            status = 503 if any(o.code < 500 for o in refused) else 422
        body = {
            "success_count": len(queued),
            "fail_count": len(refused),
            "queue_ids": [o.queue_id for o in outcomes],
            "messages": [o.json() for o in outcomes],
            # As KumoMTA's: every recipient not queued, and one line per refused message.
            "failed_recipients": [a for o in refused for a in o.addresses],
            "errors": [f"{o.where}: {o.code} {o.enhanced} {o.text}" for o in refused],
        }
        return web.json_response(body, status=status)


async def _verdict(hooks: Hooks, calls: tuple, args: tuple):
    """The stage's verdict (None: go on), waiting for a hook that had to."""
    if not calls:
        return None
    v = hooks.run(calls, args)
    if isinstance(v, asyncio.Future):
        try:
            v = await v
        except Exception:  # noqa: BLE001 - as the session: a failed hook is a 451
            v = FAILED
    return v


def _notes(notes: dict) -> str | None:
    """The transaction's notes as stored (JSON), None for none; raises ValueError."""
    if not notes:
        return None
    text = json.dumps(notes, separators=(",", ":"), allow_nan=False)
    if len(text.encode()) > NOTES_MAX:
        raise ValueError(f"transaction notes exceed {NOTES_MAX} bytes")
    return text
