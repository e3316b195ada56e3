"""End-to-end tests against hostile clients: SMTP smuggling, split and slow
writes, floods, huge lines, commands hidden in data, abrupt disconnects.

Each test asserts what the client sees (codes and enhanced codes, exactly
one reply where one is due) and what the spool holds afterwards.
"""

from __future__ import annotations

import re
import socket
import struct
import time

import pytest

from helpers import (
    ConnectionClosed, MiB, body_of, check, check_entry, config, connect, dot_stuff,
    mem_growth, mem_snapshot, queue_by_id, queued_id, simple_message,
)

pytestmark = pytest.mark.shared_server  # one server for the module (conftest.py, server)

SENDER, RCPT = "s@example.test", "r@example.test"
PREFIX = b"From: s@example.test\r\nTo: r@example.test\r\nSubject: smuggle\r\n\r\nhello"
SMUGGLED = b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nSmuggled\r\n"
END = b"\r\n.\r\n"

# fake end-of-data sequences; all but the NUL one contain a bare CR or LF
FAKE_ENDS = {
    "lf.lf": b"\n.\n",
    "lf.crlf": b"\n.\r\n",
    "crlf.lf": b"\r\n.\n",
    "cr.cr": b"\r.\r",
    "cr.crlf": b"\r.\r\n",
    "lf.cr": b"\n.\r",
    "cr.lf": b"\r.\n",
    "crlf.crcrlf": b"\r\n.\r\r\n",
    "crlf-nul.crlf": b"\r\n\x00.\r\n",
    "crlf.cr": b"\r\n.\r",
}

def has_bare_cr_lf(b: bytes) -> bool:
    return re.search(rb"\r(?!\n)|(?<!\r)\n", b) is not None


def no_evil(srv) -> dict:
    q = queue_by_id(srv)
    for e in q.values():
        assert e["sender"] != "evil@x", e
        assert all(r["address"] != "victim@y" for r in e["recipients"]), e
    return q


def open_data(srv):
    c = connect(srv)
    c.start()
    c.mail_rcpt(SENDER, [RCPT])
    c.expect("DATA", 354)
    return c


@pytest.mark.parametrize("split", ["one-write", "split-after-fake-end", "fake-end-bytewise"])
@pytest.mark.parametrize("fake", list(FAKE_ENDS.values()), ids=list(FAKE_ENDS))
def test_smuggling_default_policy(server, fake, split):
    wire = PREFIX + fake + SMUGGLED + END
    with open_data(server) as c:
        if split == "one-write":
            c.send(wire)
        else:
            head = PREFIX
            c.send(head)
            time.sleep(0.05)
            if split == "fake-end-bytewise":
                c.send_slowly(fake, pause=0.03)
            else:
                c.send(fake)
            time.sleep(0.05)
            c.send(SMUGGLED + END)
        r = c.reply()
        if has_bare_cr_lf(fake):
            check(r, 550, "5.5.2")
        else:
            qid = queued_id(r)
        # exactly one reply to all of that: the next reply is QUIT's
        c.quit()
    q = no_evil(server)
    if has_bare_cr_lf(fake):
        assert q == {}, q
    else:
        assert list(q) == [qid]
        check_entry(q[qid], sender=SENDER, rcpts=[RCPT])
        # the stored message holds the smuggling attempt as plain text
        assert body_of(server, qid, rcpt=RCPT) == PREFIX + fake + SMUGGLED + b"\r\n"


@pytest.mark.parametrize("fake", list(FAKE_ENDS.values()), ids=list(FAKE_ENDS))
def test_smuggling_normalize_policy(server_factory, fake):
    """With bare_lf = "normalize" the attempt is one message, never two, and
    no bare CR or LF is stored."""
    srv = server_factory(config=config({"bare_lf": "normalize"}))
    with open_data(srv) as c:
        c.send(PREFIX + fake + SMUGGLED + END)
        qid = queued_id(c.reply())
        c.quit()
    q = no_evil(srv)
    assert list(q) == [qid]
    check_entry(q[qid], sender=SENDER, rcpts=[RCPT])
    body = body_of(srv, qid, rcpt=RCPT)
    assert not has_bare_cr_lf(body), body
    assert body.startswith(PREFIX), body
    assert b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nSmuggled\r\n" in body, body


