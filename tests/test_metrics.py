"""mta.app.metrics: series, the merge of workers' snapshots, the snapshot files (this
run's fresh ones only) and the exposition text as prometheus_client parses it."""

from __future__ import annotations

import json
import os

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from mta.app.metrics import FRESH, Metrics, Snapshots, merge, render


def values(series) -> dict:
    return {(n, tuple(sorted(lab.items()))): v for n, lab, v in series}


def parsed(text: bytes) -> dict:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def worker(accepted=0, delivered=0, bounced=0, replies2=0, active=0, held=0) -> Metrics:
    m = Metrics([("127.0.0.1:2525", "mx")])
    m.accepted, m.delivered, m.bounced = accepted, delivered, bounced
    m.replies[2] = replies2
    m.connections[0] = accepted
    m.gauges = lambda: {"active": active, "deferred": 0, "held": held}
    m.spool_stats = lambda: {"syncs": accepted, "failed_batches": 0}
    return m


def test_merge_sums_counters_and_gauges_by_labels():
    a = worker(accepted=3, delivered=2, bounced=1, replies2=10, active=1)
    b = worker(accepted=4, delivered=5, replies2=7, held=2)
    got = values(merge([a.series(), b.series()]))
    assert got[("mta_messages_accepted", ())] == 7
    assert got[("mta_deliveries", (("result", "delivered"),))] == 7
    assert got[("mta_deliveries", (("result", "bounced"),))] == 1
    assert got[("mta_deliveries", (("result", "deferred"),))] == 0
    assert got[("mta_smtp_replies", (("class", "2xx"),))] == 17
    assert got[("mta_queue_messages", (("state", "active"),))] == 1
    assert got[("mta_queue_messages", (("state", "held"),))] == 2
    assert got[("mta_connections", (("listener", "127.0.0.1:2525"), ("profile", "mx")))] == 7


def test_merge_keeps_series_only_one_worker_has():
    a = [["mta_connections", {"listener": "a:1", "profile": "mx"}, 2]]
    b = [["mta_connections", {"profile": "mx", "listener": "b:1"}, 3],
         ["mta_connections", {"profile": "mx", "listener": "a:1"}, 1]]
    assert values(merge([a, b])) == {
        ("mta_connections", (("listener", "a:1"), ("profile", "mx"))): 3,
        ("mta_connections", (("listener", "b:1"), ("profile", "mx"))): 3,
    }


def test_render_is_prometheus_text_with_the_contract_names():
    got = parsed(render(worker(accepted=5, delivered=3, bounced=2, replies2=9, active=1).series()))
    assert got[("mta_messages_accepted_total", ())] == 5
    assert got[("mta_deliveries_total", (("result", "delivered"),))] == 3
    assert got[("mta_deliveries_total", (("result", "bounced"),))] == 2
    assert got[("mta_queue_messages", (("state", "active"),))] == 1
    assert got[("mta_smtp_replies_total", (("class", "2xx"),))] == 9
    assert got[("mta_spool_syncs_total", ())] == 5


def test_snapshots_sum_fresh_files_of_this_run_only(tmp_path):
    now = 1_000_000.0
    mine = Snapshots(str(tmp_path), 0, 3, run=42)
    other = Snapshots(str(tmp_path), 1, 3, run=42)
    other.write(worker(accepted=4).series(), now=now - 0.5)
    stale = Snapshots(str(tmp_path), 2, 3, run=42)
    stale.write(worker(accepted=100).series(), now=now - FRESH - 1)  # a dead worker's
    total = values(mine.total(worker(accepted=1).series(), now=now))
    assert total[("mta_messages_accepted", ())] == 5
    # A file a previous run left (another supervisor) is never added in.
    Snapshots(str(tmp_path), 2, 3, run=7).write(worker(accepted=100).series(), now=now)
    assert values(mine.total(worker(accepted=1).series(), now=now))[("mta_messages_accepted", ())] == 5


def test_snapshot_write_is_whole_and_leaves_no_temporary(tmp_path):
    s = Snapshots(str(tmp_path), 0, 2, run=1)
    s.write(worker(accepted=2).series(), now=5.0)
    s.write(worker(accepted=3).series(), now=6.0)
    assert os.listdir(tmp_path / "metrics") == ["0.json"]
    doc = json.loads((tmp_path / "metrics" / "0.json").read_text())
    assert doc["time"] == 6.0 and doc["run"] == 1
    assert values(doc["series"])[("mta_messages_accepted", ())] == 3


def test_one_worker_writes_no_file(tmp_path):
    Snapshots(str(tmp_path), 0, 1, run=1).write(worker(accepted=2).series())
    assert not (tmp_path / "metrics").exists()


def test_unreadable_snapshot_is_skipped(tmp_path):
    mine = Snapshots(str(tmp_path), 0, 2, run=1)
    (tmp_path / "metrics" / "1.json").write_text("{not json")
    assert values(mine.total(worker(accepted=1).series()))[("mta_messages_accepted", ())] == 1


counts = st.integers(min_value=0, max_value=10**12)


@given(st.lists(st.tuples(counts, counts, counts, counts), min_size=1, max_size=8))
def test_merge_total_is_the_sum_of_the_workers(workers):
    ms = [worker(accepted=a, delivered=d, bounced=b, active=g) for a, d, b, g in workers]
    got = parsed(render(merge([m.series() for m in ms])))
    assert got[("mta_messages_accepted_total", ())] == sum(w[0] for w in workers)
    assert got[("mta_deliveries_total", (("result", "delivered"),))] == sum(w[1] for w in workers)
    assert got[("mta_deliveries_total", (("result", "bounced"),))] == sum(w[2] for w in workers)
    assert got[("mta_queue_messages", (("state", "active"),))] == sum(w[3] for w in workers)
