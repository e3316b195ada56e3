"""The server's counters, gauges and histograms for /metrics: plain ints the components bump
as events happen, shared across workers (and delivery agents) as JSON snapshot files
(<spool.dir>/metrics/), merged family by family. A snapshot is only ever replaced whole."""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Iterable, NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from mta.counters import OTHER, Histogram, TopK, add_row, top, write_snapshot
from mta.smtp.counts import BYTES, OUTCOMES, TLS_FULL, TLS_RESUMED, VERBS, by_verb_counts, listener_counts


class Family(NamedTuple):
    kind: str  # "counter" | "gauge" | "histogram"
    help: str
    labels: tuple[str, ...] = ()
    # How the workers' series add up: "sum"; "max" (the oldest message's age); "top" (sum,
    # then the TOP_SITES largest values of the label "site" by the family's total, the rest
    # as site="other", so the label stays bounded with any number of workers).
    merge: str = "sum"


# name -> Family. The first four are the public contract (docs/http.md): never new labels.
FAMILIES: dict[str, Family] = {
    "mta_messages_accepted": Family("counter", "Messages made durable in the spool (the 250 after DATA/BDAT)."),
    "mta_deliveries": Family("counter", "Recipient outcomes recorded by the queue manager.", ("result",)),
    "mta_queue_messages": Family("gauge", "Messages in the spool by state.", ("state",)),
    "mta_smtp_replies": Family("counter", "SMTP replies sent, by code class.", ("class",)),
    "mta_connections": Family("counter", "SMTP connections taken, by listener.", ("listener", "profile")),
    "mta_connection_outcomes": Family("counter", "SMTP connections by listener and outcome.", ("listener", "outcome")),
    "mta_connections_open": Family("gauge", "SMTP sessions open, by listener.", ("listener",)),
    "mta_smtp_replies_by_verb": Family("counter", "SMTP replies sent, by the command answered and code class.",
                                       ("verb", "class")),
    "mta_accepted_bytes": Family("counter", "Bytes of the messages counted by mta_messages_accepted_total."),
    "mta_tls_handshakes": Family("counter", "TLS handshakes done, by direction (in: STARTTLS and implicit TLS "
                                            "on the listeners; out: deliveries) and whether a session was resumed.",
                                 ("direction", "resumed")),
    "mta_queue_suspended_messages": Family("gauge", "Messages whose next attempt shaping holds back (a suspended "
                                                    "site, or its share of the window)."),
    "mta_queue_oldest_message_age_seconds": Family("gauge", "Age of the oldest message in the spool.", (), "max"),
    "mta_spool_syncs": Family("counter", "Spool syncs (fdatasync of a batch of records)."),
    "mta_spool_failed_batches": Family("counter", "Spool batches whose write or sync failed."),
    "mta_spool_index_bytes": Family("gauge", "Memory of the queue index (a slot per queued message, the due "
                                             "schedule, segment lists), counted from its capacities."),
    "mta_spool_kept_envelopes": Family("gauge", "Envelopes kept in memory (the newest arrivals, at most "
                                                "spool.active_limit); the others are read back when due."),
    "mta_spool_sync_seconds": Family("histogram", "Time of each spool fdatasync."),
    "mta_spool_batch_messages": Family("histogram", "Messages per spool batch (one sync each)."),
    "mta_deliveries_by_site": Family("counter", "Recipient outcomes by destination (the top sites by volume; "
                                                "the rest as other).", ("site", "result"), "top"),
    "mta_delivery_latency_seconds": Family("histogram", "From a message's arrival to each recipient's final "
                                                        "outcome (delivered or bounced)."),
    "mta_delivery_connections": Family("gauge", "Outbound SMTP connections by destination key and state "
                                                "(busy: in a transaction, idle: pooled).", ("site", "state"), "top"),
    "mta_plugin_hook_calls": Family("counter", "Hook calls, per plugin (or built-in policy) and hook.",
                                    ("plugin", "hook")),
    "mta_plugin_hook_seconds": Family("counter", "Time spent in hook calls.", ("plugin", "hook")),
    "mta_plugin_hook_failures": Family("counter", "Hook calls that raised, overran or answered garbage.",
                                       ("plugin", "hook")),
    "mta_dns_lookups": Family("counter", "DNS queries sent, by type and status.", ("type", "status")),
    "mta_dns_cache_hits": Family("counter", "DNS answers taken from a cache, by cache.", ("cache",)),
    "mta_throttle_waits": Family("counter", "Deliveries that waited for a shaping budget (slot: a connection "
                                            "slot, token: a message or connection token).", ("kind",)),
    "mta_throttle_wait_seconds": Family("counter", "Time spent waiting for shaping budgets.", ("kind",)),
    "mta_webhook_events": Family("counter", "Webhook events by outcome: sent (answered 2xx) or dropped (beyond "
                                            "max_backlog).", ("webhook", "result")),
    "mta_webhook_failures": Family("counter", "Webhook POSTs that failed (non-2xx, timeout, connection).",
                                   ("webhook",)),
    "mta_webhook_backlog": Family("gauge", "Durable webhook events not yet answered 2xx.", ("webhook",)),
}
RESULTS = ("delivered", "deferred", "bounced")
STATES = ("active", "deferred", "held")
TOP_SITES = 20  # sites shown by name in mta_deliveries_by_site and mta_delivery_connections
# Sites a worker puts in its series (merge keeps TOP_SITES of the sum): a site second in
# every worker is still first in all.
SITES_SHARED = 5 * TOP_SITES
SNAPSHOT_EVERY = 1.0  # seconds: what /metrics may lag behind another worker
FRESH = 10.0  # seconds: an older snapshot is a dead worker's, left out

