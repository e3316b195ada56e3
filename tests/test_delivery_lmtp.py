"""The LMTP client (RFC 2033) against aiosmtpd's LMTP server, over TCP and a
unix socket: LHLO, one reply per accepted recipient after the data, a mix of
delivered / deferred / bounced in one transaction, and a server that dies
halfway through its per-recipient replies."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller, UnixSocketController
from aiosmtpd.lmtp import LMTP

from mta.delivery import OutMessage, OutRcpt, Target
from mta.delivery.lmtp import LmtpDelivery, unix_target
from mta.delivery.smtp.client import SmtpDelivery, SmtpOptions

DEADLINE = 60.0
OPTS = SmtpOptions(helo="client.test", tls="none", connect_timeout=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(coro):
    async def bounded():
        return await asyncio.wait_for(coro, DEADLINE)

    return asyncio.run(bounded())


def message(*rcpts: str, data: bytes = b"Subject: t\r\n\r\n.dot\r\nhello\r\n") -> OutMessage:
    return OutMessage("Q1", "from@src.test", tuple(OutRcpt(r, index=i) for i, r in enumerate(rcpts)), data)


class Mailboxes:
    """LMTP handler: RCPT refuses "nobody"; after the data, each accepted recipient gets
    its own reply: "full" is over quota (452), "gone" is rejected (550), others 250."""

    def __init__(self) -> None:
        self.delivered: list[tuple[str, bytes]] = []
        self.helo: list[str] = []
        self.peers: set = set()

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.helo.append(hostname)
        self.peers.add(session.peer)
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        replies = []
        for rcpt in envelope.rcpt_tos:
            local = rcpt.split("@")[0]
            if local == "full":
                replies.append(f"452 4.2.2 <{rcpt}> mailbox full")
            elif local == "gone":
                replies.append(f"550 5.2.1 <{rcpt}> mailbox disabled")
            else:
                self.delivered.append((rcpt, envelope.original_content))
                replies.append(f"250 2.0.0 <{rcpt}> delivered")
        return "\r\n".join(replies)


class LmtpController(Controller):
    def factory(self):
        return LMTP(self.handler, **self.SMTP_kwargs)


class LmtpUnixController(UnixSocketController):
    def factory(self):
        return LMTP(self.handler, **self.SMTP_kwargs)


@contextmanager
def tcp_peer(handler):
    port = free_port()
    c = LmtpController(handler, hostname="127.0.0.1", port=port)
    c.start()
    try:
        yield Target("lmtp.test", "127.0.0.1", port)
    finally:
        c.stop()


@contextmanager
def unix_peer(handler):
    with tempfile.TemporaryDirectory(prefix="mta-lmtp-") as d:
        path = str(Path(d) / "lmtp.sock")
        c = LmtpUnixController(handler, unix_socket=path)
        c.start()
        try:
            yield unix_target(path)
        finally:
            c.stop()


EXPECTED = [
    ("ok@dst.test", 250, "2.0.0", "delivered"),
    ("full@dst.test", 452, "4.2.2", "deferred"),
    ("nobody@dst.test", 550, "5.1.1", "bounced"),
    ("gone@dst.test", 550, "5.2.1", "bounced"),
    ("ok2@dst.test", 250, "2.0.0", "delivered"),
]


@pytest.mark.parametrize("peer", [tcp_peer, unix_peer], ids=["tcp", "unix"])
def test_lmtp_per_recipient_replies(peer):
    h = Mailboxes()
    msg = message(*(e[0] for e in EXPECTED))

    async def go(t):
        d = LmtpDelivery()
        res = await d.deliver("lmtp", [t], OPTS, msg)
        again = await d.deliver("lmtp", [t], OPTS, message("ok3@dst.test"))
        await d.close()
        return res, again, d.connections_opened

    with peer(h) as t:
        res, again, opened = run(go(t))
    assert [(r.address, r.code, r.enhanced, r.status) for r in res] == EXPECTED
    assert res[0].text == "<ok@dst.test> delivered"
    assert again[0].code == 250 and opened == 1  # the LMTP connection was reused
    assert h.helo == ["client.test"]  # LHLO (aiosmtpd's LMTP refuses EHLO)
    assert [a for a, _ in h.delivered] == ["ok@dst.test", "ok2@dst.test", "ok3@dst.test"]
    assert h.delivered[0][1] == msg.data
    if t.ip == "unix":
        assert res[0].remote_host == t.host and res[0].remote_ip == "unix"


def test_opts_lmtp_flag_on_smtp_delivery():
    h = Mailboxes()

    async def go(t):
        d = SmtpDelivery()
        lm = SmtpOptions(helo="client.test", tls="none", lmtp=True)
        res = await d.deliver("lmtp", [t], lm, message("ok@dst.test", "full@dst.test"))
        smtp = await d.deliver("smtp", [t], SmtpOptions(helo="client.test", tls="none"), message("ok@dst.test"))
        await d.close()
        return res, smtp

    with tcp_peer(h) as t:
        res, smtp = run(go(t))
    assert [r.code for r in res] == [250, 452]
    # the same LMTP server spoken to as SMTP: EHLO and HELO refused, so a deferral, never a bounce
    assert smtp[0].status == "deferred"


def test_lmtp_server_dying_after_some_replies():
    async def handle(r, w):
        w.write(b"220 lmtp ready\r\n")
        while line := await r.readline():
            verb = line[:4].upper()
            if verb == b"LHLO":
                w.write(b"250-lmtp\r\n250 PIPELINING\r\n")
            elif verb == b"DATA":
                w.write(b"354 go\r\n")
                while await r.readline() != b".\r\n":
                    pass
                w.write(b"250 2.0.0 first delivered\r\n")
                await w.drain()
                w.close()
                return
            else:
                w.write(b"250 ok\r\n")

    async def go():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        t = Target("lmtp.test", "127.0.0.1", srv.sockets[0].getsockname()[1])
        res = await LmtpDelivery().deliver("k", [t], OPTS, message("a@dst.test", "b@dst.test", "c@dst.test"))
        srv.close()
        return res

    res = run(go())
    assert [(r.code, r.enhanced) for r in res] == [(250, "2.0.0"), (451, "4.4.2"), (451, "4.4.2")]
