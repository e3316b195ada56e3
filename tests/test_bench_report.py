"""The reports of `mta bench compare` from synthetic trials: the summary rows (medians, min–max,
pair-by-pair ratios, failures, open loop) checked by hand, then every file: JSON, Markdown,
PNG sizes, the SVG legend text, the self-contained HTML page, and escaping."""

from __future__ import annotations

import ast
import json
import struct
import sys
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.bench import charts, report
from mta.bench.report import open_loop, summarize, write_outputs, write_report

SYSTEMS = ["mta", "postfix", "exim"]
MiB = 2**20


def trial(system, workload, repeat, acc, *, e2e=None, p99=5.0, cpu=0.0002, rss=None, errors=None, sweep=None,
          rate=None, cdf=None):
    t = {"system": system, "workload": workload, "kind": "end-to-end" if e2e is not None else "accept-only",
         "repeat": repeat, "sweep": sweep, "rate": rate, "messages": 1000, "accepted_per_s": acc, "elapsed_s": 1.0,
         "latency_ms": {"p50": p99 / 4, "p90": p99 / 2, "p99": p99, "max": p99 * 3},
         "latency_cdf_ms": cdf or [[0, 0.1], [50, p99 / 4], [90, p99 / 2], [99, p99], [100, p99 * 3]],
         "errors": errors or {}, "server_cpu_s": cpu * 1000, "server_cpu_s_per_msg": cpu, "rss_peak_bytes": rss}
    if e2e is not None:
        t.update(delivered=1000, end_to_end_per_s=e2e, integrity_errors=0)
    return t


# accepted/s (accept-1k) and end-to-end/s (e2e-1k) by system, one value per repeat; None = failed
ACCEPT = {"mta": [1000, 1200, 1100], "postfix": [500, 600, 550], "exim": [250, 400, 330]}
E2E = {"mta": [800, 900, 1000], "postfix": [400, 450, 600], "exim": [200, None, 300]}
P99 = {"mta": [5.0, 7.0, 6.0], "postfix": [9.0, 8.0, 10.0], "exim": [20.0, 30.0, 25.0]}


def standard_trials() -> list[dict]:
    out = []
    for r in range(3):
        for s in SYSTEMS:
            out.append(trial(s, "accept-1k", r, ACCEPT[s][r], p99=P99[s][r], cpu=(0.0001, 0.0002, 0.00015)[r],
                             rss=(100 * MiB, 150 * MiB, None)[r],
                             errors={"451": r, "421": 1} if s == "postfix" and r else None,
                             cdf=[[0, 0.1], [50, 1.0 + r], [99, P99[s][r]], [100, 40.0]]))
    for r in range(3):
        for s in SYSTEMS:
            if E2E[s][r] is None:
                out.append({"system": s, "workload": "e2e-1k", "kind": "end-to-end", "repeat": r, "sweep": None,
                            "rate": None, "failed": "no 220 greeting within 60 s"})
            else:
                out.append(trial(s, "e2e-1k", r, E2E[s][r] * 2, e2e=E2E[s][r], p99=P99[s][r] * 2))
    return out


def sweep_trials() -> list[dict]:
    tput = {"mta": {1: 300, 10: 900, 50: 1500}, "postfix": {1: 200, 10: 700, 50: 1000},
            "exim": {1: 100, 10: 400, 50: 500}}
    return [trial(s, "e2e-1k", r, v * 2 + r, e2e=v + r, p99=v / 100, sweep={"param": "sessions", "value": n})
            for n in (1, 10, 50) for r in range(3) for s in SYSTEMS for v in [tput[s][n]]]


def rate_trials() -> list[dict]:
    # mta keeps up at both rates; postfix falls short at 1000/s; exim meets the rate but not the bound
    got = {"mta": {500.0: 500, 1000.0: 990}, "postfix": {500.0: 499, 1000.0: 900}, "exim": {500.0: 500, 1000.0: 1000}}
    p99 = {"mta": 4.0, "postfix": 8.0, "exim": 60.0}
    return [trial(s, "accept-1k", r, got[s][rate], p99=p99[s], rate=rate)
            for rate in (500.0, 1000.0) for r in range(3) for s in SYSTEMS]


def all_trials() -> list[dict]:
    return standard_trials() + sweep_trials() + rate_trials()