Series = list  # [name, {label: value}, number or {"le": bounds, "counts": counts, "sum": sum}]
Source = Callable[[], Iterable[Series]]


def histogram(name: str, labels: dict, h: Histogram) -> Series:
    return [name, labels, {"le": list(h.bounds), "counts": list(h.counts), "sum": h.sum}]


class Metrics:
    """One worker's live values. Components get this object (or the list or table they bump)
    from the wiring and bump it directly: no registry lookup on their paths. `sources` are
    asked at every series() (cheap reads of counters kept elsewhere), `scans` only at the
    once-a-second tick (they walk the queue or the sessions)."""

    __slots__ = ("accepted", "delivered", "deferred", "bounced", "by_verb", "listeners", "connections",
                 "listener_counts", "sites", "site_of", "latency", "gauges", "spool_stats", "sources", "scans")

    def __init__(self, listeners: Iterable[tuple[str, str]] = ()):
        self.accepted = 0
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0
        self.by_verb = by_verb_counts()  # mta.smtp.counts: [verb * 10 + first digit]
        self.listeners = list(listeners)  # (address, profile), in the order of `connections`
        self.connections = [0] * len(self.listeners)
        self.listener_counts = [listener_counts() for _ in self.listeners]  # mta.smtp.counts
        self.sites = TopK(len(RESULTS))  # recipient outcomes by domain, columns as RESULTS
        # A recipient domain's site (the wiring's: its MX hosts' shaping site, its smarthost),
        # asked per domain counted when the series are taken, not per outcome.
        self.site_of: Callable[[str], str] = str
        self.latency = Histogram()  # arrival to final outcome, per recipient
        self.gauges: Callable[[], dict[str, int]] | None = None  # state -> messages
        self.spool_stats: Callable[[], dict] = dict  # the spool's stats()
        self.sources: list[Source] = []
        self.scans: list[Source] = []

    @property
    def replies(self) -> list[int]:
        """Replies by first digit, all verbs together."""
        v = self.by_verb
        return [sum(v[d::10]) for d in range(10)]

    def by_site(self) -> dict[str, list[int]]:
        """The outcomes by domain added up by site: the SITES_SHARED largest, the rest as OTHER."""
        rows: dict[str, list[int]] = {}
        site_of = self.site_of
        for domain, row in self.sites.table.items():
            add_row(rows, OTHER if domain == OTHER else site_of(domain), row)
        return top(rows, SITES_SHARED, len(RESULTS))

    def scan(self) -> list[Series]:
        """The tick's series: the queue gauges and whatever else needs a walk."""
        out: list[Series] = []
        if self.gauges is not None:
            g = self.gauges()
            out += [["mta_queue_messages", {"state": s}, int(g.get(s, 0))] for s in STATES]
        for f in self.scans:
            out.extend(f())
        return out

    def series(self, scanned: list[Series] | None = None) -> list[Series]:
        """Every series: a snapshot's content. `scanned`: the last tick's scan (None: scan now)."""
        out: list[Series] = [["mta_messages_accepted", {}, self.accepted]]
        out += [["mta_deliveries", {"result": r}, getattr(self, r)] for r in RESULTS]
        out += self.scan() if scanned is None else scanned
        replies = self.replies
        out += [["mta_smtp_replies", {"class": f"{d}xx"}, replies[d]] for d in (2, 3, 4, 5)]
        out += [["mta_connections", {"listener": a, "profile": p}, n]
                for (a, p), n in zip(self.listeners, self.connections)]
        for (a, _), counts in zip(self.listeners, self.listener_counts):
            out += [["mta_connection_outcomes", {"listener": a, "outcome": o}, counts[i]]
                    for i, o in enumerate(OUTCOMES)]
        out.append(["mta_accepted_bytes", {}, sum(c[BYTES] for c in self.listener_counts)])
        out += [["mta_tls_handshakes", {"direction": "in", "resumed": r}, sum(c[i] for c in self.listener_counts)]
                for r, i in (("no", TLS_FULL), ("yes", TLS_RESUMED))]
        v = self.by_verb
        out += [["mta_smtp_replies_by_verb", {"verb": verb, "class": f"{d}xx"}, v[i * 10 + d]]
                for i, verb in enumerate(VERBS) for d in (2, 3, 4, 5) if v[i * 10 + d]]
        out += spool_series(self.spool_stats())
        for site, row in self.by_site().items():
            out += [["mta_deliveries_by_site", {"site": site, "result": r}, row[i]] for i, r in enumerate(RESULTS)]
        out.append(histogram("mta_delivery_latency_seconds", {}, self.latency))
        for f in self.sources:
            out.extend(f())
        return out


