"""The delivery agent's "throttle stats" per trial from the logs benches/shaping-run.sh appends
(bench-results/compare-shaping-SYSTEM.log), per message of the trial (the worker's "spool
stats: messages=N"); and how long the messages waited (the delivery log's delay_s). Reads only.

  python benches/shaping_stats.py bench-results/compare-shaping-main-redis.log[.gz] [...]
"""

from __future__ import annotations

import gzip
import re
import statistics
import sys

_KV = re.compile(r"(\w+)=(\d+)")


def trials(path: str) -> list[dict]:
    out: list[dict] = []
    cur: dict | None = None
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", errors="replace") as f:
        for line in f:
            if line.startswith("=== "):
                cur = {"stats": {}, "messages": 0, "delays": []}
                out.append(cur)
            elif cur is None:
                continue
            elif "throttle stats:" in line:
                cur["stats"] = {k: int(v) for k, v in _KV.findall(line.split("throttle stats:", 1)[1])}
            elif "spool stats:" in line:
                m = re.search(r"messages=(\d+)", line)
                cur["messages"] = int(m.group(1)) if m else 0
            elif '"delay_s":' in line:
                m = re.search(r'"delay_s":([0-9.]+)', line)
                if m:
                    cur["delays"].append(float(m.group(1)))
    return out


def main() -> None:
    for path in sys.argv[1:]:
        print(f"{path}:")
        per_msg = []
        for i, t in enumerate(trials(path)):
            n, st, d = t["messages"], t["stats"], sorted(t["delays"])
            rt = st.get("redis_round_trips")
            if rt is not None and n:
                per_msg.append(rt / n)
            late = sum(1 for x in d if x >= 1.0)
            p99 = d[int(len(d) * 0.99) - 1] if d else 0.0
            print(f"  trial {i + 1}: messages={n} " + " ".join(f"{k}={v}" for k, v in sorted(st.items()))
                  + (f" round_trips_per_msg={rt / n:.3f}" if rt is not None and n else "")
                  + f" delay_s p50={d[len(d) // 2] if d else 0:.3f} p99={p99:.3f} max={d[-1] if d else 0:.3f}"
                  + f" delayed_over_1s={late}")
        if per_msg:
            print(f"  redis round trips per message: median {statistics.median(per_msg):.3f} "
                  f"(min {min(per_msg):.3f}, max {max(per_msg):.3f}) over {len(per_msg)} trials")


if __name__ == "__main__":
    main()
