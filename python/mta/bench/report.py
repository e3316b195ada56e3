"""What `mta bench compare` writes: trial rows summarized per (workload, sweep point, rate, system)
into the report.json row contract, then Markdown, JSON, charts and one HTML page from those rows.
Numbers are medians over the trials that did not fail; no meta key is ever required."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time

from mta.bench import charts, htmlpage

HIGH, LOW = "high", "low"  # which way a column is better, for the bold best value


def _point(t: dict) -> tuple:
    sweep = t.get("sweep")
    return t["workload"], (sweep["param"], sweep["value"]) if sweep else None, t.get("rate")


def _kind(t: dict) -> str:
    # legacy rows may lack "kind"; only end-to-end trials ever carried end_to_end_per_s
    return t.get("kind") or ("end-to-end" if "end_to_end_per_s" in t else "accept-only")


def _basis(kind: str) -> str:
    return "end_to_end_per_s" if kind == "end-to-end" else "accepted_per_s"


def _mmm(vals) -> tuple:
    vals = [v for v in vals if v is not None]
    return (statistics.median(vals), min(vals), max(vals)) if vals else (None, None, None)


def _lat(t: dict, key: str):
    return (t.get("latency_ms") or {}).get(key)


def summarize(trials: list[dict], system_order: list[str], p99_max_ms: float | None = None) -> list[dict]:
    """One row per (workload, sweep value, rate, system), points in order of first appearance,
    systems in system_order (any system not named there after them, as first seen)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for t in trials:
        groups.setdefault(_point(t), {}).setdefault(t["system"], []).append(t)
    order = list(system_order) + [s for s in dict.fromkeys(t["system"] for t in trials) if s not in system_order]
    rows = []
    for point, by_system in groups.items():
        ok = {s: [t for t in ts if "failed" not in t] for s, ts in by_system.items()}
        first = next((s for s in order if ok.get(s)), None)
        for system in order:
            if system in by_system:
                rows.append(_row(point, system, by_system[system], ok.get(first, []), p99_max_ms))
    return rows


