"""End-to-end tests of the receive path: the SMTP dialogue as the spec states it.

Every test drives the real `mta run` over loopback (smtplib, raw sockets,
swaks) and checks replies by code AND enhanced code, and what landed in the
spool byte for byte through `mta queue list/show`.
"""

from __future__ import annotations

import re
import smtplib

import pytest

from helpers import (
    DEFAULT_MAX_SIZE, HOSTNAME, assert_queue_empty, body_of, check, check_enhanced_class, check_entry,
    check_received, config, connect, dot_stuff, only_entry, queue_by_id, queued_id, simple_message, split_show,
    stored_message, strip_received, swaks, swaks_sent_data,
)

pytestmark = pytest.mark.shared_server  # one server for the module (conftest.py, server)


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