def spool_series(st: dict) -> list[Series]:
    """The spool's stats() (rust/src/spool: syncs, failed batches, and the buckets of
    sync_le_<seconds> and batch_le_<messages>, not cumulative) as series."""
    out: list[Series] = [["mta_spool_syncs", {}, int(st.get("syncs", 0))],
                         ["mta_spool_failed_batches", {}, int(st.get("failed_batches", 0))],
                         ["mta_spool_index_bytes", {}, int(st.get("index_bytes", 0))],
                         ["mta_spool_kept_envelopes", {}, int(st.get("hot_envelopes", 0))]]
    # The sums: microseconds of sync time; messages in batches (each counted in one bucket).
    sums = {"sync_le_": st.get("sync_us_sum", 0) / 1e6, "batch_le_": float(st.get("messages", 0))}
    for name, prefix in (("mta_spool_sync_seconds", "sync_le_"), ("mta_spool_batch_messages", "batch_le_")):
        buckets = sorted((float(k[len(prefix):]), v) for k, v in st.items() if k.startswith(prefix))
        if buckets:
            out.append([name, {}, {"le": [b for b, _ in buckets[:-1]], "counts": [n for _, n in buckets],
                                   "sum": sums[prefix]}])
    return out


def merge(snapshots: Iterable[list[Series]]) -> list[Series]:
    """The series of several workers added up by each family's rule (Family.merge),
    keeping the first-seen order."""
    total: dict[tuple, Series] = {}
    for series in snapshots:
        for name, labels, value in series:
            key = (name, tuple(sorted(labels.items())))
            have = total.get(key)
            if have is None:
                total[key] = [name, dict(labels), _copy(value)]
            elif isinstance(value, dict):
                have[2] = _add_histograms(have[2], value)
            elif FAMILIES.get(name, _SUM).merge == "max":
                have[2] = max(have[2], value)
            else:
                have[2] += value
    out = list(total.values())
    for name, fam in FAMILIES.items():
        if fam.merge == "top":
            out = _top_sites(out, name)
    return out


