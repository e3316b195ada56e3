"""End-to-end tests of the receive path: the SMTP dialogue as the spec states it.

Every test drives the real `mta run` over loopback (smtplib, raw sockets,
swaks) and checks replies by code AND enhanced code, and what landed in the
spool byte for byte through `mta queue list/show`.
"""

from __future__ import annotations

import hashlib
import re
import smtplib
import time

import pytest

from helpers import (
    DEFAULT_MAX_SIZE, HOSTNAME, MiB, Client, body_of, check, check_enhanced_class,
    check_entry, check_received, config, connect, dot_stuff, mem_growth, mem_snapshot,
    queue_by_id, queued_id, simple_message, split_show, stored_message, strip_received,
    swaks, swaks_sent_data,
)

OUTSIDE = ("--mynetworks", "10.0.0.0/8")
DOMAINS = dict(local_domains=["local.test"], relay_domains=["relay.test"])


def only_entry(srv) -> dict:
    q = srv.queue()
    assert len(q) == 1, q
    return q[0]


def assert_queue_empty(srv) -> None:
    assert srv.queue() == []


# ---------------------------------------------------------------------------
# greeting, EHLO, simple verbs
# ---------------------------------------------------------------------------

def ehlo_keywords(reply) -> dict[str, str]:
    assert reply.lines[0].split()[0] == HOSTNAME, reply
    out = {}
    for line in reply.lines[1:]:
        kw, _, rest = line.partition(" ")
        out[kw.upper()] = rest
    return out


def test_greeting_and_ehlo_extensions(server):
    with connect(server) as c:
        g = c.greeting()
        assert re.match(rf"^{re.escape(HOSTNAME)} ESMTP\b", g.lines[0]), g
        kws = ehlo_keywords(c.ehlo())
        for kw in ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                   "CHUNKING", "DSN", "SIZE"):
            assert kw in kws, (kw, kws)
        assert kws["SIZE"] == str(DEFAULT_MAX_SIZE), kws
        assert "STARTTLS" not in kws and "AUTH" not in kws, kws
        c.quit()


def test_ehlo_size_follows_config(server_factory):
    srv = server_factory(config=config({"max_message_size": 100000}))
    with connect(srv) as c:
        c.greeting()
        assert ehlo_keywords(c.ehlo())["SIZE"] == "100000"


