"""The SMTP client's callback lane (mta.delivery.lane) against the coroutine path
(SmtpDelivery._transaction): the same peers, the same second message on a pooled
connection, and the two must agree on every result, on the bytes the peer got, and
on how many connections were opened. The peers are scripted, since most outcomes
here (a refused RSET, garbage, a 421, silence) cannot be had from a real server on
demand; the lane against real peers runs in every end-to-end delivery test.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta import _native
from mta.delivery import OutMessage, OutRcpt, RcptResult, Target
from mta.delivery.smtp.lane import DONE, GARBAGE, SEND_DATA, STALE, UNEXPECTED, WAIT
from mta.delivery.smtp.protocol import Connection
from mta.delivery.smtp.client import SmtpOptions
from smtpkit import client

DEADLINE = 30.0
OK = b"250 2.0.0 Ok\r\n"
READS: list[bytes] = []  # every read of every Peer, in order (tests clear it first)


class Peer(asyncio.Protocol):
    """A pipelining ESMTP (or LMTP) peer. `script[n]` says how the n-th transaction on a
    connection goes: verb -> reply bytes ("RCPT" takes a list, one per recipient; "END"
    the end of data, a list in LMTP), or one of the actions "close", "silent", "garbage".
    Replies to one read go out in one write, as a pipelining server sends them."""

    def __init__(self, script: list[dict], log: list, ext: bytes, lmtp: bool) -> None:
        self.script, self.log, self.ext, self.lmtp = script, log, ext, lmtp
        self.buf = b""
        self.n = 0  # transactions begun on this connection (MAIL seen)
        self.rcpt = 0
        self.bdat = -1  # octets of BDAT content still to read
        self.data = False
        self.received = bytearray()
        self.reads: list[bytes] = []  # what each read brought, to see what came in one write

    def connection_made(self, t) -> None:
        self.t = t
        t.write(b"220 peer ESMTP\r\n")

    def _plan(self) -> dict:
        return self.script[min(self.n - 1, len(self.script) - 1)] if self.n else {}

    def _say(self, out: list, what, k: int = 0) -> bool:
        """Queue a reply; False when the script says to stop answering."""
        if isinstance(what, list):
            what = what[min(k, len(what) - 1)]
        if what == "close":
            self.t.write(b"".join(out))
            self.t.close()
            return False
        if what == "silent":
            return False
        if what == "garbage":
            what = b"2x0 this is not a reply\r\n"
        out.append(what)
        return True

    def data_received(self, data: bytes) -> None:
        self.reads.append(data)
        READS.append(data)
        self.buf += data
        out: list[bytes] = []
        while self._one(out):
            pass
        if out and not self.t.is_closing():
            self.t.write(b"".join(out))

    def _one(self, out: list) -> bool:
        if self.bdat >= 0:
            if len(self.buf) < self.bdat:
                return False
            self.received += self.buf[:self.bdat]
            self.log.append(bytes(self.received))
            self.buf, self.bdat = self.buf[self.bdat:], -1
            return self._end(out)
        if self.data:
            i = self.buf.find(b"\r\n.\r\n")
            if i < 0:
                return False
            self.log.append(self.buf[:i + 5])
            self.buf, self.data = self.buf[i + 5:], False
            return self._end(out)
        i = self.buf.find(b"\r\n")
        if i < 0:
            return False
        line, self.buf = self.buf[:i], self.buf[i + 2:]
        self.log.append(line)
        verb = line[:4].upper()
        plan = self._plan()
        if verb in (b"EHLO", b"LHLO"):
            out.append(b"250-peer\r\n250-PIPELINING\r\n" + self.ext + b"250 8BITMIME\r\n")
        elif verb == b"RSET":
            # RSET opens the next transaction on a pooled connection: its plan says
            nxt = self.script[min(self.n, len(self.script) - 1)]
            return self._say(out, nxt.get("RSET", OK))
        elif verb == b"MAIL":
            self.n += 1
            self.rcpt = 0
            return self._say(out, self._plan().get("MAIL", b"250 2.1.0 Ok\r\n"))
        elif verb == b"RCPT":
            self.rcpt += 1
            return self._say(out, plan.get("RCPT", b"250 2.1.5 Ok\r\n"), self.rcpt - 1)
        elif verb == b"DATA":
            reply = plan.get("DATA", b"354 go on\r\n")
            self.data = reply == b"354 go on\r\n" or reply.startswith(b"354")
            return self._say(out, reply)
        elif verb == b"BDAT":
            self.bdat = int(line.split()[1])
            self.received = bytearray()
        elif verb == b"QUIT":
            out.append(b"221 bye\r\n")
            self.t.write(b"".join(out))
            out.clear()
            self.t.close()
            return False
        else:
            out.append(b"502 5.5.1 what\r\n")
        return True

    def _end(self, out: list) -> bool:
        end = self._plan().get("END", b"250 2.0.0 queued\r\n")
        if self.lmtp and not isinstance(end, list):
            end = [end]
        if isinstance(end, list) and self.lmtp:
            accepted = self.rcpt  # the scripts refuse none in LMTP cases
            for k in range(accepted):
                if not self._say(out, end, k):
                    return False
            return True
        return self._say(out, end)


async def peer(script: list[dict], log: list, ext: bytes = b"", lmtp: bool = False):
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Peer(script, log, ext, lmtp), "127.0.0.1", 0)
    return srv, srv.sockets[0].getsockname()[1]


def message(*rcpts: str, data: bytes = b"Subject: t\r\n\r\nhello\r\n") -> OutMessage:
    return OutMessage("Q2", "from@src.test", tuple(OutRcpt(r, index=i) for i, r in enumerate(rcpts)), data)


async def second_message(script: list[dict], msg: OutMessage, lane: bool, ext: bytes = b"",
                         lmtp: bool = False):
    """Deliver one message to open a pooled connection, then `msg` on it by the lane
    (submit) or the coroutine path (deliver): (results, what the peer got, connections)."""
    log: list = []
    srv, port = await peer([{}] + script, log, ext, lmtp)
    d = client(0.5)
    opts = SmtpOptions(helo="client.test", tls="none", connect_timeout=5.0, lmtp=lmtp)
    targets = [Target("mx.test", "127.0.0.1", port)]
    first = await d.deliver("k", targets, opts, message("a@dst.test"))
    assert first[0].code == 250
    mark = len(log)
    if lane:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        assert d.submit("k", targets, opts, msg, fut.set_result, fut.set_exception)
        rows = await fut
        results = [RcptResult(*row) for row in rows]
    else:
        results = await d.deliver("k", targets, opts, msg)
    results = [r._replace(text=r.text.replace(f"]:{port}", "]:PORT")) for r in results]  # two peers
    await asyncio.sleep(0.05)  # what the peer got after the results
    opened = d.connections_opened
    idle = sum(len(v) for v in d._idle.values())
    await d.close()
    srv.close()
    return results, log[mark:], opened, idle, d.lanes


SCENARIOS = {
    "delivered": ([{}], ("b@dst.test", "c@dst.test")),
    "one recipient refused": ([{"RCPT": [b"250 2.1.5 Ok\r\n", b"550 5.1.1 <c@dst.test>: no such user\r\n"]}],
                              ("b@dst.test", "c@dst.test")),
    "sender refused": ([{"MAIL": b"553 5.1.8 bad sender\r\n", "RCPT": b"503 5.5.1 need MAIL\r\n",
                         "DATA": b"503 5.5.1 need RCPT\r\n"}], ("b@dst.test",)),
    "all refused, 354 anyway": ([{"RCPT": b"450 4.2.0 busy\r\n", "DATA": b"354 go\r\n"}], ("b@dst.test",)),
    "all refused, DATA refused": ([{"RCPT": b"550 5.1.1 no\r\n", "DATA": b"554 5.5.1 no valid recipients\r\n"}],
                                  ("b@dst.test",)),
    "DATA refused": ([{"DATA": b"451 4.3.0 not now\r\n"}], ("b@dst.test",)),
    "end of data deferred": ([{"END": b"451 4.3.0 try later\r\n"}], ("b@dst.test", "c@dst.test")),
    "end of data bounced, multi-line": ([{"END": b"554-5.7.1 spam\r\n554-5.7.1 more\r\n554 5.7.1 text\r\n"}],
                                        ("b@dst.test",)),
    "no enhanced code": ([{"END": b"250 queued\r\n"}], ("b@dst.test",)),
    "RSET refused": ([{"RSET": b"421 4.4.2 idle too long\r\n"}], ("b@dst.test",)),
    "closed at RSET": ([{"RSET": "close"}], ("b@dst.test",)),
    "closed before DATA's reply": ([{"DATA": "close"}], ("b@dst.test",)),
    "closed at the end of data": ([{"END": "close"}], ("b@dst.test", "c@dst.test")),
    "silent at RCPT": ([{"RCPT": "silent"}], ("b@dst.test",)),
    "silent at the end of data": ([{"END": "silent"}], ("b@dst.test",)),
    "garbage at DATA": ([{"DATA": "garbage"}], ("b@dst.test",)),
    "421 at the end of data": ([{"END": b"421 4.3.2 shutting down\r\n"}], ("b@dst.test",)),
    "dot-stuffing": ([{}], ("b@dst.test",)),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_lane_decides_as_the_coroutine_path(name):
    script, rcpts = SCENARIOS[name]
    data = b"Subject: t\r\n\r\n.leading dot\r\nbare\nlf\r\n" if name == "dot-stuffing" else \
        b"Subject: t\r\n\r\nhello\r\n"
    msg = message(*rcpts, data=data)

    async def both():
        return (await asyncio.wait_for(second_message(script, msg, lane=False), DEADLINE),
                await asyncio.wait_for(second_message(script, msg, lane=True), DEADLINE))

    coro, lane = asyncio.run(both())
    assert lane[0] == coro[0]  # results, texts included
    assert lane[1] == coro[1]  # what the peer received
    assert lane[2:4] == coro[2:4]  # connections opened, pooled afterwards
    assert lane[4] == 0  # no lane left in flight
    assert len(lane[0]) == len(rcpts)


def test_the_outcomes_are_what_the_peer_said():
    """A few of the scenarios above, spelled out (both paths agree, so this pins both)."""
    async def go(name):
        script, rcpts = SCENARIOS[name]
        return await second_message(script, message(*rcpts), lane=True)

    res, _, opened, idle, _ = asyncio.run(go("one recipient refused"))
    assert [(r.code, r.enhanced, r.text) for r in res] == [
        (250, "2.0.0", "queued"), (550, "5.1.1", "<c@dst.test>: no such user")]
    assert (opened, idle) == (1, 1)
    res, log, opened, idle, _ = asyncio.run(go("RSET refused"))
    assert res[0].code == 250 and opened == 2 and idle == 1  # retried on a new connection
    res, _, _, idle, _ = asyncio.run(go("silent at the end of data"))
    assert (res[0].code, res[0].enhanced) == (451, "4.4.2")
    assert res[0].text == "mx.test[127.0.0.1]:PORT: timed out waiting for the reply to the end of data"
    assert idle == 0
    res, _, _, idle, _ = asyncio.run(go("421 at the end of data"))
    assert res[0].code == 421 and idle == 0  # not pooled after a 421


@pytest.mark.parametrize("name", ["delivered", "one recipient refused", "end of data deferred", "closed at RSET"])
def test_chunking_peer_agrees_too(name):
    script, rcpts = SCENARIOS[name]
    msg = message(*rcpts)

    async def both():
        return (await second_message(script, msg, lane=False, ext=b"250-CHUNKING\r\n"),
                await second_message(script, msg, lane=True, ext=b"250-CHUNKING\r\n"))

    coro, lane = asyncio.run(both())
    assert lane[:4] == coro[:4]
    if name == "delivered":
        assert any(x.startswith(b"BDAT") for x in lane[1])


@pytest.mark.parametrize("end", [b"250 2.0.0 Ok\r\n", [b"250 2.0.0 one\r\n", b"452 4.2.2 full\r\n"], ["close"]])
def test_lmtp_per_recipient_replies_agree(end):
    msg = message("b@dst.test", "c@dst.test")

    async def both():
        script = [{"END": end}]
        return (await second_message(script, msg, lane=False, lmtp=True),
                await second_message(script, msg, lane=True, lmtp=True))

    coro, lane = asyncio.run(both())
    assert lane[:4] == coro[:4]


def test_submit_declines_what_the_coroutine_path_must_do():
    async def go():
        log: list = []
        srv, port = await peer([{}], log, ext=b"250-SIZE 100\r\n")
        d = client(0.5)
        opts = SmtpOptions(helo="client.test", tls="none", max_connections=1)
        targets = [Target("mx.test", "127.0.0.1", port)]
        never = lambda *_: pytest.fail("called")  # noqa: E731
        small = message("a@dst.test")
        first = d.submit("k", targets, opts, small, never, never)  # nothing pooled yet
        await d.deliver("k", targets, opts, small)
        big = message("a@dst.test", data=b"x" * 200 + b"\r\n")
        too_big = d.submit("k", targets, opts, big, never, never)  # over the peer's SIZE
        utf8 = d.submit("k", targets, opts, message("ü@dst.test"), never, never)  # no SMTPUTF8
        pooled = sum(len(v) for v in d._idle.values())  # each gave the connection back
        fut = asyncio.get_running_loop().create_future()
        taken = d.submit("k", targets, opts, small, fut.set_result, fut.set_exception)
        rows = await fut
        await d.close()
        closed = d.submit("k", targets, opts, small, never, never)
        srv.close()
        return first, too_big, utf8, pooled, taken, rows, closed

    first, too_big, utf8, pooled, taken, rows, closed = asyncio.run(go())
    assert (first, too_big, utf8, taken, closed) == (False, False, False, True, False)
    assert pooled == 1
    assert rows[0][:3] == ("a@dst.test", 250, "2.0.0")


def test_jobs_wait_at_the_gate_in_order_and_take_the_freed_connection():
    """max_connections=1 and the connection busy: jobs for the lane queue at the gate,
    behind and before coroutines waiting there, and each takes the pooled connection
    its place comes with; nothing opens a second connection."""
    async def go():
        log: list = []
        srv, port = await peer([{}], log)
        d = client(0.5)
        opts = SmtpOptions(helo="client.test", tls="none", max_connections=1)
        targets = [Target("mx.test", "127.0.0.1", port)]
        await d.deliver("k", targets, opts, message("first@dst.test"))
        loop = asyncio.get_running_loop()
        futs = {n: loop.create_future() for n in "abd"}
        order: list[str] = []

        def on(n):
            return lambda rows: (order.append(n), futs[n].set_result(rows))
        assert d.submit("k", targets, opts, message("a@dst.test"), on("a"), futs["a"].set_exception)
        assert d.submit("k", targets, opts, message("b@dst.test"), on("b"), futs["b"].set_exception)
        queued = d.lanes
        c = loop.create_task(d.deliver("k", targets, opts, message("c@dst.test")))
        await asyncio.sleep(0)  # c waits at the gate, behind b
        assert d.submit("k", targets, opts, message("d@dst.test"), on("d"), futs["d"].set_exception)
        rows = {n: await f for n, f in futs.items()}
        c_res = await c
        lanes_after = d.lanes
        await d.close()
        srv.close()
        return queued, rows, c_res, log, d.connections_opened, lanes_after, order

    queued, rows, c_res, log, opened, lanes_after, order = asyncio.run(go())
    assert queued == 2  # a on the connection, b queued: both answered on callbacks
    assert all(r[0][1:3] == (250, "2.0.0") for r in rows.values()), rows
    assert c_res[0].code == 250
    rcpts = [x.split(b"<")[1].split(b"@")[0] for x in log if x.startswith(b"RCPT TO:")]
    assert rcpts == [b"first", b"a", b"b", b"c", b"d"]  # the order they asked
    assert order == ["a", "b", "d"]
    assert opened == 1 and lanes_after == 0


def test_a_queued_job_whose_connection_is_gone_takes_the_coroutine_path():
    """The delivery in flight ends with a 421 (its connection is not pooled again): the
    job queued behind it opens a new connection on the coroutine path, with its place."""
    async def go():
        log: list = []
        srv, port = await peer([{}, {"END": b"421 4.3.2 shutting down\r\n"}, {}], log)
        d = client(0.5)
        opts = SmtpOptions(helo="client.test", tls="none", max_connections=1)
        targets = [Target("mx.test", "127.0.0.1", port)]
        await d.deliver("k", targets, opts, message("first@dst.test"))
        loop = asyncio.get_running_loop()
        a, b = loop.create_future(), loop.create_future()
        assert d.submit("k", targets, opts, message("a@dst.test"), a.set_result, a.set_exception)
        assert d.submit("k", targets, opts, message("b@dst.test"), b.set_result, b.set_exception)
        ra, rb = await a, await b
        gates, lanes = dict(d._gates), d.lanes
        await d.close()
        srv.close()
        return ra, rb, d.connections_opened, gates, lanes

    ra, rb, opened, gates, lanes = asyncio.run(go())
    assert ra[0][1] == 421 and rb[0][1:3] == (250, "2.0.0")
    assert opened == 2 and gates == {} and lanes == 0  # the place was given back


async def _pipelined(script: list[dict], names: str, per_connection: int = 100, ext: bytes = b""):
    """`names` submitted at once to a destination with one connection, pooled by a first
    delivery: the first runs on it, the rest wait at the gate and are pipelined behind
    each other's data. (rows by name, the peer's log, its reads, connections, chained)."""
    log: list = []
    READS.clear()
    srv, port = await peer([{}] + script, log, ext)
    d = client(0.5)
    opts = SmtpOptions(helo="client.test", tls="none", max_connections=1,
                       max_messages_per_connection=per_connection)
    targets = [Target("mx.test", "127.0.0.1", port)]
    await d.deliver("k", targets, opts, message("first@dst.test"))
    loop = asyncio.get_running_loop()
    futs = {n: loop.create_future() for n in names}
    for n in names:
        assert d.submit("k", targets, opts, message(f"{n}@dst.test"), futs[n].set_result, futs[n].set_exception)
    rows = {n: await asyncio.wait_for(f, DEADLINE) for n, f in futs.items()}
    state = (d.connections_opened, d.chained, d.lanes, dict(d._gates))
    await d.close()
    srv.close()
    return rows, log, list(READS), state


def _rcpts(log: list) -> list[bytes]:
    return [x.split(b"<")[1].split(b"@")[0] for x in log if isinstance(x, bytes) and x.startswith(b"RCPT TO:")]


def test_queued_jobs_are_pipelined_behind_the_data_one_round_trip_each():
    """Jobs waiting at the gate go behind the data of the transaction before them, in
    the same write, with no RSET: one connection, every message delivered in order."""
    rows, log, reads, (opened, chained, lanes, gates) = asyncio.run(_pipelined([{}], "abcd"))
    assert all(r[0][1:4] == (250, "2.0.0", "queued") for r in rows.values()), rows
    assert _rcpts(log) == [b"first", b"a", b"b", b"c", b"d"]
    assert sum(1 for x in log if x == b"RSET") == 1  # before a, on the pooled connection; none after
    assert opened == 1 and chained == 3 and lanes == 0 and gates == {}
    for n in b"bcd":  # each envelope came in the same read as the message before it
        assert any(b".\r\nMAIL FROM:" in r and b"<%c@dst.test>" % n in r for r in reads), (n, reads)


def test_with_chunking_the_envelope_goes_behind_the_bdat_chunk():
    rows, log, reads, (opened, chained, lanes, gates) = asyncio.run(
        _pipelined([{}], "abc", ext=b"250-CHUNKING\r\n"))
    assert all(r[0][1:4] == (250, "2.0.0", "queued") for r in rows.values()), rows
    assert _rcpts(log) == [b"first", b"a", b"b", b"c"]
    assert sum(1 for x in log if x == b"RSET") == 1 and not any(x == b"DATA" for x in log)
    assert opened == 1 and chained == 2 and lanes == 0 and gates == {}
    for n in b"bc":  # the next envelope in the read that brought the chunk before it
        assert any(b"hello\r\nMAIL FROM:" in r and b"<%c@dst.test>" % n in r for r in reads), (n, reads)


def test_a_pipelined_job_whose_connection_closes_first_starts_again_elsewhere():
    """The server closes at a's end of data, unanswered: a is deferred, as ever; b, whose
    commands went behind a's data and got no reply, was not started at the server and is
    delivered over a new connection."""
    rows, log, _, (opened, chained, lanes, gates) = asyncio.run(_pipelined([{"END": "close"}, {}], "ab"))
    assert rows["a"][0][1:3] == (451, "4.4.2") and "end of data" in rows["a"][0][3]
    assert rows["b"][0][1:4] == (250, "2.0.0", "queued")
    assert opened == 2 and chained == 1 and lanes == 0 and gates == {}


def test_a_421_at_the_end_of_data_sends_the_pipelined_job_elsewhere():
    rows, _, _, (opened, chained, lanes, gates) = asyncio.run(
        _pipelined([{"END": b"421 4.3.2 shutting down\r\n"}, {}], "ab"))
    assert rows["a"][0][1:3] == (421, "4.3.2")
    assert rows["b"][0][1:4] == (250, "2.0.0", "queued")
    assert opened == 2 and chained == 1 and lanes == 0 and gates == {}


def test_a_pipelined_job_refused_at_mail_is_decided_and_the_connection_goes_on():
    rows, log, _, (opened, chained, lanes, gates) = asyncio.run(_pipelined(
        [{}, {"MAIL": b"452 4.3.1 full\r\n", "RCPT": b"503 5.5.1 need MAIL\r\n",
              "DATA": b"503 5.5.1 need RCPT\r\n"}, {}], "abc"))
    assert rows["a"][0][1:3] == (250, "2.0.0")
    assert rows["b"][0][1:4] == (452, "4.3.1", "full")
    assert rows["c"][0][1:3] == (250, "2.0.0")
    assert opened == 1 and lanes == 0 and gates == {}
    assert chained == 1  # b refused (no data to write behind): c waited for b's end, then RSET
    assert _rcpts(log) == [b"first", b"a", b"b", b"c"]


def test_a_pipelined_job_that_times_out_untouched_starts_again_elsewhere():
    rows, _, _, (opened, chained, lanes, gates) = asyncio.run(_pipelined([{"END": "silent"}, {}], "ab"))
    assert rows["a"][0][1:3] == (451, "4.4.2") and "timed out" in rows["a"][0][3]
    assert rows["b"][0][1:4] == (250, "2.0.0", "queued")
    assert opened == 2 and chained == 1 and lanes == 0 and gates == {}


def test_pipelining_stops_at_the_connection_message_limit():
    """messages_per_connection = 2 (first and a): b is not pipelined on it, and takes a
    new connection once a's ends and closes it."""
    rows, _, _, (opened, chained, lanes, gates) = asyncio.run(_pipelined([{}], "ab", per_connection=2))
    assert all(r[0][1:3] == (250, "2.0.0") for r in rows.values())
    assert opened == 2 and chained == 0 and lanes == 0 and gates == {}


