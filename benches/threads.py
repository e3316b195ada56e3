#!/usr/bin/env python3
"""Where the accept benchmark's time goes, thread by thread: one run of `mta run` relaying
into an `smtp-sink -c` while smtp-source (50 sessions, one message per connection) sends
N messages, as in benches/accept.py, then, per message, each busy thread's time on a CPU
(user, system), its time runnable but waiting for a CPU, and its context switches (to
sleep, or preempted), with each CPU's busy and idle shares over the run.

Invariants: every subprocess has a timeout and is stopped on exit; the run counts only if
mta logged N `queued` lines.

  PYTHONPATH=python python benches/threads.py [--messages N] [--config C] [--python DIR] [--runs R] [--port P] [-- MTA_ARGS...]

MTA_ARGS go to `mta run` (e.g. `-- --no-delivery`, `-- --workers 2`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from mta.bench.procs import cpu_times, tree_threads, wait_greeting, wait_port_free

HERE = os.path.dirname(os.path.abspath(__file__))

BUSY_NS = 10_000_000  # threads that ran less than this over the run are left out


def _sbin(name: str) -> str:
    path = shutil.which(name) or os.path.join("/usr/sbin", name)
    if not os.path.exists(path):
        sys.exit(f"{name} not found: install Debian's postfix package")
    return path


def report(before: dict, after: dict, cpu0: dict, cpu1: dict, n: int) -> list[str]:
    """The per-message lines for the threads that were busy, then one line per CPU."""
    lines = []
    for key, st in sorted(after.items()):
        d = st.minus(before.get(key))
        if d.run_ns < BUSY_NS:
            continue
        lines.append(f"{d.name:16s} {key:>13s}  on CPU {d.run_ns / n / 1e3:6.1f} us/msg "
                     f"(user {d.user_s * 1e6 / n:5.1f}, sys {d.sys_s * 1e6 / n:5.1f})  "
                     f"waiting {d.wait_ns / n / 1e3:6.1f} us/msg  "
                     f"switches/msg: sleep {d.voluntary / n:4.2f}, preempted {d.involuntary / n:4.2f}")
    for cpu in sorted(cpu1):
        x = [b - a for a, b in zip(cpu0[cpu], cpu1[cpu])]
        total = sum(x) or 1
        lines.append(f"{cpu:5s} user {x[0] * 100 / total:4.1f}%  system {x[2] * 100 / total:4.1f}%  "
                     f"softirq {x[6] * 100 / total:4.1f}%  idle {(x[3] + x[4]) * 100 / total:4.1f}%")
    return lines


def one_run(args, work: str) -> list[str]:
    port = args.port
    spool = os.path.join(work, "spool")
    logs = {name: open(os.path.join(work, f"{name}.log"), "w+") for name in ("sink", "mta")}
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            ["timeout", "900", _sbin("smtp-sink"), "-c", "-u", "postfix", f"127.0.0.1:{port + 1}", "1024"],
            stdout=logs["sink"], stderr=subprocess.STDOUT))
        env = {**os.environ, "PYTHONPATH": args.python} if args.python else None
        mta = subprocess.Popen(
            ["timeout", "900", sys.executable, "-m", "mta", "run", "--config", args.config,
             "--listen", f"127.0.0.1:{port}", "--spool", spool, "--hostname", "mx.example.test",
             "--relay-to", f"127.0.0.1:{port + 1}", *args.mta_args],
            stdout=logs["mta"], stderr=subprocess.STDOUT, env=env)
        procs.insert(0, mta)
        if not wait_greeting(port, time.monotonic() + 30):
            sys.exit("mta did not start: " + open(logs["mta"].name).read()[-2000:])
        time.sleep(0.5)
        roots = [p.pid for p in procs]
        before = {k: v for r in roots for k, v in tree_threads(r).items()}
        c0 = cpu_times()
        t0 = time.monotonic()
        subprocess.run(["timeout", "600", _sbin("smtp-source"), "-s", "50", "-m", str(args.messages), "-l", "1024",
                        "-f", "from@example.test", "-t", "to@example.test", "-M", "client.example.test",
                        f"127.0.0.1:{port}"], check=True)
        elapsed = time.monotonic() - t0
        c1 = cpu_times()
        after = {k: v for r in roots for k, v in tree_threads(r).items()}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        wait_port_free(port, time.monotonic() + 15)
    queued = sum(1 for line in open(logs["mta"].name, errors="replace") if " queued " in line)
    if queued != args.messages:
        sys.exit(f"mta logged {queued} queued messages, not {args.messages}")
    return [f"{args.messages / elapsed:,.0f} msgs/s accepted"] + report(before, after, c0, c1, args.messages)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--config", default=os.path.join(HERE, "mta-bench.toml"))
    ap.add_argument("--python", help="a directory holding the mta package to run (default: the one "
                                      "this interpreter imports)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--port", type=int, default=3525, help="mta's port; its relay sink listens on the next one")
    ap.add_argument("mta_args", nargs="*", help="after --: arguments for `mta run`")
    args = ap.parse_args(argv)
    for run in range(1, args.runs + 1):
        work = tempfile.mkdtemp(prefix="mta-threads-")
        try:
            lines = one_run(args, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print(f"run {run}: " + "\n  ".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
