"""What the /metrics counters add per message on the hot paths (issue 23): the session's
per-command verb switch and per-reply bump, the queue manager's per-outcome site and latency
bumps, the hook chain's per-call timing; each measured beside the code it replaced, in one
run. Run with the release build: python benches/metrics_hotpath.py"""

from __future__ import annotations

import os
import sys
import time
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

from mta.counters import Histogram, TopK  # noqa: E402
from mta.smtp.counts import OTHER_BASE, VERB_BASE, by_verb_counts  # noqa: E402

N = 1_000_000
REPEAT = 5


class S:
    """The session's slots that the counting touches."""

    __slots__ = ("_out", "_vbase", "_vmark", "replies", "commands")

    def __init__(self):
        self._out, self._vbase, self._vmark, self.replies, self.commands = [], 0, 0, by_verb_counts(), 0


def best(stmt, setup="pass", number=N, g=None) -> float:
    """ns per run of `stmt`, the best of REPEAT."""
    return min(timeit.repeat(stmt, setup, number=number, repeat=REPEAT, globals=g)) / number * 1e9


def main() -> None:
    s = S()
    reply = b"250 2.1.0 Ok\r\n"
    g = {"s": s, "VERB_BASE": VERB_BASE, "OTHER_BASE": OTHER_BASE, "reply": reply, "verb": "RCPT",
         "old": [0] * 10}
    rows = []
    # Per command (old: nothing): the switch of verb row, in the non-pipelined case.
    rows.append(("command: verb switch", 0.0, best(
        "if len(s._out) > s._vmark: pass\ns._vbase = VERB_BASE.get(verb, OTHER_BASE)", g=g)))
    # Per reply at _flush (old: replies[r[0] - 48] += 1).
    rows.append(("reply: class bump", best("old[reply[0] - 48] += 1", g=g),
                 best("r = s.replies; b = s._vbase\nif s._vmark: pass\nr[b + reply[0]] += 1", g=g)))
    # Per message durable: the listener's byte count.
    g["counts"] = [0] * 6
    rows.append(("message: bytes", 0.0, best("counts[5] += 1234", g=g)))
    # Per message delivered (the agent's LOGGED frame): old an int in a dict and a sum;
    # new a tuple (count, domain, arrival), then the site and latency bumps.
    sites, hist, clock = TopK(3), Histogram(), time.time
    g.update(sites=sites, hist=hist, clock=clock, d={}, dom="example.test")
    rows.append(("outcome: fresh entry", best("d['q1'] = 1\nd.pop('q1')", g=g),
                 best("d['q1'] = (1, dom, clock())\nd.pop('q1')", g=g)))
    rows.append(("outcome: site + latency", 0.0, best("sites.add(dom, 0, 1)\nhist.observe(0.02, 1)", g=g)))
    # Per plugin hook call (built-in policies are not counted: nothing added for them):
    # old two clock reads and a compare; new the count and the sum besides.
    g.update(stat=[0, 0.0], mono=time.monotonic)
    rows.append(("plugin hook call: timing", best("start = mono()\nif mono() - start > 5.0: pass", g=g),
                 best("start = mono()\ntook = mono() - start\nstat[0] += 1\nstat[1] += took\n"
                      "if took > 5.0: pass", g=g)))
    print(f"{'operation':28} {'old ns':>8} {'new ns':>8} {'added':>8}")
    for name, old, new in rows:
        print(f"{name:28} {old:8.1f} {new:8.1f} {new - old:8.1f}")
    # One message on its own connection, no plugin: 5 commands (EHLO MAIL RCPT DATA QUIT),
    # 7 replies (the greeting and the 250 after the data too), 1 durable, 1 outcome.
    per = {n: new - old for n, old, new in rows}
    total = (5 * per["command: verb switch"] + 7 * per["reply: class bump"] + per["message: bytes"]
             + per["outcome: fresh entry"] + per["outcome: site + latency"])
    print(f"per message (connection per message, no plugin): {total / 1000:.2f} us added; "
          f"per plugin hook call: {per['plugin hook call: timing'] / 1000:.2f} us")


if __name__ == "__main__":
    main()
