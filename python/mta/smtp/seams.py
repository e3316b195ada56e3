"""What a server session is handed: its settings (a frozen value made once from the
config) and the small interfaces of the collaborators it calls. Nothing here holds
state; the wiring (mta.app.server) builds the real ones, tests build their own."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from mta.smtp import replies

if TYPE_CHECKING:
    from mta.config.schema import Config
    from mta.plugin import Verdict

# Told once a message is on disk (after its 250 went out): queue id, final recipients
# as (address, notify, orcpt), and the transaction's notes (as stored with it).
OnDurable = Callable[[str, list, dict], None]
Completion = Callable[[str | None], None]


class Trust(Protocol):
    """Which clients are ours (mynetworks: mta.policy.relay.RelayPolicy)."""

    def trusted(self, ip: str) -> bool: ...


class Hooks(Protocol):
    """The hook chain (mta.policy.chain.Chain): per stage a tuple of calls (empty: nothing to
    run), and `run` giving the stage's verdict, at once or as a task."""

    on_connect: tuple
    on_helo: tuple
    on_auth: tuple
    on_mail: tuple
    on_rcpt: tuple
    on_data: tuple
    on_message: tuple

    def run(self, calls: tuple, args: tuple) -> Verdict | None | asyncio.Future: ...


class AcceptStore(Protocol):
    """The accept side of the spool: the calls a session makes per message."""

    def has_room(self) -> bool: ...

    def new_queue_id(self) -> str: ...

    def new_message(self): ...

    def prepend(self, message, data: bytes) -> None: ...

    def submit(self, queue_id: str, message, done: Completion, *, sender: str, recipients: list,
               body: str | None = None, smtputf8: bool = False, ret: str | None = None,
               envid: str | None = None, helo: str = "", client_ip: str = "",
               arrival: float | None = None, notes: str | None = None) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """The config a session reads, and its fixed replies, built once per server."""

    hostname: str
    greeting: bytes
    helo_reply: bytes
    ehlo_reply: bytes
    ehlo_reply_starttls: bytes
    ehlo_reply_auth: bytes  # submission over TLS with a user file
    max_line_length: int
    max_message_size: int
    bare_lf: str
    max_recipients: int
    max_errors: int
    max_hops: int
    greeting_delay: float

    @classmethod
    def from_config(cls, cfg: Config, auth_mechs: tuple[str, ...]) -> SessionSettings:
        s = cfg.smtp
        return cls(
            hostname=cfg.hostname,
            greeting=replies.greeting(cfg.hostname, s.banner),
            helo_reply=replies.helo(cfg.hostname),
            ehlo_reply=replies.ehlo(cfg.hostname, s.max_message_size),
            ehlo_reply_starttls=replies.ehlo(cfg.hostname, s.max_message_size, starttls=True),
            ehlo_reply_auth=replies.ehlo(cfg.hostname, s.max_message_size, auth_mechs=auth_mechs),
            max_line_length=s.max_line_length,
            max_message_size=s.max_message_size,
            bare_lf=s.bare_lf,
            max_recipients=s.max_recipients,
            max_errors=s.max_errors,
            max_hops=s.max_hops,
            greeting_delay=s.greeting_delay,
        )
