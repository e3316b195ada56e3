"""Open relay proof: a client outside mynetworks (bound to 127.0.0.2, while
the server trusts only 127.0.0.1/32) tries every classic trick to make the
server relay to evil.test. Every one is refused and nothing is queued; plain
mail to the local domain is accepted."""

from __future__ import annotations

import socket

import pytest

from helpers import Client, check, queue_by_id, queued_id, simple_message

TRICKS = [
    "u@evil.test",
    "u@EVIL.TEST",
    "u@Evil.Test",
    # percent hack
    "a%evil.test@local.test",
    "a%evil.test@LOCAL.TEST",
    "a%evil.test%local.test@local.test",
    "a%evil.test",
    # source routes
    "@local.test:u@evil.test",
    "@local.test,@other.test:u@evil.test",
    "@LOCAL.TEST:u@evil.test",
    # bang paths
    "evil.test!u@local.test",
    "evil.test!u",
    "local.test!evil.test!u@local.test",
    # quoted local parts holding routing characters
    '"u@evil.test"@local.test',
    '"u%evil.test"@local.test',
    '"evil.test!u"@local.test',
    '"@evil.test:u"@local.test',
    '"u@evil.test"',
    # trailing dots, and look-alikes of the local domain
    "u@evil.test.",
    "u@local.test.",
    "u@local.test..",
    "u@sub.local.test",
    "u@local.test.evil.test",
    "u@evil.test@local.test",
    "u@local.test@evil.test",
    # IP literals, ours and others
    "u@[127.0.0.1]",
    "u@[127.0.0.2]",
    "u@[192.0.2.1]",
    "u@[IPv6:::1]",
    "u@[IPv6:2001:db8::1]",
    "u%evil.test@[127.0.0.1]",
    # postmaster forms
    "postmaster@evil.test",
    "Postmaster@EVIL.TEST",
    "postmaster%evil.test@local.test",
    '"postmaster@evil.test"@local.test',
    "@local.test:postmaster@evil.test",
    "evil.test!postmaster",
]

REFUSALS = {(554, "5.7.1"), (550, "5.7.1"), (550, "5.1.1"), (501, "5.1.3"), (553, "5.1.3")}


class OutsideClient(Client):
    def connect(self):
        self.sock = socket.create_connection(self.addr, timeout=self.timeout, source_address=("127.0.0.2", 0))
        return self


@pytest.fixture
def relay_server(server_factory):
    cfg = ('local_domains = ["local.test"]\n[smtp]\ngreeting_delay = 0\nreverse_dns = false\n'
           "max_errors = 1000\n[limits]\nerror_tarpit = 0\n")
    srv = server_factory(config=cfg, args=("--mynetworks", "127.0.0.1/32"))
    with OutsideClient(srv.addr) as c:  # the source address really is outside
        c.start()
        c.expect("MAIL FROM:<s@example.test>", 250)
        check(c.cmd("RCPT TO:<u@evil.test>"), 554, "5.7.1")
    return srv


def test_every_relay_trick_is_refused(relay_server):
    accepted = []
    with OutsideClient(relay_server.addr) as c:
        c.start()
        c.expect("MAIL FROM:<s@example.test>", 250, "2.1.0")
        for trick in TRICKS:
            r = c.cmd(f"RCPT TO:<{trick}>")
            if (r.code, r.enhanced) not in REFUSALS:
                accepted.append((trick, str(r)))
        # Nothing got in, so DATA has no recipient.
        check(c.cmd("DATA"), 503, "5.5.1")
        c.expect("RSET", 250)
        c.quit()
    assert accepted == [], accepted
    assert relay_server.queue() == []


@pytest.mark.parametrize("trick", TRICKS)
def test_trick_alone_queues_nothing(relay_server, trick):
    with OutsideClient(relay_server.addr) as c:
        c.start()
        c.expect("MAIL FROM:<s@example.test>", 250, "2.1.0")
        r = c.cmd(f"RCPT TO:<{trick}>")
        assert (r.code, r.enhanced) in REFUSALS, (trick, str(r))
        c.quit()


def test_local_mail_is_accepted(relay_server):
    with OutsideClient(relay_server.addr) as c:
        c.start()
        qid = c.send_message("s@example.test", ["u@local.test", "v@LOCAL.test"], simple_message())
        c.quit()
    q = queue_by_id(relay_server)
    assert list(q) == [qid]
    assert {r["address"].lower() for r in q[qid]["recipients"]} == {"u@local.test", "v@local.test"}


def test_bare_postmaster_stays_local(relay_server):
    with OutsideClient(relay_server.addr) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["postmaster"])
        qid = queued_id(c.data(simple_message()))
        c.quit()
    (addr,) = [r["address"] for r in queue_by_id(relay_server)[qid]["recipients"]]
    assert addr.lower() in ("postmaster", "postmaster@local.test"), addr