def test_smuggling_across_two_messages_pipelined(server):
    """Fake end inside message 1, then a real second transaction: exactly two
    replies to the two DATAs, message 1 refused, message 2 queued intact."""
    msg2 = simple_message("second")
    with connect(server) as c:
        c.start()
        c.mail_rcpt(SENDER, [RCPT])
        c.expect("DATA", 354)
        c.send(PREFIX + b"\n.\n" + SMUGGLED + END)
        check(c.reply(), 550, "5.5.2")
        qid = c.send_message(SENDER, ["r2@example.test"], msg2)
        c.quit()
    q = no_evil(server)
    assert list(q) == [qid]
    assert body_of(server, qid, rcpt="r2@example.test") == msg2


TERMINATOR_SPLITS = {
    "bytewise": [b"\r", b"\n", b".", b"\r", b"\n"],
    "cr|lf.crlf": [b"\r", b"\n.\r\n"],
    "crlf|.crlf": [b"\r\n", b".\r\n"],
    "crlf.|crlf": [b"\r\n.", b"\r\n"],
    "crlf.cr|lf": [b"\r\n.\r", b"\n"],
}


@pytest.mark.parametrize("pieces", list(TERMINATOR_SPLITS.values()), ids=list(TERMINATOR_SPLITS))
def test_terminator_split_across_writes(server, pieces):
    assert b"".join(pieces) == END
    body = b"Subject: split\r\n\r\nline\r\n..dotted\r\nlast"
    with open_data(server) as c:
        c.send(body)
        for p in pieces:
            time.sleep(0.05)
            c.send(p)
        qid = queued_id(c.reply())
        c.quit()
    assert body_of(server, qid, rcpt=RCPT) == b"Subject: split\r\n\r\nline\r\n.dotted\r\nlast\r\n"


def test_whole_session_one_byte_per_write(server):
    msg = b"Subject: slow\r\n\r\n.dot\r\nx\r\n"
    wire = (b"EHLO slow.example.test\r\nMAIL FROM:<s@example.test>\r\n"
            b"RCPT TO:<r@example.test>\r\nDATA\r\n")
    with connect(server) as c:
        c.greeting()
        c.send_slowly(wire, pause=0.002)
        check(c.reply(), 250)
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 354)
        c.send_slowly(dot_stuff(msg) + b".\r\n", pause=0.005)
        qid = queued_id(c.reply())
        c.quit()
    assert body_of(server, qid, helo="slow.example.test", rcpt=RCPT) == msg


def test_whole_transaction_in_one_write(server):
    """Client ignores the 354 round trip: body bytes right after DATA are the
    body (the parser pauses at DATA), and QUIT after them is a command."""
    msg = simple_message("eager")
    with connect(server) as c:
        c.start()
        c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<r@example.test>\r\nDATA\r\n"
               + dot_stuff(msg) + b".\r\nQUIT\r\n")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 354)
        qid = queued_id(c.reply())
        check(c.reply(), 221, "2.0.0")
        c.assert_closed()
    assert body_of(server, qid, rcpt=RCPT) == msg


