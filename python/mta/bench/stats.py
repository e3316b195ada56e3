"""Figures and their presentation: percentiles, the send/sink tables (rich when installed,
plain text otherwise). Pure functions; the JSON keys are a contract (docs/bench.md).
"""

from __future__ import annotations

import math
import statistics


def percentile(sorted_vals, p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not sorted_vals:
        return 0.0
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def latency_summary(latencies_s) -> dict:
    vals = sorted(latencies_s)
    ms = lambda v: round(v * 1000.0, 3)  # noqa: E731
    return {"p50": ms(percentile(vals, 50)), "p90": ms(percentile(vals, 90)),
            "p99": ms(percentile(vals, 99)), "max": ms(vals[-1] if vals else 0.0)}


CDF_POINTS = (*range(0, 100, 2), 95, 97, 99, 99.5, 99.9, 100)


def latency_cdf(latencies_s) -> list[list[float]]:
    """[[percentile, ms], ...] at CDF_POINTS: enough to draw a latency CDF with its tail."""
    vals = sorted(latencies_s)
    if not vals:
        return []
    return [[p, round(percentile(vals, p) * 1000.0, 3) if p else round(vals[0] * 1000.0, 3)]
            for p in sorted(set(CDF_POINTS))]


def median_min_max(vals: list[float]) -> tuple[float, float, float]:
    if not vals:
        return 0.0, 0.0, 0.0
    return statistics.median(vals), min(vals), max(vals)


def _rows_send(r: dict) -> list[tuple[str, str]]:
    lat = r["latency_ms"]
    rows = [
        ("messages", f"{r['messages']:,}"),
        ("elapsed", f"{r['elapsed_s']:.3f} s"),
        ("messages/s", f"{r['messages_per_s']:,.1f}"),
        ("latency p50 / p90 / p99 / max", f"{lat['p50']:.2f} / {lat['p90']:.2f} / {lat['p99']:.2f} / {lat['max']:.2f} ms"),
    ]
    if r.get("tls_handshakes"):
        h = r["tls_handshakes"]
        rows.append(("TLS handshakes full / resumed", f"{h['full']:,} / {h['resumed']:,}"))
    if r.get("open_loop"):
        ol = r["open_loop"]
        rows.append(("open loop", f"{ol['rate']:,.0f}/s offered, {ol['late_starts']} late starts (max {ol['max_start_lag_ms']:.1f} ms)"))
    errs = r["errors"]
    rows.append(("errors", ", ".join(f"{k}: {v}" for k, v in sorted(errs.items())) if errs else "none"))
    return rows


def _rows_sink(r: dict) -> list[tuple[str, str]]:
    rows = [
        ("messages", f"{r['messages']:,}"),
        ("elapsed", f"{r['elapsed_s']:.3f} s (first connection to last message)"),
        ("messages/s", f"{r['messages_per_s']:,.1f}"),
        ("connections", f"{r['connections']:,}"),
        ("bytes", f"{r['bytes']:,}"),
        ("integrity errors", f"{r['integrity_errors']} ({r['unchecked']} without a checksum header)"),
    ]
    rej = r["rejected"]
    rows.append(("rejected (injected)", ", ".join(f"{k}: {v}" for k, v in sorted(rej.items())) if rej else "none"))
    return rows


def render(kind: str, report: dict, title: str) -> None:
    rows = _rows_send(report) if kind == "send" else _rows_sink(report)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for k, v in rows:
            print(f"  {k:<32} {v}")
        return
    t = Table(title=title, show_header=False)
    t.add_column(style="bold")
    t.add_column(justify="right")
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


class Progress:
    """A live line (rich when installed and on a terminal, else nothing); `update(text)`."""

    def __init__(self, enabled: bool) -> None:
        self._live = None
        if not enabled:
            return
        try:
            import sys

            from rich.live import Live
            from rich.text import Text

            if not sys.stdout.isatty():
                return
            self._text = Text
            self._live = Live(Text(""), refresh_per_second=8, transient=True)
            self._live.start()
        except ImportError:
            self._live = None

    def update(self, text: str) -> None:
        if self._live is not None:
            self._live.update(self._text(text))

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