def test_smtplib_sees_extensions(server):
    with smtplib.SMTP(*server.addr, local_hostname="client.example.test", timeout=15) as s:
        code, _ = s.ehlo()
        assert code == 250
        for ext in ("pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "dsn"):
            assert s.has_extn(ext), ext
        assert not s.has_extn("starttls") and not s.has_extn("auth")
        assert s.esmtp_features["size"] == str(DEFAULT_MAX_SIZE)


def test_helo_has_no_extensions_and_works(server):
    with connect(server) as c:
        c.greeting()
        r = check(c.cmd("HELO old.example.test"), 250)
        assert len(r.lines) == 1, f"HELO reply must be one line: {r}"
        qid = c.send_message("a@example.test", ["b@example.test"], simple_message())
        c.quit()
    assert body_of(server, qid, helo="old.example.test", rcpt="b@example.test") == simple_message()


@pytest.mark.parametrize("line", ["STARTTLS", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "AUTH LOGIN"])
def test_starttls_and_auth_not_implemented(server, line):
    with connect(server) as c:
        c.start()
        c.expect(line, 502, "5.5.1")
        c.expect("NOOP", 250, "2.0.0")  # still served, still plaintext SMTP
        c.quit()


def test_vrfy_help_noop_rset_quit(server):
    with connect(server) as c:
        c.start()
        v = c.cmd("VRFY postmaster")
        check_enhanced_class(v, 252)
        check_enhanced_class(c.cmd("HELP"), 214)
        c.expect("NOOP", 250, "2.0.0")
        c.expect("RSET", 250, "2.0.0")
        c.expect("QUIT", 221, "2.0.0")
        c.assert_closed()


def test_verbs_are_case_insensitive(server):
    with connect(server) as c:
        c.greeting()
        check(c.cmd("ehlo client.example.test"), 250)
        c.expect("mail from:<a@example.test>", 250, "2.1.0")
        c.expect("Rcpt To:<b@example.test>", 250, "2.1.5")
        c.expect("data", 354)
        c.send(dot_stuff(simple_message()) + b".\r\n")
        qid = queued_id(c.reply())
        c.expect("quit", 221, "2.0.0")
    check_entry(only_entry(server), sender="a@example.test", rcpts=["b@example.test"])
    assert body_of(server, qid, rcpt="b@example.test") == simple_message()


def test_ehlo_without_domain_refused(server):
    with connect(server) as c:
        c.greeting()
        r = c.cmd("EHLO")
        assert r.code == 501 and r.enhanced in ("5.5.4", "5.5.2"), r
        c.expect("MAIL FROM:<a@example.test>", 503, "5.5.1")  # still no EHLO


# ---------------------------------------------------------------------------
# command sequencing
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("setup,bad", [
    ([], "MAIL FROM:<a@example.test>"),
    ([], "RCPT TO:<b@example.test>"),
    ([], "DATA"),
    (["EHLO client.example.test"], "RCPT TO:<b@example.test>"),
    (["EHLO client.example.test"], "DATA"),
    (["EHLO client.example.test", "MAIL FROM:<a@example.test>"], "DATA"),
    (["EHLO client.example.test", "MAIL FROM:<a@example.test>"], "MAIL FROM:<c@example.test>"),
    (["EHLO client.example.test", "MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>"],
     "MAIL FROM:<c@example.test>"),
], ids=["mail-before-ehlo", "rcpt-before-ehlo", "data-before-ehlo", "rcpt-before-mail",
        "data-before-mail", "data-before-rcpt", "second-mail", "second-mail-after-rcpt"])
def test_bad_sequence(server, setup, bad):
    with connect(server) as c:
        c.greeting()
        for line in setup:
            assert c.cmd(line).code == 250
        c.expect(bad, 503, "5.5.1")
        c.expect("NOOP", 250, "2.0.0")
        c.quit()
    assert_queue_empty(server)


def test_rset_clears_transaction(server):
    with connect(server) as c:
        c.start()
        c.mail_rcpt("a@example.test", ["b@example.test"])
        c.expect("RSET", 250, "2.0.0")
        c.expect("RCPT TO:<b@example.test>", 503, "5.5.1")
        c.expect("DATA", 503, "5.5.1")
        # and a fresh transaction works
        qid = c.send_message("a@example.test", ["b@example.test"], simple_message())
        c.quit()
    assert list(queue_by_id(server)) == [qid]


def test_ehlo_again_resets_transaction(server):
    with connect(server) as c:
        c.start()
        c.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        c.ehlo("again.example.test")
        c.expect("RCPT TO:<b@example.test>", 503, "5.5.1")
        qid = c.send_message("a@example.test", ["b@example.test"], simple_message())
        c.quit()
    body_of(server, qid, helo="again.example.test", rcpt="b@example.test")


def test_bdat_without_transaction_discards_chunk(server):
    """The chunk of a refused BDAT is consumed as data, never parsed as commands."""
    with connect(server) as c:
        c.start()
        c.send(b"BDAT 6\r\nNOOP\r\n")
        check(c.reply(), 503, "5.5.1")
        c.quit()  # the next reply is QUIT's: no 250 for a smuggled NOOP


# ---------------------------------------------------------------------------
# transactions and what is stored
# ---------------------------------------------------------------------------

def test_smtplib_message_stored_byte_exact(server):
    msg = simple_message("smtplib", b"line one\r\n\r\nline three\r\n")
    with smtplib.SMTP(*server.addr, local_hostname="client.example.test", timeout=15) as s:
        refused = s.sendmail("alice@example.test", ["bob@example.test"], msg)
        assert refused == {}
    entry = only_entry(server)
    check_entry(entry, sender="alice@example.test", rcpts=["bob@example.test"])
    stored = stored_message(server, entry["id"])
    assert entry["size"] == len(stored), (entry, len(stored))
    rec, body = strip_received(stored)
    assert body == msg
    check_received(rec, helo="client.example.test", qid=entry["id"], rcpt="bob@example.test")


def test_raw_message_and_received_header(server):
    msg = simple_message("raw", b"body\r\n")
    with connect(server) as c:
        c.start("client.example.test")
        qid = c.send_message("s@example.test", ["r@example.test"], msg)
        c.quit()
    q = queue_by_id(server)
    assert list(q) == [qid]
    check_entry(q[qid], sender="s@example.test", rcpts=["r@example.test"])
    assert body_of(server, qid, helo="client.example.test", rcpt="r@example.test") == msg


def test_queue_show_output_shape(server):
    msg = simple_message("shape")
    with connect(server) as c:
        c.start()
        qid = c.send_message("s@example.test", ["r@example.test"], msg)
    p = server.show(qid)
    assert p.returncode == 0, p.stderr
    envelope, stored = split_show(p.stdout)
    assert b"s@example.test" in envelope and b"r@example.test" in envelope, envelope
    assert stored.endswith(msg)
    # the whole stored message uses CRLF line ends only
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", stored) is None, stored


def test_queue_show_unknown_id(server):
    p = server.show("NoSuchId0000")
    assert p.returncode == 1, p
    assert (p.stdout + p.stderr).strip(), "no message for an unknown id"


def test_multiple_recipients_no_for_clause(server):
    rcpts = ["r1@example.test", "r2@example.test", "r3@other.test"]
    msg = simple_message("multi")
    with connect(server) as c:
        c.start()
        qid = c.send_message("s@example.test", rcpts, msg)
        c.quit()
    check_entry(queue_by_id(server)[qid], sender="s@example.test", rcpts=rcpts)
    assert body_of(server, qid, rcpt=None) == msg


def test_null_sender(server):
    msg = simple_message("bounce")
    with connect(server) as c:
        c.start()
        qid = c.send_message("", ["r@example.test"], msg)
        c.quit()
    check_entry(queue_by_id(server)[qid], sender="", rcpts=["r@example.test"])
    assert body_of(server, qid, rcpt="r@example.test") == msg


def test_dot_stuffed_lines_unstuffed(server):
    msg = (b"Subject: dots\r\n\r\n.x\r\n..\r\n.\r\n...y\r\nend.\r\n. \r\n.\r\n")
    wire = b"Subject: dots\r\n\r\n..x\r\n...\r\n..\r\n....y\r\nend.\r\n.. \r\n..\r\n.\r\n"
    assert dot_stuff(msg) + b".\r\n" == wire
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.expect("DATA", 354)
        c.send(wire)
        qid = queued_id(c.reply())
        c.quit()
    assert body_of(server, qid, rcpt="r@example.test") == msg


def test_8bitmime_body_byte_exact(server):
    octets = bytes(b for b in range(1, 256) if b not in (10, 13))
    msg = (b"Subject: =?utf-8?q?8bit?=\r\nContent-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: 8bit\r\n\r\n"
           + octets + b"\r\n" + "Grüße, ½ ☃\r\n".encode() + octets[::-1] + b"\r\n")
    with connect(server) as c:
        c.start()
        qid = c.send_message("s@example.test", ["r@example.test"], msg, mail_params="BODY=8BITMIME")
        c.quit()
    assert body_of(server, qid, rcpt="r@example.test") == msg


def test_smtputf8_addresses_accepted(server):
    sender, rcpt = "jürgen@exämple.test", "zoë@exämple.test"
    msg = ("From: Jürgen <jürgen@exämple.test>\r\nTo: zoë@exämple.test\r\n"
           "Subject: Grüße\r\n\r\nHallo Zoë\r\n").encode()
    with connect(server) as c:
        c.start()
        qid = c.send_message(sender, [rcpt], msg, mail_params="SMTPUTF8")
        c.quit()
    check_entry(queue_by_id(server)[qid], sender=sender, rcpts=[rcpt])
    assert body_of(server, qid) == msg


def test_smtputf8_with_smtplib(server):
    msg = "From: jürgen@exämple.test\r\nSubject: ä\r\n\r\nü\r\n".encode()
    with smtplib.SMTP(*server.addr, local_hostname="client.example.test", timeout=15) as s:
        s.ehlo()
        assert s.sendmail("jürgen@exämple.test", ["ß@exämple.test"], msg,
                          mail_options=["SMTPUTF8"]) == {}
    entry = only_entry(server)
    check_entry(entry, sender="jürgen@exämple.test", rcpts=["ß@exämple.test"])
    assert body_of(server, entry["id"]) == msg


def test_utf8_sender_without_smtputf8_refused(server):
    with connect(server) as c:
        c.start()
        c.expect("MAIL FROM:<jürgen@exämple.test>", 553, "5.6.7")
        # no transaction was started
        c.expect("RCPT TO:<r@example.test>", 503, "5.5.1")
        c.quit()


def test_utf8_recipient_without_smtputf8_refused(server):
    with connect(server) as c:
        c.start()
        c.expect("MAIL FROM:<s@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<zoë@exämple.test>", 553, "5.6.7")
        c.expect("RCPT TO:<r@example.test>", 250, "2.1.5")
        qid = queued_id(c.data(simple_message()))
        c.quit()
    check_entry(queue_by_id(server)[qid], sender="s@example.test", rcpts=["r@example.test"])


def test_smtputf8_flag_does_not_leak_into_next_transaction(server):
    with connect(server) as c:
        c.start()
        c.send_message("jürgen@exämple.test", ["zoë@exämple.test"], simple_message(), "SMTPUTF8")
        c.expect("MAIL FROM:<s@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<zoë@exämple.test>", 553, "5.6.7")
        c.quit()


@pytest.mark.parametrize("line,code,enh", [
    ("MAIL FROM:<s@example.test> FOO=BAR", 555, "5.5.4"),
    ("MAIL FROM:<s@example.test> BODY=BINARYMIME", 555, "5.5.4"),
    ("MAIL FROM:<s@example.test> XYZZY", 555, "5.5.4"),
])
def test_unsupported_mail_parameters(server, line, code, enh):
    with connect(server) as c:
        c.start()
        c.expect(line, code, enh)
        c.expect("MAIL FROM:<s@example.test>", 250, "2.1.0")  # nothing was started
        c.quit()


def test_unsupported_rcpt_parameter(server):
    with connect(server) as c:
        c.start()
        c.expect("MAIL FROM:<s@example.test>", 250, "2.1.0")
        c.expect("RCPT TO:<r@example.test> FOO=BAR", 555, "5.5.4")
        c.expect("DATA", 503, "5.5.1")  # the refused RCPT added nobody
        c.quit()


def test_known_parameters_accepted(server):
    msg = simple_message("params")
    with connect(server) as c:
        c.start()
        c.expect("MAIL FROM:<s@example.test> SIZE=1000 BODY=7BIT RET=HDRS ENVID=QQ314159",
                 250, "2.1.0")
        c.expect("RCPT TO:<r@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r@example.test",
                 250, "2.1.5")
        c.expect("RCPT TO:<q@example.test> NOTIFY=NEVER", 250, "2.1.5")
        qid = queued_id(c.data(msg))
        c.quit()
    check_entry(queue_by_id(server)[qid], sender="s@example.test",
                rcpts=["r@example.test", "q@example.test"])
    assert body_of(server, qid, rcpt=None) == msg


def test_mail_size_parameter_over_limit(server):
    with connect(server) as c:
        c.start()
        c.expect(f"MAIL FROM:<s@example.test> SIZE={DEFAULT_MAX_SIZE + 1}", 552, "5.3.4")
        c.expect(f"MAIL FROM:<s@example.test> SIZE={DEFAULT_MAX_SIZE}", 250, "2.1.0")
        c.quit()


@pytest.mark.parametrize("line,code,enh", [
    ("MAIL FROM:<a@@example.test>", 501, "5.1.7"),
    ("RCPT TO:<b@@example.test>", 501, "5.1.3"),
])
def test_bad_address_syntax(server, line, code, enh):
    with connect(server) as c:
        c.start()
        if line.startswith("RCPT"):
            c.expect("MAIL FROM:<s@example.test>", 250, "2.1.0")
        c.expect(line, code, enh)
        c.quit()


def test_long_ehlo_name_folds_received(server):
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "example"])  # 200 octets, valid
    msg = simple_message("fold")
    with connect(server) as c:
        c.greeting()
        c.ehlo(name)
        qid = c.send_message("s@example.test", ["r@example.test"], msg)
        c.quit()
    assert body_of(server, qid, helo=name, rcpt="r@example.test") == msg


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


