"""The queue index alone at a size the server benchmark cannot afford (issue 25: 10 million):
a `_native.Spool` shard filled with N 1 KiB messages (no fdatasync: the records the server
writes, not its durability), then closed and opened again. Prints one JSON line: fill time,
the index's own count of its bytes (stats "index_bytes"), the process's RSS, reopen time.

    python benches/index_scale.py --messages 10000000 --dir /var/tmp/index-scale
    python benches/index_scale.py --messages 1000000 --dir /var/tmp/q1m --keep   # then list it offline:
    /usr/bin/time -f "%e s %M KiB" mta queue list --json --spool /var/tmp/q1m > /dev/null
"""

from __future__ import annotations

import argparse
import json
import select
import shutil
import sys
import time
from pathlib import Path

try:  # the installed package, or the tree's when PYTHONPATH names it
    from mta._native import Spool
except ImportError:  # the tree, with its extension built in place (scripts/dev-build)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from mta._native import Spool

BODY = b"Received: from x\r\nSubject: m\r\n\r\n" + b"x" * 1000
WINDOW = 20_000  # submissions in flight before waiting for completions


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def fill(sp: Spool, n: int) -> None:
    done = 0
    for i in range(n):
        m = sp.new_message()
        m.push(BODY)
        sp.submit(i + 1, sp.new_queue_id(), m, sender="a@example.test",
                  recipients=[(f"b@example{i % 50}.test", None, None)], helo="h", client_ip="127.0.0.1")
        while done < i - WINDOW:
            select.select([sp.notify_fd], [], [], 1)
            done += len(sp.completions())
    while done < n:
        select.select([sp.notify_fd], [], [], 1)
        done += len(sp.completions())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, required=True, help="A new directory for the shard (removed at the end).")
    ap.add_argument("--keep", action="store_true",
                    help="Leave the spool in --dir (e.g. to time `mta queue list --spool DIR` on it with no server).")
    args = ap.parse_args()
    if args.dir.exists():
        ap.error(f"--dir {args.dir} exists: give a new directory")
    need = args.messages * 1200
    if shutil.disk_usage(args.dir.parent).free < need * 1.2:
        ap.error(f"{args.messages:,} messages need about {need / 2**30:.1f} GiB under {args.dir.parent}")
    try:
        before = rss()
        sp = Spool(str(args.dir), 0, sync=False)
        t = time.monotonic()
        fill(sp, args.messages)
        out = {"messages": args.messages, "fill_s": round(time.monotonic() - t, 1), "rss_before": before,
               "rss_filled": rss(), "index_bytes": sp.stats()["index_bytes"], "kept": sp.stats()["hot_envelopes"]}
        sp.close()
        del sp
        t = time.monotonic()
        sp = Spool(str(args.dir), 0, sync=False)
        out.update(reopen_s=round(time.monotonic() - t, 2), index_bytes_reopened=sp.stats()["index_bytes"],
                   queued=sp.stats()["queued_messages"])
        sp.close()
        out["index_bytes_per_message"] = round(out["index_bytes"] / args.messages, 1)
        out["rss_per_message"] = round((out["rss_filled"] - before) / args.messages, 1)
        print(json.dumps(out))
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
