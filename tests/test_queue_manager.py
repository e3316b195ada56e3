"""The queue manager's decisions without sockets: a real store in a temporary directory,
a fake clock, and a stand-in wire that answers by recipient (retry schedule, deferral,
bounce after the maximum age, hold and release, route hooks and the agent path)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
import uvloop

from mta.config import schema as config
from mta.config.routes import parse_transport
from mta.delivery import BOUNCED, DEFERRED, DELIVERED, Outcome, RcptResult, results_for, status_of
from mta.delivery.mx import MxResolver
from mta.delivery.mtasts import OutboundTls
from mta.delivery.router import Router
from mta.policy.chain import Chain, Entry
from mta.delivery.transport import Maildir, Smtp, Transports
from mta.delivery.deliverylog import DeliveryLog
from mta.queue.manager import QueueManager
from mta.queue.store import SpoolService

BODY = b"From: <from@example.test>\r\nTo: <rcpt@example.test>\r\nSubject: unit\r\n\r\nhello\r\n"
SCHEDULE = (60.0, 300.0, 900.0)


class FakeClock:
    def __init__(self) -> None:
        self.wall = time.time()
        self.mono = 1000.0

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class Wire:
    """Stands in for the delivery agent: `submit` answers on the next loop turn (the
    callback path), `deliver` as a coroutine; replies by local part."""

    def __init__(self, answers: dict[str, tuple[int, str]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []  # ("submit" | "deliver", destination key)

    def _results(self, msg) -> list[RcptResult]:
        out = []
        for r in msg.recipients:
            code, enh = self.answers.get(r.address.split("@")[0], (250, "2.0.0"))
            out.append(RcptResult(r.address, code, enh, f"answer for {r.address}", "peer.test", "127.0.0.1", "none"))
        return out

    def submit(self, key, targets, opts, msg, done, log=None) -> bool:
        self.calls.append(("submit", key))
        asyncio.get_running_loop().call_soon(done, self._results(msg))
        return True

    def submit_spooled(self, *args) -> bool:
        return False

    async def deliver(self, key, targets, opts, msg):
        self.calls.append(("deliver", key))
        return self._results(msg)

    def prestart(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Harness:
    def __init__(self, tmp, answers=None, hook=None, **extra) -> None:
        self.tmp = str(tmp)
        self.cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": os.path.join(self.tmp, "spool"),
                                      "hostname": "mx.example.test",
                                      "delivery.log_file": os.path.join(self.tmp, "delivery.log"),
                                      "delivery.relay_to": "127.0.0.1:2626", "delivery.mta_sts": False,
                                      "delivery.retry_schedule": list(SCHEDULE), "delivery.retry_interval": 7200,
                                      **extra})
        self.clock = FakeClock()
        self.wire = Wire(answers or {})
        self.hook = hook

    async def __aenter__(self) -> "Harness":
        cfg = self.cfg
        self.store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, cfg.hostname)
        self.store.attach(asyncio.get_running_loop())
        d = cfg.delivery
        smtp = Smtp(self.wire, MxResolver(None), OutboundTls(None, 0), d, cfg.hostname)
        self.queue = QueueManager(self.store, Router(cfg, Chain([Entry("test", {"route": self.hook})] if self.hook else [])), Transports(smtp, Maildir(cfg.hostname)),
                                  DeliveryLog(d.log_file), d, cfg.hostname, clock=self.clock,
                                  jitter=lambda _lo, _hi: 0.0)
        self.queue.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.queue.stop(grace=5)
        self.store.close()

    async def message(self, *rcpts: str) -> str:
        """Spool a message to `rcpts` and tell the queue it is durable."""
        qid = await self.store.inject(BODY, sender="from@example.test", recipient=rcpts[0])
        assert len(rcpts) == 1  # inject takes one recipient
        self.queue.on_durable(qid)
        return qid

    async def settle(self) -> None:
        await settle(self.queue)

    def states(self, qid: str):
        env = self.store.get(qid)
        return None if env is None else [(r.state, r.attempts, r.next_attempt, r.last_reply) for r in env.recipients]

    def log(self) -> list[dict]:
        with open(os.path.join(self.tmp, "delivery.log")) as f:
            return [json.loads(line) for line in f]


async def settle(queue) -> None:
    """Wait until the queue has nothing in flight (twice in a row, a moment apart)."""
    deadline = time.monotonic() + 10
    while True:
        await asyncio.sleep(0.01)
        if not queue.active:
            await asyncio.sleep(0.02)
            if not queue.active:
                return
        assert time.monotonic() < deadline, "the queue did not settle"


def run(coro):
    return uvloop.run(coro)


def test_the_outcome_rule_is_defined_once():
    assert [status_of(c) for c in (250, 251, 421, 451, 550, 554, 999)] == [
        DELIVERED, DELIVERED, DEFERRED, DEFERRED, BOUNCED, BOUNCED, BOUNCED]
    r = RcptResult("a@x.test", 451, "4.3.0", "later")
    assert r.outcome == Outcome(DEFERRED, 451, "4.3.0", "later") == Outcome.of(451, "4.3.0", "later")
    assert r.status == r.outcome.status and not r.outcome.final
    assert r.reply() == r.outcome.reply() == "451 4.3.0 later"
    assert Outcome.of(250, None, "ok").final and Outcome.of(250, None, "ok").reply() == "250 ok"


def test_retry_schedule_then_interval(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            return [h.queue._delay(n) for n in (1, 2, 3, 4, 9)]
    assert run(main()) == [60.0, 300.0, 900.0, 7200.0, 7200.0]


def test_a_deferral_is_retried_when_due_by_the_clock(tmp_path):
    async def main():
        async with Harness(tmp_path, {"busy": (451, "4.3.0")}) as h:
            qid = await h.message("busy@example.test")
            await h.settle()
            first = h.states(qid)
            t0 = h.clock.time()
            h.clock.advance(SCHEDULE[0] - 1)  # not yet due
            h.queue.kick()
            await h.settle()
            early = h.states(qid)
            h.clock.advance(2)
            h.queue.kick()
            await h.settle()
            return t0, first, early, h.states(qid), h.wire.calls
    t0, first, early, later, calls = run(main())
    assert first == [("deferred", 1, pytest.approx(t0 + SCHEDULE[0]), "451 4.3.0 answer for busy@example.test")]
    assert early == first
    assert later == [("deferred", 2, pytest.approx(t0 + SCHEDULE[0] + 1 + SCHEDULE[1]),
                      "451 4.3.0 answer for busy@example.test")]
    assert calls == [("submit", "smarthost:127.0.0.1:2626")] * 2


def test_delivered_is_deleted_and_logged(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            qid = await h.message("a@example.test")
            await h.settle()
            return qid, h.states(qid), h.log()
    qid, states, log = run(main())
    assert states is None
    assert [(r["queue_id"], r["status"], r["attempt"]) for r in log] == [(qid, "delivered", 1)]


def test_a_deferral_past_the_maximum_age_bounces_with_a_dsn(tmp_path):
    async def main():
        async with Harness(tmp_path, {"busy": (451, "4.3.0")}, **{"delivery.max_lifetime": 3600}) as h:
            qid = await h.message("busy@example.test")
            await h.settle()
            h.clock.advance(3601)
            h.queue.kick()
            await h.settle()
            return qid, h.states(qid), h.store.list(), h.log()
    qid, states, left, log = run(main())
    assert states is None and left == []  # its only recipient is final: deleted (and the DSN delivered)
    assert [r["recipient"] for r in log if r["queue_id"] != qid] == ["from@example.test"]
    mine = [(r["status"], r["attempt"], r["reply"]) for r in log if r["queue_id"] == qid]
    assert mine[0][:2] == ("deferred", 1)
    assert mine[1][:2] == ("bounced", 2)
    assert mine[1][2].startswith("550 4.4.7 delivery time expired; last error: 451 4.3.0")


def test_a_hard_failure_bounces_at_once_and_its_dsn_goes_out(tmp_path):
    async def main():
        async with Harness(tmp_path, {"gone": (550, "5.1.1")}) as h:
            qid = await h.message("gone@example.test")
            await h.settle()
            return qid, h.states(qid), h.store.list(), h.log()
    qid, states, left, log = run(main())
    assert states is None and left == []
    assert [(r["queue_id"] == qid, r["recipient"], r["status"]) for r in log] == [
        (True, "gone@example.test", "bounced"), (False, "from@example.test", "delivered")]


def test_hold_stops_attempts_and_release_lets_them_go(tmp_path):
    async def main():
        async with Harness(tmp_path, {"busy": (451, "4.3.0")}) as h:
            qid = await h.message("busy@example.test")
            await h.settle()
            await h.store.hold(qid, True)
            h.clock.advance(SCHEDULE[0] + 1)
            h.queue.kick()
            await h.settle()
            held = h.states(qid), list(h.wire.calls)
            await h.store.hold(qid, False)
            h.queue.kick()
            await h.settle()
            return held, h.states(qid), h.wire.calls
    (held_states, held_calls), after, calls = run(main())
    assert len(held_calls) == 1 and held_states[0][:2] == ("deferred", 1)
    assert len(calls) == 2 and after[0][:2] == ("deferred", 2)


@pytest.mark.parametrize("hook_answer, kind", [
    (None, "submit"),  # the hook leaves it to the tables: the agent path as without a hook
    ("smarthost 127.0.0.1:2627", "submit"),
])
def test_a_route_hook_answering_at_once_keeps_the_agent_path(tmp_path, hook_answer, kind):
    asked = []

    def hook(address, env):
        asked.append((address, env.queue_id))
        return hook_answer

    async def main():
        async with Harness(tmp_path, hook=hook) as h:
            qid = await h.message("a@example.test")
            await h.settle()
            return qid, h.states(qid), h.wire.calls
    qid, states, calls = run(main())
    assert asked == [("a@example.test", qid)]
    port = 2626 if hook_answer is None else 2627
    assert states is None and calls == [(kind, f"smarthost:127.0.0.1:{port}")]


def test_an_async_route_hook_is_awaited_and_a_broken_one_defers(tmp_path):
    async def hook(address, env):
        await asyncio.sleep(0)
        if address.startswith("bad"):
            raise RuntimeError("hook bug")
        return parse_transport("smarthost 127.0.0.1:2628")

    async def main():
        async with Harness(tmp_path, hook=hook) as h:
            ok = await h.message("a@example.test")
            bad = await h.message("bad@example.test")
            await h.settle()
            return h.states(ok), h.states(bad), h.wire.calls
    ok, bad, calls = run(main())
    assert ok is None and calls == [("deliver", "smarthost:127.0.0.1:2628")]
    assert bad[0][:2] == ("deferred", 1) and bad[0][3] == "451 4.3.0 routing error (route hook failed)"


def test_an_excluded_message_is_not_started(tmp_path):
    async def main():
        async with Harness(tmp_path) as h:
            h.queue.exclude(["x"])
            qid = await h.store.inject(BODY, sender="from@example.test", recipient="a@example.test")
            h.queue.exclude([qid])
            h.queue.on_durable(qid)
            await h.settle()
            before = h.states(qid)
            h.queue.include([qid])
            h.queue.kick()
            await h.settle()
            return before, h.states(qid)
    before, after = run(main())
    assert before is not None and before[0][:2] == ("queued", 0)
    assert after is None


def test_results_for_gives_the_same_outcome_to_all():
    from mta.delivery import OutMessage, OutRcpt
    msg = OutMessage("q", "s@x.test", (OutRcpt("a@x.test"), OutRcpt("b@x.test", index=1)), b"")
    assert {r.outcome for r in results_for(msg, 451, "4.4.1", "no")} == {Outcome.of(451, "4.4.1", "no")}
