"""The relay policy (mynetworks, local and relay domains, self-routing addresses), the
connection and session limits at their limit and one past it, and the fixed replies'
bytes on the wire."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress

import pytest

from mta.config.schema import LimitsConfig
from mta.policy.relay import Networks, RelayPolicy, domain_of
from mta.smtp import limits as limits_mod
from mta.smtp import replies
from mta.smtp.limits import Limits, SessionGuard

NETS = Networks([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.1.0.0/16"),
                 ipaddress.ip_network("2001:db8::/32")])
POLICY = RelayPolicy(NETS, ["Example.TEST"], ["relay.test"])


# --- relay policy ---------------------------------------------------------------------

@pytest.mark.parametrize("ip,trusted", [
    ("127.0.0.1", True), ("10.1.255.255", True), ("10.2.0.1", False), ("2001:db8::5", True),
    ("::ffff:10.1.0.9", True),  # IPv4-mapped: judged as the IPv4 address
    ("2001:db9::1", False), ("fe80::1%eth0", False), ("not an ip", False), ("", False),
])
def test_mynetworks(ip, trusted):
    assert POLICY.trusted(ip) is trusted
    assert POLICY.trusted(ip) is trusted  # the cached answer is the same


@pytest.mark.parametrize("rcpt,ok", [
    ("user@example.test", True), ("User@EXAMPLE.test", True),  # domains ignore case
    ("user@relay.test", True), ("user@sub.example.test", False), ("user@elsewhere.test", False),
    ("postmaster", True), ("PostMaster", True), ("user", False), ("@example.test", False),
    ("a%b@example.test", False), ("a!b@example.test", False), ("a@b@example.test", False),  # self-routing
])
def test_recipients_from_a_stranger(rcpt, ok):
    verdict = POLICY.check_rcpt(rcpt, trusted=False)
    assert (verdict is None) is ok
    if not ok:
        assert (verdict.code, verdict.enhanced, verdict.text) == (554, "5.7.1", "Relay access denied")
        assert verdict.reply == b"554 5.7.1 Relay access denied\r\n"


def test_trusted_clients_relay_anywhere():
    for rcpt in ("user@elsewhere.test", "a%b@example.test", "user"):
        assert POLICY.check_rcpt(rcpt, trusted=True) is None


def test_domain_of():
    assert domain_of("a@B.Example") == "b.example" and domain_of("postmaster") == ""


# --- connection limits (Limits) -------------------------------------------------------

def limits(**kw) -> Limits:
    return Limits(dataclasses.replace(LimitsConfig(), **kw))


def test_connections_in_all():
    lim = limits(max_connections=2)
    assert lim.admit("192.0.2.1", True) is None and lim.admit("192.0.2.2", True) is None  # at the limit
    assert lim.admit("192.0.2.3", True) == b"421 4.7.0 Error: too many connections, try again later\r\n"
    assert lim.total == 2  # a refusal is not counted
    assert lim.admit("127.0.0.1", False) is None and lim.total == 3  # spared, but counted
    lim.release("192.0.2.1")
    lim.release("127.0.0.1")
    assert lim.admit("192.0.2.3", True) is None


def test_connections_per_ip():
    lim = limits(max_connections_per_ip=2)
    assert lim.admit("192.0.2.1", True) is None and lim.admit("192.0.2.1", True) is None
    assert lim.admit("192.0.2.1", True) == b"421 4.7.0 Error: too many connections from 192.0.2.1\r\n"
    assert lim.admit("192.0.2.2", True) is None
    lim.release("192.0.2.1")
    lim.release("192.0.2.1")
    assert "192.0.2.1" not in lim.per_ip  # no empty entries left behind


def test_connection_rate_per_ip(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(limits_mod.time, "monotonic", lambda: now[0])
    lim = limits(connection_rate_per_ip=2)
    assert lim.admit("192.0.2.1", True) is None and lim.admit("192.0.2.1", True) is None
    assert lim.admit("192.0.2.1", True) == b"421 4.7.0 Error: too many connections from 192.0.2.1, slow down\r\n"
    now[0] += limits_mod.RATE_WINDOW - 1
    assert lim.admit("192.0.2.1", True) is not None  # refused attempts count too
    now[0] += limits_mod.RATE_WINDOW
    assert lim.admit("192.0.2.1", True) is None


def test_limits_spare_mynetworks_unless_told():
    assert limits().applies(trusted=False) and not limits().applies(trusted=True)
    assert limits(apply_to_mynetworks=True).applies(trusted=True)


# --- per-session limits (SessionGuard) ---------------------------------------------------

def guard(on: bool = True, **kw) -> SessionGuard:
    g = SessionGuard(dataclasses.replace(LimitsConfig(), **kw))
    g.enable(on)
    return g


def test_commands():
    g = guard(max_commands=5)
    assert g.commands_free == 5 and g.command(5) is None
    assert g.command(6) == b"421 4.7.0 Error: too many commands\r\n"
    assert guard(on=False, max_commands=5).command(6) is None
    assert guard(max_commands=0).command(10**6) is None  # 0: no limit


def test_messages_and_recipients():
    g = guard(max_messages_per_connection=2, max_recipients_per_connection=3)
    assert g.mail(1) is None  # one sent, the second may start
    assert g.mail(2) == b"421 4.7.0 Error: too many messages in this session\r\n"
    g.rcpts = 2
    assert g.rcpt() is None
    g.rcpts = 3
    assert g.rcpt() == b"452 4.5.3 Error: too many recipients in this session\r\n"
    off = guard(on=False, max_messages_per_connection=2, max_recipients_per_connection=3)
    off.rcpts = 10
    assert off.mail(10) is None and off.rcpt() is None


def test_error_tarpit():
    g = guard(soft_error_limit=3, error_tarpit=2.0)
    assert g.error_delay(3) == 0.0 and g.error_delay(4) == 2.0
    assert guard(soft_error_limit=3, error_tarpit=0).error_delay(4) == 0.0
    assert guard(on=False, soft_error_limit=3, error_tarpit=2.0).error_delay(4) == 0.0


def test_minimum_data_rate():
    async def main():
        slow, fast = [], []
        g = guard(min_data_rate=100, data_rate_window=0.05)
        g.data_started(slow.append)
        g.data_bytes(4)  # 80 bytes/s: below the minimum
        h = guard(min_data_rate=100, data_rate_window=0.05)
        h.data_started(fast.append)
        h.data_bytes(5)  # exactly 100 bytes/s: enough
        await asyncio.sleep(0.08)
        h.data_stopped()
        return slow, fast, g.timer

    slow, fast, timer = asyncio.run(main())
    assert slow == [b"421 4.4.2 Error: too slow, data rate below the minimum\r\n"]
    assert fast == [] and timer is None


# --- replies: the same bytes as before they moved here ------------------------------------

def test_fixed_replies():
    assert replies.greeting("mx.example.test") == b"220 mx.example.test ESMTP\r\n"
    assert replies.greeting("mx.example.test", "hi") == b"220 mx.example.test ESMTP hi\r\n"
    assert replies.helo("mx.example.test") == b"250 mx.example.test\r\n"
    assert replies.ehlo("h", 1000, starttls=True) == (
        b"250-h\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
        b"250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n250 STARTTLS\r\n")
    assert replies.ehlo("h", 1000, auth_mechs=("PLAIN", "LOGIN")).endswith(b"250-DSN\r\n250 AUTH PLAIN LOGIN\r\n")
    assert replies.line(354, None, "go") == b"354 go\r\n"
    assert replies.queued("ABC") == b"250 2.0.0 Ok: queued as ABC\r\n"
    assert replies.bdat_chunk(10) == b"250 2.0.0 Ok: 10 octets received\r\n"
    assert replies.R_AUTH_REQUIRED == b"530 5.7.0 Authentication required\r\n"
    assert replies.R_NOT_IMPL == b"502 5.5.1 Error: command not implemented\r\n"


def test_every_reply_is_one_crlf_terminated_line():
    fixed = [v for k, v in vars(replies).items() if k.startswith("R_")]
    assert len(fixed) > 40
    for reply in fixed:
        assert reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1 and reply[:3].isdigit(), reply
    assert len(set(fixed)) == len(fixed)  # each defined once


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
