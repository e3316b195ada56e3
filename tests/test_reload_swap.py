"""The narrow swaps a configuration reload makes (mta.app.server.apply): a new hook chain
takes over the running plugins it shares with the old one (and only those are spared the old
chain's stop); the shaper takes new rules while its counts of attempts in flight go on."""

from __future__ import annotations

import asyncio
import time
import types

from mta.config.shaping import Egress, Shape, ShapeRule, Shaping
from mta.delivery.shaping.shaper import Shaper
from mta.delivery.shaping.throttle import ProcessThrottle
from mta.policy.chain import Chain, Entry


def entry(name: str, log: list, obj=None) -> Entry:
    return Entry(name, {"on_mail": lambda tx, s: None}, obj=obj,
                 setup=lambda: log.append(f"start {name}"), stop=lambda: log.append(f"stop {name}"))


def test_a_new_chain_keeps_the_shared_entries_running_and_stops_only_the_replaced():
    log: list[str] = []
    module = types.ModuleType("modplugin")
    kept, replaced, mod_old = entry("kept", log), entry("old", log), entry("mod", log, obj=module)

    async def main():
        old = Chain([kept, replaced, mod_old])
        await old.start()
        new_cls, mod_new = entry("new", log), entry("mod", log, obj=module)  # same module, new options
        new = Chain([kept, new_cls, mod_new])
        new.adopt(old)  # before start: the shared entry is not set up again
        await new.start()
        new.adopt(old)
        log.append("swap")
        await old.stop()
        log.append("server stops")
        await new.stop()

    asyncio.run(main())
    assert log == ["start kept", "start old", "start mod",  # the old chain at start-up
                   "start new", "start mod",  # the reload: the new instance, the module's setup again
                   "swap", "stop old",  # the old chain stops only what the new one does not use
                   "server stops", "stop mod", "stop new", "stop kept"]


def test_adopting_an_unrelated_chain_takes_nothing():
    log: list[str] = []

    async def main():
        old = Chain([entry("a", log)])
        await old.start()
        new = Chain([entry("b", log)])
        new.adopt(old)
        await new.start()
        await old.stop()
        await new.stop()

    asyncio.run(main())
    assert log == ["start a", "start b", "stop a", "stop b"]


def test_the_shaper_takes_new_rules_and_keeps_its_counts():
    now = time.time()
    shape = Shape(20, None, None, 100)
    s = Shaper(Shaping(shape, (), ()), Egress({}, {}), ProcessThrottle(), 10, 0.5, clock=lambda: now)
    assert s.fixed and s.cap == 5
    for _ in range(3):
        assert s.admit("mx.a.test") is None
    rule = ShapeRule(None, "*.a.test", (("connection_limit", 2),))
    s.reconfigure(Shaping(shape, (rule,), ()), Egress({}, {}), 40, 0.25)
    assert s.cap == 10 and s.pressed == 36 and not s.fixed and s.site_globs == ("*.a.test",)
    assert s.inflight["mx.a.test"] == 3 and s.total == 3  # attempts started before the reload
    s.done("mx.a.test")
    assert s.inflight["mx.a.test"] == 2 and s.total == 2


def test_the_queue_swaps_routes_and_transports_and_an_attempt_in_flight_keeps_its_own(tmp_path):
    """A message submitted to the old transport before the swap is answered there and
    recorded; the next message goes by the new router to the new transport."""
    from test_queue_manager import Harness, Wire, run, settle

    from mta.config import schema as config
    from mta.delivery.mtasts import OutboundTls
    from mta.delivery.mx import MxResolver
    from mta.delivery.router import Router
    from mta.delivery.transport import Maildir, Smtp, Transports

    class Held(Wire):
        """Answers only when released: an attempt in flight across the swap."""

        def __init__(self):
            super().__init__({})
            self.waiting = []

        def submit(self, key, targets, opts, msg, done, log=None):
            self.calls.append(("submit", key))
            self.waiting.append((done, self._results(msg)))
            return True

    async def main():
        h = Harness(tmp_path)
        h.wire = Held()
        async with h:
            first = await h.message("a@dest.test")
            for _ in range(50):
                await asyncio.sleep(0.01)
                if h.wire.waiting:
                    break
            assert h.queue.active == {first}
            new_cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": h.cfg.spool.dir,
                                         "hostname": "mx.example.test", "delivery.relay_to": "127.0.0.1:2727",
                                         "delivery.mta_sts": False, "delivery.max_active": 7})
            wire_b = Wire({})
            smtp = Smtp(wire_b, MxResolver(None), OutboundTls(None, 0), new_cfg.delivery, new_cfg.hostname)
            h.queue.swap(Router(new_cfg), Transports(smtp, Maildir(new_cfg.hostname)), Chain(), new_cfg.delivery)
            assert h.queue.dcfg.max_active == 7
            second = await h.message("b@dest.test")
            await asyncio.sleep(0.1)
            done, results = h.wire.waiting.pop()
            done(results)  # the old transport answers the attempt it had
            await settle(h.queue)
            return h.wire.calls, wire_b.calls, h.store.get(first), h.store.get(second)

    old_calls, new_calls, first, second = run(main())
    assert old_calls == [("submit", "smarthost:127.0.0.1:2626")]
    assert new_calls == [("submit", "smarthost:127.0.0.1:2727")]
    assert first is None and second is None  # both delivered and gone