def test_settle_waits_for_transactions_in_flight():
    async def go():
        log: list = []
        srv, port = await peer([{}, {"END": "silent"}], log)
        d = client(0.5)
        opts = SmtpOptions(helo="client.test", tls="none")
        targets = [Target("mx.test", "127.0.0.1", port)]
        await d.deliver("k", targets, opts, message("a@dst.test"))
        got: list = []
        assert d.submit("k", targets, opts, message("b@dst.test"), got.append, got.append)
        in_flight = d.lanes
        await d.settle(5.0)  # the 0.5 s reply timeout ends it
        srv.close()
        return in_flight, d.lanes, got

    in_flight, after, got = asyncio.run(go())
    assert (in_flight, after) == (1, 0)
    assert got[0][0][1] == 451


# --- the Rust transaction through its binding --------------------------------------

REPLIES = (b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250-2.1.5 first\r\n250 2.1.5 Ok\r\n550 5.1.1 no\r\n"
           b"354 go\r\n")


def _feed_all(chunks: list[bytes]) -> tuple[list[int], tuple]:
    parser = _native.ReplyParser(8192)
    tx = _native.ClientTransaction(2, reset=True, chunking=False, lmtp=False)
    steps = [tx.feed(parser, c) for c in chunks]
    return [s for s in steps if s != WAIT], (tx.waiting_for, tx.done)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(REPLIES)), max_size=8))