META = {"date": "2026-12-05 18:00:00", "command": "mta bench compare --peers mta,postfix,exim --sweep sessions=1,10,50",
        "machine": {"cpus": 2, "cpu_model": "Test CPU", "kernel": "6.1.0-test", "memory_gib": 24.0, "python": "3.11.7",
                    "disk": {"path": "/var/lib/mta-bench", "device": "/dev/sda1", "fstype": "ext4", "model": "Disk 1",
                             "rotational": False}},
        "repeats": 3, "generator_workers": 2,
        "peers": {"mta": {"version": "mta 0.1.0", "durability": "fdatasync before 250", "config": "[server]\nx = 1"},
                  "postfix": {"version": "Postfix 3.7.11", "durability": "fsync per message", "notes": "n",
                              "config": "myhostname = bench"},
                  "exim": {"version": "Exim 4.96", "durability": "fsync per message", "config": "spool_directory = /x"}},
        "workloads": {"accept-1k": {"kind": "accept-only", "messages": 1000, "size": 1024, "sessions": 50,
                                    "per_connection": 1, "starttls": False},
                      "e2e-1k": {"kind": "end-to-end", "messages": 1000, "size": 1024, "sessions": 50,
                                 "per_connection": 1, "starttls": False}},
        "sweep": {"param": "sessions", "values": [1, 10, 50]}, "rates": [500.0, 1000.0], "p99_max_ms": 50.0}

CONTRACT = {"system", "workload", "kind", "sweep", "rate", "trials", "failed_trials", "messages_per_s",
            "messages_per_s_min", "messages_per_s_max", "end_to_end_per_s", "end_to_end_per_s_min",
            "end_to_end_per_s_max", "cpu_us_per_msg", "p50_ms", "p99_ms", "p99_ms_min", "p99_ms_max", "rss_peak_mb",
            "errors", "integrity_errors", "ratio_vs_first", "latency_cdf_ms", "sustained"}


def _row(rows, system, workload, sweep=None, rate=None):
    [r] = [r for r in rows if r["system"] == system and r["workload"] == workload
           and (r["sweep"] or {}).get("value") == sweep and r["rate"] == rate]
    return r


# -- summary ---------------------------------------------------------------------------------

def test_summary_rows_are_one_per_point_and_system_in_order():
    rows = summarize(all_trials(), SYSTEMS, 50.0)
    points = [(r["workload"], (r["sweep"] or {}).get("value"), r["rate"]) for r in rows[::3]]
    assert points == [("accept-1k", None, None), ("e2e-1k", None, None), ("e2e-1k", 1, None), ("e2e-1k", 10, None),
                      ("e2e-1k", 50, None), ("accept-1k", None, 500.0), ("accept-1k", None, 1000.0)]
    assert [r["system"] for r in rows] == SYSTEMS * 7
    assert all(set(r) == CONTRACT for r in rows)


def test_summary_medians_spreads_and_ratios_by_hand():
    rows = summarize(standard_trials(), SYSTEMS)
    m = _row(rows, "mta", "accept-1k")
    assert (m["messages_per_s"], m["messages_per_s_min"], m["messages_per_s_max"]) == (1100, 1000, 1200)
    assert m["end_to_end_per_s"] is None and m["end_to_end_per_s_min"] is None and m["kind"] == "accept-only"
    assert (m["p99_ms"], m["p99_ms_min"], m["p99_ms_max"]) == (6.0, 5.0, 7.0) and m["p50_ms"] == 1.5
    assert m["cpu_us_per_msg"] == 150.0 and m["rss_peak_mb"] == 150.0
    assert m["ratio_vs_first"] == 1.0 and m["errors"] == {} and m["sustained"] is None
    # the median trial by throughput is repeat 2 (1100/s): its curve, not a blend
    assert m["latency_cdf_ms"] == [[0, 0.1], [50, 3.0], [99, 6.0], [100, 40.0]]
    p = _row(rows, "postfix", "accept-1k")
    assert p["ratio_vs_first"] == 0.5 and p["errors"] == {"451": 3, "421": 2}
    # per-repeat ratios 250/1000, 400/1200, 330/1100 = 0.25, 0.333, 0.3: the median is 0.3
    assert _row(rows, "exim", "accept-1k")["ratio_vs_first"] == 0.3


def test_summary_end_to_end_and_failed_trials():
    rows = summarize(standard_trials(), SYSTEMS)
    m = _row(rows, "mta", "e2e-1k")
    assert (m["end_to_end_per_s"], m["end_to_end_per_s_min"], m["end_to_end_per_s_max"]) == (900, 800, 1000)
    assert m["messages_per_s"] == 1800 and m["integrity_errors"] == 0 and m["kind"] == "end-to-end"
    # ratios on end to end: 400/800, 450/900, 600/1000 = 0.5, 0.5, 0.6
    assert _row(rows, "postfix", "e2e-1k")["ratio_vs_first"] == 0.5
    x = _row(rows, "exim", "e2e-1k")
    assert (x["trials"], x["failed_trials"]) == (2, 1)
    assert (x["end_to_end_per_s"], x["end_to_end_per_s_min"], x["end_to_end_per_s_max"]) == (250, 200, 300)
    assert x["ratio_vs_first"] == 0.275  # 200/800 and 300/1000, repeat 1 failed


