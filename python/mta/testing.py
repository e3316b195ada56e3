"""The offline test kit for plugin authors: `ScriptedSession` drives the server's own session,
Rust parser and hook chain over an in-memory transport and store (no socket, no spool), so a
plugin that passes here behaves the same in the server. See docs/plugins.md."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from typing import Any, Iterable, NamedTuple

from mta import _native
from mta.config import schema as config_schema
from mta.config.listeners import Listener
from mta.delivery import status_of
from mta.delivery.mx import MxResolver
from mta.delivery.router import Router
from mta.plugin import DeliveryEvent, Message, Reply
from mta.policy import builtins, loader
from mta.policy.chain import Chain
from mta.policy.relay import Networks, RelayPolicy
from mta.queue.store import header_part
from mta.smtp.limits import Limits
from mta.smtp.sasl import MECHANISMS
from mta.smtp.seams import SessionSettings
from mta.smtp.session import Session

__all__ = ["DataResult", "FakeTls", "MemoryTransport", "ScriptedSession", "SmtpReply"]


class SmtpReply(NamedTuple):
    """One reply: its code, enhanced status code (or None), the text of its last line, and
    every line (a multi-line EHLO reply has several)."""

    code: int
    enhanced: str | None
    text: str
    lines: tuple[str, ...]

    def __str__(self) -> str:
        return "\n".join(self.lines)


class DataResult(NamedTuple):
    """The end of data: the replies (354 first, for DATA), the final one, and what was stored
    (None when the message was refused): its bytes, a header view, queue id and notes."""

    reply: SmtpReply
    replies: tuple[SmtpReply, ...]
    queue_id: str | None
    message: bytes | None
    notes: dict

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def headers(self):
        """The stored message's header view (`_native.Headers`, read-only), or None."""
        if self.message is None:
            return None
        return _native.Headers(header_part(self.message), readonly=True)


