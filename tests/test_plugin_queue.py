"""Plugins on the queue side, with a real spool: what `route` is handed (the queued message,
its notes, headers and body), the outbound events and their fields, a next route chosen by
on_deferred (stored with the recipient, used once), and failing hooks that lose nothing."""

from __future__ import annotations

import asyncio
import json

import pytest

from mta.delivery.deliverylog import DeliveryLog
from mta.delivery.mtasts import OutboundTls
from mta.delivery.mx import MxResolver
from mta.delivery.router import Router
from mta.delivery.transport import Maildir, Smtp, Transports
from mta.plugin import Route
from mta.policy.chain import Chain, Entry
from mta.queue.manager import QueueManager
from mta.queue.store import SpoolService

from test_queue_manager import SCHEDULE, Harness, run

BODY = b"Subject: plugin test\r\nX-Tenant: acme\r\n\r\nhello\r\n"


class Hooked(Harness):
    """The queue harness with a chain of plugin hooks (route and outbound events)."""

    def __init__(self, tmp, hooks: dict, answers=None, **extra) -> None:
        super().__init__(tmp, answers, **extra)
        self.chain = Chain([Entry("p", hooks, timeout=1.0)])

    async def __aenter__(self) -> "Hooked":
        cfg = self.cfg
        self.store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, cfg.hostname)
        self.store.attach(asyncio.get_running_loop())
        d = cfg.delivery
        smtp = Smtp(self.wire, MxResolver(None), OutboundTls(None, 0), d, cfg.hostname)
        self.queue = QueueManager(self.store, Router(cfg, self.chain), Transports(smtp, Maildir(cfg.hostname)),
                                  DeliveryLog(d.log_file), d, cfg.hostname, clock=self.clock,
                                  jitter=lambda _lo, _hi: 0.0, hooks=self.chain)
        self.queue.start()
        return self

    async def noted(self, notes: dict, *rcpts: str, tell: bool = True) -> str:
        """Spool a message with transaction notes, as a session does, and hand it to the queue
        (`tell`: with the notes, as a session does; else the queue reads them from the store)."""
        store = self.store
        qid = store.new_queue_id()
        message = store.new_message()
        message.push(BODY)
        fut = asyncio.get_running_loop().create_future()
        store.submit(qid, message, lambda err: fut.set_result(err), sender="from@example.test",
                     recipients=[(r, None, None) for r in rcpts], notes=json.dumps(notes))
        assert await fut is None
        self.queue.on_durable(qid, [(r, None, None) for r in rcpts], notes if tell else None)
        return qid


def test_route_is_handed_the_queued_message(tmp_path):
    seen = []

    async def route(address, msg):
        body = b"".join([c async for c in msg.body_chunks()])
        seen.append((address, msg.queue_id, msg.notes, msg.headers.get("X-Tenant"), msg.sender, body))
        return Route("smarthost 127.0.0.1:2627") if msg.notes.get("tenant") == "acme" else None

    async def main():
        async with Hooked(tmp_path, {"route": route}) as h:
            a = await h.noted({"tenant": "acme"}, "a@example.test")
            b = await h.noted({"tenant": "other"}, "b@example.test", tell=False)
            await h.settle()
            return a, b, h.wire.calls, h.states(a), h.states(b)
    a, b, calls, sa, sb = run(main())
    assert sa is None and sb is None  # both delivered and deleted
    assert sorted(calls) == [("submit", "smarthost:127.0.0.1:2626"), ("submit", "smarthost:127.0.0.1:2627")]
    assert [s[:5] for s in seen] == [("a@example.test", a, {"tenant": "acme"}, "acme", "from@example.test"),
                                     ("b@example.test", b, {"tenant": "other"}, "acme", "from@example.test")]
    assert seen[0][5].endswith(BODY) and seen[0][5].startswith(b"Received: ") is False  # stored as given