def test_summary_of_only_failed_trials_and_a_failed_first_system():
    t = [{"system": "mta", "workload": "w", "kind": "accept-only", "repeat": 0, "failed": "boom"},
         trial("postfix", "w", 0, 500.0)]
    mta, postfix = summarize(t, ["mta", "postfix"])
    assert (mta["trials"], mta["failed_trials"], mta["messages_per_s"], mta["ratio_vs_first"]) == (0, 1, None, None)
    assert postfix["ratio_vs_first"] == 1.0  # the first system that ran is the reference


def test_summary_of_legacy_rows_without_the_new_keys():
    legacy = [{"system": s, "workload": "tiny", "repeat": r, "messages": 200, "accepted_per_s": v, "elapsed_s": 1.0,
               "latency_ms": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0}, "errors": {},
               "server_cpu_s": 0.1, "server_cpu_s_per_msg": 0.0005}
              for r, (a, b) in enumerate([(100.0, 300.0), (200.0, 200.0)]) for s, v in (("mta", a), ("sink", b))]
    rows = summarize(legacy, ["mta", "sink"])
    assert [(r["system"], r["kind"], r["sweep"], r["rate"], r["sustained"]) for r in rows] == [
        ("mta", "accept-only", None, None, None), ("sink", "accept-only", None, None, None)]
    assert rows[1]["ratio_vs_first"] == 2.0 and rows[1]["messages_per_s"] == 250.0  # median of 3.0 and 1.0
    assert rows[0]["rss_peak_mb"] is None and rows[0]["latency_cdf_ms"] is None and rows[0]["cpu_us_per_msg"] == 500.0


def test_systems_missing_from_the_order_come_last():
    rows = summarize([trial("b", "w", 0, 1.0), trial("a", "w", 0, 2.0), trial("c", "w", 0, 3.0)], ["c", "a"])
    assert [r["system"] for r in rows] == ["c", "a", "b"]


def test_open_loop_sustained_rates_and_the_bound():
    rows = summarize(rate_trials(), SYSTEMS, 50.0)
    assert [(r["system"], r["rate"], r["sustained"]) for r in rows] == [
        ("mta", 500.0, True), ("postfix", 500.0, True), ("exim", 500.0, False),
        ("mta", 1000.0, True), ("postfix", 1000.0, False), ("exim", 1000.0, False)]
    assert open_loop(rows, 50.0) == {"mta": 1000.0, "postfix": 500.0, "exim": None}
    assert open_loop(rows, None) == {"mta": 1000.0, "postfix": 500.0, "exim": 1000.0}
    assert open_loop(summarize(standard_trials(), SYSTEMS), 50.0) == {}


def test_an_error_or_a_failed_trial_is_not_sustained():
    base = [trial("mta", "w", r, 100.0, rate=100.0) for r in range(2)]
    assert summarize(base, ["mta"])[0]["sustained"] is True
    base[1]["errors"] = {"451": 1}
    assert summarize(base, ["mta"])[0]["sustained"] is False
    failed = [base[0], {"system": "mta", "workload": "w", "kind": "accept-only", "repeat": 1, "rate": 100.0,
                        "sweep": None, "failed": "x"}]
    assert summarize(failed, ["mta"])[0]["sustained"] is False


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(1.0, 1e6), min_size=2, max_size=2), min_size=1, max_size=7))
def test_property_median_within_spread_and_first_is_one(pairs):
    t = [trial(s, "w", r, v) for r, pair in enumerate(pairs) for s, v in zip(("a", "b"), pair)]
    a, b = summarize(t, ["a", "b"])
    for row in (a, b):
        assert row["messages_per_s_min"] <= row["messages_per_s"] <= row["messages_per_s_max"]
        assert row["trials"] == len(pairs) and row["failed_trials"] == 0
    assert a["ratio_vs_first"] == 1.0
    ratios = sorted(q / p for p, q in pairs)
    assert round(ratios[0], 3) <= b["ratio_vs_first"] <= round(ratios[-1], 3)


# -- files -----------------------------------------------------------------------------------