class _Store:
    """The accept side of the spool, in memory (the AcceptStore seam)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_header_size: int) -> None:
        self.loop = loop
        self.max_header_size = max_header_size
        self.stored: dict[str, dict] = {}
        self._n = 0

    def has_room(self) -> bool:
        return True

    def new_queue_id(self) -> str:
        self._n += 1
        return f"T{self._n:07d}"

    def new_message(self):
        return _native.Message(max_header_size=self.max_header_size)

    def prepend(self, message, data: bytes) -> None:
        message.prepend(data)

    def submit(self, queue_id: str, message, done, *, sender: str, recipients: list, notes: str | None = None,
               **envelope: Any) -> None:
        data = message.bytes()
        self.stored[queue_id] = dict(envelope, sender=sender, recipients=[r[0] for r in recipients],
                                     data=data, notes=json.loads(notes) if notes else {})
        self.loop.call_soon(done, None)


class MemoryTransport(asyncio.Transport):
    """What a Session writes to, in memory: `written` collects the replies; close() reports
    the loss as the event loop would. `ssl_object` set: TLS from the first byte."""

    def __init__(self, peer: tuple[str, int], ssl_object=None) -> None:
        super().__init__()
        self.peer = peer
        self.ssl_object = ssl_object
        self.session: Session | None = None
        self.written = bytearray()
        self.writes = 0
        self.closed = False
        self.reading = True

    def write(self, data) -> None:
        self.written += data
        self.writes += 1

    def get_extra_info(self, name, default=None):
        if name == "peername":
            return self.peer
        return self.ssl_object if name == "ssl_object" and self.ssl_object is not None else default

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.session.connection_lost(None)

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class FakeTls:
    """What the session reads of a TLS connection (TlsInfo: version and cipher)."""

    def version(self) -> str:
        return "TLSv1.3"

    def cipher(self) -> tuple[str, str, int]:
        return ("TLS_AES_256_GCM_SHA384", "TLSv1.3", 256)


class ScriptedSession:
    """One SMTP session against the real session and hook chain, without sockets or a spool.

    plugins: modules, `Plugin` classes, objects with hook methods, or module names (as in
    `[[plugin]]`); options: one dict for all of them, or a list with one per plugin;
    peer_ip/peer_port: the client; listener: "mx" or "submission"; tls: the connection is TLS
    (as after STARTTLS or on port 465); users: {login: password} to make AUTH work (it is then
    offered on a submission listener with tls); config: dotted config keys to override
    (e.g. {"local_domains": ["example.com"], "mynetworks": ["10.0.0.0/8"]}); timeout: the
    plugins' per-hook timeout. Each command returns its reply once every hook has answered."""

    def __init__(self, plugins: Iterable[Any] = (), options: dict | list | None = None, *,
                 peer_ip: str = "203.0.113.7", peer_port: int = 40000, listener: str = "mx", tls: bool = False,
                 users: dict[str, str] | None = None, config: dict | None = None, timeout: float = 5.0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="mta-testing-")
        # Off unless asked for: the message checks would ask the system's DNS (with them on,
        # point "dns.nameservers" and "dns.port" at a test DNS server).
        values = {"hostname": "mx.test", "smtp.reverse_dns": False, "smtp.greeting_delay": 0,
                  "spool.dir": os.path.join(self._tmp.name, "spool"), "delivery.enabled": False,
                  "verify.enabled": False}
        if users:
            values["auth.users_file"] = _users(self._tmp.name, users)
        values.update(config or {})
        self.config = cfg = config_schema.load(None, values)
        self.loop = asyncio.new_event_loop()
        plugins = list(plugins)
        per = options if isinstance(options, list) else [options or {}] * len(plugins)
        entries = [loader.entry_for(_resolve(p), _name(p), o, timeout) for p, o in zip(plugins, per)]
        policy = RelayPolicy(Networks(cfg.mynetworks), cfg.local_domains, cfg.relay_domains)
        self.router = Router(cfg, Chain(entries))
        users_db = None
        senders = None
        if users:
            from mta.auth.senders import SenderLogin
            from mta.auth.users import UserDB
            users_db = UserDB(cfg.auth.users_file)
            senders = SenderLogin.from_config(cfg.auth)
        lookup = (MxResolver(list(cfg.dns.nameservers) or None, port=cfg.dns.port, timeout=cfg.dns.timeout)
                  if cfg.verify.enabled else None)
        self.hooks = builtins.chain(policy, self.router.expand, senders, entries,
                                    verify=builtins.verifier(cfg.verify, lookup, cfg.hostname),
                                    sign=builtins.signer(cfg.dkim))
        self.store = _Store(self.loop, cfg.smtp.max_header_size)
        self._run(self.hooks.start())
        lst = Listener("127.0.0.1", 2525, listener, "implicit" if tls else "none", False)
        from mta.auth.guard import AuthGuard
        self.session = Session(lst, SessionSettings.from_config(cfg, MECHANISMS), self.loop, self.store,
                               lambda qid, final, notes: None, policy, self.hooks, Limits(cfg.limits), set(),
                               None, None, _TlsStub() if tls else None, users_db,
                               AuthGuard(max_failures=100, window=60, tarpit_max=0))
        self.transport = MemoryTransport((peer_ip, peer_port), FakeTls() if tls else None)
        self.transport.session = self.session
        self._read = 0
        self._call(self.session.connection_made, self.transport)
        self.greeting = self._reply()
        self.last: DataResult | None = None

    # --- commands ---------------------------------------------------------------------------

    def ehlo(self, name: str = "client.test") -> SmtpReply:
        return self.command(f"EHLO {name}")

    def helo(self, name: str = "client.test") -> SmtpReply:
        return self.command(f"HELO {name}")

    def mail(self, sender: str, params: str = "") -> SmtpReply:
        return self.command(f"MAIL FROM:<{sender}>{' ' + params if params else ''}")

    def rcpt(self, address: str, params: str = "") -> SmtpReply:
        return self.command(f"RCPT TO:<{address}>{' ' + params if params else ''}")

    def rset(self) -> SmtpReply:
        return self.command("RSET")

    def quit(self) -> SmtpReply:
        return self.command("QUIT")

    def auth(self, user: str, password: str) -> SmtpReply:
        """AUTH PLAIN (needs users=..., listener="submission" and tls=True)."""
        import base64
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        return self.command(f"AUTH PLAIN {token}")

    def send(self, data: bytes) -> None:
        """Raw bytes as a client would write them (pipelined commands, a message in parts);
        read what comes back with reply()."""
        self._call(self.session.data_received, data)

    def reply(self, timeout: float = 60.0) -> SmtpReply:
        """The next reply the session writes (waiting for hooks at work)."""
        return self._reply(timeout)

    def command(self, line: str) -> SmtpReply:
        """Any command line (without CR LF); its reply."""
        self._call(self.session.data_received, line.encode() + b"\r\n")
        return self._reply()

    def data(self, message: bytes) -> DataResult:
        """DATA with `message` (CR LF line ends; dot-stuffing is done here): the 354 and the
        final reply, and what was stored."""
        go = self.command("DATA")
        if go.code != 354:
            self.last = DataResult(go, (go,), None, None, {})
            return self.last
        body = message if message.endswith(b"\r\n") or not message else message + b"\r\n"
        body = body.replace(b"\r\n.", b"\r\n..")
        if body.startswith(b"."):
            body = b"." + body
        self._call(self.session.data_received, body + b".\r\n")
        final = self._reply()
        return self._result(final, (go, final))

    def bdat(self, message: bytes) -> DataResult:
        """The message as one BDAT LAST chunk."""
        self._call(self.session.data_received, f"BDAT {len(message)} LAST\r\n".encode() + message)
        final = self._reply()
        return self._result(final, (final,))

    def _result(self, final: SmtpReply, replies: tuple) -> DataResult:
        qid = None
        if final.code == 250 and "queued as " in final.text:
            qid = final.text.rsplit("queued as ", 1)[1].strip()
        stored = self.store.stored.get(qid) if qid else None
        self.last = DataResult(final, replies, qid, stored["data"] if stored else None,
                               stored["notes"] if stored else {})
        return self.last

    # --- after the 250: routing and the outbound events -----------------------------------------

    def route(self, address: str, queue_id: str | None = None) -> str:
        """Where the server would send `address` of the last stored message (or `queue_id`):
        the route hooks' answer, else the tables'; the transport as text, options included."""
        qid, stored = self._stored(queue_id)
        msg = self._message(qid, stored)

        async def ask():
            return await self.router.route(address, msg)
        return self._run(ask()).full_text()

    def deliver(self, outcome: str = "delivered", reply: str | None = None, recipient: str | None = None, *,
                queue_id: str | None = None, attempt: int = 1, remote_host: str | None = "mx.remote.test",
                remote_ip: str | None = "192.0.2.25", next_attempt: float | None = None):
        """Fire the outbound event for one recipient (default: each of the last stored
        message's) as a delivery attempt ending in `outcome` with `reply` would. Returns the
        Route text an on_deferred hook chose (or None); events of other outcomes return None."""
        default = {"delivered": "250 2.0.0 Ok", "deferred": "451 4.4.1 try later", "bounced": "550 5.1.1 no such user"}
        if outcome not in default:
            raise ValueError(f"outcome must be delivered, deferred or bounced, not {outcome!r}")
        code, enhanced, text = _parse_reply(reply or default[outcome])
        if status_of(code) != outcome:
            raise ValueError(f"reply {reply!r} is not a {outcome} reply")
        qid, stored = self._stored(queue_id)
        if outcome == "deferred" and next_attempt is None:
            next_attempt = time.time() + 60
        chosen = None
        for address in [recipient] if recipient else stored["recipients"]:
            event = DeliveryEvent(qid, address, Reply(code, enhanced, text), attempt, remote_host, remote_ip,
                                  next_attempt if outcome == "deferred" else None, stored["notes"])
            if outcome == "deferred":
                spec = self._run(self.hooks.deferred(event))
                chosen = spec.full_text() if spec is not None else chosen
            else:
                self._call(self.hooks.notify, self.hooks.on_delivered if outcome == "delivered" else self.hooks.on_bounced, event)
                self._run(self._background())
        return chosen

    def close(self) -> None:
        """End the session and stop the plugins (stop())."""
        if not self.transport.closed:
            self.transport.close()
        self._run(self.hooks.stop())
        self.loop.close()
        self._tmp.cleanup()

    def __enter__(self) -> ScriptedSession:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # --- the loop ---------------------------------------------------------------------------------

    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    def _call(self, fn, *args) -> None:
        async def call():
            fn(*args)
        self._run(call())

    async def _background(self) -> None:
        tasks = [t for t in asyncio.all_tasks(self.loop) if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    def _reply(self, timeout: float = 60.0) -> SmtpReply:
        """The next complete reply, once the session has written it (hooks may be at work)."""
        async def wait() -> SmtpReply:
            deadline = time.monotonic() + timeout
            while True:
                reply = self._take()
                if reply is not None:
                    return reply
                if time.monotonic() > deadline:
                    raise TimeoutError("no reply from the session")
                await asyncio.sleep(0.001)
        return self._run(wait())

    def _take(self) -> SmtpReply | None:
        new = bytes(self.transport.written[self._read:])
        lines = []
        used = 0
        for raw in new.split(b"\r\n")[:-1]:
            used += len(raw) + 2
            text = raw.decode("utf-8", "replace")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                self._read += used
                code = int(text[:3])
                rest = text[4:]
                enhanced = None
                first, _, tail = rest.partition(" ")
                if first.count(".") == 2 and first[:1] in "245" and first.replace(".", "").isdigit():
                    enhanced, rest = first, tail
                return SmtpReply(code, enhanced, rest, tuple(lines))
        return None

    def _stored(self, queue_id: str | None) -> tuple[str, dict]:
        qid = queue_id or (self.last.queue_id if self.last is not None else None)
        if qid is None or qid not in self.store.stored:
            raise LookupError("no stored message: send one with data() first")
        return qid, self.store.stored[qid]

    def _message(self, qid: str, stored: dict) -> Message:
        data = stored["data"]

        async def chunks():
            yield data
        return Message(qid, len(data), stored["sender"], stored["recipients"], stored["notes"],
                       lambda: header_part(data), chunks)


class _TlsStub:
    """What a session asks of the TLS context on an implicit-TLS listener: nothing (the
    handshake is the transport's, and here there is none)."""

    current = None


def _users(tmp: str, users: dict[str, str]) -> str:
    from mta.auth.passwords import hash_password
    path = os.path.join(tmp, "users")
    with open(path, "w") as f:
        for name, password in users.items():
            f.write(f"{name}:{hash_password(password)}\n")
    os.chmod(path, 0o600)
    return path


def _parse_reply(text: str) -> tuple[int, str | None, str]:
    code, _, rest = text.strip().partition(" ")
    first, _, tail = rest.partition(" ")
    if first.count(".") == 2 and first.replace(".", "").isdigit():
        return int(code), first, tail
    return int(code), None, rest


def _resolve(plugin: Any) -> Any:
    if isinstance(plugin, str):
        import importlib
        return importlib.import_module(plugin)
    return plugin


def _name(plugin: Any) -> str:
    if isinstance(plugin, str):
        return plugin
    return getattr(plugin, "__name__", None) or type(plugin).__name__
