"""A scripted SMTP server session without sockets: the real Session, parser and spool
store (in a temporary directory), driven through an in-memory transport. Build one with
`scripted(tmp_path, loop, **config_overrides)`; swap any collaborator by keyword."""

from __future__ import annotations

import asyncio
import os
import time

from mta.smtp.sasl import MECHANISMS
from mta.config import schema as config
from mta.delivery.router import Router
from mta.policy import builtins
from mta.policy.relay import Networks, RelayPolicy
from mta.queue.store import SpoolService
from mta.smtp.limits import Limits
from mta.smtp.seams import SessionSettings
from mta.smtp.session import Session
from mta.testing import FakeTls, MemoryTransport  # noqa: F401 (FakeTls: for the tests)

CLIENT_IP = "192.0.2.10"  # outside the default mynetworks: relay rules apply
TRUSTED_IP = "127.0.0.1"


# The kit's transport and TLS stand-in are mta.testing's (what plugin authors use too).
FakeTransport = MemoryTransport


class Scripted:
    """One session: `send` bytes as the client would, read the `replies` written since
    the last read. `durable` lists the (queue id, final recipients) given to on_durable."""

    def __init__(self, cfg, loop, store: SpoolService, peer_ip: str, listener=None, **collaborators) -> None:
        self.cfg = cfg
        self.loop = loop
        self.store = store
        self.durable: list[tuple[str, list]] = []
        self.sessions: set = set()
        self.limits = collaborators.pop("limits", None) or Limits(cfg.limits)
        # The hook chain is made from these (each may be swapped): the relay policy, the
        # recipient check, the sender-login map (with users), and plugin entries.
        policy = collaborators.pop("policy", None) or RelayPolicy(Networks(cfg.mynetworks), cfg.local_domains,
                                                                 cfg.relay_domains)
        expand = collaborators.pop("expand", None) or Router(cfg).expand
        senders = collaborators.pop("sender_login", None)
        plugins = collaborators.pop("plugins", ())
        parts = dict(
            loop=loop,
            store=store,
            on_durable=lambda qid, final, notes: self.durable.append((qid, final)),
            policy=policy,
            hooks=builtins.chain(policy, expand, senders, plugins),
            limits=self.limits,
            sessions=self.sessions,
        )
        parts.update(collaborators)
        self.settings = SessionSettings.from_config(cfg, MECHANISMS)
        self.parts = parts
        self.listener = listener
        self.transport, self.session = self.connect(peer_ip, listener)
        self._read = 0

    def connect(self, peer_ip: str, listener=None) -> tuple[FakeTransport, Session]:
        """A further session sharing this one's collaborators (for limits across sessions).
        On an implicit-TLS listener the transport is TLS already (as after the handshake)."""
        session = Session(listener, self.settings, **self.parts)
        implicit = listener is not None and listener.tls == "implicit"
        transport = FakeTransport((peer_ip, 40000), FakeTls() if implicit else None)
        transport.session = session
        session.connection_made(transport)
        return transport, session

    def send(self, data: bytes) -> None:
        self.session.data_received(data)

    def replies(self) -> list[str]:
        """The reply lines written since the last call, without CR LF."""
        new = bytes(self.transport.written[self._read:])
        self._read = len(self.transport.written)
        return [line.decode() for line in new.split(b"\r\n")[:-1]]

    async def next_replies(self, timeout: float = 10.0) -> list[str]:
        """The next reply lines, once some were written (AUTH answers from an executor)."""
        deadline = time.monotonic() + timeout
        while len(self.transport.written) == self._read or not self.transport.written.endswith(b"\r\n"):
            if time.monotonic() > deadline:
                raise TimeoutError("no reply")
            await asyncio.sleep(0.005)
        return self.replies()

    async def until_durable(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait for the store's completions (the writer thread's fdatasync)."""
        deadline = time.monotonic() + timeout
        while len(self.durable) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.durable)} of {count} messages durable")
            await asyncio.sleep(0.005)

    def close(self) -> None:
        if not self.transport.closed:
            self.transport.close()


def load_config(tmp_path, **overrides):
    """A config as `mta run` would load it; keys as dotted strings ("limits.max_commands")."""
    values = {"listen": ["127.0.0.1:2525"], "spool.dir": os.path.join(str(tmp_path), "spool"),
              "hostname": "mx.example.test", "smtp.reverse_dns": False, "smtp.greeting_delay": 0,
              "local_domains": ["example.test"]}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return config.load(None, values)


def open_store(cfg, loop) -> SpoolService:
    store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, cfg.hostname)
    store.attach(loop)
    return store


def scripted(tmp_path, loop, peer_ip: str = CLIENT_IP, collaborators: dict | None = None, listener=None,
             **config) -> Scripted:
    """A greeted session (greeting_delay 0) from `peer_ip` on a fresh store; config keys
    with "__" for "." (limits__max_commands=3). Close the store with `s.store.close()`."""
    cfg = load_config(tmp_path, **config)
    if callable(collaborators):  # made from the config
        collaborators = collaborators(cfg)
    return Scripted(cfg, loop, open_store(cfg, loop), peer_ip, listener, **(collaborators or {}))
