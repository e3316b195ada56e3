"""Delay notices: the decision (when, which recipients, NOTIFY, the null sender, once) as
tables, the stored-reply parser with a property, and the queue manager sending one through
a real store with a fake clock, the flag surviving a restart."""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import os
from typing import NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mta.delivery import OutMessage, OutRcpt, RcptResult
from mta.queue import delay
from test_queue_manager import BODY, SCHEDULE, Harness, Wire, run

HOUR = 3600.0


class Spooled(NamedTuple):
    """A spooled recipient as the store's envelope shows it (the fields delay.waiting reads)."""

    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None
    last_reply: str | None = None


# --- when ----------------------------------------------------------------------

@pytest.mark.parametrize("delay_warning, warned, waited, want", [
    (4 * HOUR, False, 4 * HOUR, True),        # exactly the delay: due
    (4 * HOUR, False, 5 * HOUR, True),
    (4 * HOUR, False, 4 * HOUR - 1, False),   # too early
    (4 * HOUR, True, 9 * HOUR, False),        # sent already: once per message
    (0.0, False, 9 * HOUR, False),            # 0 turns it off
    (2.0, False, 2.5, True),
])
def test_due(delay_warning, warned, waited, want):
    assert delay.due(delay_warning, warned, 1000.0, 1000.0 + waited) is want


# --- which recipients ----------------------------------------------------------

def test_waiting_lists_deferred_recipients_whose_notify_asks_for_delays():
    spooled = [
        Spooled("none@x.test", None, None, "451 4.2.0 stored reply"),       # no NOTIFY: told
        Spooled("delay@x.test", ("DELAY", "FAILURE"), "rfc822;o@x.test"),  # asks for delays
        Spooled("fail@x.test", ("FAILURE",)),                             # failures only
        Spooled("never@x.test", ("NEVER",)),
        Spooled("done@x.test"),                                          # delivered
        Spooled("gone@x.test"),                                          # bounced
        Spooled("new@x.test"),                                           # queued: never tried
    ]
    states = {0: "deferred", 1: "deferred", 2: "deferred", 3: "deferred", 4: "delivered", 5: "bounced",
              6: "queued"}
    now = RcptResult("delay@x.test", 452, "4.2.2", "mailbox full", "mx.x.test", "192.0.2.9")
    got = delay.waiting(spooled, states, {1: now})
    assert [(rc.address, rc.index, rc.orcpt) for rc, _ in got] == [
        ("none@x.test", 0, None), ("delay@x.test", 1, "rfc822;o@x.test")]
    # this attempt's result when there was one, else the stored last reply
    assert got[1][1] is now
    assert got[0][1] == RcptResult("none@x.test", 451, "4.2.0", "stored reply")


@pytest.mark.parametrize("stored, want", [
    ("451 4.7.1 try later", (451, "4.7.1", "try later")),
    ("421 service not available", (421, None, "service not available")),
    ("452 4.2.2 ", (452, "4.2.2", "")),
    ("450 ", (450, None, "")),
    ("451", (451, None, "")),
    ("451 4.4.1 a\r\nsecond line", (451, "4.4.1", "a\r\nsecond line")),
    (None, (451, "4.0.0", "deferred")),
    ("", (451, "4.0.0", "deferred")),
    ("connection refused", (451, "4.0.0", "connection refused")),  # not a reply: quoted whole
    ("4510 x", (451, "4.0.0", "4510 x")),
])
def test_stored_result(stored, want):
    r = delay.stored_result("a@x.test", stored)
    assert (r.address, r.code, r.enhanced, r.text) == ("a@x.test", *want)


