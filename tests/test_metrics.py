"""mta.app.metrics and mta.counters: series, the merge of workers' snapshots family by family
(sums, maxima, histograms bucket by bucket, top sites), the snapshot files (this run's fresh
ones only) and the exposition text as prometheus_client parses it."""

from __future__ import annotations

import json
import os

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from mta.app.metrics import FRESH, TOP_SITES, Metrics, Snapshots, merge, render, spool_series
from mta.counters import OTHER, Histogram, TopK
from mta.smtp.counts import BYTES, TLS_FAILED, VERB_BASE


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
    m.by_verb[VERB_BASE["EHLO"] + ord("2")] = replies2
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


def test_histograms_merge_bucket_by_bucket_and_render_cumulative():
    a, b = Metrics(), Metrics()
    for v in (0.0005, 0.002, 7.0):
        a.latency.observe(v)
    b.latency.observe(0.002)
    b.latency.observe(100000.0)  # above every bound: +Inf only
    got = parsed(render(merge([a.series(), b.series()])))
    assert got[("mta_delivery_latency_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("mta_delivery_latency_seconds_bucket", (("le", "0.005"),))] == 3
    assert got[("mta_delivery_latency_seconds_bucket", (("le", "10.0"),))] == 4
    assert got[("mta_delivery_latency_seconds_bucket", (("le", "86400.0"),))] == 4
    assert got[("mta_delivery_latency_seconds_bucket", (("le", "+Inf"),))] == 5
    assert got[("mta_delivery_latency_seconds_count", ())] == 5
    assert abs(got[("mta_delivery_latency_seconds_sum", ())] - 100007.0045) < 1e-6


def test_spool_stats_become_two_histograms():
    st = {"syncs": 3, "failed_batches": 0, "messages": 7, "sync_us_sum": 1500,
          "sync_le_0.0001": 1, "sync_le_0.001": 2, "sync_le_+Inf": 0,
          "batch_le_1.0": 1, "batch_le_5.0": 1, "batch_le_+Inf": 0}
    got = parsed(render(spool_series(st)))
    assert got[("mta_spool_sync_seconds_count", ())] == got[("mta_spool_syncs_total", ())] == 3
    assert got[("mta_spool_sync_seconds_bucket", (("le", "0.0001"),))] == 1
    assert got[("mta_spool_sync_seconds_bucket", (("le", "0.001"),))] == 3
    assert got[("mta_spool_sync_seconds_sum", ())] == 0.0015
    assert got[("mta_spool_batch_messages_count", ())] == 2
    assert got[("mta_spool_batch_messages_sum", ())] == 7


def test_oldest_age_takes_the_max_and_open_connections_sum():
    a = [["mta_queue_oldest_message_age_seconds", {}, 30.0], ["mta_connections_open", {"listener": "x:1"}, 2]]
    b = [["mta_queue_oldest_message_age_seconds", {}, 90.0], ["mta_connections_open", {"listener": "x:1"}, 3]]
    got = values(merge([a, b]))
    assert got[("mta_queue_oldest_message_age_seconds", ())] == 90.0
    assert got[("mta_connections_open", (("listener", "x:1"),))] == 5


def test_replies_by_verb_and_class_add_up_to_the_class_totals():
    m = Metrics()
    m.by_verb[VERB_BASE["CONNECT"] + ord("2")] = 4
    m.by_verb[VERB_BASE["RCPT"] + ord("5")] = 2
    m.by_verb[VERB_BASE["DATA"] + ord("3")] = 1
    got = parsed(render(m.series()))
    assert got[("mta_smtp_replies_by_verb_total", (("class", "2xx"), ("verb", "connect")))] == 4
    assert got[("mta_smtp_replies_by_verb_total", (("class", "5xx"), ("verb", "rcpt")))] == 2
    assert got[("mta_smtp_replies_by_verb_total", (("class", "3xx"), ("verb", "data")))] == 1
    assert got[("mta_smtp_replies_total", (("class", "2xx"),))] == 4
    assert got[("mta_smtp_replies_total", (("class", "5xx"),))] == 2


def test_listener_outcomes_and_bytes():
    m = Metrics([("127.0.0.1:25", "mx"), ("127.0.0.1:465", "submission")])
    m.listener_counts[0][BYTES] = 100
    m.listener_counts[1][BYTES] = 23
    m.listener_counts[1][TLS_FAILED] = 2
    got = parsed(render(m.series()))
    assert got[("mta_accepted_bytes_total", ())] == 123
    assert got[("mta_connection_outcomes_total", (("listener", "127.0.0.1:465"), ("outcome", "tls_failed")))] == 2
    assert got[("mta_connection_outcomes_total", (("listener", "127.0.0.1:25"), ("outcome", "accepted")))] == 0


def test_deliveries_by_site_stay_bounded_across_workers():
    workers = []
    for w in range(3):
        m = Metrics()
        for i in range(40):  # 40 sites per worker, 20 of them shared
            site = f"s{i}.test" if i < 20 else f"w{w}-{i}.test"
            m.sites.add(site, 0, n=i + 1)
        m.sites.add("s0.test", 2)
        workers.append(m.series())
    merged = merge(workers)
    sites = {s[1]["site"] for s in merged if s[0] == "mta_deliveries_by_site"}
    assert len(sites) == TOP_SITES + 1 and OTHER in sites
    got = values(merged)
    total = sum(v for (n, _), v in got.items() if n == "mta_deliveries_by_site")
    assert total == 3 * sum(range(1, 41)) + 3  # nothing lost: the rest is in "other"
    assert got[("mta_deliveries_by_site", (("result", "delivered"), ("site", "s19.test")))] == 60
    assert got[("mta_deliveries_by_site", (("result", "bounced"), ("site", OTHER)))] == 3  # s0.test's, folded
    parsed(render(merged))  # a valid exposition


def test_topk_caps_the_keys_it_keeps():
    t = TopK(2, cap=5)
    for i in range(50):
        t.add(f"k{i}", i % 2)
    assert len(t.table) <= 7
    assert sum(sum(r) for r in t.table.values()) == 50
    shown = t.top(3)
    assert len(shown) == 4 and sum(sum(r) for r in shown.values()) == 50


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=50))
def test_histogram_counts_every_value_once(vals):
    h = Histogram()
    for v in vals:
        h.observe(v)
    assert h.count == len(vals)
    below = sum(1 for v in vals if v <= h.bounds[0])
    assert h.counts[0] == below


