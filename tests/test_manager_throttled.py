"""The queue manager and a `Throttled` outcome (mta.delivery.shaping.signals): a real store in
a temporary directory and a fake clock. Held back by shaping, a message counts no attempt,
leaves no delivery-log record, and is due again at the throttle's `until`, not the retry schedule."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
import uvloop

from mta.config import schema as config
from mta.config.shaping import Egress, Shape, Shaping
from mta.delivery import RcptResult, results_for
from mta.delivery.deliverylog import DeliveryLog
from mta.delivery.mtasts import OutboundTls
from mta.delivery.mx import MxResolver
from mta.delivery.router import Router
from mta.delivery.shaping.shaper import Shaper
from mta.delivery.shaping.signals import Throttled, flag_key, suspended_results
from mta.delivery.shaping.throttle import ProcessThrottle
from mta.delivery.transport import Maildir, Smtp, Transports
from mta.policy.chain import Chain
from mta.queue.manager import QueueManager
from mta.queue.store import SpoolService

from test_queue_manager import FakeClock, settle

BODY = b"From: <from@example.test>\r\nTo: <rcpt@example.test>\r\nSubject: unit\r\n\r\nhello\r\n"
SCHEDULE = (60.0, 300.0)
SITE = "127.0.0.1"  # the smarthost's host: its site


class Wire:
    """Stands in for the delivery agent: answers from `script` (a list of callables taking
    the message, used in turn; then 250 for all)."""

    def __init__(self, script=()) -> None:
        self.script = list(script)
        self.calls = 0

    def _answer(self, msg):
        self.calls += 1
        if self.script:
            return self.script.pop(0)(msg)
        return [RcptResult(r.address, 250, "2.0.0", "ok", "peer.test", SITE, "none") for r in msg.recipients]

    def submit(self, key, targets, opts, msg, done, log=None) -> bool:
        asyncio.get_running_loop().call_soon(done, self._answer(msg))
        return True

    def submit_spooled(self, *args) -> bool:
        return False

    async def deliver(self, key, targets, opts, msg):
        return self._answer(msg)

    def prestart(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Held:
    """A transport that answers `Throttled(until)` `times` times, then what `inner` answers."""

    def __init__(self, inner, until: float, times: int = 1) -> None:
        self.inner, self.until, self.times = inner, until, times
        self.calls = 0

    def submit(self, route, msg, done, log=None) -> bool:
        return False

    def submit_spooled(self, *args) -> bool:
        return False

    async def deliver(self, route, msg):
        self.calls += 1
        if self.calls <= self.times:
            return Throttled(self.until, "shaping: test holds it")
        return await self.inner.deliver(route, msg)


class Harness:
    def __init__(self, tmp, wire: Wire, shaper: Shaper | None = None, held_until: float | None = None,
                 clock: FakeClock | None = None) -> None:
        self.tmp = str(tmp)
        self.cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": os.path.join(self.tmp, "spool"),
                                      "hostname": "mx.example.test",
                                      "delivery.log_file": os.path.join(self.tmp, "delivery.log"),
                                      "delivery.relay_to": f"{SITE}:2626", "delivery.mta_sts": False,
                                      "delivery.retry_schedule": list(SCHEDULE), "delivery.retry_interval": 7200})
        self.clock = clock or FakeClock()
        self.wire, self.shaper, self.held_until = wire, shaper, held_until
        self.held: Held | None = None

    async def __aenter__(self) -> "Harness":
        cfg = self.cfg
        self.store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, cfg.hostname)
        self.store.attach(asyncio.get_running_loop())
        d = cfg.delivery
        smtp = Smtp(self.wire, MxResolver(None), OutboundTls(None, 0), d, cfg.hostname, shaper=self.shaper)
        transports = Transports(smtp, Maildir(cfg.hostname))
        if self.held_until is not None:
            self.held = transports.by_kind["smarthost"] = Held(smtp, self.held_until)
        self.queue = QueueManager(self.store, Router(cfg, Chain([])), transports, DeliveryLog(d.log_file), d,
                                  cfg.hostname, clock=self.clock, jitter=lambda _lo, _hi: 0.0)
        self.queue.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.queue.stop(grace=5)
        self.store.close()

    async def message(self) -> str:
        qid = await self.store.inject(BODY, sender="from@example.test", recipient="rcpt@example.test")
        self.queue.on_durable(qid)
        return qid

    async def step(self, seconds: float = 0.0) -> None:
        """Move the clock on, let the queue look, and wait until nothing is in flight."""
        self.clock.advance(seconds)
        self.queue.kick()
        await settle(self.queue)

    def state(self, qid: str):
        env = self.store.get(qid)
        return None if env is None else [(r.state, r.attempts, r.next_attempt) for r in env.recipients][0]

    def log(self) -> list[tuple]:
        path = os.path.join(self.tmp, "delivery.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [(r["status"], r["attempt"]) for r in map(json.loads, f)]


def run(coro):
    return uvloop.run(coro)


def shaper(throttle, clock=time.time) -> Shaper:
    return Shaper(Shaping(Shape(20, None, None, 100)), Egress({}, {}), throttle, max_active=100, clock=clock)


def test_throttled_counts_no_attempt_logs_nothing_and_is_due_at_until(tmp_path):
    async def main():
        until = time.time() + 500  # later than the first retry (60 s) would be
        async with Harness(tmp_path, Wire(), held_until=until) as h:
            qid = await h.message()
            await h.step()
            held = h.state(qid), h.log(), h.held.calls
            await h.step(499)  # not due yet
            early = h.state(qid), h.held.calls
            await h.step(2)
            return until, held, early, h.state(qid), h.log(), h.held.calls
    until, held, early, done, log, calls = run(main())
    assert held == (("deferred", 0, pytest.approx(until, abs=1e-3)), [], 1)  # stored to the microsecond
    assert early == (("deferred", 0, pytest.approx(until, abs=1e-3)), 1)
    assert done is None and log == [("delivered", 1)] and calls == 2


def test_throttled_after_a_real_deferral_keeps_its_attempt_count(tmp_path):
    def busy(msg):
        return results_for(msg, 451, "4.3.0", "busy", "peer.test", SITE)

    async def main():
        th = ProcessThrottle()
        clock = FakeClock()  # the shaper reads the throttle's suspensions a moment apart, by this clock
        async with Harness(tmp_path, Wire([busy]), shaper=shaper(th, clock.time), clock=clock) as h:
            qid = await h.message()
            await h.step()
            first = h.state(qid)
            until = h.clock.time() + 1000  # an administrator's (or a rule's) suspension
            th.set_until_now(flag_key("suspend", SITE), until)
            await h.step(SCHEDULE[0] + 1)  # due: the site is suspended, nothing is tried
            held = h.state(qid), h.wire.calls, h.log()
            th.set_until_now(flag_key("suspend", SITE), 0)
            await h.step(1000)
            return first, until, held, h.state(qid), h.log()
    first, until, held, done, log = run(main())
    assert first[:2] == ("deferred", 1)
    assert held == (("deferred", 1, pytest.approx(until, abs=1e-3)), 1, [("deferred", 1)])
    assert done is None and log == [("deferred", 1), ("delivered", 2)]


def test_the_agents_suspended_answer_holds_the_message_until_its_end(tmp_path):
    ends = []

    def suspended(msg):
        ends.append(round(time.time() + 300))
        return suspended_results(msg, f"default|{SITE}", ends[-1])

    async def main():
        async with Harness(tmp_path, Wire([suspended]), shaper=shaper(ProcessThrottle())) as h:
            qid = await h.message()
            await h.step()
            held = h.state(qid), h.log()
            await h.step(ends[0] - h.clock.time() + 0.01)
            return held, h.state(qid), h.log(), h.wire.calls
    held, done, log, calls = run(main())
    assert held == (("deferred", 0, ends[0]), [])
    assert done is None and log == [("delivered", 1)] and calls == 2



def test_metrics_count_the_hold_then_the_delivery_by_site_and_latency(tmp_path):
    from mta.app.metrics import Metrics

    async def main():
        until = time.time() + 500
        async with Harness(tmp_path, Wire(), held_until=until) as h:
            m = h.queue.metrics = Metrics()
            qid = await h.message()
            await h.step()
            held = h.queue.suspended_count(h.clock.time()), m.delivered
            await h.step(501)
            return held, h.state(qid), m, h.queue.suspended_count(h.clock.time())
    held, state, m, after = run(main())
    assert held == (1, 0)  # held back by shaping: suspended, nothing counted as an outcome
    assert state is None and after == 0
    assert (m.delivered, m.deferred, m.bounced) == (1, 0, 0)
    assert m.sites.table["example.test"] == [1, 0, 0]
    assert m.latency.count == 1


def test_an_mx_delivery_notes_its_domains_site_for_metrics():
    from dnsserver import DNSServer

    from mta.config.routes import parse_transport
    from mta.delivery import OutMessage, OutRcpt
    from mta.delivery.transport import Route

    async def main(srv):
        cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": "/nonexistent", "delivery.mta_sts": False})
        resolver = MxResolver(srv.nameservers, port=srv.port, timeout=2.0)
        smtp = Smtp(Wire(), resolver, OutboundTls(None, 0), cfg.delivery, "h", shaper=shaper(ProcessThrottle()))
        for domain in ("a.shared.test", "b.shared.test"):
            msg = OutMessage("q1", "s@x.test", (OutRcpt(f"u@{domain}"),), b"Subject: x\r\n\r\nx\r\n")
            out = await smtp.deliver(Route(parse_transport("mx"), domain), msg)
            assert [r.code for r in out] == [250]
        return smtp.mx_sites

    with DNSServer() as srv:
        for d in ("a.shared.test", "b.shared.test"):
            srv.add(d, [("MX", "10 MX.Hosting.test.")])
        srv.add("mx.hosting.test", [("A", "127.0.0.1")])
        sites = run(main(srv))
    assert sites == {"a.shared.test": "mx.hosting.test", "b.shared.test": "mx.hosting.test"}