def read(path) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        data = f.read(24)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# (width, height) in pixels: figsize x charts.DPI (100), worked out from each chart's layout
SIZES = {"throughput": (700, 420), "p99": (700, 420),  # 2 workloads x 3 systems: 2 panels of 3.5 x 3.2 in + 1 in
         "sweep-sessions": (1100, 400), "latency-cdf": (1100, 400), "open-loop": (1100, 400)}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    paths = write_report(str(out), META, all_trials(), SYSTEMS, html=True, svg=True)
    return out, paths


def test_report_json_round_trips_with_the_contract(written):
    out, paths = written
    doc = json.loads((out / "report.json").read_text())
    assert doc["meta"] == META and doc["trials"] == all_trials()
    assert doc["rows"] == json.loads(json.dumps(summarize(all_trials(), SYSTEMS, 50.0)))
    assert all(set(r) == CONTRACT for r in doc["rows"]) and len(doc["rows"]) == 21
    assert paths["json"] == str(out / "report.json") and paths["markdown"] == str(out / "report.md")


def test_report_markdown(written):
    out, _ = written
    md = (out / "report.md").read_text()
    for text in SYSTEMS + ["accept-1k", "e2e-1k", "```\n" + META["command"] + "\n```", "2 CPUs", "Test CPU",
                           "6.1.0-test", "24 GiB", "/dev/sda1", "ext4", "generator workers**: 2", "repeats**: 3",
                           "Postfix 3.7.11", "fsync per message", "<details><summary>config</summary>",
                           "myhostname = bench", "![throughput per workload", "(throughput.png)", "(open-loop.png)"]:
        assert text in md, text
    # CPU and memory are alike for every system here: nothing to bold in those columns
    assert "| mta | **1,100 (1,000–1,200)** | — | 150 | **1.50 / 6.00** | 150 | **1.00×** | 0 |" in md
    assert "| postfix | 550 (500–600) | — | 150 | 2.25 / 9.00 | 150 | 0.50× | 421: 2, 451: 3 |" in md
    assert "| exim (1 failed) | 500 (400–600) | 250 (200–300) |" in md
    assert "| 10 | **901** | 701 | 401 | 9.00 | 7.00 | **4.00** |" in md  # the sweep: medians per system
    assert "| 1,000 | 990 · 4.00 ✓ | 900 · 8.00 ✗ | 1,000 · 60.0 ✗ |" in md
    assert "| postfix | 500 |" in md and "| exim | none |" in md and "p99 ≤ 50 ms" in md
    assert "exim / e2e-1k #2: no 220 greeting within 60 s" in md


def test_every_chart_is_a_png_of_the_expected_size(written):
    out, paths = written
    assert {p.name for p in out.glob("*.png")} == {f"{n}.png" for n in SIZES}
    for name, size in SIZES.items():
        w, h = png_size(out / f"{name}.png")
        assert abs(w - size[0]) <= 1 and abs(h - size[1]) <= 1, (name, w, h)
        assert paths[name] == str(out / f"{name}.png")


def test_every_svg_names_every_system_in_its_text(written):
    out, _ = written
    for name in SIZES:
        text = svg_text(out / f"{name}.svg")
        for s in SYSTEMS:
            assert s in text, (name, s)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.srcs, self.text, self.bold = [], [], [], []
        self._best = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.srcs += [v for k, v in attrs if k in ("src", "href")]
        self._best = tag == "td" and "best" in (a.get("class") or "")

    def handle_data(self, data):
        self.text.append(data)
        if self._best:
            self.bold.append(data)
            self._best = False


def test_html_page_is_self_contained(written):
    out, _ = written
    page = (out / "report.html").read_text()
    p = _Page()
    p.feed(page)
    p.close()
    assert p.tags.count("img") == len(SIZES) and p.tags.count("table") == 5 and "details" in p.tags
    assert all(s.startswith("data:image/png;base64,") for s in p.srcs) and len(p.srcs) == len(SIZES)
    assert "http://" not in page.replace('xmlns="http://', "") and "https://" not in page
    text = "".join(p.text)
    for s in SYSTEMS + ["accept-1k", META["command"], "spool_directory = /x", "Test CPU"]:
        assert s in text
    assert "1,100 (1,000–1,200)" in p.bold and "550 (500–600)" not in p.bold


def test_text_is_escaped_everywhere(tmp_path):
    evil = "<b>&x"
    t = [trial(evil, "w<i>", r, 100.0 + r) for r in range(2)] + [trial("mta", "w<i>", r, 50.0) for r in range(2)]
    meta = {"command": "mta bench compare --peers '<script>'", "peers": {evil: {"config": "</pre><script>x</script>"}}}
    paths = write_report(str(tmp_path), meta, t, [evil, "mta"], html=True, svg=True)
    page = read(paths["html"])
    assert "<b>&x" not in page and "&lt;b&gt;&amp;x" in page
    assert "<script>" not in page and "<i>" not in page
    p = _Page()
    p.feed(page)
    assert "b" not in p.tags and "script" not in p.tags and evil in "".join(p.text)
    assert evil in svg_text(tmp_path / "throughput.svg")