def test_the_same_steps_for_every_split_of_the_replies(cuts):
    cuts = sorted(set(cuts))
    chunks = [REPLIES[a:b] for a, b in zip([0] + cuts, cuts + [len(REPLIES)])]
    assert _feed_all(chunks) == _feed_all([REPLIES])
    assert _feed_all([REPLIES]) == ([SEND_DATA], ("the end of data", False))


# A transaction's end of data, then the MAIL, RCPT and DATA replies of the one pipelined
# behind it (chain/adopt), as a server may answer them in one write.
CHAINED = b"250 2.0.0 queued\r\n250 2.1.0 Ok\r\n250-2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(CHAINED)), max_size=8))
def test_a_chained_transaction_takes_the_replies_behind_the_first_for_every_split(cuts):
    cuts = sorted(set(cuts))
    chunks = [CHAINED[a:b] for a, b in zip([0] + cuts, cuts + [len(CHAINED)])]
    parser = _native.ReplyParser(8192)
    first = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    assert first.feed(parser, b"250 Ok\r\n250 Ok\r\n354 go\r\n") == SEND_DATA
    first.chain()
    second = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    steps: list[tuple[str, int]] = []
    tx = first
    for c in chunks:
        step = tx.feed(parser, c)
        if step != WAIT:
            steps.append(("first" if tx is first else "second", step))
        if tx is first and step == DONE:
            assert second.untouched
            second.adopt(first)  # what came behind the first's last reply, if anything
            tx = second
            if (step := tx.feed(parser, b"")) != WAIT:
                steps.append(("second", step))
    assert steps == [("first", DONE), ("second", SEND_DATA)]
    assert not second.untouched and second.waiting_for == "the end of data"
    assert second.feed(parser, b"250 2.0.0 again\r\n") == DONE
    assert first.rows([("a@x",)], None, None, None)[0][1:4] == (250, "2.0.0", "queued")
    assert second.rows([("b@x",)], None, None, None)[0][1:4] == (250, "2.0.0", "again")


