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