def test_inside_may_relay_anywhere(server_factory):
    srv = server_factory(config=config(**DOMAINS))
    with connect(srv) as c:
        c.start()
        qid = c.send_message("s@example.test", ["u@evil.test"], simple_message())
        c.quit()
    check_entry(queue_by_id(srv)[qid], sender="s@example.test", rcpts=["u@evil.test"])


# ---------------------------------------------------------------------------
# bare CR / LF in DATA
# ---------------------------------------------------------------------------

BARE = {
    "lf-in-body": b"Subject: x\r\n\r\nline1\nline2\r\n",
    "cr-in-body": b"Subject: x\r\n\r\nline1\rline2\r\n",
    "lf-in-header": b"Subject: x\nX-Other: y\r\n\r\nbody\r\n",
    "lf-only-lines": b"Subject: x\r\n\r\na\n\nb\r\n",
    "crcrlf": b"Subject: x\r\n\r\na\r\r\nb\r\n",
}


@pytest.mark.parametrize("content", list(BARE.values()), ids=list(BARE))
def test_bare_cr_lf_rejected(server, content):
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.expect("DATA", 354)
        c.send(content + b".\r\n")
        check(c.reply(), 550, "5.5.2")
        assert_queue_empty(server)
        # the session is usable afterwards
        c.expect("RSET", 250, "2.0.0")
        qid = c.send_message("s@example.test", ["r@example.test"], simple_message())
        c.quit()
    assert list(queue_by_id(server)) == [qid]