def _row(point: tuple, system: str, trials: list[dict], base_trials: list[dict], bound) -> dict:
    workload, sweep, rate = point
    ok = [t for t in trials if "failed" not in t]
    kind = _kind(trials[0])
    e2e = kind == "end-to-end"
    basis = _basis(kind)
    acc = _mmm(t.get("accepted_per_s") for t in ok)
    end = _mmm(t.get("end_to_end_per_s") for t in ok) if e2e else (None, None, None)
    p99 = _mmm(_lat(t, "p99") for t in ok)
    cpu = _mmm(t["server_cpu_s_per_msg"] * 1e6 for t in ok if t.get("server_cpu_s_per_msg") is not None)[0]
    rss = [t["rss_peak_bytes"] for t in ok if t.get("rss_peak_bytes") is not None]
    base = {t["repeat"]: t.get(basis) for t in base_trials}
    ratios = [t[basis] / base[t["repeat"]] for t in ok if t.get(basis) is not None and base.get(t["repeat"])]
    errors: dict[str, int] = {}
    for t in ok:
        for code, n in (t.get("errors") or {}).items():
            errors[code] = errors.get(code, 0) + n
    integrity = [t["integrity_errors"] for t in ok if t.get("integrity_errors") is not None]
    # the latency curve of the median trial, not a blend of curves no run produced
    ranked = sorted((t for t in ok if t.get(basis) is not None), key=lambda t: t[basis])
    middle = ranked[(len(ranked) - 1) // 2] if ranked else None
    row = {
        "system": system, "workload": workload, "kind": kind,
        "sweep": {"param": sweep[0], "value": sweep[1]} if sweep else None, "rate": rate,
        "trials": len(ok), "failed_trials": len(trials) - len(ok),
        "messages_per_s": acc[0], "messages_per_s_min": acc[1], "messages_per_s_max": acc[2],
        "end_to_end_per_s": end[0], "end_to_end_per_s_min": end[1], "end_to_end_per_s_max": end[2],
        "cpu_us_per_msg": None if cpu is None else round(cpu, 3),
        "p50_ms": _mmm(_lat(t, "p50") for t in ok)[0],
        "p99_ms": p99[0], "p99_ms_min": p99[1], "p99_ms_max": p99[2],
        "rss_peak_mb": round(max(rss) / 2**20, 1) if rss else None,
        "errors": errors, "integrity_errors": sum(integrity) if integrity else None,
        "ratio_vs_first": round(statistics.median(ratios), 3) if ratios else None,
        "latency_cdf_ms": middle.get("latency_cdf_ms") if middle else None,
    }
    row["sustained"] = sustained(row, bound)
    return row


def achieved(row: dict):
    """The throughput a row is judged by: end to end when the workload relays, else accepted."""
    return row["end_to_end_per_s"] if row["kind"] == "end-to-end" else row["messages_per_s"]


def sustained(row: dict, p99_max_ms: float | None):
    """None off the open loop; else achieved >= 0.95 x offered, no error, no failed trial, p99 in bound."""
    if row.get("rate") is None:
        return None
    got = achieved(row)
    return bool(row["trials"] and not row["failed_trials"] and got is not None and got >= 0.95 * row["rate"]
                and not sum(row["errors"].values()) and not row["integrity_errors"]
                and (p99_max_ms is None or (row["p99_ms"] is not None and row["p99_ms"] <= p99_max_ms)))


def open_loop(rows: list[dict], p99_max_ms: float | None) -> dict:
    """{system: the highest offered rate it sustained, or None} over the rate rows."""
    best: dict = {}
    for r in rows:
        if r.get("rate") is None:
            continue
        best.setdefault(r["system"], None)
        if sustained(r, p99_max_ms) and (best[r["system"]] is None or r["rate"] > best[r["system"]]):
            best[r["system"]] = r["rate"]
    return best


# -- formatting ------------------------------------------------------------------------------

def _n(v) -> str:
    return "—" if v is None else f"{v:,.{0 if abs(v) >= 100 else 1 if abs(v) >= 10 else 2}f}"


def _spread(med, lo, hi) -> str:
    return "—" if med is None else f"{_n(med)} ({_n(lo)}–{_n(hi)})"


def _size(b) -> str:
    return next((f"{b // k} {unit}" for unit, k in (("MiB", 2**20), ("KiB", 2**10)) if b >= k and not b % k), f"{b} B")


def _errors(row: dict) -> str:
    parts = [f"{k}: {v:,}" for k, v in sorted(row["errors"].items())]
    return ", ".join(parts + ([f"integrity: {row['integrity_errors']:,}"] if row["integrity_errors"] else [])) or "0"


def _workloads(meta: dict) -> dict:
    wl = meta.get("workloads") or {}
    # legacy plans pass a list of workload dicts with a "name"
    return {w.get("name", str(i)): w for i, w in enumerate(wl)} if isinstance(wl, list) else wl


def describe_workload(w: dict) -> str:
    parts = [w.get("kind"), w.get("messages") and f"{w['messages']:,} messages",
             w.get("size") and f"{_size(w['size'])} each", w.get("sessions") and f"{w['sessions']} sessions",
             w.get("per_connection") and f"{w['per_connection']} per connection", w.get("starttls") and "STARTTLS"]
    return ", ".join(str(p) for p in parts if p)


def run_facts(meta: dict) -> list[tuple[str, str]]:
    """(label, text) lines for the report header: when, on what, how often."""
    m = meta.get("machine") or {}
    cpus = m.get("cpus", meta.get("cpus"))
    machine = [f"{cpus} CPUs" if cpus else None, m.get("cpu_model"), m.get("kernel", meta.get("kernel")),
               f"{m['memory_gib']:g} GiB memory" if m.get("memory_gib") else None,
               f"Python {m.get('python', meta.get('python'))}" if m.get("python", meta.get("python")) else None]
    d = m.get("disk") or {}
    sweep = meta.get("sweep")
    disk = [d.get("path") and f"{d['path']} on {d.get('device', '?')}", d.get("fstype"), d.get("model"),
            {True: "rotational", False: "SSD"}.get(d.get("rotational"))]
    facts = [("date", meta.get("date")), ("machine", ", ".join(str(x) for x in machine if x)),
             ("disk", ", ".join(str(x) for x in disk if x)), ("plan", meta.get("config")),
             ("repeats", meta.get("repeats")), ("generator workers", meta.get("generator_workers")),
             ("sweep", sweep and f"{sweep.get('param')} = " + ", ".join(str(v) for v in sweep.get("values", ()))),
             ("offered rates", meta.get("rates") and ", ".join(f"{r:,g}/s" for r in meta["rates"])),
             ("p99 bound", meta.get("p99_max_ms") and f"{meta['p99_max_ms']:g} ms")]
    return [(k, str(v)) for k, v in facts if v not in (None, "")]


# -- tables: one neutral shape rendered as Markdown and as HTML ------------------------------

def _cell(text: str, value=None) -> dict:
    return {"text": text, "value": value, "best": False}


def _mark_best(table: dict) -> dict:
    """Bold the best value of each column (or, for curves, of each row within a column group)."""
    cols = table["columns"]
    if table.get("best_by") == "row":
        spans = [[(ri, ci) for ci, c in enumerate(cols) if c.get("group") == g]
                 for ri in range(len(table["rows"])) for g in dict.fromkeys(c.get("group") for c in cols)]
    else:
        spans = [[(ri, ci) for ri in range(len(table["rows"]))] for ci in range(len(cols))]
    for span in spans:
        cells = [(table["rows"][ri][ci], cols[ci].get("better")) for ri, ci in span]
        scored = [(c["value"], c) for c, better in cells if better and c["value"] is not None]
        if len(scored) > 1 and len({v for v, _ in scored}) > 1:
            pick = max if cells[0][1] == HIGH else min
            top = pick(v for v, _ in scored)
            for v, c in scored:
                c["best"] = v == top
    return table


def _standard_table(workload: str, rows: list[dict], wl_meta: dict) -> dict:
    cols = [{"name": "system"}, {"name": "accepted/s (min–max)", "num": True, "better": HIGH},
            {"name": "end-to-end/s (min–max)", "num": True, "better": HIGH},
            {"name": "CPU µs/msg", "num": True, "better": LOW}, {"name": "p50 / p99 ms", "num": True, "better": LOW},
            {"name": "peak memory MiB", "num": True, "better": LOW},
            {"name": "ratio vs first", "num": True, "better": HIGH}, {"name": "errors"}]
    body = []
    for r in rows:
        name = r["system"] + (f" ({r['failed_trials']} failed)" if r["failed_trials"] else "")
        body.append([
            _cell(name), _cell(_spread(r["messages_per_s"], r["messages_per_s_min"], r["messages_per_s_max"]),
                               r["messages_per_s"]),
            _cell(_spread(r["end_to_end_per_s"], r["end_to_end_per_s_min"], r["end_to_end_per_s_max"]),
                  r["end_to_end_per_s"]),
            _cell(_n(r["cpu_us_per_msg"]), r["cpu_us_per_msg"]),
            _cell(f"{_n(r['p50_ms'])} / {_n(r['p99_ms'])}", r["p99_ms"]),
            _cell(_n(r["rss_peak_mb"]), r["rss_peak_mb"]),
            _cell("—" if r["ratio_vs_first"] is None else f"{r['ratio_vs_first']:.2f}×", r["ratio_vs_first"]),
            _cell(_errors(r))])
    return _mark_best({"title": workload, "caption": describe_workload(wl_meta), "columns": cols, "rows": body})


def _sweep_table(workload: str, param: str, rows: list[dict], systems: list[str]) -> dict:
    cols = [{"name": param}] + [{"name": f"{s} msg/s", "num": True, "better": HIGH, "group": "t"} for s in systems] \
        + [{"name": f"{s} p99 ms", "num": True, "better": LOW, "group": "p"} for s in systems]
    by = {(r["sweep"]["value"], r["system"]): r for r in rows}
    body = []
    for value in dict.fromkeys(r["sweep"]["value"] for r in rows):
        line = [_cell(str(value))]
        for s in systems:
            r = by.get((value, s))
            errs = sum(r["errors"].values()) if r else 0  # e.g. timeouts past a full listen backlog
            line.append(_cell((_n(achieved(r)) + (f" ({errs:,} errors)" if errs else "")) if r else "—",
                              achieved(r) if r else None))
        for s in systems:
            r = by.get((value, s))
            line.append(_cell(_n(r["p99_ms"]) if r else "—", r["p99_ms"] if r else None))
        body.append(line)
    return _mark_best({"title": f"{workload}: {param} sweep", "caption": "throughput (end to end when relayed) "
                       "and p99 latency along the sweep, medians", "columns": cols, "rows": body, "best_by": "row"})


def _open_table(title: str, rows: list[dict], systems: list[str]) -> dict:
    cols = [{"name": "offered/s"}] + [{"name": f"{s} achieved/s · p99 ms", "num": True} for s in systems]
    by = {(r["rate"], r["system"]): r for r in rows}
    body = []
    for rate in sorted(dict.fromkeys(r["rate"] for r in rows)):
        line = [_cell(_n(rate))]
        for s in systems:
            r = by.get((rate, s))
            mark = "" if r is None else " ✓" if r["sustained"] else " ✗"
            line.append(_cell(f"{_n(achieved(r))} · {_n(r['p99_ms'])}{mark}" if r else "—"))
        body.append(line)
    return {"title": title, "caption": "✓ sustained: achieved ≥ 95% of offered, no errors, p99 within the bound",
            "columns": cols, "rows": body}


def build_tables(rows: list[dict], meta: dict) -> list[dict]:
    """Every table of the report, in reading order: workloads, sweeps, open loop, sustained rates."""
    wls = _workloads(meta)
    systems = list(dict.fromkeys(r["system"] for r in rows))
    standard = [r for r in rows if r["sweep"] is None and r["rate"] is None]
    tables = [_standard_table(w, [r for r in standard if r["workload"] == w], wls.get(w, {}))
              for w in dict.fromkeys(r["workload"] for r in standard)]
    swept = [r for r in rows if r["sweep"] is not None and r["rate"] is None]
    for w, p in dict.fromkeys((r["workload"], r["sweep"]["param"]) for r in swept):
        mine = [r for r in swept if r["workload"] == w and r["sweep"]["param"] == p]
        tables.append(_sweep_table(w, p, mine, [s for s in systems if any(r["system"] == s for r in mine)]))
    rated = [r for r in rows if r["rate"] is not None]
    for key in dict.fromkeys((r["workload"], _sweep_label(r)) for r in rated):
        mine = [r for r in rated if (r["workload"], _sweep_label(r)) == key]
        title = f"{key[0]}{key[1]}: open loop"
        tables.append(_open_table(title, mine, [s for s in systems if any(r["system"] == s for r in mine)]))
    if rated:
        bound = meta.get("p99_max_ms")
        best = open_loop(rows, bound)
        tables.append({"title": "sustained rate", "columns": [{"name": "system"}, {"name": "sustained offered/s",
                       "num": True}], "caption": "the highest offered rate sustained"
                       + (f" with p99 ≤ {bound:g} ms" if bound is not None else " (no p99 bound given)"),
                       "rows": [[_cell(s), _cell(_n(v) if v is not None else "none")] for s, v in best.items()]})
    return tables


def _sweep_label(r: dict) -> str:
    return f" ({r['sweep']['param']} = {r['sweep']['value']})" if r["sweep"] else ""


# -- Markdown --------------------------------------------------------------------------------

def _md_text(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _md_table(t: dict) -> list[str]:
    cols = t["columns"]
    out = [f"### {t['title']}", ""] + ([t["caption"], ""] if t.get("caption") else [])
    out.append("| " + " | ".join(_md_text(c["name"]) for c in cols) + " |")
    out.append("|" + "|".join("---:" if c.get("num") else "---" for c in cols) + "|")
    for line in t["rows"]:
        out.append("| " + " | ".join(f"**{_md_text(c['text'])}**" if c["best"] else _md_text(c["text"])
                                     for c in line) + " |")
    return out + [""]


def markdown(rows: list[dict], meta: dict, chart_files: list[dict] | None = None,
             chart_note: str = "", failures: list[dict] = ()) -> str:
    """The whole Markdown report; chart_files are {"name", "title", "png"} with paths relative to it."""
    out = ["# mta bench compare", ""]
    out += [f"- **{k}**: {_md_text(v)}" for k, v in run_facts(meta)]
    if meta.get("command"):
        out += ["", "```", str(meta["command"]), "```"]
    out += ["", "Medians over the trials that did not fail (min–max); the best value of each column in bold.", ""]
    out += [line for t in build_tables(rows, meta) for line in _md_table(t)]
    if failures:
        out += ["## Failed trials", ""] + [f"- {_md_text(f['system'])} / {_md_text(f['workload'])} "
                                           f"#{f.get('repeat', 0) + 1}: {_md_text(f['failed'])}" for f in failures] + [""]
    peers = meta.get("peers") or {}
    if peers:
        out += ["## Peers", ""]
        for name, p in peers.items():
            out += [f"### {name}", ""]
            out += [f"- **{k}**: {_md_text(p[k])}" for k in ("version", "durability", "notes") if p.get(k)]
            if p.get("config"):
                out += ["", "<details><summary>config</summary>", "", "```", str(p["config"]).rstrip("\n"), "```",
                        "", "</details>"]
            out.append("")
    out += ["## Charts", ""]
    out += [f"![{c['title']}]({c['png']})" for c in chart_files or ()] or [chart_note or "No chart."]
    return "\n".join(out) + "\n"


# -- files -----------------------------------------------------------------------------------

def _write(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def _write_json(path: str, meta: dict, rows: list[dict], trials: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": rows, "trials": trials}, f, indent=2)
        f.write("\n")
    return path


NO_MATPLOTLIB = "Charts skipped: matplotlib is not installed (`pip install 'mta[chart]'`)."


def _charts(rows: list[dict], meta: dict, out_dir: str, svg: bool, **which) -> tuple[list[dict], str]:
    if not charts.available():
        return [], NO_MATPLOTLIB
    made = charts.write_all(rows, meta, out_dir, svg=svg, **which)
    return made, "" if made else "No chart: no data to draw."


def write_report(out_dir: str, meta: dict, trials: list[dict], system_order: list[str],
                 html: bool = False, svg: bool = False) -> dict[str, str]:
    """report.json, report.md, the charts (and report.html) into out_dir; {name: path} of each file."""
    os.makedirs(out_dir, exist_ok=True)
    rows = summarize(trials, system_order, meta.get("p99_max_ms"))
    paths = {"json": _write_json(os.path.join(out_dir, "report.json"), meta, rows, trials),
             "markdown": os.path.join(out_dir, "report.md")}
    made, note = _charts(rows, meta, out_dir, svg)
    for c in made:
        paths[c["name"]] = c["png"]
        if c.get("svg"):
            paths[c["name"] + ".svg"] = c["svg"]
    rel = [{**c, "png": os.path.basename(c["png"])} for c in made]
    failures = [t for t in trials if "failed" in t]
    _write(paths["markdown"], markdown(rows, meta, rel, note, failures))
    if html:
        pngs = [(c["title"], pathlib.Path(c["png"]).read_bytes()) for c in made]
        paths["html"] = _write(os.path.join(out_dir, "report.html"), htmlpage.page(
            meta.get("title") or "mta bench compare", run_facts(meta), meta.get("command"), build_tables(rows, meta),
            pngs, meta.get("peers") or {}, failures, note))
    return paths


def write_outputs(prefix: str, meta: dict, trials: list[dict], system_order: list[str]) -> dict:
    """The legacy `--output PREFIX`: PREFIX.json, PREFIX.md and (with matplotlib) PREFIX.png, the
    throughput chart; returns {"json", "markdown"[, "png"]: path}."""
    out_dir = os.path.dirname(prefix) or "."
    os.makedirs(out_dir, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            **meta}
    if "peers" not in meta and isinstance(meta.get("systems"), list):
        # a plan's systems are its peers; their commands are the configuration that matters
        meta["peers"] = {s["name"]: {"config": "\n".join(f"{k} = {s[k]}" for k in ("start", "stop") if s.get(k))}
                         for s in meta["systems"] if "name" in s}
    rows = summarize(trials, system_order, meta.get("p99_max_ms"))
    paths = {"json": _write_json(prefix + ".json", meta, rows, trials), "markdown": prefix + ".md"}
    made, note = _charts(rows, meta, out_dir, False, names={"throughput"}, stem=os.path.basename(prefix))
    paths.update({"png": made[0]["png"]} if made else {})
    made = [{**c, "png": os.path.basename(c["png"])} for c in made]
    _write(paths["markdown"], markdown(rows, meta, made, note, [t for t in trials if "failed" in t]))
    return paths
