"""The plugins' `egress(msg)` and `shaping(site, source, msg)` hooks with a real spool and
queue: the pool a hook names is the message's source (bound address, EHLO name), the
limits a hook returns reach the delivery client's options, and a bad answer changes nothing."""

from __future__ import annotations

import asyncio

import pytest

from mta.config.shaping import egress_of, shaping_of
from mta.delivery.mtasts import OutboundTls
from mta.delivery.mx import MxResolver
from mta.delivery.router import Router
from mta.delivery.shaping.shaper import Shaper, shape_overrides
from mta.delivery.shaping.throttle import ProcessThrottle
from mta.delivery.deliverylog import DeliveryLog
from mta.delivery.transport import Maildir, Smtp, Transports
from mta.policy.chain import Chain, Entry
from mta.queue.manager import QueueManager
from mta.queue.store import SpoolService

from test_queue_manager import Harness, Wire, run

EGRESS = {
    "egress.source": [{"name": "ip2", "address": "127.0.0.2", "ehlo": "out2.test"},
                      {"name": "ip3", "address": "127.0.0.3", "ehlo": "out3.test"}],
    "egress.pool": [{"name": "two", "sources": {"ip2": 1}}, {"name": "three", "sources": {"ip3": 1}}],
    "egress.default_pool": "three",
    "shaping.default.connection_limit": 7,
}


class OptsWire(Wire):
    """The stand-in agent, keeping the options of each job."""

    def __init__(self) -> None:
        super().__init__({})
        self.opts = []

    def submit(self, key, targets, opts, msg, done, log=None) -> bool:
        self.opts.append((key, opts))
        return super().submit(key, targets, opts, msg, done, log)

    async def deliver(self, key, targets, opts, msg):
        self.opts.append((key, opts))
        return await super().deliver(key, targets, opts, msg)


class Shaped(Harness):
    def __init__(self, tmp, hooks: dict, **extra) -> None:
        super().__init__(tmp, **{**EGRESS, **extra})
        self.chain = Chain([Entry("p", hooks, timeout=1.0)] if hooks else [])
        self.wire = OptsWire()

    async def __aenter__(self) -> "Shaped":
        cfg = self.cfg
        self.store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, cfg.hostname)
        self.store.attach(asyncio.get_running_loop())
        d = cfg.delivery
        shaper = Shaper(shaping_of(cfg), egress_of(cfg), ProcessThrottle(), d.max_active, hooks=self.chain)
        smtp = Smtp(self.wire, MxResolver(None), OutboundTls(None, 0), d, cfg.hostname, shaper=shaper)
        self.queue = QueueManager(self.store, Router(cfg, self.chain), Transports(smtp, Maildir(cfg.hostname)),
                                  DeliveryLog(d.log_file), d, cfg.hostname, clock=self.clock,
                                  jitter=lambda _lo, _hi: 0.0, hooks=self.chain, pools=True)
        self.queue.start()
        return self


def deliver_one(tmp, hooks: dict, **extra):
    async def main():
        async with Shaped(tmp, hooks, **extra) as h:
            qid = await h.message("a@example.test")
            await h.settle()
            return h.wire.opts, h.states(qid), h.chain
    return run(main())


def test_without_hooks_the_default_pool_is_used_on_the_callback_lane(tmp_path):
    opts, state, _ = deliver_one(tmp_path, {})
    (key, o), = opts
    assert state is None  # delivered and deleted
    assert key.endswith("@ip3") and o.source_address == "127.0.0.3" and o.helo == "out3.test"
    assert o.max_connections == 7 and o.message_interval == 0.0
    assert o.shape_key == "ip3|127.0.0.1"  # the smarthost's host is its site


def test_an_egress_hook_picks_the_pool_and_a_shaping_hook_the_limits(tmp_path):
    seen = []

    def egress(msg):
        seen.append(("egress", msg.queue_id, msg.sender))
        return "two"

    async def shaping(site, source, msg):
        seen.append(("shaping", site, source))
        return {"connection_limit": 3, "max_message_rate": "10/s", "max_deliveries_per_connection": 5}

    opts, state, chain = deliver_one(tmp_path, {"egress": egress, "shaping": shaping})
    (key, o), = opts
    assert state is None
    assert [s[0] for s in seen] == ["egress", "shaping"]
    assert seen[1][1:] == ("127.0.0.1", "ip2")
    assert o.source_address == "127.0.0.2" and o.helo == "out2.test" and key.endswith("@ip2")
    assert (o.max_connections, o.max_messages_per_connection) == (3, 5)
    assert o.message_interval == pytest.approx(0.1) and o.message_burst == 5
    assert chain.failure_counts() == {}


@pytest.mark.parametrize("answer", [{"connection_limit": 0}, {"bogus": 1}, ["connection_limit", 2],
                                    {"max_message_rate": "10/fortnight"}])
def test_a_bad_shaping_answer_is_a_failed_hook_and_the_configured_limits_stand(tmp_path, answer):
    opts, state, chain = deliver_one(tmp_path, {"shaping": lambda site, source, msg: answer})
    (_key, o), = opts
    assert state is None
    assert o.max_connections == 7 and o.message_interval == 0.0
    assert chain.failure_counts() == {("p", "shaping"): 1}


def test_an_unknown_pool_from_a_hook_sends_from_the_default_source(tmp_path):
    opts, state, _ = deliver_one(tmp_path, {"egress": lambda msg: "nope"})
    (key, o), = opts
    assert state is None and o.source_address is None and o.shape_key == "default|127.0.0.1"


def test_shape_overrides_table():
    assert shape_overrides({}) == {}
    assert shape_overrides({"max_connection_rate": None, "max_message_rate": ""}) == {
        "max_connection_rate": None, "max_message_rate": None}
    assert shape_overrides({"max_message_rate": "60/min"})["max_message_rate"].interval == pytest.approx(1.0)
    for bad in ({"connection_limit": True}, {"connection_limit": 1.5}, {"max_deliveries_per_connection": -1}):
        with pytest.raises(ValueError):
            shape_overrides(bad)
    with pytest.raises(TypeError):
        shape_overrides("fast")