@given(st.dictionaries(st.sampled_from([f"s{i}" for i in range(60)]), st.integers(0, 10**6), max_size=60),
       st.integers(1, 4))
def test_top_merge_keeps_the_total(table, nworkers):
    workers = []
    for w in range(nworkers):
        m = Metrics()
        for site, n in table.items():
            m.sites.add(site, w % 3, n)
        workers.append(m.series())
    merged = merge(workers)
    rows = [s for s in merged if s[0] == "mta_deliveries_by_site"]
    assert sum(s[2] for s in rows) == nworkers * sum(table.values())
    assert len({s[1]["site"] for s in rows}) <= TOP_SITES + 1


def test_the_agents_snapshots_are_added_with_one_worker_too(tmp_path):
    from mta.counters import write_snapshot

    now = 1_000_000.0
    mine = Snapshots(str(tmp_path), 0, 1, run=5, agents=True)
    pool = [["mta_delivery_connections", {"site": "mx:a.test", "state": "idle"}, 2],
            ["mta_throttle_waits", {"kind": "slot"}, 3]]
    write_snapshot(str(tmp_path / "metrics" / "agent-0.json"), 5, pool, now=now - 1)
    write_snapshot(str(tmp_path / "metrics" / "agent-1.json"), 5, pool, now=now)  # no such worker: not read
    got = values(mine.total(worker(accepted=1).series(), now=now))
    assert got[("mta_delivery_connections", (("site", "mx:a.test"), ("state", "idle")))] == 2
    assert got[("mta_throttle_waits", (("kind", "slot"),))] == 3
    assert got[("mta_messages_accepted", ())] == 1
    mine.write(worker(accepted=1).series())
    assert sorted(os.listdir(tmp_path / "metrics")) == ["agent-0.json", "agent-1.json"]  # one worker: none of its own


SYNC_NAMES = ["sync_le_0.0001", "sync_le_0.00025", "sync_le_0.0005", "sync_le_0.001", "sync_le_0.0025",
              "sync_le_0.005", "sync_le_0.01", "sync_le_0.025", "sync_le_0.05", "sync_le_0.1", "sync_le_0.25",
              "sync_le_1.0", "sync_le_+Inf"]


@given(st.lists(st.integers(0, 10**9), min_size=len(SYNC_NAMES), max_size=len(SYNC_NAMES)), st.integers(0, 10**12))
def test_spool_buckets_render_cumulative_whatever_the_counts(counts, us):
    st_ = dict(zip(SYNC_NAMES, counts), syncs=sum(counts), sync_us_sum=us)
    got = parsed(render(merge([spool_series(st_), spool_series(st_)])))
    assert got[("mta_spool_sync_seconds_count", ())] == 2 * sum(counts) == got[("mta_spool_syncs_total", ())]
    running = 0
    for name, n in zip(SYNC_NAMES, counts):
        running += n
        le = name[len("sync_le_"):]
        assert got[("mta_spool_sync_seconds_bucket", (("le", le),))] == 2 * running
    assert abs(got[("mta_spool_sync_seconds_sum", ())] - 2 * us / 1e6) <= 1e-6 * max(1, us / 1e6)


def test_domains_are_counted_under_their_sites():
    m = Metrics()
    sites = {"gmail.test": "google", "googlemail.test": "google", "local.test": "local.test"}
    m.site_of = sites.get
    m.sites.add("gmail.test", 0, 3)
    m.sites.add("googlemail.test", 2, 1)
    m.sites.add("local.test", 1)
    got = values(m.series())
    assert got[("mta_deliveries_by_site", (("result", "delivered"), ("site", "google")))] == 3
    assert got[("mta_deliveries_by_site", (("result", "bounced"), ("site", "google")))] == 1
    assert got[("mta_deliveries_by_site", (("result", "deferred"), ("site", "local.test")))] == 1
    assert ("mta_deliveries_by_site", (("result", "delivered"), ("site", "gmail.test"))) not in got