def test_refused_data_does_not_swallow_or_run_pipelined_commands(server):
    """DATA refused (no recipients): the following pipelined lines are
    commands again, answered one by one, and nothing is queued."""
    with connect(server) as c:
        c.start()
        c.send(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<bad address>\r\nDATA\r\nNOOP\r\n")
        check(c.reply(), 250, "2.1.0")
        assert 500 <= c.reply().code <= 599
        check(c.reply(), 503, "5.5.1")
        check(c.reply(), 250, "2.0.0")
        c.quit()
    assert queue_by_id(server) == {}


def test_bdat_chunk_containing_commands_is_data(server):
    chunk = (b"Subject: bdat smuggle\r\n\r\nhello\r\n.\r\n" + SMUGGLED + b".\r\nQUIT\r\n")
    with connect(server) as c:
        c.start()
        c.mail_rcpt(SENDER, [RCPT])
        c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        qid = queued_id(c.reply())
        c.quit()
    q = no_evil(server)
    assert list(q) == [qid]
    assert body_of(server, qid, rcpt=RCPT) == chunk


def test_commands_after_quit_ignored(server):
    with connect(server) as c:
        c.start()
        c.send(b"QUIT\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<victim@y>\r\nDATA\r\nx\r\n.\r\n")
        check(c.reply(), 221, "2.0.0")
        assert c.read_to_close() == b"", "replies after QUIT"
    assert queue_by_id(server) == {}


def test_many_pipelined_noops(server):
    n = 2000
    with connect(server, timeout=30) as c:
        c.start()
        c.send(b"NOOP\r\n" * n + b"MAIL FROM:<s@example.test>\r\n")
        for _ in range(n):
            check(c.reply(), 250, "2.0.0")
        check(c.reply(), 250, "2.1.0")
        c.quit()


def test_default_recipient_limit(server):
    n = 1000
    with connect(server, timeout=60) as c:
        c.start()
        c.send(b"MAIL FROM:<s@example.test>\r\n"
               + b"".join(b"RCPT TO:<r%d@example.test>\r\n" % i for i in range(n + 2)))
        check(c.reply(), 250, "2.1.0")
        for _ in range(n):
            check(c.reply(), 250, "2.1.5")
        check(c.reply(), 452, "4.5.3")
        check(c.reply(), 452, "4.5.3")
        qid = queued_id(c.data(simple_message("many rcpts")))
        c.quit()
    entry = queue_by_id(server)[qid]
    assert [r["address"] for r in entry["recipients"]] == [f"r{i}@example.test" for i in range(n)]


def test_huge_line_bounded_memory_one_reply(server):
    """A 64 MiB command line: one 500 5.5.2 after it ends, memory stays flat."""
    with connect(server, timeout=120) as c:
        c.start()
        c.expect("NOOP", 250, "2.0.0")
        before = mem_snapshot(server.proc.pid)
        block = b"A" * MiB
        c.send(b"NOOP ")
        for _ in range(64):
            c.send(block)
        c.send(b"\r\nNOOP\r\n")
        check(c.reply(timeout=120), 500, "5.5.2")
        check(c.reply(), 250, "2.0.0")
        after = mem_snapshot(server.proc.pid)
        c.quit()
    growth = mem_growth(before, after)
    assert growth < 30 * MiB, f"server grew by {growth / MiB:.1f} MiB for a 64 MiB line"


def test_huge_line_without_crlf_then_disconnect(server):
    with connect(server, timeout=60) as c:
        c.start()
        block = b"B" * MiB
        for _ in range(8):
            c.send(block)
    # the server survived and serves the next client
    with connect(server) as c:
        c.start()
        c.send_message(SENDER, [RCPT], simple_message())
        c.quit()
    assert server.proc.poll() is None
    assert len(queue_by_id(server)) == 1


@pytest.mark.parametrize("cut", ["mid-line", "after-crlf", "after-crlf-dot", "after-crlf-dot-cr"])
def test_disconnect_mid_data_queues_nothing(server, cut):
    tail = {"mid-line": b"", "after-crlf": b"\r\n", "after-crlf-dot": b"\r\n.",
            "after-crlf-dot-cr": b"\r\n.\r"}[cut]
    c = open_data(server)
    c.send(b"Subject: cut\r\n\r\nsome body" + tail)
    time.sleep(0.1)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST
    time.sleep(0.3)
    assert server.proc.poll() is None
    assert queue_by_id(server) == {}
    with connect(server) as c2:
        c2.start()
        c2.send_message(SENDER, [RCPT], simple_message())
        c2.quit()
    assert len(queue_by_id(server)) == 1


def test_half_close_after_data_still_answered(server):
    """Client sends the whole message and shuts down its write side: the
    250 (or any final reply) still comes, and the message is queued."""
    msg = simple_message("half close")
    with open_data(server) as c:
        c.send(dot_stuff(msg) + b".\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        qid = queued_id(c.reply())
    assert body_of(server, qid, rcpt=RCPT) == msg


def test_half_close_with_quit_pipelined_behind_data(server):
    """The message, QUIT and the EOF in one burst: the EOF arrives while the
    message is being stored, yet both replies come, in order."""
    msg = simple_message("half close + quit")
    with open_data(server) as c:
        c.send(dot_stuff(msg) + b".\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        qid = queued_id(c.reply())
        assert c.reply().code == 221
    assert body_of(server, qid, rcpt=RCPT) == msg


def test_nul_only_body_accepted_byte_exact(server):
    msg = b"Subject: nul\r\n\r\n\x00\x00\x00\r\n\x00.\x00\r\n"
    with open_data(server) as c:
        c.send(msg + b".\r\n")
        qid = queued_id(c.reply())
        c.quit()
    assert body_of(server, qid, rcpt=RCPT) == msg


def test_error_flood_disconnects(server):
    """Unknown commands in one burst: served until the 20th error, then 421 4.7.0."""
    with connect(server) as c:
        c.start()
        c.send(b"GARBAGE\r\n" * 100)
        codes = []
        for _ in range(100):
            try:
                r = c.reply()
            except AssertionError:  # closed
                break
            codes.append((r.code, r.enhanced))
            if r.code == 421:
                break
        assert codes[-1] == (421, "4.7.0"), codes
        assert all(x == (500, "5.5.2") for x in codes[:-1]), codes
        assert len(codes) - 1 in (19, 20), codes
        c.read_to_close()


@pytest.mark.parametrize("line", [b"MAIL FROM:<s@example.test>\r\n\x00RCPT TO:<victim@y>",
                                  b"RCPT TO:<r@example.test>\rRCPT TO:<victim@y>"])
def test_nul_or_cr_cannot_split_commands(server, line):
    with connect(server) as c:
        c.start()
        if line.startswith(b"RCPT"):
            c.expect("MAIL FROM:<s@example.test>", 250, "2.1.0")
        c.send(line + b"\r\nNOOP\r\n")
        if line.startswith(b"MAIL"):
            check(c.reply(), 250, "2.1.0")  # the first line is a good MAIL
        check(c.reply(), 501, "5.5.2")
        check(c.reply(), 250, "2.0.0")
        c.expect("DATA", 503, "5.5.1")  # no recipient got in
        c.quit()


FAKE_STARTS = {"dot-lf": b".\n", "dot-cr": b".\r", "dot-crcrlf": b".\r\r\n", "dot-lf-dot-crlf": b".\n.\r\n"}


@pytest.mark.parametrize("fake", list(FAKE_STARTS.values()), ids=list(FAKE_STARTS))
def test_fake_end_at_start_of_data(server, fake):
    """The CR LF of the DATA line is a real line end: `.` + bare CR/LF right
    after 354 is not an end of data either."""
    with open_data(server) as c:
        c.send(fake + SMUGGLED + END)
        check(c.reply(), 550, "5.5.2")
        c.quit()
    assert no_evil(server) == {}


def test_oversized_message_then_pipelined_transaction(server_factory):
    """After a 552 the parser is back in command mode exactly at the real end."""
    srv = server_factory(config=config({"max_message_size": 100000}))
    big = b"Subject: big\r\n\r\n" + (b"q" * 98 + b"\r\n") * 1500
    msg2 = simple_message("after big")
    with open_data(srv) as c:
        c.send(big + b".\r\nRSET\r\nMAIL FROM:<s2@example.test>\r\nRCPT TO:<r2@example.test>\r\nDATA\r\n")
        check(c.reply(timeout=60), 552, "5.3.4")
        check(c.reply(), 250, "2.0.0")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        check(c.reply(), 354)
        c.send(dot_stuff(msg2) + b".\r\n")
        qid = queued_id(c.reply())
        c.quit()
    q = queue_by_id(srv)
    assert list(q) == [qid]
    check_entry(q[qid], sender="s2@example.test", rcpts=["r2@example.test"])
    assert body_of(srv, qid, rcpt="r2@example.test") == msg2


def test_early_talker_full_transaction_queues_nothing(server_factory):
    srv = server_factory(args=("--mynetworks", "10.0.0.0/8"),
                         config='local_domains = ["local.test"]\n')
    with connect(srv) as c:
        c.send(b"EHLO e.example.test\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<u@local.test>\r\n"
               b"DATA\r\nSubject: early\r\n\r\nx\r\n.\r\nQUIT\r\n")
        check(c.reply(timeout=20), 554, "5.5.0")
        rest = c.read_to_close()
        assert b"250" not in rest and b"354" not in rest, rest
    assert queue_by_id(srv) == {}


def test_binary_garbage_first(server):
    """A TLS ClientHello-ish blob instead of SMTP: errors or a hang-up, and
    the server goes on serving others."""
    blob = bytes.fromhex("16030100f4010000f00303") + bytes(range(256)) + b"\r\n"
    with connect(server) as c:
        c.greeting()
        c.send(blob)
        try:
            r = c.reply()
        except ConnectionClosed:  # a hang-up at once is acceptable too
            r = None
        assert r is None or 500 <= r.code <= 599, r
    with connect(server) as c:
        c.start()
        c.send_message(SENDER, [RCPT], simple_message())
        c.quit()
    assert server.proc.poll() is None
    assert len(queue_by_id(server)) == 1
