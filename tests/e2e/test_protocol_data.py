"""End-to-end tests of the message data: bare CR/LF in DATA, BDAT chunks, size limits (with
bounded memory), the header block, hop counts and the corners of the data phase, checked by
reply code and enhanced code and byte for byte in the spool.
"""

from __future__ import annotations

import hashlib
import re

import pytest

from helpers import (
    Client, MiB, assert_queue_empty, body_of, check, check_enhanced_class, check_entry, config, connect, mem_growth,
    mem_snapshot, queue_by_id, queued_id, simple_message,
)

pytestmark = pytest.mark.shared_server  # one server for the module (conftest.py, server)

DOMAINS = dict(local_domains=["local.test"], relay_domains=["relay.test"])


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