def normalized(b: bytes) -> bytes:
    return re.sub(rb"\r\n|\r|\n", b"\r\n", b)


@pytest.mark.parametrize("content", list(BARE.values()), ids=list(BARE))
def test_bare_cr_lf_normalized(server_factory, content):
    srv = server_factory(config=config({"bare_lf": "normalize"}))
    with connect(srv) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.expect("DATA", 354)
        c.send(content + b".\r\n")
        qid = queued_id(c.reply())
        c.quit()
    assert body_of(srv, qid, rcpt="r@example.test") == normalized(content)


# ---------------------------------------------------------------------------
# BDAT
# ---------------------------------------------------------------------------

def test_bdat_chunks_byte_exact(server):
    c1 = b"Subject: chunked\r\n\r\n.leading dot stays\r\n"
    c2 = b"..two dots stay\r\n.\r\nline after a lone dot\r\n"
    c3 = b"last chunk\r\n"
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        for chunk in (c1, c2):
            c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
            check_enhanced_class(c.reply(), 250)
        c.send(b"BDAT %d LAST\r\n" % len(c3) + c3)
        qid = queued_id(c.reply())
        c.quit()
    check_entry(queue_by_id(server)[qid], sender="s@example.test", rcpts=["r@example.test"])
    assert body_of(server, qid, rcpt="r@example.test") == c1 + c2 + c3


