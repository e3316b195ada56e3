"""Regression guard for the accept path's Rust parts (issue 4 §3), run with
`pytest benches/ --benchmark-only` (pytest-benchmark; the `bench` extra): the SMTP parser
over a realistic pipelined corpus (MB/s), `received_header` (calls/s), and spool append
with group commit (messages/s, syncs/s). Rates (from the median round) go into each benchmark's extra_info,
printed at the end of the run by conftest.py.
"""

from __future__ import annotations

import random
import select
import time
from collections import deque

import pytest

from mta import _native

# ---------------------------------------------------------------------------
# parser: a pipelined session of many transactions, messages of varied sizes and line lengths
# ---------------------------------------------------------------------------

SIZES = [600, 1024, 1024, 1024, 2048, 4096, 4096, 16384, 65536, 262144]  # mostly small, a few large
LINE_LENGTHS = [0, 1, 20, 60, 76, 78, 200, 998]


def _body(rng: random.Random, size: int) -> bytes:
    hdr = (b"From: Sender Name <from@example.test>\r\nTo: <to@example.test>\r\n"
           b"Subject: benchmark message with a subject line of ordinary length\r\n"
           b"Date: Sat, 28 Nov 2026 13:00:00 +0000\r\nMessage-ID: <%d@client.example.test>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Received: from relay.example.test (relay.example.test [192.0.2.1])\r\n"
           b"\tby client.example.test with ESMTP id 4ABCD; Sat, 28 Nov 2026 12:59:59 +0000\r\n\r\n"
           % rng.randrange(10**12))
    out, n = [hdr], len(hdr)
    alphabet = b"abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ 0123456789 .,;:-"
    while n < size:
        k = rng.choice(LINE_LENGTHS)
        line = bytes(rng.choice(alphabet) for _ in range(min(k, 40))) * (k // 40 + 1)
        line = line[:k]
        if rng.random() < 0.02:
            line = b"." + line  # a line that needs dot-stuffing
        if line.startswith(b"."):
            line = b"." + line
        out.append(line + b"\r\n")
        n += len(line) + 2
    return b"".join(out)


def build_corpus(transactions: int = 120, seed: int = 4) -> tuple[bytes, int]:
    """The client's side of one pipelined ESMTP session; returns (bytes, messages)."""
    rng = random.Random(seed)
    parts = [b"EHLO client.example.test\r\n"]
    for i in range(transactions):
        size = rng.choice(SIZES)
        parts.append(b"MAIL FROM:<sender%d@example.test> SIZE=%d BODY=8BITMIME\r\n" % (i, size))
        for r in range(rng.choice([1, 1, 1, 2, 5])):
            parts.append(b"RCPT TO:<rcpt%d@example.test>\r\n" % r)
        parts.append(b"DATA\r\n")
        parts.append(_body(rng, size) + b".\r\n")
        if rng.random() < 0.1:
            parts.append(b"RSET\r\nNOOP\r\n")
    parts.append(b"QUIT\r\n")
    return b"".join(parts), transactions


CORPUS, CORPUS_MESSAGES = build_corpus()


def parse_session(data: bytes, read_size: int) -> int:
    """Drive the parser as the session does: feed socket-sized reads, start_data after DATA."""
    parser = _native.SmtpParser()
    ended = 0
    view = memoryview(data)
    for off in range(0, len(data), read_size):
        queue = deque(parser.feed(view[off:off + read_size]))
        while queue:
            ev = queue.popleft()
            if ev[0] == "cmd" and ev[1] == "DATA":
                queue.extend(parser.start_data(_native.Message()))
            elif ev[0] == "data_end":
                ended += 1
    return ended


@pytest.mark.parametrize("read_size", [4096, 65536])
def test_parser_throughput(benchmark, read_size):
    assert parse_session(CORPUS, read_size) == CORPUS_MESSAGES  # the corpus is well-formed
    benchmark(parse_session, CORPUS, read_size)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(corpus_bytes=len(CORPUS), messages=CORPUS_MESSAGES,
                                mb_per_s=round(len(CORPUS) / med / 1e6, 1),
                                messages_per_s=round(CORPUS_MESSAGES / med))


# ---------------------------------------------------------------------------
# Received header
# ---------------------------------------------------------------------------

def test_received_header(benchmark):
    kw = dict(helo="client.example.test", reverse_name=None, ip="127.0.0.1", hostname="mx.example.test",
              protocol="ESMTP", queue_id="4FkR2x0Abc1234", recipient="to@example.test")
    now = time.time()

    def hundred():
        for _ in range(100):
            _native.received_header(timestamp=now, **kw)

    benchmark(hundred)
    benchmark.extra_info["calls_per_s"] = round(100 / benchmark.stats.stats.median)


# ---------------------------------------------------------------------------
# the delivery log's line (one per recipient outcome, on the worker's event loop)
# ---------------------------------------------------------------------------

def test_delivery_log_line(benchmark):
    from mta.delivery import RcptResult
    from mta.delivery.deliverylog import DeliveryLog

    result = RcptResult("to@example.test", 250, "2.0.0", "Ok: queued as 4FkR2x0Abc1234", "relay.example.test",
                        "127.0.0.1", "none", None, None)
    now = time.time()

    def hundred():
        for _ in range(100):
            DeliveryLog.format(queue_id="4FkR2x0Abc1234", recipient="to@example.test", status="delivered",
                               result=result, attempt=1, arrival=now - 0.25, now=now)

    benchmark(hundred)
    benchmark.extra_info["calls_per_s"] = round(100 / benchmark.stats.stats.median)


# ---------------------------------------------------------------------------
# spool append with group commit (fdatasync on)
# ---------------------------------------------------------------------------

MESSAGES_PER_ROUND = 10000
PAYLOAD = _body(random.Random(1), 1024)
RECEIVED = _native.received_header(helo="client.example.test", reverse_name=None, ip="127.0.0.1",
                                   hostname="mx.example.test", protocol="ESMTP", queue_id="X",
                                   recipient="to@example.test", timestamp=time.time())


def append_round(spool: _native.Spool, count: int, inflight: int) -> None:
    """Submit `count` 1 KiB messages, at most `inflight` unacknowledged (like that many
    sessions), waking on notify_fd and draining completions() once per wake-up."""
    fd = spool.notify_fd
    sent = done = 0
    token = 0
    while done < count:
        while sent < count and sent - done < inflight:
            msg = spool.new_message()
            spool.prepend(msg, RECEIVED)
            msg.push(PAYLOAD)
            token += 1
            spool.submit(token, spool.new_queue_id(), msg, sender="from@example.test",
                         recipients=[("to@example.test", None, None)], helo="client.example.test",
                         client_ip="127.0.0.1")
            sent += 1
        select.select([fd], [], [], 10)
        for _tok, err in spool.completions():
            assert err is None, err
            done += 1


@pytest.mark.parametrize("inflight", [50, MESSAGES_PER_ROUND], ids=["inflight50", "inflight_all"])
def test_spool_group_commit(benchmark, tmp_path, inflight):
    spool = _native.Spool(str(tmp_path / "spool"))
    try:
        before = spool.stats()
        benchmark.pedantic(append_round, args=(spool, MESSAGES_PER_ROUND, inflight), rounds=7, iterations=1,
                           warmup_rounds=1)
        after = spool.stats()
    finally:
        spool.close()
    rounds = after["messages"] - before["messages"]  # warm-up round included
    n_rounds = rounds // MESSAGES_PER_ROUND
    med = benchmark.stats.stats.median
    syncs = (after["syncs"] - before["syncs"]) / n_rounds
    benchmark.extra_info.update(messages_per_round=MESSAGES_PER_ROUND, inflight=inflight,
                                messages_per_s=round(MESSAGES_PER_ROUND / med),
                                syncs_per_s=round(syncs / med), messages_per_sync=round(MESSAGES_PER_ROUND / syncs, 1))
