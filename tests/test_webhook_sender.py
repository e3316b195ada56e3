"""The webhook sender against a real receiver (aiohttp on loopback) and a real spool: batches in
order with ids, kinds filtered, 2xx moves the cursor, failures back off and resend the same
batch, the backlog beyond max_backlog is dropped and counted, stop abandons a slow POST."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, strategies as st

from mta import config
from mta.config.webhooks import WebhookSpec
from mta.queue.events import KINDS, EventRecorder, kind_of
from mta.queue.store import SpoolService
from mta.queue.webhooks import Webhooks
from webhooksink import WebhookSink


@pytest.fixture
def sink():
    s = WebhookSink().start()
    yield s
    s.stop()


def open_store(tmp_path) -> SpoolService:
    cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": str(tmp_path / "spool")})
    store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, "mx.example.test")
    store.attach(asyncio.get_running_loop())
    return store


def ev(kind: str, n: int) -> str:
    return json.dumps({"event": kind, "n": n}, separators=(",", ":"))


async def until(pred, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.02)


def run(coro):
    asyncio.run(coro)


def test_batches_in_order_with_ids_and_headers(tmp_path, sink):
    async def main():
        store = open_store(tmp_path)
        spec = WebhookSpec(sink.url, name="w", batch=3, headers={"Authorization": "Bearer t"}, retry_min=0.05)
        hooks = Webhooks([spec], store)
        hooks.start()
        await store.record_events([ev("delivered", i) for i in range(7)])
        await until(lambda: len(sink.records()) == 7)
        await until(lambda: store.spool.event_cursor("w") == 7)
        s = hooks.senders[0]
        assert (s.sent, s.failures, s.dropped) == (7, 0, 0)
        await hooks.stop(1.0)
        store.close()

    run(main())
    got = sink.records()
    assert [r["n"] for r in got] == list(range(7))
    assert [len(b) for _, b in sink.posts] == [3, 3, 1]
    assert all(list(r)[:2] == ["id", "event"] for r in got)
    assert len({r["id"] for r in got}) == 7 and got[0]["id"].endswith(".1")
    headers = sink.posts[0][0]
    assert headers["Content-Type"] == "application/json" and headers["Authorization"] == "Bearer t"


def test_kinds_filtered_and_the_cursor_passes_the_others(tmp_path, sink):
    async def main():
        store = open_store(tmp_path)
        hooks = Webhooks([WebhookSpec(sink.url, name="b", events=("bounced",))], store)
        assert store.events.kinds == {"bounced"} and store.submit != store.submit_with_events
        hooks.start()
        await store.record_events([ev(k, i) for i, k in enumerate(["delivered", "bounced", "deferred", "bounced"])])
        await until(lambda: store.spool.event_cursor("b") == 4)
        await hooks.stop(1.0)
        store.close()

    run(main())
    assert [(r["event"], r["n"]) for r in sink.records()] == [("bounced", 1), ("bounced", 3)]


def test_failures_back_off_and_resend_the_same_batch(tmp_path, sink):
    sink.status = 500

    async def main():
        store = open_store(tmp_path)
        hooks = Webhooks([WebhookSpec(sink.url, name="w", retry_min=0.05, retry_max=0.2)], store)
        hooks.start()
        await store.record_events([ev("delivered", i) for i in range(3)])
        await until(lambda: sink.refused >= 4)
        s = hooks.senders[0]
        assert s.failures >= 4 and s.sent == 0 and store.spool.event_cursor("w") == 0
        sink.status = 200
        await until(lambda: store.spool.event_cursor("w") == 3)
        await hooks.stop(1.0)
        store.close()

    run(main())
    assert [[r["n"] for r in b] for _, b in sink.posts] == [[0, 1, 2]]


def test_backlog_beyond_max_is_dropped_and_counted(tmp_path, sink):
    sink.down()

    async def main():
        store = open_store(tmp_path)
        hooks = Webhooks([WebhookSpec(sink.url, name="w", max_backlog=4, retry_min=0.05, retry_max=0.1)], store)
        hooks.start()
        for i in range(10):
            await store.record_events([ev("delivered", i)])
        s = hooks.senders[0]
        await until(lambda: s.dropped == 6)
        assert store.spool.event_backlog("w", 0)[0] == 4
        sink.up()
        await until(lambda: len(sink.records()) == 4)
        await until(lambda: store.spool.pending_events == 0)
        assert (s.sent, s.dropped) == (4, 6) and s.failures >= 1
        await hooks.stop(1.0)
        store.close()

    run(main())
    assert [r["n"] for r in sink.records()] == [6, 7, 8, 9]


def test_stop_abandons_a_slow_post_and_keeps_its_events(tmp_path, sink):
    sink.delay = 2.0  # well past stop(0.2); the sink's teardown waits it out

    async def main():
        store = open_store(tmp_path)
        hooks = Webhooks([WebhookSpec(sink.url, name="w")], store)
        hooks.start()
        await store.record_events([ev("delivered", 1)])
        await asyncio.sleep(0.3)  # the POST is in flight
        t0 = asyncio.get_running_loop().time()
        await hooks.stop(0.2)
        assert asyncio.get_running_loop().time() - t0 < 1.0
        assert store.spool.event_cursor("w") == 0 and store.spool.pending_events == 1
        store.close()

    run(main())


def test_no_webhook_changes_nothing(tmp_path):
    async def main():
        store = open_store(tmp_path)
        submit = store.submit
        hooks = Webhooks([], store)
        assert store.events is None and store.submit == submit and store.on_events is None
        hooks.start()
        await hooks.stop(0.1)
        # A reload: a webhook wanting "accepted", then none again; each replaces the last.
        hooks = Webhooks([WebhookSpec("http://127.0.0.1:9/x", name="a", events=("accepted",))], store)
        assert store.submit == store.submit_with_events and store.events.kinds == {"accepted"}
        hooks = Webhooks([], store)
        assert store.events is None and store.submit == submit and store.on_events is None
        store.close()

    run(main())


@given(st.sampled_from(["delivered", "deferred", "bounced"]), st.text(max_size=20), st.integers(0, 10))
def test_outcome_event_is_the_delivery_log_record_with_its_kind(kind, recipient, attempt):
    from mta.delivery.deliverylog import DeliveryLog
    record = dict(queue_id="Q1", recipient=recipient, status=kind, result=None, attempt=attempt, arrival=1.0,
                  now=2.0)
    text = EventRecorder([kind]).outcome(kind, **record)
    assert kind_of(text) == kind
    got = json.loads(text)
    assert got.pop("event") == kind and got == json.loads(DeliveryLog.format(**record))


@given(st.text(), st.lists(st.text(max_size=10), max_size=3), st.integers(0, 10**9))
def test_accepted_event_round_trips(sender, rcpts, size):
    got = json.loads(EventRecorder(["accepted"]).accepted("Q", sender, rcpts, size, "192.0.2.1", 1.5))
    assert got == {"event": "accepted", "time": "1970-01-01T00:00:01.500Z", "queue_id": "Q", "sender": sender,
                   "recipients": rcpts, "size": size, "client_ip": "192.0.2.1"}


@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xDFFF), max_size=20))
def test_any_reply_or_address_makes_storable_json(text):
    """Lone surrogates (undecodable reply bytes) included: the event is UTF-8 and valid JSON."""
    from mta.delivery import RcptResult
    rec = EventRecorder(KINDS)
    res = RcptResult(text, 451, "4.0.0", text, text, None)
    for made in (rec.outcome("deferred", queue_id="Q", recipient=text, status="deferred", result=res, attempt=1,
                             arrival=1.0),
                 rec.accepted("Q", text, [text, "b@x"], 1, text, 1.0)):
        made.encode("utf-8")
        json.loads(made)
