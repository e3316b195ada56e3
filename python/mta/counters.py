"""Counters the components bump for /metrics without knowing it: a fixed-bucket histogram, a
top-K table by key, and the snapshot file a process shares them in. Each bump is a few int
operations; memory is bounded (fixed buckets, at most `cap` keys); a snapshot is replaced whole."""

from __future__ import annotations

import json
import os
import time
from bisect import bisect_left

# Seconds, for latencies from sub-millisecond calls up to days in a queue.
LATENCY_BOUNDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                  3600.0, 14400.0, 86400.0)


class Histogram:
    """Counts by bucket (`counts[i]`: values v with bounds[i-1] < v <= bounds[i]; the last is
    above every bound) and the sum: what a Prometheus histogram needs, made cumulative
    only when rendered."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, n: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += n
        self.sum += value * n

    @property
    def count(self) -> int:
        return sum(self.counts)


OTHER = "other"


class TopK:
    """Counts per key and per column (e.g. site x result). At most `cap` keys are kept; a
    key that comes when the table is full is counted under OTHER. `top(k)` gives the k
    keys with most in all, the rest summed into OTHER, so a scrape shows at most k+1 keys."""

    __slots__ = ("cap", "columns", "table")

    def __init__(self, columns: int, cap: int = 1000):
        self.cap = cap
        self.columns = columns
        self.table: dict[str, list[int]] = {OTHER: [0] * columns}

    def add(self, key: str, column: int, n: int = 1) -> None:
        row = self.table.get(key)
        if row is None:
            table = self.table
            row = table[OTHER] if len(table) > self.cap else table.setdefault(key, [0] * self.columns)
        row[column] += n

    def top(self, k: int) -> dict[str, list[int]]:
        return top(self.table, k, self.columns)


def add_row(table: dict[str, list[int]], key: str, row: list[int]) -> None:
    """Add `row` into table[key] column by column (a copy of it when the key is new)."""
    have = table.get(key)
    if have is None:
        table[key] = list(row)
    else:
        for i, n in enumerate(row):
            have[i] += n


def top(table: dict[str, list[int]], k: int, columns: int) -> dict[str, list[int]]:
    """The k keys of `table` with the largest row sums (ties: by key), the others' rows
    added into OTHER (always present)."""
    ranked = sorted((key for key in table if key != OTHER), key=lambda key: (-sum(table[key]), key))
    out = {key: list(table[key]) for key in ranked[:k]}
    rest = [0] * columns
    for key in ranked[k:] + ([OTHER] if OTHER in table else []):
        for i, v in enumerate(table[key]):
            rest[i] += v
    out[OTHER] = rest
    return out


def write_snapshot(path: str, run: int, series: list, now: float | None = None) -> None:
    """Series as a snapshot file other processes of run `run` read (mta.app.metrics):
    written aside and renamed over, so a reader sees the old one or the new one, whole."""
    doc = {"run": run, "time": time.time() if now is None else now, "series": series}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)