def test_bdat_zero_last(server):
    chunk = b"Subject: zero\r\n\r\nbody\r\n"
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        check_enhanced_class(c.reply(), 250)
        c.send(b"BDAT 0 LAST\r\n")
        qid = queued_id(c.reply())
        c.quit()
    assert body_of(server, qid, rcpt="r@example.test") == chunk


def test_bdat_pipelined_in_one_write(server):
    c1 = b"Subject: piped bdat\r\n\r\n"
    c2 = b"MAIL FROM:<evil@x>\r\n.\r\nbody\r\n"
    with connect(server) as c:
        c.start()
        c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\n"
               + b"BDAT %d\r\n" % len(c1) + c1 + b"BDAT %d LAST\r\n" % len(c2) + c2
               + b"NOOP\r\n")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check_enhanced_class(c.reply(), 250)
        qid = queued_id(c.reply())
        check(c.reply(), 250, "2.0.0")
        c.quit()
    q = queue_by_id(server)
    assert list(q) == [qid]
    check_entry(q[qid], sender="s@example.test", rcpts=["r@example.test"])
    assert body_of(server, qid, rcpt="r@example.test") == c1 + c2


@pytest.mark.parametrize("where", ["last-chunk", "first-chunk"])
def test_bdat_bare_lf_rejected_at_last(server, where):
    bad, good = b"Subject: x\r\n\r\nbare\nlf\r\n", b"fine\r\n"
    chunks = [good, bad] if where == "last-chunk" else [bad, good]
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.send(b"BDAT %d\r\n" % len(chunks[0]) + chunks[0])
        check_enhanced_class(c.reply(), 250)
        c.send(b"BDAT %d LAST\r\n" % len(chunks[1]) + chunks[1])
        check(c.reply(), 550, "5.5.2")
        assert_queue_empty(server)
        qid = c.send_message("s@example.test", ["r@example.test"], simple_message())
        c.quit()
    assert list(queue_by_id(server)) == [qid]


