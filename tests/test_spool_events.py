"""Webhook events through the native spool: any texts recorded come back the same, in order,
with strictly increasing seqs and distinct ids, after a reopen too; cursors survive reopening."""

from __future__ import annotations

import tempfile
import time

from hypothesis import given, settings, strategies as st

from mta import _native


def wait(spool: _native.Spool, n: int) -> list:
    got, end = [], time.monotonic() + 10
    while len(got) < n:
        got += spool.completions()
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)
    return got


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.text(), min_size=1, max_size=5), min_size=1, max_size=5), st.integers(0, 30))
def test_recorded_texts_come_back(batches, ack):
    with tempfile.TemporaryDirectory() as d:
        sp = _native.Spool(d, 0, sync=False)
        for i, texts in enumerate(batches):
            assert sp.record_events(i, texts)
        assert all(e is None for _, e in wait(sp, len(batches)))
        want = [t for b in batches for t in b]
        got = sp.events_after("w", 1000)
        assert [g[3] for g in got] == want
        seqs = [g[0] for g in got]
        assert seqs == sorted(set(seqs)) and len({g[1] for g in got}) == len(got)
        upto = min(ack, len(got))
        if upto:
            sp.ack_events(99, "w", seqs[upto - 1])
            wait(sp, 1)
        sp.close()
        sp = _native.Spool(d, 0, sync=False)
        assert [g[3] for g in sp.events_after("w", 1000)] == want[upto:]
        # A name never acknowledged has every event still kept (what "w" has not passed).
        assert [g[3] for g in sp.events_after("other", 1000)] == want[upto:]
        assert sp.event_backlog("w", 1) == (len(want) - upto, seqs[upto] if upto < len(seqs) else None)
        sp.close()


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=30), st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=3),
       st.text(max_size=16), st.integers(0, 2**40), st.binary(max_size=300))
def test_accepted_event_made_at_submit_is_the_python_reference(sender, rcpts, client_ip, arrival_ms, data):
    """The spool's "accepted" JSON (made from the envelope) is EventRecorder.accepted's, byte for byte,
    and events_body puts it in a POST body the way the sender used to (id spliced in front)."""
    from mta.queue.events import EventRecorder

    arrival = arrival_ms / 1000 + 0.0004  # whole milliseconds apart from float noise either way
    with tempfile.TemporaryDirectory() as d:
        sp = _native.Spool(d, 0, sync=False)
        q = sp.new_queue_id()
        m = sp.new_message()
        m.push(data)
        size = m.size
        sp.submit(1, q, m, sender=sender, recipients=[(r, None, None) for r in rcpts], client_ip=client_ip,
                  arrival=arrival, accepted_event=True)
        assert wait(sp, 1)[0][1] is None
        want = EventRecorder(["accepted"]).accepted(q, sender, rcpts, size, client_ip, arrival)
        (seq, eid, _, got), = sp.events_after("w", 10)
        assert got == want
        body, first, last, taken, n = sp.events_body("w", 10)
        assert (first, last, taken, n) == (seq, seq, 1, 1)
        assert body == ('[{"id":"%s",%s]' % (eid, want[1:])).encode()
        assert sp.events_body("w", 10, ["delivered"])[3:] == (1, 0) and sp.events_body("w", 10, ["delivered"])[0] == b"[]"
        sp.close()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=30),
                          st.sampled_from([None, "opportunistic", "none"])), min_size=1, max_size=3))
def test_delivered_events_made_from_the_agents_log_lines(rows):
    """delete_many(delivered_log=...) records, per delivery-log line the agent wrote, the event
    EventRecorder.outcome makes for that outcome (the line with "event" first), after `events`."""
    from mta.delivery import RcptResult
    from mta.delivery.deliverylog import DeliveryLog
    from mta.queue.events import EventRecorder

    results = [RcptResult(a, 250, "2.0.0", t, "mx.test", "192.0.2.9", tls) for a, t, tls in rows]
    log = DeliveryLog("/dev/null")  # the text it returns is what matters here
    with tempfile.TemporaryDirectory() as d:
        sp = _native.Spool(d, 0, sync=False)
        q = sp.new_queue_id()
        m = sp.new_message()
        m.push(b"x\r\n")
        sp.submit(1, q, m, sender="a@b", recipients=[(r.address, None, None) for r in results])
        wait(sp, 1)
        text = log.delivered(q, results, [1] * len(results), 100.0, 161.5)
        assert sp.delete_many(2, [q], ['{"event":"x"}'], delivered_log=text) == []
        wait(sp, 1)
        got = [e[3] for e in sp.events_after("w", 100)]
        want = [EventRecorder(["delivered"]).outcome("delivered", queue_id=q, recipient=r.address, status="delivered",
                                                     result=r, attempt=1, arrival=100.0, now=161.5) for r in results]
        assert got == ['{"event":"x"}'] + want
        sp.close()
    log.close()