@given(code=st.integers(200, 599),
       enhanced=st.none() | st.from_regex(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
       text=st.text(max_size=80))
def test_stored_result_quotes_the_reply_it_was_given(code, enhanced, text):
    line = RcptResult("a@x.test", code, enhanced, text).reply()
    back = delay.stored_result("a@x.test", line)
    # The DSN quotes the same reply (an enhanced-looking start of the text may be read as one).
    assert back.reply().rstrip() == line.rstrip()
    assert back.code == code


@given(st.text(max_size=60))
def test_stored_result_never_fails(text):
    r = delay.stored_result("a@x.test", text)
    assert 200 <= r.code <= 599 and r.address == "a@x.test"


# --- the notice --------------------------------------------------------------

ORIG = b"From: s@a.test\r\nTo: r@x.test\r\nSubject: hello\r\n\r\nbody\r\n"


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_notice_is_a_delayed_dsn_with_will_retry_until():
    rc = OutRcpt("r@x.test", None, None, 0)
    res = RcptResult("r@x.test", 451, "4.7.1", "greylisted", "mx.x.test", "192.0.2.1")
    msg = OutMessage("Q1", "s@a.test", (rc,), ORIG, arrival=1_700_000_000.0)
    raw = delay.notice(msg, [(rc, res)], reporting_mta="mx.a.test", now=1_700_014_400.0,
                       retry_until=1_700_432_000.0)
    m = parse(raw)
    assert m.get_content_type() == "multipart/report" and m["To"] == "s@a.test"
    assert m["Subject"] == "Delayed Mail (still being retried)"
    _, rcpt = m.get_payload()[1].get_payload()
    assert (rcpt["Action"], rcpt["Status"], rcpt["Final-Recipient"]) == ("delayed", "4.7.1", "rfc822; r@x.test")
    assert rcpt["Diagnostic-Code"] == "smtp; 451 4.7.1 greylisted"
    assert email.utils.parsedate_to_datetime(rcpt["Will-Retry-Until"]).timestamp() == 1_700_432_000.0
    # Headers only: a delay notice never returns the body.
    assert m.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert "Subject: hello" in m.get_payload()[2].get_content()
    assert "body" not in m.get_payload()[2].get_content()


def test_no_notice_to_the_null_sender_or_about_nobody():
    rc = OutRcpt("r@x.test", None, None, 0)
    res = RcptResult("r@x.test", 451, "4.7.1", "later")
    kw = {"reporting_mta": "mx.a.test", "now": 2.0, "retry_until": 3.0}
    assert delay.notice(OutMessage("Q", "", (rc,), ORIG), [(rc, res)], **kw) is None
    assert delay.notice(OutMessage("Q", "s@a.test", (rc,), ORIG), [], **kw) is None


# --- the queue manager -------------------------------------------------------

class DsnWire(Wire):
    """The stand-in wire, keeping what it was given for the null sender (the DSNs)."""

    def __init__(self, answers) -> None:
        super().__init__(answers)
        self.dsns: list[bytes] = []

    def _results(self, msg):
        if msg.sender == "" and b"report-type=delivery-status" in bytes(msg.data):
            self.dsns.append(bytes(msg.data))
        return super()._results(msg)


class DelayHarness(Harness):
    def __init__(self, tmp, answers, delay_warning: float = 4 * HOUR, **extra) -> None:
        super().__init__(tmp, answers, **extra)
        self.wire = DsnWire(answers)
        self.delay_warning = delay_warning

    async def __aenter__(self):
        await super().__aenter__()
        self.queue.delay_warning = self.delay_warning  # as the server passes bounce.delay_warning
        return self

    async def spool(self, sender: str, rcpts: list[tuple[str, tuple[str, ...] | None]]) -> str:
        """Spool a message from `sender` to `rcpts` ((address, NOTIFY)) and start on it."""
        qid = self.store.new_queue_id()
        m = self.store.new_message()
        m.push(BODY)
        fut = asyncio.get_running_loop().create_future()
        self.store.submit(qid, m, fut.set_result, sender=sender, recipients=[(a, n, None) for a, n in rcpts],
                          arrival=self.clock.time())
        assert await fut is None
        self.queue.on_durable(qid)
        return qid

    async def retry(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.queue.kick()
        await self.settle()

    async def wait_dsns(self, n: int, timeout: float = 10.0) -> int:
        """How many DSNs went out, once at least `n` have (or at the timeout): a notice is
        spooled, then started a loop turn later, so the queue can look idle in between."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.wire.dsns) < n and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        await self.settle()
        return len(self.wire.dsns)


def dsn_rows(raw: bytes) -> list[tuple[str, str, str]]:
    m = parse(raw)
    blocks = m.get_payload()[1].get_payload()[1:]
    return [(b["Final-Recipient"], b["Action"], b["Diagnostic-Code"]) for b in blocks]


def test_one_notice_after_the_delay_then_none(tmp_path):
    async def main():
        async with DelayHarness(tmp_path, {"busy": (451, "4.3.0")}, **{"delivery.max_lifetime": 86400}) as h:
            qid = await h.spool("s@example.test", [("busy@example.test", None)])
            await h.settle()
            t0 = h.store.get(qid).arrival
            early = list(h.wire.dsns), h.store.get(qid).delay_warned
            await h.retry(SCHEDULE[0] + 1)    # attempt 2, 61 s in: too early
            await h.retry(4 * HOUR)           # attempt 3, past 4 h: the notice
            sent = list(h.wire.dsns), h.store.get(qid).delay_warned
            await h.retry(4 * HOUR)           # attempt 4: none again
            return qid, t0, early, sent, list(h.wire.dsns), h.states(qid), h.log()
    qid, t0, early, sent, dsns, states, log = run(main())
    assert early == ([], False)
    assert len(sent[0]) == 1 and sent[1] is True
    assert dsns == sent[0]
    assert states[0][:2] == ("deferred", 4)
    m = parse(dsns[0])
    assert m["To"] == "s@example.test" and m["Subject"] == "Delayed Mail (still being retried)"
    assert dsn_rows(dsns[0]) == [("rfc822; busy@example.test", "delayed", "smtp; 451 4.3.0 answer for busy@example.test")]
    until = m.get_payload()[1].get_payload()[1]["Will-Retry-Until"]
    assert email.utils.parsedate_to_datetime(until).timestamp() == pytest.approx(t0 + 86400, abs=1)
    notices = [(r["recipient"], r["attempt"]) for r in log if r["status"] == "delay_notice"]
    assert notices == [("busy@example.test", 3)]
    assert [r["status"] for r in log if r["queue_id"] == qid] == [
        "deferred", "deferred", "deferred", "delay_notice", "deferred"]


def test_notify_decides_who_is_listed_and_the_null_sender_gets_none(tmp_path):
    async def main():
        async with DelayHarness(tmp_path, {"a": (451, "4.3.0"), "b": (452, "4.2.2"), "c": (451, "4.3.0"),
                                           "d": (451, "4.3.0")}) as h:
            mixed = await h.spool("s@example.test", [("a@example.test", None), ("b@example.test", ("DELAY",)),
                                                      ("c@example.test", ("FAILURE",)), ("ok@example.test", None),
                                                      ("d@example.test", ("NEVER",))])
            null = await h.spool("", [("a@example.test", None)])
            quiet = await h.spool("s@example.test", [("c@example.test", ("FAILURE", "SUCCESS"))])
            await h.settle()
            await h.retry(4 * HOUR)
            return ([h.store.get(q).delay_warned for q in (mixed, null, quiet)], list(h.wire.dsns))
    warned, dsns = run(main())
    assert warned == [True, False, False]  # nothing sent: nothing recorded
    assert len(dsns) == 1
    assert [r[0] for r in dsn_rows(dsns[0])] == ["rfc822; a@example.test", "rfc822; b@example.test"]


def test_zero_turns_it_off(tmp_path):
    async def main():
        async with DelayHarness(tmp_path, {"busy": (451, "4.3.0")}, delay_warning=0.0) as h:
            qid = await h.spool("s@example.test", [("busy@example.test", None)])
            await h.settle()
            await h.retry(9 * HOUR)
            return h.store.get(qid).delay_warned, h.wire.dsns
    assert run(main()) == (False, [])


def test_the_flag_survives_a_restart(tmp_path):
    async def first():
        async with DelayHarness(tmp_path, {"busy": (451, "4.3.0")}) as h:
            qid = await h.spool("s@example.test", [("busy@example.test", None)])
            await h.settle()
            await h.retry(4 * HOUR)
            return qid, await h.wait_dsns(1), h.clock.wall

    async def second(wall):
        async with DelayHarness(tmp_path, {"busy": (451, "4.3.0")}) as h:
            h.clock.wall = wall
            env = h.store.get(qid)
            await h.retry(4 * HOUR)
            return env.delay_warned, h.states(qid), len(h.wire.dsns)
    qid, n, wall = run(first())
    assert n == 1
    warned, states, n2 = run(second(wall))
    assert warned is True and states[0][:2] == ("deferred", 3) and n2 == 0
    with open(os.path.join(tmp_path, "delivery.log")) as f:
        assert sum('"delay_notice"' in line for line in f) == 1


def test_the_store_sets_the_flag_alone_or_with_the_notice(tmp_path):
    async def main():
        # Were an attempt made meanwhile, it would be deferred: every message stays.
        async with DelayHarness(tmp_path, {"r": (451, "4.3.0"), "s": (451, "4.3.0")}) as h:
            a = await h.store.inject(BODY, sender="s@example.test", recipient="r@example.test")
            b = await h.store.inject(BODY, sender="s@example.test", recipient="r@example.test")
            flags = [h.store.get(q).delay_warned for q in (a, b)]
            await h.store.delay_warned(a)
            n = await h.store.inject(b"Subject: notice\r\n\r\nx\r\n", sender="", recipient="s@example.test",
                                     delay_notice_for=b)
            after = [h.store.get(q).delay_warned for q in (a, b, n)]
            with pytest.raises(ValueError):
                await h.store.delay_warned("nope")
            with pytest.raises(Exception, match="unknown queue id"):
                await h.store.inject(b"x\r\n", sender="", recipient="s@example.test", delay_notice_for="nope")
            return flags, after
    flags, after = run(main())
    assert flags == [False, False]
    assert after == [True, True, False]