def test_bdat_over_size_limit(server_factory):
    srv = server_factory(config=config({"max_message_size": 100000}))
    chunk = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 60
    with connect(srv) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        check_enhanced_class(c.reply(), 250)  # 60 KB: still under the limit
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        check(c.reply(), 552, "5.3.4")
        c.expect("RSET", 250, "2.0.0")
        c.send_message("s@example.test", ["r@example.test"], simple_message())
        c.quit()
    assert len(srv.queue()) == 1


# ---------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------

def sized_message(n: int) -> bytes:
    """A CRLF-clean message of exactly n octets (80-octet lines, no leading dots)."""
    head = b"Subject: sized\r\n\r\n"
    k, r = divmod(n - len(head), 80)
    line = b"z" * 78 + b"\r\n"
    if r == 0:
        body = line * k
    elif r >= 2:
        body = line * k + b"w" * (r - 2) + b"\r\n"
    else:  # one octet left over: one line of 81
        body = line * (k - 1) + b"w" * 79 + b"\r\n"
    m = head + body
    assert len(m) == n and m.endswith(b"\r\n"), (len(m), n)
    return m


@pytest.mark.parametrize("n,ok", [(100000, True), (100001, False), (150000, False)])
def test_message_size_limit(server_factory, n, ok):
    srv = server_factory(config=config({"max_message_size": 100000}))
    msg = sized_message(n)
    with connect(srv) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        r = c.data(msg)
        if ok:
            qid = queued_id(r)
            assert body_of(srv, qid, rcpt="r@example.test") == msg
        else:
            check(r, 552, "5.3.4")
            assert_queue_empty(srv)
            c.expect("RSET", 250, "2.0.0")
            c.send_message("s@example.test", ["r@example.test"], simple_message())
            assert len(srv.queue()) == 1
        c.quit()