_SUM = Family("gauge", "")


def _copy(value):
    return {"le": list(value["le"]), "counts": list(value["counts"]), "sum": value["sum"]} \
        if isinstance(value, dict) else value


def _add_histograms(a: dict, b: dict) -> dict:
    if a["le"] != b["le"]:  # workers of different versions: keep the first, never mix buckets
        return a
    a["counts"] = [x + y for x, y in zip(a["counts"], b["counts"])]
    a["sum"] += b["sum"]
    return a


def _top_sites(series: list[Series], name: str) -> list[Series]:
    """Keep TOP_SITES sites of family `name` (by their sum over its other labels); fold the
    rest into site="other"."""
    mine = [s for s in series if s[0] == name]
    if not mine:
        return series
    others = sorted({k for s in mine for k in s[1] if k != "site"})
    columns = sorted({tuple(s[1].get(k, "") for k in others) for s in mine})
    col = {c: i for i, c in enumerate(columns)}
    table: dict[str, list] = {}
    for _, labels, value in mine:
        row = table.setdefault(labels.get("site", OTHER), [0] * len(columns))
        row[col[tuple(labels.get(k, "") for k in others)]] += value
    kept = top(table, TOP_SITES, len(columns))
    first = series.index(mine[0])
    rest = [s for s in series if s[0] != name]
    folded = [[name, {"site": site, **dict(zip(others, c))}, row[i]]
              for site, row in kept.items() for i, c in enumerate(columns)]
    return rest[:first] + folded + rest[first:]


def render(series: list[Series]) -> bytes:
    """The Prometheus text exposition of merged series."""
    families: dict[str, tuple] = {}  # name -> (family, its label names)
    for name, labels, value in series:
        if name not in families:
            fam = FAMILIES.get(name) or Family("histogram" if isinstance(value, dict) else "gauge", name,
                                               tuple(labels))
            cls = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily,
                   "histogram": HistogramMetricFamily}[fam.kind]
            families[name] = (cls(name, fam.help, labels=list(fam.labels)), fam.labels)
        metric, names = families[name]
        values = [str(labels.get(n, "")) for n in names]
        if isinstance(value, dict):
            cumulative, buckets = 0, []
            for le, n in zip([*value["le"], float("inf")], value["counts"]):
                cumulative += n
                buckets.append((_le(le), cumulative))
            metric.add_metric(values, buckets, value["sum"])
        else:
            metric.add_metric(values, value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([f for f, _ in families.values()]))
    return generate_latest(registry)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


class Snapshots:
    """This process's snapshot file, and the sum over every process of this run: the
    workers (<shard>.json) and, with delivery.agent, their agents (agent-<shard>.json).
    `run`: an id shared by the workers of one server (the supervisor's pid), so files a
    previous run left are never added in."""

    def __init__(self, spool_dir: str, shard: int, workers: int, run: int, agents: bool = False):
        self.dir = os.path.join(spool_dir, "metrics")
        self.shard, self.workers, self.run, self.agents = shard, workers, run, agents
        self.path = os.path.join(self.dir, f"{shard}.json")
        self.shared = workers > 1  # another worker reads this one's file
        if self.shared or agents:
            os.makedirs(self.dir, exist_ok=True)

    def write(self, series: list[Series], now: float | None = None) -> None:
        if self.shared:  # else nobody reads it
            write_snapshot(self.path, self.run, series, now)

    def others(self, now: float | None = None) -> list[list[Series]]:
        """The fresh snapshots of the other processes of this run."""
        now = time.time() if now is None else now
        names = [str(s) for s in range(self.workers) if s != self.shard]
        if self.agents:
            names += [f"agent-{s}" for s in range(self.workers)]
        out = []
        for name in names:
            try:
                with open(os.path.join(self.dir, f"{name}.json")) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                continue  # not written yet, or the process is restarting
            if doc.get("run") == self.run and now - doc.get("time", 0) <= FRESH:
                out.append(doc["series"])
        return out

    def total(self, own: list[Series], now: float | None = None) -> list[Series]:
        return merge([own, *self.others(now)])