def test_without_chain_a_reply_behind_the_last_is_unexpected():
    parser = _native.ReplyParser(8192)
    tx = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    assert tx.feed(parser, b"250 Ok\r\n250 Ok\r\n354 go\r\n") == SEND_DATA
    assert tx.feed(parser, CHAINED) == UNEXPECTED


def test_binding_steps_for_stale_unexpected_and_garbage():
    p = _native.ReplyParser(8192)
    tx = _native.ClientTransaction(1, reset=True, chunking=False, lmtp=False)
    assert tx.feed(p, b"421 4.4.2 bye\r\n250 2.1.0 Ok\r\n") == STALE  # the rest does not matter
    p = _native.ReplyParser(8192)
    tx = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    assert tx.feed(p, b"250 Ok\r\n250 Ok\r\n354 go\r\n") == SEND_DATA
    assert tx.feed(p, b"250 2.0.0 Ok\r\n250 2.0.0 again\r\n") == UNEXPECTED
    assert tx.done  # decided before the stray reply
    assert tx.rows([("a@x",)], "mx", "192.0.2.1", "none") == [
        ("a@x", 250, "2.0.0", "Ok", "mx", "192.0.2.1", "none", None, None)]
    p = _native.ReplyParser(8192)
    tx = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    assert tx.feed(p, b"250 Ok\r\nnot a reply\r\n") == GARBAGE
    assert p.error is not None and tx.waiting_for == "RCPT TO"
    with pytest.raises(ValueError):
        tx.rows([("a@x",)], None, None, None)  # not done
    tx.fail("mx: broken")
    assert tx.rows([("a@x",)], None, None, None)[0][1:4] == (451, "4.4.2", "mx: broken")
    p = _native.ReplyParser(8192)
    tx = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    p = _native.ReplyParser(8192)
    tx = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    assert tx.feed(p, b"250 Ok\r\n250 Ok\r\n354 go\r\n") == SEND_DATA
    assert tx.feed(p, b"250 2.0.0 queued\r\n") == DONE and tx.done
    p = _native.ReplyParser(8192)
    tx = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    # the end-of-data reply before the data was sent: out of sync, nothing decided by it
    assert tx.feed(p, b"250 Ok\r\n250 Ok\r\n354 go\r\n250 Ok\r\n") == UNEXPECTED
    assert not tx.done


