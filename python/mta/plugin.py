"""The public plugin API: verdicts, `Route`, the context objects hooks receive, the hook names,
and `run_blocking`. Nothing here runs a hook (mta.policy.chain does); every public name here
is a contract that plugins outside the project rely on."""

from __future__ import annotations

import asyncio
import functools
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Callable, NamedTuple

__all__ = [
    "Accept", "Connection", "Continue", "Defer", "DeliveryEvent", "Disconnect", "HOOKS", "Message",
    "OptionsError", "Reject", "Reply", "Route", "Transaction", "Verdict", "run_blocking",
]

# Hook name -> how many arguments it is called with. Inbound hooks run in this order in a
# session; `route` at delivery; the outbound ones after each attempt; the rest at start/stop.
HOOKS: dict[str, int] = {
    "on_connect": 1, "on_helo": 2, "on_auth": 2, "on_mail": 2, "on_rcpt": 2, "on_data": 2, "on_message": 2,
    "route": 2, "egress": 1, "shaping": 3,
    "on_delivered": 1, "on_deferred": 1, "on_bounced": 1,
}
LIFECYCLE = ("setup", "start", "stop")
INBOUND = ("on_connect", "on_helo", "on_auth", "on_mail", "on_rcpt", "on_data", "on_message")
OUTBOUND = ("on_delivered", "on_deferred", "on_bounced")


class OptionsError(ValueError):
    """Raised by a plugin's `setup(options)` or `Plugin(options)` for options it cannot use:
    reported as a configuration error naming the plugin."""


# --- verdicts ---------------------------------------------------------------------------

_ENHANCED = re.compile(r"[245]\.\d{1,3}\.\d{1,3}\Z")


