"""The server's counters and gauges for /metrics: plain ints the components bump as events
happen, shared across workers as JSON snapshot files (<spool.dir>/metrics/<shard>.json,
rewritten at most once a second) and summed. A snapshot is only ever replaced whole (rename)."""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

# name -> (type, help, label names). The first four are the public contract (docs/http.md).
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mta_messages_accepted": ("counter", "Messages made durable in the spool (the 250 after DATA/BDAT).", ()),
    "mta_deliveries": ("counter", "Recipient outcomes recorded by the queue manager.", ("result",)),
    "mta_queue_messages": ("gauge", "Messages in the spool by state.", ("state",)),
    "mta_smtp_replies": ("counter", "SMTP replies sent, by code class.", ("class",)),
    "mta_connections": ("counter", "SMTP connections taken, by listener.", ("listener", "profile")),
    "mta_spool_syncs": ("counter", "Spool syncs (fdatasync of a batch of records).", ()),
    "mta_spool_failed_batches": ("counter", "Spool batches whose write or sync failed.", ()),
}
RESULTS = ("delivered", "deferred", "bounced")
STATES = ("active", "deferred", "held")
SNAPSHOT_EVERY = 1.0  # seconds: what /metrics may lag behind another worker
FRESH = 10.0  # seconds: an older snapshot is a dead worker's, left out


class Metrics:
    """One worker's live values. Components get this object from the wiring and bump its
    fields directly (no registry lookups on their paths); `gauges` and `spool_stats` are
    read only when a snapshot is taken."""

    __slots__ = ("accepted", "delivered", "deferred", "bounced", "replies", "listeners",
                 "connections", "gauges", "spool_stats")

    def __init__(self, listeners: Iterable[tuple[str, str]] = ()):
        self.accepted = 0
        self.delivered = 0
        self.deferred = 0
        self.bounced = 0
        self.replies = [0] * 10  # by the reply's first digit
        self.listeners = list(listeners)  # (address, profile), in the order of `connections`
        self.connections = [0] * len(self.listeners)
        self.gauges: Callable[[], dict[str, int]] = dict  # state -> messages
        self.spool_stats: Callable[[], dict] = dict  # the spool's stats() (syncs, failed_batches)

    def series(self, gauges: dict[str, int] | None = None) -> list[list]:
        """[name, {label: value}, number] for every series: a snapshot's content.
        `gauges`: the queue gauges to report instead of asking `self.gauges`."""
        out: list[list] = [["mta_messages_accepted", {}, self.accepted]]
        out += [["mta_deliveries", {"result": r}, getattr(self, r)] for r in RESULTS]
        if gauges is None:
            gauges = self.gauges()
        out += [["mta_queue_messages", {"state": s}, int(gauges.get(s, 0))] for s in STATES]
        out += [["mta_smtp_replies", {"class": f"{d}xx"}, self.replies[d]] for d in (2, 3, 4, 5)]
        out += [["mta_connections", {"listener": a, "profile": p}, n]
                for (a, p), n in zip(self.listeners, self.connections)]
        st = self.spool_stats()
        out.append(["mta_spool_syncs", {}, int(st.get("syncs", 0))])
        out.append(["mta_spool_failed_batches", {}, int(st.get("failed_batches", 0))])
        return out


def merge(snapshots: Iterable[list[list]]) -> list[list]:
    """Sum the series of several workers (counters and gauges alike: each worker counts
    its own share), keeping the first-seen order."""
    total: dict[tuple, list] = {}
    for series in snapshots:
        for name, labels, value in series:
            key = (name, tuple(sorted(labels.items())))
            if key in total:
                total[key][2] += value
            else:
                total[key] = [name, dict(labels), value]
    return list(total.values())


def render(series: list[list]) -> bytes:
    """The Prometheus text exposition of merged series."""
    families: dict[str, tuple] = {}  # name -> (family, its label names)
    for name, labels, value in series:
        if name not in families:
            kind, doc, names = FAMILIES.get(name, ("gauge", name, tuple(labels)))
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            families[name] = (cls(name, doc, labels=list(names)), names)
        fam, names = families[name]
        fam.add_metric([str(labels.get(n, "")) for n in names], value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed([f for f, _ in families.values()]))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return iter(self.families)


class Snapshots:
    """This worker's snapshot file, and the sum over every worker of this run. `run`: an id
    shared by the workers of one server (the supervisor's pid), so files a previous run
    left are never added in."""

    def __init__(self, spool_dir: str, shard: int, workers: int, run: int):
        self.dir = os.path.join(spool_dir, "metrics")
        self.shard, self.workers, self.run = shard, workers, run
        self.path = os.path.join(self.dir, f"{shard}.json")
        if workers > 1:
            os.makedirs(self.dir, exist_ok=True)

    def write(self, series: list[list], now: float | None = None) -> None:
        if self.workers <= 1:
            return  # nobody else reads it
        doc = {"run": self.run, "time": time.time() if now is None else now, "series": series}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        os.replace(tmp, self.path)  # readers see the old snapshot or the new one, whole

    def others(self, now: float | None = None) -> list[list[list]]:
        """The fresh snapshots of the other workers of this run."""
        now = time.time() if now is None else now
        out = []
        for shard in range(self.workers):
            if shard == self.shard:
                continue
            try:
                with open(os.path.join(self.dir, f"{shard}.json")) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                continue  # not written yet, or the worker is restarting
            if doc.get("run") == self.run and now - doc.get("time", 0) <= FRESH:
                out.append(doc["series"])
        return out

    def total(self, own: list[list], now: float | None = None) -> list[list]:
        return merge([own, *self.others(now)])
