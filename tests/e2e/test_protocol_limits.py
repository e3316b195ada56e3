"""End-to-end tests of the receive path's limits and policy: pipelining and many messages per
session, command-line length, NUL and bare CR, the error limit, idle timeouts, the recipients
limit, early talkers and relay control, each checked by reply code and enhanced code.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from helpers import (
    Client, assert_queue_empty, body_of, check, check_entry, config, connect, dot_stuff, only_entry, queue_by_id,
    queued_id, simple_message,
)

pytestmark = pytest.mark.shared_server  # one server for the module (conftest.py, server)

OUTSIDE = ("--mynetworks", "10.0.0.0/8")
DOMAINS = dict(local_domains=["local.test"], relay_domains=["relay.test"])


# ---------------------------------------------------------------------------
# pipelining, many messages
# ---------------------------------------------------------------------------

def test_pipelined_envelope(server):
    msg = simple_message("pipelined")
    with connect(server) as c:
        c.start()
        c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r1@example.test>\r\n"
               b"RCPT TO:<r2@example.test>\r\nDATA\r\n")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 354)
        c.send(dot_stuff(msg) + b".\r\n")
        qid = queued_id(c.reply())
        c.quit()
    check_entry(queue_by_id(server)[qid], sender="s@example.test",
                rcpts=["r1@example.test", "r2@example.test"])
    assert body_of(server, qid, rcpt=None) == msg


def test_pipelined_with_errors_in_order(server):
    with connect(server) as c:
        c.start()
        c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r1@example.test> FOO=1\r\n"
               b"RCPT TO:<r2@example.test>\r\nNOOP\r\nXYZZY\r\nRSET\r\nDATA\r\n")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 555, "5.5.4")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 250, "2.0.0")
        check(c.reply(), 500, "5.5.2")
        check(c.reply(), 250, "2.0.0")
        check(c.reply(), 503, "5.5.1")
        c.quit()
    assert_queue_empty(server)


def test_fifty_messages_one_session(server):
    n = 50
    ids = []
    with connect(server) as c:
        c.start()
        for i in range(n):
            c.send(f"MAIL FROM:<s{i}@example.test>\r\nRCPT TO:<r{i}@example.test>\r\nDATA\r\n")
            check(c.reply(), 250, "2.1.0")
            check(c.reply(), 250, "2.1.5")
            check(c.reply(), 354)
            c.send(dot_stuff(simple_message(f"message {i}")) + b".\r\n")
            ids.append(queued_id(c.reply()))
        c.quit()
    assert len(set(ids)) == n, ids
    q = queue_by_id(server)
    assert set(q) == set(ids)
    for i, qid in enumerate(ids):
        check_entry(q[qid], sender=f"s{i}@example.test", rcpts=[f"r{i}@example.test"])
    for i in (0, 17, n - 1):
        assert body_of(server, ids[i], rcpt=f"r{i}@example.test") == simple_message(f"message {i}")


def test_many_messages_with_smtplib(server):
    msgs = {}
    with smtplib.SMTP(*server.addr, local_hostname="client.example.test", timeout=15) as s:
        for i in range(20):
            m = simple_message(f"smtplib {i}", f"n={i}\r\n".encode())
            assert s.sendmail(f"s{i}@example.test", [f"r{i}@example.test"], m) == {}
            msgs[f"s{i}@example.test"] = m
    q = server.queue()
    assert len(q) == 20
    assert {e["sender"] for e in q} == set(msgs)
    for e in q[:3]:
        assert body_of(server, e["id"]) == msgs[e["sender"]]


# ---------------------------------------------------------------------------
# command line limits, NUL, bare CR
# ---------------------------------------------------------------------------

def test_line_of_512_octets_served(server):
    line = b"NOOP " + b"x" * 505
    assert len(line) + 2 == 512
    with connect(server) as c:
        c.start()
        c.expect(line, 250, "2.0.0")
        c.quit()


@pytest.mark.parametrize("length", [513, 600, 100_000])
def test_overlong_line_one_reply_then_continues(server, length):
    line = b"NOOP " + b"x" * (length - 7)
    assert len(line) + 2 == length
    with connect(server) as c:
        c.start()
        c.send(line + b"\r\nNOOP\r\n")
        check(c.reply(), 500, "5.5.2")
        check(c.reply(), 250, "2.0.0")
        c.quit()


def test_overlong_mail_starts_no_transaction(server):
    with connect(server) as c:
        c.start()
        c.expect("MAIL FROM:<" + "a" * 600 + "@example.test>", 500, "5.5.2")
        c.expect("RCPT TO:<r@example.test>", 503, "5.5.1")
        c.quit()


@pytest.mark.parametrize("line", [
    b"NOOP a\x00b",
    b"\x00NOOP",
    b"MAIL FROM:<s\x00@example.test>",
    b"NOOP\rNOOP",
    b"MAIL FROM:<s@example.test>\rRCPT TO:<r@example.test>",
    b"EHLO x\r",
], ids=["nul-noop", "nul-first", "nul-mail", "cr-noop", "cr-mail-rcpt", "cr-at-end"])
def test_nul_or_bare_cr_in_command(server, line):
    with connect(server) as c:
        c.start()
        c.send(line + b"\r\n")
        check(c.reply(), 501, "5.5.2")
        # exactly one reply for that line, and no MAIL was accepted from it
        c.expect("RCPT TO:<r@example.test>", 503, "5.5.1")
        c.quit()
    assert_queue_empty(server)


# ---------------------------------------------------------------------------
# error limit, idle timeout, recipients limit, HTTP
# ---------------------------------------------------------------------------

def test_max_errors(server_factory):
    srv = server_factory(config=config({"max_errors": 3}))
    with connect(srv) as c:
        c.start()
        c.expect("XYZZY1", 500, "5.5.2")
        c.expect("XYZZY2", 500, "5.5.2")
        c.expect("NOOP", 250, "2.0.0")  # limit-1 errors: still served
        c.send(b"XYZZY3\r\n")
        r = c.reply()
        if r.code == 500:  # the error's own reply may come first
            check(r, 500, "5.5.2")
            r = c.reply()
        check(r, 421, "4.7.0")
        c.assert_closed()


def test_default_max_errors_is_20(server):
    with connect(server) as c:
        c.start()
        c.send(b"".join(b"XYZZY%d\r\n" % i for i in range(19)) + b"NOOP\r\n")
        for _ in range(19):
            check(c.reply(), 500, "5.5.2")
        check(c.reply(), 250, "2.0.0")
        c.send(b"XYZZY20\r\n")
        r = c.reply()
        if r.code == 500:
            r = c.reply()
        check(r, 421, "4.7.0")
        c.assert_closed()


@pytest.mark.parametrize("phase", ["greeted", "after-ehlo", "in-transaction", "in-data"])
def test_idle_timeout(server_factory, phase):
    srv = server_factory(config=config({"idle_timeout": 1}))
    with connect(srv) as c:
        c.greeting()
        if phase != "greeted":
            c.ehlo()
        if phase in ("in-transaction", "in-data"):
            c.mail_rcpt("s@example.test", ["r@example.test"])
        if phase == "in-data":
            c.expect("DATA", 354)
            c.send(b"Subject: half\r\n\r\nhalf a mess")
        check(c.reply(timeout=20), 421, "4.4.2")
        c.assert_closed()
    assert_queue_empty(srv)


def test_idle_timeout_not_hit_by_active_client(server_factory):
    srv = server_factory(config=config({"idle_timeout": 1}))
    with connect(srv) as c:
        c.start()
        for _ in range(6):  # about 1.8 s in total, each pause well under the timeout
            time.sleep(0.3)
            c.expect("NOOP", 250, "2.0.0")
        c.quit()


def test_max_recipients(server_factory):
    srv = server_factory(config=config({"max_recipients": 3}))
    rcpts = [f"r{i}@example.test" for i in range(3)]
    with connect(srv) as c:
        c.start()
        c.mail_rcpt("s@example.test", rcpts)
        c.expect("RCPT TO:<r3@example.test>", 452, "4.5.3")
        qid = queued_id(c.data(simple_message()))
        c.quit()
    check_entry(queue_by_id(srv)[qid], sender="s@example.test", rcpts=rcpts)


@pytest.mark.parametrize("request_line", [
    b"GET / HTTP/1.1\r\nHost: mx.example.test\r\n\r\n",
    b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nMAIL",
    b"CONNECT mx.example.test:443 HTTP/1.1\r\n\r\n",
], ids=["GET", "POST", "CONNECT"])
def test_http_request_closes(server, request_line):
    with connect(server) as c:
        c.greeting()
        c.send(request_line)
        r = c.reply()
        assert r.code == 221 or 500 <= r.code <= 599, r
        c.read_to_close()  # and the server hangs up
    assert_queue_empty(server)


# ---------------------------------------------------------------------------
# greeting delay / early talkers (client outside mynetworks)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [None, config({"greeting_delay": 2.0})], ids=["default", "2s"])
def test_early_talker_rejected(server_factory, cfg):
    srv = server_factory(args=OUTSIDE, config=cfg)
    with connect(srv) as c:
        c.send(b"EHLO early.example.test\r\n")
        r = c.reply(timeout=20)
        check(r, 554, "5.5.0")
        c.read_to_close()


def test_patient_outside_client_served(server_factory):
    srv = server_factory(args=OUTSIDE, config=config(**DOMAINS))
    with connect(srv) as c:
        c.greeting(timeout=20)
        c.ehlo()
        qid = c.send_message("s@evil.test", ["u@local.test"], simple_message())
        c.quit()
    check_entry(queue_by_id(srv)[qid], sender="s@evil.test", rcpts=["u@local.test"])


def test_inside_client_greeted_at_once(server):
    """No early-talker check for mynetworks: EHLO sent right after connect is fine."""
    with connect(server) as c:
        c.send(b"EHLO client.example.test\r\n")
        c.greeting()
        check(c.reply(), 250)
        c.quit()


# ---------------------------------------------------------------------------
# relay control
# ---------------------------------------------------------------------------

@pytest.fixture
def outside(server_factory):
    return server_factory(args=OUTSIDE, config=config(**DOMAINS))


def outside_client(srv) -> Client:
    c = connect(srv)
    c.greeting(timeout=20)
    c.ehlo()
    c.expect("MAIL FROM:<s@evil.test>", 250, "2.1.0")
    return c


@pytest.mark.parametrize("rcpt", ["u@evil.test", "u@sub.local.test", "u@local.test.evil.test",
                                  "u@relay.test.evil.test"])
def test_relay_denied_from_outside(outside, rcpt):
    with outside_client(outside) as c:
        c.expect(f"RCPT TO:<{rcpt}>", 554, "5.7.1")
        c.expect("DATA", 503, "5.5.1")
        c.quit()


@pytest.mark.parametrize("rcpt", ["u@local.test", "u@relay.test", "U@LOCAL.TEST", "u@Relay.Test"])
def test_local_and_relay_domains_accepted_from_outside(outside, rcpt):
    with outside_client(outside) as c:
        c.expect(f"RCPT TO:<{rcpt}>", 250, "2.1.5")
        qid = queued_id(c.data(simple_message()))
        c.quit()
    assert list(queue_by_id(outside)) == [qid]


@pytest.mark.parametrize("rcpt", ["<@local.test:user@evil.test>",
                                  "<@local.test,@relay.test:user@evil.test>",
                                  "<user@evil.test.>",
                                  "<user@[192.0.2.1]>"])
def test_relay_tricks_refused(outside, rcpt):
    with outside_client(outside) as c:
        r = c.cmd(f"RCPT TO:{rcpt}")
        assert 500 <= r.code <= 599, r
        assert (r.code, r.enhanced) in {(554, "5.7.1"), (550, "5.7.1"), (553, "5.7.1"),
                                        (501, "5.1.3"), (553, "5.1.3")}, r
        c.expect("DATA", 503, "5.5.1")
        c.quit()
    assert_queue_empty(outside)


def test_outside_mixed_recipients_only_allowed_queued(outside):
    with outside_client(outside) as c:
        c.send(b"RCPT TO:<a@evil.test>\r\nRCPT TO:<b@local.test>\r\n"
               b"RCPT TO:<c@relay.test>\r\nRCPT TO:<@local.test:d@evil.test>\r\nDATA\r\n")
        check(c.reply(), 554, "5.7.1")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 250, "2.1.5")
        assert c.reply().code >= 500
        check(c.reply(), 354)
        c.send(dot_stuff(simple_message()) + b".\r\n")
        qid = queued_id(c.reply())
        c.quit()
    check_entry(queue_by_id(outside)[qid], sender="s@evil.test",
                rcpts=["b@local.test", "c@relay.test"])


def test_postmaster_without_domain_accepted_from_outside(outside):
    with outside_client(outside) as c:
        c.expect("RCPT TO:<Postmaster>", 250, "2.1.5")
        queued_id(c.data(simple_message()))
        c.quit()
    # The bare RFC 5321 form is qualified with our first local domain, so it is deliverable.
    assert [r["address"] for r in only_entry(outside)["recipients"]] == ["postmaster@local.test"]


def test_inside_may_relay_anywhere(server_factory):
    srv = server_factory(config=config(**DOMAINS))
    with connect(srv) as c:
        c.start()
        qid = c.send_message("s@example.test", ["u@evil.test"], simple_message())
        c.quit()
    check_entry(queue_by_id(srv)[qid], sender="s@example.test", rcpts=["u@evil.test"])