class Verdict:
    """What an inbound hook answers. `None` means `Continue()`."""

    __slots__ = ("code", "enhanced", "text")
    low, high = 0, 0  # the reply codes this kind of verdict may carry

    def __init__(self, code: int, enhanced: str, text: str):
        if type(code) is not int or not self.low <= code <= self.high:
            raise ValueError(f"{type(self).__name__} needs a reply code in {self.low}..{self.high}, not {code!r}")
        if not isinstance(enhanced, str) or not _ENHANCED.match(enhanced) or enhanced[0] != str(code)[0]:
            raise ValueError(f"{type(self).__name__}({code}): the enhanced status code must be "
                             f"'{str(code)[0]}.x.y' (RFC 3463), not {enhanced!r}")
        if not isinstance(text, str) or not text or not text.isprintable() or not text.isascii():
            raise ValueError(f"{type(self).__name__}({code}): the text must be printable ASCII on one line, "
                             f"not {text!r}")
        self.code, self.enhanced, self.text = code, enhanced, text

    @property
    def reply(self) -> bytes:
        """The reply line the client gets: exactly `code enhanced text`."""
        return f"{self.code} {self.enhanced} {self.text}\r\n".encode()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.enhanced!r}, {self.text!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and (self.code, self.enhanced, self.text) == (
            other.code, other.enhanced, other.text)

    def __hash__(self) -> int:
        return hash((type(self), self.code, self.enhanced, self.text))


class Continue(Verdict):
    """Go on with the next hook of this stage (what returning None means)."""

    __slots__ = ()

    def __init__(self) -> None:
        self.code, self.enhanced, self.text = 0, "", ""

    def __repr__(self) -> str:
        return "Continue()"


class Accept(Verdict):
    """Accept at this stage: the later plugins of this stage are not asked."""

    __slots__ = ()

    def __init__(self) -> None:
        self.code, self.enhanced, self.text = 0, "", ""

    def __repr__(self) -> str:
        return "Accept()"


class Reject(Verdict):
    """Refuse for good: a 5xx reply (e.g. `Reject(550, "5.7.1", "blocked by policy")`)."""

    __slots__ = ()
    low, high = 500, 599

    def __init__(self, code: int = 550, enhanced: str = "5.7.1", text: str = "Rejected by policy"):
        super().__init__(code, enhanced, text)


class Defer(Verdict):
    """Refuse for now: a 4xx reply; the client tries again later."""

    __slots__ = ()
    low, high = 400, 499

    def __init__(self, code: int = 451, enhanced: str = "4.7.1", text: str = "Try again later"):
        super().__init__(code, enhanced, text)


class Disconnect(Verdict):
    """Reply (4xx or 5xx), then close the connection."""

    __slots__ = ()
    low, high = 400, 599

    def __init__(self, code: int = 421, enhanced: str = "4.7.0", text: str = "Closing connection"):
        super().__init__(code, enhanced, text)


# --- routes -------------------------------------------------------------------------------

ROUTE_OPTIONS = ("tls", "connections", "per_connection", "auth")
TRANSPORT_KINDS = ("smarthost", "lmtp", "maildir", "discard", "mx")


class Route:
    """A transport as the transport map writes it (`"smarthost 10.0.0.5:25"`, `"lmtp
    unix:/run/dovecot/lmtp"`, `"maildir /var/mail/{user}"`, `"discard"`, `"mx"`) and its
    options: `tls` ("none" | "opportunistic" | "required"), `connections`, `per_connection`,
    `auth` ("user:password" or a (user, password) pair)."""

    __slots__ = ("transport", "options")

    def __init__(self, transport: str, **options: Any):
        if not isinstance(transport, str) or transport.split(None, 1)[:1] == [] \
                or transport.split(None, 1)[0].lower() not in TRANSPORT_KINDS:
            raise ValueError(f"Route needs a transport string starting with one of {', '.join(TRANSPORT_KINDS)}, "
                             f"not {transport!r}")
        unknown = sorted(set(options) - set(ROUTE_OPTIONS))
        if unknown:
            raise ValueError(f"Route: unknown option(s) {', '.join(unknown)}; expected {', '.join(ROUTE_OPTIONS)}")
        self.transport = transport.strip()
        self.options = options

    def text(self) -> str:
        """The one-string form, options included (how the spool stores a next route)."""
        words = [self.transport]
        for key in ROUTE_OPTIONS:
            value = self.options.get(key)
            if value is None:
                continue
            if key == "auth" and not isinstance(value, str):
                value = ":".join(value)
            words.append(f"{key}={value}")
        return " ".join(words)

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"Route({self.transport!r}{opts})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Route) and self.text() == other.text()

    def __hash__(self) -> int:
        return hash(self.text())


# --- what hooks are handed ------------------------------------------------------------------

class Connection:
    """One client connection (`conn`), made when it is admitted and kept for its life.

    peer_ip, peer_port: the client (the PROXY header's, behind a proxy); helo: the last
    EHLO/HELO name ("" before); tls: the TLS session (`.version`, `.cipher`) or None;
    auth_user: the login after a successful AUTH, else None; listener: the listener
    (`.address`, `.profile`) or None; trusted: the client is in mynetworks; notes: a dict
    kept for the connection's life."""

    __slots__ = ("peer_ip", "peer_port", "helo", "tls", "auth_user", "listener", "trusted", "notes")

    def __init__(self, peer_ip: str = "", peer_port: int = 0, listener: Any = None, trusted: bool = False):
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.helo = ""
        self.tls: Any = None
        self.auth_user: str | None = None
        self.listener = listener
        self.trusted = trusted
        self.notes: dict = {}

    def __repr__(self) -> str:
        return f"<Connection [{self.peer_ip}]:{self.peer_port} helo={self.helo!r} user={self.auth_user!r}>"


class Transaction:
    """One mail transaction (`tx`), from MAIL to the end of data or RSET.

    conn: its Connection; sender: the MAIL FROM address ("" for <>); recipients: the
    addresses accepted so far; params: the MAIL command's ESMTP parameters; notes: a dict of
    JSON values, stored with the message (durable with the 250) and handed to `route` and the
    outbound events as `msg.notes` / `event.notes`; expansion: the final addresses the RCPT
    being checked expands to (aliases, virtual), set by the built-in recipient check; hold:
    set True (at on_message) to queue the message held, sent only once released
    (`mta queue release`), as the DMARC quarantine does."""

    __slots__ = ("conn", "sender", "recipients", "notes", "expansion", "mail", "hold")

    def __init__(self, conn: Connection | None, mail: Any):
        self.conn = conn
        self.mail = mail  # the parsed MAIL command (address and parameters)
        self.sender: str = mail.address
        self.recipients: list[str] = []
        self.notes: dict = {}
        self.expansion: list[str] = []
        self.hold = False

    @property
    def params(self) -> dict[str, Any]:
        """ESMTP parameters of MAIL FROM, by keyword (only those given)."""
        m = self.mail
        out: dict[str, Any] = {}
        for key, value in (("SIZE", m.size), ("BODY", m.body), ("RET", m.ret), ("ENVID", m.envid)):
            if value is not None:
                out[key] = value
        if m.smtputf8:
            out["SMTPUTF8"] = True
        return out

    def __repr__(self) -> str:
        return f"<Transaction from=<{self.sender}> recipients={self.recipients!r}>"


class Message:
    """The message (`msg`), at `on_message` (before the 250) and at `route` (queued).

    queue_id (None before the 250), size (octets as stored: our Received header included;
    what body_chunks() yields), sender, recipients, notes (the transaction's notes);
    headers: a view over the header block (`get`, `get_all`, `get_raw`, `items`, and at
    `on_message` the edits `add`, `prepend`, `remove`, `replace`, stored with the message);
    body_chunks(): an async iterator over the stored bytes, a block at a time."""

    __slots__ = ("queue_id", "size", "sender", "recipients", "notes", "_headers", "_read_headers", "_chunks",
                 "_readonly")

    def __init__(self, queue_id: str | None, size: int, sender: str, recipients: list[str], notes: dict,
                 read_headers: Callable[[], bytes], chunks: Callable[[], AsyncIterator[bytes]], *,
                 readonly: bool = True):
        self.queue_id = queue_id
        self.size = size
        self.sender = sender
        self.recipients = recipients
        self.notes = notes
        self._headers = None
        self._read_headers = read_headers
        self._chunks = chunks
        self._readonly = readonly

    @property
    def headers(self):
        """The header view (`_native.Headers`), made on first use."""
        if self._headers is None:
            from mta import _native
            self._headers = _native.Headers(self._read_headers(), readonly=self._readonly)
        return self._headers

    @property
    def edited(self) -> bool:
        return self._headers is not None and self._headers.changed

    def body_chunks(self) -> AsyncIterator[bytes]:
        return self._chunks()

    def __repr__(self) -> str:
        return f"<Message {self.queue_id or '(not queued yet)'} size={self.size}>"


class Reply(NamedTuple):
    code: int
    enhanced: str | None
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced + ' ' if self.enhanced else ''}{self.text}"


