"""What `compare` writes: the summary per (workload, system) — medians, min–max, CPU-s per
message, the ratio against the first system taken pair by pair — as JSON, a Markdown
table ready for BENCHMARKS.md, and a PNG bar chart when matplotlib is installed.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from mta.bench.stats import median_min_max


def summarize(rows: list[dict], system_order: list[str]) -> list[dict]:
    out = []
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    for wl in workloads:
        mine = [r for r in rows if r["workload"] == wl and "failed" not in r]
        first = next((s for s in system_order if any(r["system"] == s for r in mine)), None)
        base = {r["repeat"]: r for r in mine if r["system"] == first}
        for name in system_order:
            sr = [r for r in mine if r["system"] == name]
            failed = sum(1 for r in rows if r["workload"] == wl and r["system"] == name and "failed" in r)
            if not sr and not failed:
                continue
            acc = median_min_max([r["accepted_per_s"] for r in sr])
            e2e_vals = [r["end_to_end_per_s"] for r in sr if "end_to_end_per_s" in r]
            cpu = [r["server_cpu_s_per_msg"] for r in sr if r.get("server_cpu_s_per_msg") is not None]
            key = "end_to_end_per_s" if e2e_vals else "accepted_per_s"
            ratios = [r[key] / base[r["repeat"]][key] for r in sr
                      if r["repeat"] in base and base[r["repeat"]].get(key)]
            errors: dict[str, int] = {}
            for r in sr:
                for k, v in r["errors"].items():
                    errors[k] = errors.get(k, 0) + v
            item = {
                "workload": wl, "kind": sr[0]["kind"] if sr else None, "system": name, "trials": len(sr),
                "failed_trials": failed,
                "accepted_per_s": {"median": acc[0], "min": acc[1], "max": acc[2]},
                "server_cpu_s_per_msg": statistics.median(cpu) if cpu else None,
                "ratio_vs_first": round(statistics.median(ratios), 3) if ratios else None,
                "ratio_basis": key, "first_system": first, "errors": errors,
                "latency_p99_ms": statistics.median([r["latency_ms"]["p99"] for r in sr]) if sr else None,
            }
            if e2e_vals:
                e = median_min_max(e2e_vals)
                item["end_to_end_per_s"] = {"median": e[0], "min": e[1], "max": e[2]}
                item["integrity_errors"] = sum(r.get("integrity_errors", 0) for r in sr)
            out.append(item)
    return out


def _fmt(v: dict | None) -> str:
    if not v:
        return "—"
    return f"{v['median']:,.0f} ({v['min']:,.0f}–{v['max']:,.0f})"


def markdown(summary: list[dict], meta: dict) -> str:
    lines = [
        f"Measured {meta['date']} on {meta['cpus']} CPUs ({meta['kernel']}), loopback; the generator "
        f"(`mta bench send`, {meta['generator_workers']} processes) shares the CPUs with the server. "
        f"{meta['repeats']} trials per system in alternation; medians (min–max).",
        "",
        "| workload | system | accepted/s | end-to-end/s | server CPU-s per msg | server CPU-s per 20k | ratio vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        cpu = s["server_cpu_s_per_msg"]
        ratio = "—" if s["ratio_vs_first"] is None else f"{s['ratio_vs_first']:.2f}x"
        note = f" ({s['failed_trials']} failed)" if s["failed_trials"] else ""
        errs = sum(s["errors"].values())
        note += f" ({errs} errors)" if errs else ""
        lines.append(
            f"| {s['workload']} | {s['system']}{note} | {_fmt(s['accepted_per_s'])} | {_fmt(s.get('end_to_end_per_s'))} "
            f"| {'—' if cpu is None else f'{cpu * 1e6:,.0f} µs'} | {'—' if cpu is None else f'{cpu * 20000:,.1f}'} | {ratio} |")
    return "\n".join(lines) + "\n"


def chart(summary: list[dict], path: str) -> bool:
    """A grouped bar chart (accepted/s with min–max whiskers); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    workloads = list(dict.fromkeys(s["workload"] for s in summary))
    systems = list(dict.fromkeys(s["system"] for s in summary))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(workloads) * max(1, len(systems)) / 2), 4))
    width = 0.8 / max(1, len(systems))
    for k, name in enumerate(systems):
        xs, ys, lo, hi = [], [], [], []
        for i, wl in enumerate(workloads):
            s = next((x for x in summary if x["workload"] == wl and x["system"] == name), None)
            if s is None or not s["trials"]:
                continue
            v = s.get("end_to_end_per_s") if s["kind"] == "end-to-end" else s["accepted_per_s"]
            xs.append(i + k * width)
            ys.append(v["median"])
            lo.append(v["median"] - v["min"])
            hi.append(v["max"] - v["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(workloads))], workloads)
    ax.set_ylabel("messages/s (median, min–max)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(prefix: str, plan_meta: dict, rows: list[dict], system_order: list[str]) -> dict:
    """Write PREFIX.json, PREFIX.md and (maybe) PREFIX.png; return the paths written."""
    d = os.path.dirname(prefix)
    if d:
        os.makedirs(d, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), **plan_meta}
    summary = summarize(rows, system_order)
    paths = {"json": prefix + ".json", "markdown": prefix + ".md"}
    with open(paths["json"], "w") as f:
        json.dump({"meta": meta, "summary": summary, "trials": rows}, f, indent=2)
        f.write("\n")
    with open(paths["markdown"], "w") as f:
        f.write(markdown(summary, meta))
    if chart(summary, prefix + ".png"):
        paths["png"] = prefix + ".png"
    return paths