def _send_big(c: Client, total: int, chunk: bytes) -> tuple[str, int]:
    """Send a header then at least `total` octets of CRLF lines in chunks, then
    the terminator; return the sha256 and length of the message."""
    h = hashlib.sha256()
    head = b"Subject: big\r\n\r\n"
    c.send(head)
    h.update(head)
    sent = 0
    for _ in range(total // len(chunk) + 1):
        if sent >= total:
            break
        c.send(chunk)
        h.update(chunk)
        sent += len(chunk)
    c.send(b".\r\n")
    return h.hexdigest(), len(head) + sent


def _chunk() -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"  # 74 octets, no leading dot
    return line * (MiB // len(line))


def test_default_limit_refuses_60mib_with_bounded_memory(server):
    with connect(server, timeout=120) as c:
        c.start()
        c.send_message("s@example.test", ["warm@example.test"], simple_message())  # warm up
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.expect("DATA", 354)
        before = mem_snapshot(server.proc.pid)
        _send_big(c, 60 * MiB, _chunk())
        check(c.reply(timeout=180), 552, "5.3.4")
        after = mem_snapshot(server.proc.pid)
        c.expect("RSET", 250, "2.0.0")
        c.quit()
    growth = mem_growth(before, after)
    assert growth < 30 * MiB, f"server grew by {growth / MiB:.1f} MiB for a refused 60 MiB message"
    assert [e["recipients"][0]["address"] for e in server.queue()] == ["warm@example.test"]


def test_30mib_message_streams_to_spool(server):
    with connect(server, timeout=120) as c:
        c.start()
        c.send_message("s@example.test", ["warm@example.test"], simple_message())
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.expect("DATA", 354)
        before = mem_snapshot(server.proc.pid)
        digest, length = _send_big(c, 30 * MiB, _chunk())
        qid = queued_id(c.reply(timeout=180))
        after = mem_snapshot(server.proc.pid)
        c.quit()
    growth = mem_growth(before, after)
    assert growth < 30 * MiB, f"server grew by {growth / MiB:.1f} MiB for a 30 MiB message"
    body = body_of(server, qid, rcpt="r@example.test")
    assert len(body) == length
    assert hashlib.sha256(body).hexdigest() == digest


@pytest.mark.parametrize("header_octets,ok", [(3000, True), (20000, False)])
def test_header_block_size(server_factory, header_octets, ok):
    srv = server_factory(config=config({"max_header_size": 8192}))
    line = b"X-Filler: " + b"f" * 88 + b"\r\n"  # 100 octets
    headers = b"Subject: headers\r\n" + line * (header_octets // 100)
    msg = headers + b"\r\nbody\r\n"
    with connect(srv) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        r = c.data(msg)
        if ok:
            assert body_of(srv, queued_id(r), rcpt="r@example.test") == msg
        else:
            check(r, 552, "5.3.4")
            assert_queue_empty(srv)
            c.send_message("s@example.test", ["r@example.test"], simple_message())
        c.quit()


# ---------------------------------------------------------------------------
# hop count
# ---------------------------------------------------------------------------

def with_hops(n: int) -> bytes:
    rec = b"".join(b"Received: from h%d.example.test by h%d.example.test;"
                   b" Mon, 1 Jan 2024 00:00:00 +0000\r\n" % (i, i + 1) for i in range(n))
    return rec + simple_message("hops")


@pytest.mark.parametrize("hops,ok", [(0, True), (50, True), (51, False), (150, False)])
def test_hop_limit(server, hops, ok):
    msg = with_hops(hops)
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        r = c.data(msg)
        if ok:
            assert body_of(server, queued_id(r), rcpt="r@example.test") == msg
        else:
            check(r, 554, "5.4.0")
            assert_queue_empty(server)
            c.expect("RSET", 250, "2.0.0")
        c.quit()


# ---------------------------------------------------------------------------
# swaks
# ---------------------------------------------------------------------------

def _swaks_ok(p):
    assert p.returncode == 0, (p.returncode, p.stdout.decode(errors="replace")[-3000:],
                               p.stderr.decode(errors="replace")[-2000:])


def test_swaks_plain(server):
    p = swaks(server, "--to", "a@example.test", "--from", "b@example.test")
    _swaks_ok(p)
    entry = only_entry(server)
    check_entry(entry, sender="b@example.test", rcpts=["a@example.test"])
    body = body_of(server, entry["id"], rcpt="a@example.test")
    assert body == swaks_sent_data(p.stdout)
    assert b"\r\nTo: a@example.test\r\n" in body and b"This is a test mailing" in body


def test_swaks_pipeline_multiple_to_exact_data(server, tmp_path):
    data = tmp_path / "msg.eml"
    data.write_bytes(b"Subject: swaks\r\nX-Test: 1\r\n\r\nline1\r\n.x\r\n..y\r\nlast")
    p = swaks(server, "--pipeline", "--to", "a@example.test,b@example.test",
              "--from", "c@example.test", "--data", f"@{data}")
    _swaks_ok(p)
    assert b"PIPELINING" in p.stdout
    entry = only_entry(server)
    check_entry(entry, sender="c@example.test", rcpts=["a@example.test", "b@example.test"])
    assert body_of(server, entry["id"], rcpt=None) == \
        b"Subject: swaks\r\nX-Test: 1\r\n\r\nline1\r\n.x\r\n..y\r\nlast\r\n"


def test_swaks_null_sender(server):
    p = swaks(server, "--to", "a@example.test", "--from", "<>")
    _swaks_ok(p)
    entry = only_entry(server)
    check_entry(entry, sender="", rcpts=["a@example.test"])
    assert body_of(server, entry["id"], rcpt="a@example.test") == swaks_sent_data(p.stdout)


def test_swaks_several_runs(server):
    for i in range(5):
        _swaks_ok(swaks(server, "--to", f"r{i}@example.test", "--from", f"s{i}@example.test",
                        "--pipeline"))
    q = server.queue()
    assert sorted(e["sender"] for e in q) == [f"s{i}@example.test" for i in range(5)]


# ---------------------------------------------------------------------------
# more limits and corners
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("header", [b"received: from h by h; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
                                    b"RECEIVED:from h by h; Mon, 1 Jan 2024 00:00:00 +0000\r\n"],
                         ids=["lower", "upper-no-space"])
def test_hop_count_field_name_case_insensitive(server, header):
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        check(c.data(header * 51 + simple_message("hops")), 554, "5.4.0")
        c.quit()
    assert_queue_empty(server)


def test_received_lines_in_body_are_not_hops(server):
    msg = simple_message("body hops", b"Received: from h by h; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 120)
    with connect(server) as c:
        c.start()
        qid = c.send_message("s@example.test", ["r@example.test"], msg)
        c.quit()
    assert body_of(server, qid, rcpt="r@example.test") == msg


@pytest.mark.parametrize("length,ok", [(1000, True), (1001, False)])
def test_max_line_length_config(server_factory, length, ok):
    srv = server_factory(config=config({"max_line_length": 1000}))
    line = b"NOOP " + b"x" * (length - 7)
    with connect(srv) as c:
        c.start()
        c.send(line + b"\r\nNOOP\r\n")
        if ok:
            check(c.reply(), 250, "2.0.0")
        else:
            check(c.reply(), 500, "5.5.2")
        check(c.reply(), 250, "2.0.0")
        c.quit()


def test_idle_timeout_inside_bdat_chunk(server_factory):
    srv = server_factory(config=config({"idle_timeout": 1}))
    with connect(srv) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.send(b"BDAT 100 LAST\r\nSubject: only ten")
        check(c.reply(timeout=20), 421, "4.4.2")
        c.assert_closed()
    assert_queue_empty(srv)


def test_data_after_bdat_refused(server):
    chunk = b"Subject: mix\r\n\r\n"
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        check_enhanced_class(c.reply(), 250)
        c.expect("DATA", 503, "5.5.1")
        c.expect("RSET", 250, "2.0.0")
        c.quit()
    assert_queue_empty(server)


@pytest.mark.parametrize("line", ["BDAT", "BDAT abc", "BDAT -1", "BDAT 5 FOO", "BDAT 1.5 LAST"])
def test_bdat_syntax_errors(server, line):
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.expect(line, 501, "5.5.4")
        c.expect("NOOP", 250, "2.0.0")  # no chunk was read: the next line is a command
        c.quit()
    assert_queue_empty(server)


def test_rset_after_bdat_chunk_discards_message(server):
    chunk = b"Subject: discarded\r\n\r\nnever queued\r\n"
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
        check_enhanced_class(c.reply(), 250)
        c.expect("RSET", 250, "2.0.0")
        c.expect("BDAT 0 LAST", 503, "5.5.1")
        qid = c.send_message("s@example.test", ["r2@example.test"], simple_message())
        c.quit()
    assert list(queue_by_id(server)) == [qid]
    assert body_of(server, qid, rcpt="r2@example.test") == simple_message()


def test_headerless_message_with_dotted_first_line(server):
    with connect(server) as c:
        c.start()
        c.mail_rcpt("s@example.test", ["r@example.test"])
        c.expect("DATA", 354)
        c.send(b"..first\r\nsecond\r\n.\r\n")
        qid = queued_id(c.reply())
        c.quit()
    assert body_of(server, qid, rcpt="r@example.test") == b".first\r\nsecond\r\n"


def test_postmaster_without_domain_accepted_from_outside(outside):
    with outside_client(outside) as c:
        c.expect("RCPT TO:<Postmaster>", 250, "2.1.5")
        queued_id(c.data(simple_message()))
        c.quit()
    # The bare RFC 5321 form is qualified with our first local domain, so it is deliverable.
    assert [r["address"] for r in only_entry(outside)["recipients"]] == ["postmaster@local.test"]


def test_ipv6_loopback_is_in_default_mynetworks(server_factory):
    srv = server_factory(host="::1", config=config(**DOMAINS))
    with connect(srv) as c:
        c.send(b"EHLO client.example.test\r\n")  # no greeting delay, no early-talker check
        c.greeting()
        check(c.reply(), 250)
        qid = c.send_message("s@example.test", ["u@evil.test"], simple_message())
        c.quit()
    check_entry(queue_by_id(srv)[qid], sender="s@example.test", rcpts=["u@evil.test"])
    assert body_of(srv, qid, ip="IPv6:::1", rcpt="u@evil.test") == simple_message()


def test_concurrent_clients(server):
    import threading
    n_clients, per_client = 10, 5
    errors: list[BaseException] = []
    ids: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            with connect(server) as c:
                c.start(f"c{k}.example.test")
                for i in range(per_client):
                    qid = c.send_message(f"s{k}@example.test", [f"r{k}-{i}@example.test"],
                                         simple_message(f"{k}/{i}"))
                    with lock:
                        ids.append(qid)
                c.quit()
        except BaseException as e:  # noqa: BLE001 - reported below
            with lock:
                errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    q = queue_by_id(server)
    assert len(ids) == len(set(ids)) == n_clients * per_client
    assert set(q) == set(ids)
    rcpts = sorted(r["address"] for e in q.values() for r in e["recipients"])
    assert rcpts == sorted(f"r{k}-{i}@example.test" for k in range(n_clients) for i in range(per_client))