class DeliveryEvent:
    """One recipient's outcome of one delivery attempt (`event`).

    queue_id, recipient, reply (a `Reply`: code, enhanced, text), attempt (1 for the first),
    remote_host, remote_ip (None when no server answered), next_attempt (Unix time of the
    retry, for deferrals; else None), notes (the transaction's notes)."""

    __slots__ = ("queue_id", "recipient", "reply", "attempt", "remote_host", "remote_ip", "next_attempt", "notes")

    def __init__(self, queue_id: str, recipient: str, reply: Reply, attempt: int, remote_host: str | None,
                 remote_ip: str | None, next_attempt: float | None, notes: dict):
        self.queue_id = queue_id
        self.recipient = recipient
        self.reply = reply
        self.attempt = attempt
        self.remote_host = remote_host
        self.remote_ip = remote_ip
        self.next_attempt = next_attempt
        self.notes = notes

    def __repr__(self) -> str:
        return f"<DeliveryEvent {self.queue_id} <{self.recipient}> {self.reply} attempt={self.attempt}>"


# --- blocking work -------------------------------------------------------------------------

_POOL_SIZE = 16
_pool: ThreadPoolExecutor | None = None


def run_blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> asyncio.Future:
    """Run a blocking call (a database query, a file read) in a bounded thread pool and
    await its result: `row = await run_blocking(db.execute, sql, args)`. Hooks run on the
    event loop, so anything slower than a few microseconds belongs here."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="mta-plugin")
    call = functools.partial(fn, *args, **kwargs) if kwargs else (functools.partial(fn, *args) if args else fn)
    return asyncio.get_running_loop().run_in_executor(_pool, call)