def svg_text(path) -> str:
    root = ET.parse(path).getroot()
    return " ".join(" ".join(el.itertext()) for el in root.iter("{http://www.w3.org/2000/svg}text"))


def test_a_size_sweep_has_its_own_chart_with_sizes_on_the_axis(tmp_path):
    t = [trial(s, "e2e", 0, 100.0 / (1 + n // 2**16), e2e=50.0, sweep={"param": "size", "value": n})
         for n in (1024, 65536, 2**20) for s in ("mta", "postfix")]
    paths = write_report(str(tmp_path), {"sweep": {"param": "size", "values": [1024, 65536, 2**20]}}, t,
                         ["mta", "postfix"], svg=True)
    assert {"sweep-size", "sweep-size.svg"} <= set(paths) and "throughput" not in paths
    assert png_size(paths["sweep-size"]) == (1100, 400)
    text = svg_text(paths["sweep-size.svg"])
    assert all(s in text for s in ("mta", "postfix", "1 KiB", "64 KiB", "1 MiB"))
    assert "| 65536 | **50.0** |" not in read(paths["markdown"])  # equal values: nothing bold
    assert "| 65536 | 50.0 | 50.0 |" in read(paths["markdown"])


def test_a_system_without_data_stays_in_every_legend(tmp_path):
    t = [trial("mta", "w", 0, 10.0, rate=10.0), trial("mta", "w", 0, 10.0),
         {"system": "exim", "workload": "w", "kind": "accept-only", "repeat": 0, "failed": "no 220"},
         {"system": "exim", "workload": "w", "kind": "accept-only", "repeat": 0, "rate": 10.0, "failed": "no 220"}]
    paths = write_report(str(tmp_path), {"p99_max_ms": 5.0}, t, ["mta", "exim"], svg=True)
    for name in ("throughput", "p99", "latency-cdf", "open-loop"):
        assert "exim (no data)" in svg_text(paths[name + ".svg"]) and "mta" in svg_text(paths[name + ".svg"])


def test_meta_may_be_empty_and_charts_skip_without_data(tmp_path):
    paths = write_report(str(tmp_path), {}, [trial("a", "w", 0, 10.0)], ["a"], html=True)
    assert set(paths) == {"json", "markdown", "html", "throughput", "p99", "latency-cdf"}
    paths = write_report(str(tmp_path / "none"), {}, [], [], html=True)
    assert set(paths) == {"json", "markdown", "html"} and "No chart" in read(paths["markdown"])


def test_without_matplotlib_everything_but_the_charts(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when not installed
    paths = write_report(str(tmp_path), META, all_trials(), SYSTEMS, html=True, svg=True)
    assert set(paths) == {"json", "markdown", "html"} and not list(tmp_path.glob("*.png"))
    assert "Charts skipped: matplotlib is not installed" in read(paths["markdown"])
    assert "Charts skipped" in read(paths["html"])
    legacy = write_outputs(str(tmp_path / "old" / "cmp"), {}, standard_trials(), SYSTEMS)
    assert set(legacy) == {"json", "markdown"}


def test_legacy_write_outputs(tmp_path):
    plan_meta = {"config": "plan.toml", "repeats": 3, "generator_workers": "default",
                 "systems": [{"name": "mta", "start": "mta run --listen {port}"}], "workloads": [{"name": "e2e-1k"}]}
    paths = write_outputs(str(tmp_path / "res" / "cmp"), plan_meta, standard_trials(), SYSTEMS)
    assert paths == {k: str(tmp_path / "res" / f"cmp.{ext}") for k, ext in
                     (("json", "json"), ("markdown", "md"), ("png", "png"))}
    doc = json.loads(read(paths["json"]))
    assert {"meta", "rows", "trials"} <= set(doc) and doc["meta"]["config"] == "plan.toml"
    assert doc["meta"]["machine"]["cpus"] and doc["meta"]["date"]
    assert png_size(paths["png"]) == (700, 420)
    md = read(paths["markdown"])
    assert "(cmp.png)" in md and "mta run --listen {port}" in md and "plan**: plan.toml" in md


def test_the_report_modules_stay_small():
    for mod in (report, charts):
        src = read(mod.__file__)
        assert len(src.splitlines()) < 400
        ast.parse(src)
