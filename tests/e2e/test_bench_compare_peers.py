"""`mta bench compare --peers` end to end on tiny workloads: ready-made peers (mta and
smtp-sink, which need nothing fetched), the standard workload names, a sessions sweep, an
offered rate, and the report directory (Markdown, JSON rows, charts, the HTML page)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

ROW_KEYS = {"system", "workload", "messages_per_s", "end_to_end_per_s", "cpu_us_per_msg", "p99_ms"}


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", "bench", "compare", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "out"
    r = compare("--peers", "mta,smtp-sink", "--workloads", "accept-1k,e2e-1k", "--messages", "60",
                "--repeats", "2", "--out", str(out), "--html", "--svg")
    return r, out


def test_one_line_runs_every_peer_on_every_workload(raced):
    r, out = raced
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "report.json").read_text())
    assert set(doc) >= {"meta", "rows"}
    # smtp-sink is accept-only: it has no end-to-end row
    assert [(row["system"], row["workload"]) for row in doc["rows"]] == [
        ("mta", "accept-1k"), ("smtp-sink", "accept-1k"), ("mta", "e2e-1k")]
    assert [(t["system"], t["repeat"]) for t in doc["trials"]][:4] == [
        ("mta", 0), ("smtp-sink", 0), ("mta", 1), ("smtp-sink", 1)]  # in alternation
    for row in doc["rows"]:
        assert ROW_KEYS <= set(row), row
        assert row["messages_per_s"] > 0 and row["p99_ms"] > 0
        # CPU is read in clock ticks (10 ms): smtp-sink may use less than one for 60 messages
        assert row["cpu_us_per_msg"] > 0 if row["system"] == "mta" else row["cpu_us_per_msg"] >= 0
        assert row["rss_peak_mb"] > 0
        assert (row["end_to_end_per_s"] is None) == (row["workload"] == "accept-1k")
    for t in doc["trials"]:
        assert t["messages"] == 60 and not t["errors"] and t.get("integrity_errors", 0) == 0


def test_the_report_records_how_to_repeat_the_run(raced):
    r, out = raced
    meta = json.loads((out / "report.json").read_text())["meta"]
    assert "--workloads accept-1k,e2e-1k" in meta["command"] and meta["command"].startswith("mta bench compare")
    assert meta["machine"]["cpus"] >= 1 and meta["machine"]["kernel"]
    assert meta["peers"]["mta"]["version"].startswith("mta ") and "fdatasync" in meta["peers"]["mta"]["durability"]
    assert meta["peers"]["smtp-sink"]["durability"].startswith("none")
    assert "[tls]" in meta["peers"]["mta"]["config"]
    assert meta["sweep"] is None and meta["workloads"]["e2e-1k"]["kind"] == "end-to-end"
    md = (out / "report.md").read_text()
    assert "mta bench compare --peers mta,smtp-sink" in md and "smtp-sink" in md and "e2e-1k" in md


def test_charts_and_page_are_written(raced):
    _, out = raced
    for name in ("throughput", "p99", "latency-cdf"):
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name
        svg = (out / f"{name}.svg").read_text()
        assert "mta" in svg and "smtp-sink" in svg, name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "http://" not in page.replace("http://www.w3.org", "")


def test_a_sweep_runs_every_point(tmp_path):
    out = tmp_path / "sweep"
    r = compare("--peers", "mta", "--messages", "30", "--repeats", "1", "--sweep", "sessions=1,4", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(row["workload"], row["sweep"]) for row in rows] == [  # e2e-1k unless --workloads says
        ("e2e-1k", {"param": "sessions", "value": 1}), ("e2e-1k", {"param": "sessions", "value": 4})]
    assert (out / "sweep-sessions.png").read_bytes()[:4] == b"\x89PNG"


def test_an_offered_rate_is_reported_as_sustained_or_not(tmp_path):
    out = tmp_path / "rate"
    r = compare("--peers", "mta", "--workloads", "e2e-1k", "--messages", "40", "--repeats", "1",
                "--rate", "20,40", "--p99-max", "2s", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [row["rate"] for row in rows] == [20.0, 40.0]
    assert all(row["sustained"] for row in rows), rows  # 40/s is far below what mta takes on a loopback
    assert (out / "open-loop.png").exists()


def test_unknown_peer_and_workload_are_clear_errors(tmp_path):
    r = compare("--peers", "mta,qmail")
    assert r.returncode == 2 and "no peer named 'qmail'" in r.stderr and "postfix" in r.stderr
    r = compare("--peers", "mta", "--workloads", "e2e-2k")
    assert r.returncode == 2 and "no workload named e2e-2k" in r.stderr