class _FullBuffer(asyncio.Transport):
    """A peer in memory whose socket buffer fills with the data phase: the commands get
    their replies on the next loop turn, the data pauses writing, and `resume_after`
    seconds later (None: never) writing resumes and the end of data is answered."""

    def __init__(self, conn: Connection, resume_after: float | None) -> None:
        super().__init__()
        self.conn, self.resume_after, self.closed = conn, resume_after, False
        self.loop = asyncio.get_running_loop()

    def write(self, data) -> None:
        self.loop.call_soon(self.conn.data_received, b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")

    def writelines(self, parts) -> None:
        self.conn.pause_writing()
        if self.resume_after is not None:
            self.loop.call_later(self.resume_after, self._drained)

    def _drained(self) -> None:
        self.conn.resume_writing()
        self.conn.data_received(b"250 2.0.0 queued\r\n")

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close


async def _through_a_full_buffer(lane: bool, resume_after: float | None) -> list:
    loop = asyncio.get_running_loop()
    d = client(0.2)  # data_block_timeout 0.2 s
    target = Target("mx.test", "127.0.0.1", 25)
    conn = Connection(target, loop)
    conn.connection_made(_FullBuffer(conn, resume_after))
    conn.ext, conn.messages = {"PIPELINING": ""}, 1  # as pooled after a first message
    d._idle["k"] = [conn]
    opts = SmtpOptions(helo="client.test", tls="none")
    msg = message("b@dst.test")
    if not lane:
        return list(await d.deliver("k", [target], opts, msg))
    fut = loop.create_future()
    assert d.submit("k", [target], opts, msg, fut.set_result, fut.set_exception)
    return [RcptResult(*row) for row in await fut]


@pytest.mark.parametrize("resume_after", [0.05, None])
def test_a_paused_transport_is_waited_for_and_timed_out_alike(resume_after):
    async def both():
        return (await _through_a_full_buffer(False, resume_after),
                await _through_a_full_buffer(True, resume_after))

    coro, lane = asyncio.run(both())
    assert lane == coro
    if resume_after is None:
        assert (lane[0].code, lane[0].text) == (451, "mx.test[127.0.0.1]:25: timed out while sending the message")
    else:
        assert (lane[0].code, lane[0].text) == (250, "queued")


def test_a_bug_in_the_lane_answers_the_job_with_an_error(monkeypatch):
    from mta.delivery.smtp import lane as lane_mod

    def broken(self):
        raise RuntimeError("a bug")

    monkeypatch.setattr(lane_mod.Lane, "_send_data", broken)

    async def go():
        loop = asyncio.get_running_loop()
        d = client(0.2)
        target = Target("mx.test", "127.0.0.1", 25)
        conn = Connection(target, loop)
        conn.connection_made(_FullBuffer(conn, None))
        conn.ext, conn.messages = {"PIPELINING": ""}, 1
        d._idle["k"] = [conn]
        got: list = []
        assert d.submit("k", [target], SmtpOptions(helo="client.test", tls="none"), message("b@dst.test"),
                        lambda rows: got.append(("done", rows)), lambda text: got.append(("error", text)))
        await asyncio.sleep(0.5)  # past the reply timeout: it must not answer a second time
        return got, d.lanes, d._gates, conn.transport.is_closing()

    got, lanes, gates, closed = asyncio.run(go())
    assert got == [("error", "internal error in the delivery lane")]
    assert (lanes, gates, closed) == (0, {}, True)
