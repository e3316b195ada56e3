"""Pairwise ratios from a `mta bench compare` JSON file against any of its systems (the tool's
own table compares with the first one only): for each workload and system, the median over
repeats of (rate / the base's rate in the same round), end-to-end rate for end-to-end
workloads, and the same for server CPU per message. Reads the file; runs nothing.

  python benches/pair_ratios.py bench-results/compare-dkim.json --base postfix+opendkim [--base mta]
"""

from __future__ import annotations

import argparse
import json
import statistics


def ratios(doc: dict, base: str) -> list[dict]:
    trials = [t for t in doc["trials"] if "failed" not in t]
    out = []
    for wl in dict.fromkeys(t["workload"] for t in trials):
        rows = [t for t in trials if t["workload"] == wl]
        key = "end_to_end_per_s" if rows[0]["kind"] == "end-to-end" else "accepted_per_s"
        ref = {t["repeat"]: t for t in rows if t["system"] == base}
        for name in dict.fromkeys(t["system"] for t in rows):
            pairs = [(t, ref[t["repeat"]]) for t in rows if t["system"] == name and t["repeat"] in ref]
            if not pairs:
                continue
            rate = [t[key] / b[key] for t, b in pairs if b[key]]
            cpu = [t["server_cpu_s_per_msg"] / b["server_cpu_s_per_msg"] for t, b in pairs
                   if t.get("server_cpu_s_per_msg") and b.get("server_cpu_s_per_msg")]
            out.append({"workload": wl, "system": name, "base": base, "pairs": len(pairs), "basis": key,
                        "rate_ratio": round(statistics.median(rate), 2) if rate else None,
                        "rate_ratio_min_max": [round(min(rate), 2), round(max(rate), 2)] if rate else None,
                        "cpu_ratio": round(statistics.median(cpu), 2) if cpu else None})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json_file")
    ap.add_argument("--base", action="append", required=True, help="the system to divide by (repeatable)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with open(a.json_file) as f:
        doc = json.load(f)
    rows = [r for base in a.base for r in ratios(doc, base)]
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print("| workload | system | vs | pairs | rate ratio, median (min–max) | server CPU per msg ratio |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        mm = r["rate_ratio_min_max"]
        rate = "—" if r["rate_ratio"] is None else f"{r['rate_ratio']:.2f}x ({mm[0]:.2f}–{mm[1]:.2f})"
        cpu = "—" if r["cpu_ratio"] is None else f"{r['cpu_ratio']:.2f}x"
        print(f"| {r['workload']} | {r['system']} | {r['base']} | {r['pairs']} | {rate} | {cpu} |")


if __name__ == "__main__":
    main()