def test_outbound_events_carry_the_outcome_and_the_notes(tmp_path):
    events = []

    def record(kind):
        return lambda event: events.append((kind, event.queue_id, event.recipient, tuple(event.reply), event.attempt,
                                            event.remote_host, event.remote_ip, event.next_attempt is not None,
                                            event.notes))

    hooks = {"on_delivered": record("delivered"), "on_deferred": record("deferred"), "on_bounced": record("bounced")}

    async def main():
        async with Hooked(tmp_path, hooks, answers={"later": (451, "4.4.1"), "gone": (550, "5.1.1")}) as h:
            ok = await h.noted({"n": 1}, "ok@example.test")
            later = await h.noted({"n": 2}, "later@example.test")
            gone = await h.noted({"n": 3}, "gone@example.test")
            await h.settle()
            await asyncio.sleep(0.05)
            return ok, later, gone
    ok, later, gone = run(main())
    events = [e for e in events if e[1] in (ok, later, gone)]  # (the DSN for `gone` is delivered too)
    assert sorted(events) == sorted([
        ("delivered", ok, "ok@example.test", (250, "2.0.0", "answer for ok@example.test"), 1, "peer.test",
         "127.0.0.1", False, {"n": 1}),
        ("deferred", later, "later@example.test", (451, "4.4.1", "answer for later@example.test"), 1, "peer.test",
         "127.0.0.1", True, {"n": 2}),
        ("bounced", gone, "gone@example.test", (550, "5.1.1", "answer for gone@example.test"), 1, "peer.test",
         "127.0.0.1", False, {"n": 3}),
    ])


def test_with_an_on_delivered_hook_results_come_back_instead_of_being_logged_by_the_agent(tmp_path):
    logs = []

    async def main():
        for hooks in ({}, {"on_delivered": lambda e: None}):
            (tmp_path / str(len(hooks))).mkdir()
            async with Hooked(tmp_path / str(len(hooks)), hooks) as h:
                h.wire.submit_real = h.wire.submit

                def submit(key, targets, opts, msg, done, log=None, h=h):
                    logs.append(log is not None)
                    return h.wire.submit_real(key, targets, opts, msg, done, log)
                h.wire.submit = submit
                await h.noted({}, "a@example.test")
                await h.settle()
    run(main())
    assert logs == [True, False]


def test_on_deferred_chooses_the_next_route_once(tmp_path):
    def on_deferred(event):
        if event.attempt == 1:
            return Route("smarthost 127.0.0.1:2628", tls="none")

    async def main():
        async with Hooked(tmp_path, {"on_deferred": on_deferred}, answers={"a": (451, "4.4.1")}) as h:
            qid = await h.noted({}, "a@example.test")
            await h.settle()
            after_first = h.store.get(qid).recipients[0].route
            for _ in range(2):
                h.clock.advance(SCHECULE_MAX)
                h.queue.kick()
                await h.settle()
            return after_first, h.wire.calls, h.store.get(qid).recipients[0]
    after_first, calls, rcpt = run(main())
    assert after_first == "smarthost 127.0.0.1:2628 tls=none"
    keys = [c[1] for c in calls]
    assert keys == ["smarthost:127.0.0.1:2626", "smarthost:127.0.0.1:2628", "smarthost:127.0.0.1:2626"]
    assert rcpt.route is None and rcpt.attempts == 3


SCHECULE_MAX = max(SCHEDULE) + 1


def test_failing_observers_and_routes_lose_nothing(tmp_path):
    def boom(*_args):
        raise RuntimeError("plugin bug")

    async def main():
        async with Hooked(tmp_path, {"route": boom, "on_delivered": boom, "on_deferred": boom}) as h:
            qid = await h.noted({}, "a@example.test")
            await h.settle()
            first = h.states(qid)
            h.chain.route = ()  # the route hook is fixed: the tables decide
            h.queue.router.hooks = None
            h.clock.advance(SCHECULE_MAX)
            h.queue.kick()
            await h.settle()
            return first, h.states(qid), h.chain.failure_counts()
    first, after, failures = run(main())
    assert first[0][0] == "deferred" and first[0][3] == "451 4.3.0 routing error (route hook failed)"
    assert after is None  # delivered on the retry (the failing on_delivered did not matter)
    assert failures[("p", "route")] >= 1 and failures[("p", "on_delivered")] == 1


@pytest.mark.parametrize("answer", ["discard", None])
def test_a_route_hook_keeps_the_callback_lane(tmp_path, answer):
    async def main():
        async with Hooked(tmp_path, {"route": lambda a, m: answer}) as h:
            qid = await h.noted({}, "a@example.test")
            await h.settle()
            return h.states(qid), h.wire.calls
    states, calls = run(main())
    assert states is None
    assert calls == ([] if answer == "discard" else [("submit", "smarthost:127.0.0.1:2626")])
