#!/usr/bin/env python3
"""Accept-path benchmark (issue 4 §1): messages accepted per second and server CPU per
message for `mta run` (fdatasync on), Postfix's smtp-sink (no disk: the ceiling) and Postfix
as configured in ../shared/BENCHMARKING.md (benches/compare-postfix.sh), loaded by Postfix's
smtp-source, systems in alternation (A B C A B C ...), each trial on a fresh spool removed after,
starting once the machine is written back and quiet (`--settle`).

Invariants: every subprocess has a timeout; every server started is stopped on exit, error or
Ctrl-C; an mta trial counts only if the server stored exactly N messages.

  python benches/accept.py [--messages N] [--trials T] [--sizes 1024,65536]
                           [--modes conn,keep] [--systems mta,postfix,sink] [--settle S] [--out results.json]
                           [--mta-delivery relay|off|ideal|default]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))
from mta.bench.procs import settle, tree_cpu_seconds, wait_greeting, wait_port_free  # noqa: E402  (sums the /proc tree, reaped children included)

POSTFIX_SH = os.path.join(HERE, "compare-postfix.sh")
SYSTEMS = ("mta", "postfix", "sink")
NAMES = {"mta": "mta run", "postfix": "Postfix relay", "sink": "smtp-sink (no disk)"}
MODES = ("conn", "keep")
STATS_RE = re.compile(r"spool stats: messages=(\d+) batches=(\d+) syncs=(\d+) bytes=(\d+) failed_batches=(\d+)")
NOTE = ("2 vCPU; smtp-source (the load generator) runs on the same 2 cores as the server, "
        "so wall rates are shared-machine figures; server CPU excludes the generator.")


def sbin(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if not path:
        sys.exit(f"accept.py: {name} not found (Debian package postfix; see ../shared/BENCHMARKING.md)")
    return path


# ---------------------------------------------------------------------------
# servers: start, wait for the greeting, stop; all registered for cleanup
# ---------------------------------------------------------------------------

_cleanups: list = []


def _greeting(port: int, timeout: float) -> bool:
    return wait_greeting(port, time.monotonic() + timeout)


def _port_free(port: int, timeout: float = 15) -> None:
    if not wait_port_free(port, time.monotonic() + timeout):
        raise RuntimeError(f"port {port} is still in use by something else")


def _spawn(argv: list[str], log, env=None) -> subprocess.Popen:
    p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, env=env)
    _cleanups.append(lambda: _kill(p))
    return p


def _kill(p: subprocess.Popen, sig=signal.SIGTERM, wait: float = 30) -> int | None:
    if p.poll() is None:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(wait)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    return p.returncode


def _postfix_sh(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", POSTFIX_SH, *args], capture_output=True, text=True, timeout=timeout)


def _postfix_master() -> int | None:
    path = _postfix_sh("pidfile").stdout.strip()
    try:
        with open(path) as f:
            pid = int(f.read().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


class Trial:
    """One server, started fresh in its own directory; `pid` is the root of its CPU tree."""

    def __init__(self, system: str, args, tmp: str):
        self.system, self.args, self.tmp = system, args, tmp
        self.log = open(os.path.join(tmp, "server.log"), "wb")
        self.procs: list[subprocess.Popen] = []
        self.port = {"mta": args.port, "postfix": args.port + 100, "sink": args.port + 200}[system]
        self.postfix_started = False
        self.sink_port = 0
        _port_free(self.port)
        if system == "mta":
            cfg = os.path.join(tmp, "mta.toml")
            with open(cfg, "w") as f:  # what the Postfix peer also turns off (as benches/mta-bench.toml)
                f.write(f'cpu_affinity = "{args.mta_cpu_affinity}"\n')  # a dedicated relay host's tuning
                f.write("[smtp]\nreverse_dns = false\n")  # smtpd_peername_lookup=no
                if args.mta_delivery == "relay":
                    f.write('[delivery]\ntls = "none"\n')  # Postfix "No configuration": no STARTTLS out
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, [os.path.abspath(args.mta_python), os.environ.get("PYTHONPATH")]))}
            argv = [sys.executable, "-m", "mta", "run", "--config", cfg, "--listen", f"127.0.0.1:{self.port}",
                    "--spool", os.path.join(tmp, "spool"), "--hostname", "mx.example.test",
                    "--workers", str(args.mta_workers)]
            if args.mta_delivery in ("relay", "ideal"):  # relays into a counting sink, as Postfix does
                self._counting_sink()
            if args.mta_delivery == "relay":
                argv += ["--relay-to", f"127.0.0.1:{self.sink_port}"]
            elif args.mta_delivery in ("off", "ideal"):
                argv.append("--no-delivery")
            p = _spawn(argv, self.log, env)
            self.procs.insert(0, p)  # stopped first, before its relay sink
            self.pid = p.pid
        elif system == "sink":
            p = _spawn([sbin("smtp-sink"), "-u", "postfix", f"127.0.0.1:{self.port}", "1024"], self.log)
            self.procs.append(p)
            self.pid = p.pid
        else:
            deadline = time.monotonic() + args.busy_wait
            while _postfix_master() is not None:  # the instance is shared with `mta bench compare`
                if time.monotonic() > deadline:
                    raise RuntimeError("the Postfix bench instance (compare-postfix.sh) is running already: "
                                       "another benchmark is using it")
                time.sleep(2)
            self._counting_sink()
            _cleanups.append(self._postfix_stop)
            r = _postfix_sh("start", str(self.port), str(self.sink_port))
            self.postfix_started = True
            if r.returncode != 0:
                raise RuntimeError(f"compare-postfix.sh start failed: {r.stderr.strip()}")
        if not _greeting(self.port, args.ready_timeout):
            raise RuntimeError(f"{system}: no 220 greeting on port {self.port} within {args.ready_timeout:.0f} s")
        if system == "postfix":
            self.pid = _postfix_master()
            if self.pid is None:
                raise RuntimeError("Postfix master pid not found")

    def _counting_sink(self) -> None:
        """The relay's next hop: an `smtp-sink -c` on the port after the server's."""
        self.sink_port = self.port + 1
        _port_free(self.sink_port)
        self.procs.append(_spawn([sbin("smtp-sink"), "-c", "-u", "postfix", f"127.0.0.1:{self.sink_port}", "1024"],
                                 subprocess.DEVNULL))

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)

    def _postfix_stop(self) -> None:
        if self.postfix_started:
            self.postfix_started = False
            try:
                _postfix_sh("stop")
            except subprocess.TimeoutExpired:
                pass

    def stop(self) -> str:
        """Stop everything (SIGTERM: mta closes its spool and logs its stats); return the server log."""
        self._postfix_stop()
        for p in self.procs:
            _kill(p)
        self.log.close()
        with open(os.path.join(self.tmp, "server.log"), errors="replace") as f:
            return f.read()


# ---------------------------------------------------------------------------
# one trial, the loop, the summary
# ---------------------------------------------------------------------------

def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_disk(args, size: int) -> None:
    need = args.messages * size * 2
    for path in {args.workdir, "/var/spool"}:
        free = free_bytes(path)
        if free < need:
            sys.exit(f"accept.py: refusing to run: {path} has {free / 2**30:.2f} GiB free, a trial of "
                     f"{args.messages} x {size} B messages needs {need / 2**30:.2f} GiB (N x SIZE x 2)")


class _Relayer:
    """`--mta-delivery ideal`: while mta only accepts, a C client relays what it has accepted,
    as it accepts it, into mta's counting sink: each time mta's log shows `BATCH` more
    messages queued, `smtp-source -d -s 20` (kept connections, as many as mta's relay
    connections; smtp-source does not pipeline) sends that many of the same size. The
    cheapest relaying any client of ours could add, with no spool read and no coordination
    with the worker. Its CPU (wait4's rusage of every run) is counted as the server's."""

    BATCH = 500

    def __init__(self, args, size: int, sink_port: int, log_path: str, t0: float):
        self.args, self.size, self.sink_port, self.log_path, self.t0 = args, size, sink_port, log_path, t0
        self.accepting = True  # cleared when the load has ended: relay the rest
        self.relayed, self.cpu, self.ended, self.error = 0, 0.0, None, None
        self.proc: subprocess.Popen | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seen, pos = 0, 0
        deadline = self.t0 + self.args.timeout
        idle_since = None  # once the load has ended: when the log last had nothing new
        try:
            with open(self.log_path, "rb") as log:
                while self.relayed < self.args.messages and time.monotonic() < deadline:
                    log.seek(pos)
                    chunk = log.read()
                    cut = chunk.rfind(b"\n") + 1  # whole lines only
                    pos += cut
                    seen += chunk[:cut].count(b" queued ")
                    todo = min(seen, self.args.messages) - self.relayed
                    if todo >= self.BATCH or (todo > 0 and not self.accepting):
                        self._send(todo)
                        idle_since = None
                    elif not self.accepting and idle_since is None:
                        idle_since = time.monotonic()
                    elif idle_since is not None and time.monotonic() - idle_since > 2.0:
                        break  # the load ended short of N (it failed): nothing more will come
                    else:
                        time.sleep(0.005)
            if self.relayed < self.args.messages:
                self.error = f"the ideal relayer relayed {self.relayed} of {self.args.messages} in time"
            self.ended = time.monotonic() - self.t0
        except (OSError, RuntimeError) as e:
            self.error = str(e)

    def _send(self, n: int) -> None:
        self.proc = subprocess.Popen([sbin("smtp-source"), "-d", "-s", str(min(20, n)), "-m", str(n), "-l",
                                      str(self.size), "-f", "from@example.test", "-t", "to@example.test",
                                      "-M", "mx.example.test", f"127.0.0.1:{self.sink_port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(self.proc.pid, 0)
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        self.cpu += ru.ru_utime + ru.ru_stime
        if self.proc.returncode != 0:
            raise RuntimeError(f"the ideal relayer (smtp-source -d) exited {self.proc.returncode}")
        self.relayed += n

    def result(self) -> tuple[float, float]:
        """The load has ended: relay the rest; (seconds from t0 to the last relayed, CPU seconds)."""
        self.accepting = False
        self.thread.join(max(0.0, self.t0 + self.args.timeout - time.monotonic()) + 5)
        if self.thread.is_alive() and self.proc is not None:
            self.proc.kill()
        if self.error or self.ended is None:
            raise RuntimeError(self.error or "the ideal relayer did not finish in time")
        return self.ended, self.cpu


def run_trial(args, system: str, size: int, mode: str, index: int) -> dict:
    check_disk(args, size)
    # The trial before (another system's) leaves dirty pages, a spool or queue being removed
    # and processes exiting: each trial starts on a written-back, quiet machine instead.
    waited, idle = settle(args.settle) if args.settle > 0 else (0.0, None)
    tmp = tempfile.mkdtemp(prefix=f"mta-accept-{system}-", dir=args.workdir)
    row = {"system": system, "size": size, "mode": mode, "trial": index, "messages": args.messages,
           "loadavg_before": os.getloadavg()[0], "settle_s": round(waited, 2),
           "idle_before": None if idle is None else round(idle, 3)}
    srv = None
    try:
        srv = Trial(system, args, tmp)
        cmd = [sbin("smtp-source"), "-s", str(args.sessions), "-m", str(args.messages), "-l", str(size),
               "-f", "from@example.test", "-t", "to@example.test", "-M", "client.example.test"]
        if mode == "keep":
            cmd.append("-d")
        cmd.append(f"127.0.0.1:{srv.port}")
        row["command"] = " ".join(cmd)
        ideal = system == "mta" and args.mta_delivery == "ideal"
        cpu0 = srv.cpu()
        t0 = time.monotonic()
        relayer = _Relayer(args, size, srv.sink_port, srv.log.name, t0) if ideal else None
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            elapsed = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"smtp-source did not finish within {args.timeout:.0f} s") from None
        finally:
            relayed = relayer.result() if relayer else None
        cpu = srv.cpu() - cpu0
        if relayed is not None:  # the emulated relay client's CPU is the server's: mta would spend it
            # (what it relays after the load has ended counts too, as mta's relaying after it would)
            row.update(relay_done_s=round(relayed[0], 3), relay_client_cpu_s=round(relayed[1], 3))
            cpu += relayed[1]
        row.update(elapsed_s=round(elapsed, 3), accepted_per_s=round(args.messages / elapsed, 1),
                   server_cpu_s=round(cpu, 3), server_cpu_s_per_msg=round(cpu / args.messages, 7))
        complaints = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        if r.returncode != 0 or complaints:
            row["generator_output"] = complaints[:20]
            row["failed"] = f"smtp-source exit {r.returncode}, {len(complaints)} line(s) of complaints"
        log = srv.stop()
        srv = None
        if system == "mta":
            found = STATS_RE.findall(log)  # one line per worker (shard)
            queued = sum(1 for ln in log.splitlines() if " queued " in ln)
            row["queued_lines"] = queued
            if found:
                msgs, batches, syncs, nbytes, failed = (sum(int(g[i]) for g in found) for i in range(5))
                row.update(spool_messages=msgs, batches=batches, syncs=syncs, spool_bytes=nbytes,
                           failed_batches=failed, syncs_per_s=round(syncs / elapsed, 1),
                           msgs_per_sync=round(msgs / syncs, 2) if syncs else None)
                stored = queued or msgs  # with delivery on, messages= also counts delivery-state records
            else:
                stored = queued
                row.setdefault("failed", "no `spool stats:` line in the mta log")
            if stored != args.messages:
                row["failed"] = f"mta stored {stored} of {args.messages} messages"
    except (RuntimeError, OSError) as e:
        row["failed"] = str(e)
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return row


def _med(xs):
    return statistics.median(xs) if xs else None


def summarize(rows: list[dict], args) -> list[dict]:
    out = []
    ok = [r for r in rows if "failed" not in r]
    by = {(r["system"], r["size"], r["mode"], r["trial"]): r for r in ok}
    for size in args.sizes:
        for mode in args.modes:
            for system in args.systems:
                mine = [r for r in ok if (r["system"], r["size"], r["mode"]) == (system, size, mode)]
                s = {"system": system, "size": size, "mode": mode, "trials_ok": len(mine),
                     "trials_failed": sum(1 for r in rows if (r["system"], r["size"], r["mode"]) == (system, size, mode)
                                          and "failed" in r)}
                if not s["trials_ok"] and not s["trials_failed"]:
                    continue  # not run (interrupted)
                if mine:
                    rates = [r["accepted_per_s"] for r in mine]
                    s.update(median_per_s=_med(rates), min_per_s=min(rates), max_per_s=max(rates),
                             cpu_s_per_20k=_med([r["server_cpu_s_per_msg"] * 20000 for r in mine]))
                    for peer in ("postfix", "sink"):
                        pairs = [r["accepted_per_s"] / by[(peer, size, mode, r["trial"])]["accepted_per_s"]
                                 for r in mine if (peer, size, mode, r["trial"]) in by]
                        s[f"ratio_vs_{peer}"] = round(_med(pairs), 3) if pairs else None
                    if system == "mta":
                        s["msgs_per_sync"] = _med([r["msgs_per_sync"] for r in mine if r.get("msgs_per_sync")])
                        s["syncs_per_s"] = _med([r["syncs_per_s"] for r in mine if r.get("syncs_per_s")])
                out.append(s)
    return out


def _n(x, fmt="{:,.0f}"):
    return "—" if x is None else fmt.format(x)


MTA_DELIVERY = {"relay": "relaying into smtp-sink -c", "off": "accepting only",
                "ideal": "accepting; a C client relays", "default": "its configured delivery"}


def _name(system: str, args) -> str:
    return f"{NAMES[system]} ({MTA_DELIVERY[args.mta_delivery]})" if system == "mta" else NAMES[system]


def markdown(summary: list[dict], args) -> str:
    lines = [f"N = {args.messages:,} per trial, {args.sessions} sessions, {args.trials} trials in alternation; "
             f"medians (min–max); ratios pair by pair (same trial index), then the median. {NOTE}", "",
             "| system | size | mode | accepted/s (median) | min–max | server CPU-s per 20k | × Postfix | × smtp-sink "
             "| msgs/sync (syncs/s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        size = f"{s['size'] // 1024} KiB" if s["size"] % 1024 == 0 else f"{s['size']} B"
        mode = "1/conn" if s["mode"] == "conn" else "kept (-d)"
        if not s["trials_ok"]:
            lines.append(f"| {_name(s['system'], args)} | {size} | {mode} | failed ({s['trials_failed']}) | | | | | |")
            continue
        sync = (f"{_n(s.get('msgs_per_sync'), '{:.1f}')} ({_n(s.get('syncs_per_s'))})"
                if s["system"] == "mta" else "—")
        fail = f" ({s['trials_failed']} failed)" if s["trials_failed"] else ""
        lines.append(
            f"| {_name(s['system'], args)} | {size} | {mode} | {_n(s['median_per_s'])}{fail} | "
            f"{_n(s['min_per_s'])}–{_n(s['max_per_s'])} | {_n(s['cpu_s_per_20k'], '{:.1f}')} | "
            f"{'—' if s['system'] == 'postfix' else _n(s.get('ratio_vs_postfix'), '{:.2f}x')} | "
            f"{'—' if s['system'] == 'sink' else _n(s.get('ratio_vs_sink'), '{:.0%}')} | {sync} |")
    return "\n".join(lines)


def git_commit(mta_python: str) -> str:
    pinned = os.path.join(os.path.dirname(os.path.abspath(mta_python)), ".commit")
    if os.path.abspath(mta_python) != os.path.join(ROOT, "python") and os.path.exists(pinned):
        with open(pinned) as f:
            return f.read().strip() + " (snapshot)"
    try:
        r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=10)
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return r.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda kind: (lambda v: [kind(x) for x in v.split(",") if x])  # noqa: E731
    ap.add_argument("--messages", type=int, default=20000, help="N messages per trial (default 20000)")
    ap.add_argument("--trials", type=int, default=3, help="trials per system and workload (default 3)")
    ap.add_argument("--sizes", type=csv(int), default=[1024, 65536], help="message sizes in bytes")
    ap.add_argument("--modes", type=csv(str), default=list(MODES), help="conn (1 msg/connection), keep (-d)")
    ap.add_argument("--systems", type=csv(str), default=list(SYSTEMS), help="mta,postfix,sink (run in this order)")
    ap.add_argument("--sessions", type=int, default=50, help="smtp-source -s (default 50)")
    ap.add_argument("--port", type=int, default=3525,
                    help="mta's port (its relay sink +1); Postfix +100 (its relay sink +101); smtp-sink +200 "
                         "(default 3525)")
    ap.add_argument("--workdir", default=tempfile.gettempdir(), help="where the per-trial spool dirs go")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one smtp-source run may take")
    ap.add_argument("--settle", type=float, default=15,
                    help="before each trial: sync, then wait up to this many seconds for the CPUs to be 90%% "
                         "idle (0: start at once; default 15)")
    ap.add_argument("--ready-timeout", type=float, default=60, help="seconds a server has to greet")
    ap.add_argument("--busy-wait", type=float, default=300,
                    help="seconds to wait for the shared Postfix bench instance to be free")
    ap.add_argument("--mta-python", default=os.path.join(ROOT, "python"),
                    help="directory holding the mta package to run (default ./python; a pinned snapshot "
                         "with a .commit file beside it is reported under that commit)")
    ap.add_argument("--mta-delivery", choices=("relay", "off", "ideal", "default"), default="relay",
                    help="relay: mta relays into an smtp-sink -c while accepting, as the Postfix peer does "
                         "(default); off: --no-delivery; ideal: --no-delivery while a C client (smtp-source "
                         "-d -s 20) relays the same N into that sink at the same time, its CPU counted as "
                         "the server's (the best any relay client could do); default: the "
                         "configuration's own delivery")
    ap.add_argument("--mta-workers", type=int, default=1,
                    help="mta run --workers N (processes sharing the port, a spool shard each; default 1)")
    ap.add_argument("--mta-cpu-affinity", choices=("none", "auto"), default="auto",
                    help="mta's cpu_affinity: auto (default here: event loop on a CPU of its own, spool "
                         "writer and delivery agent on the others, as on a dedicated relay host) or none")
    ap.add_argument("--out", default="accept-results.json", help="JSON with every trial and the summary")
    args = ap.parse_args(argv)
    bad = [s for s in args.systems if s not in SYSTEMS] + [m for m in args.modes if m not in MODES]
    if bad:
        ap.error(f"unknown system/mode {', '.join(bad)}")
    if "postfix" in args.systems and os.geteuid() != 0:
        ap.error("the Postfix relay needs root (compare-postfix.sh); leave it out with --systems mta,sink")
    return args


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    for tool in ("smtp-source", "smtp-sink"):
        sbin(tool)
    check_disk(args, max(args.sizes))
    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background job starts with it ignored
        signal.signal(sig, _interrupt)
    meta = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": git_commit(args.mta_python), "mta_python": os.path.abspath(args.mta_python),
            "mta_delivery": args.mta_delivery,
            "argv": sys.argv, "cpus": os.cpu_count(), "kernel": os.uname().release, "note": NOTE,
            "workdir_fs": subprocess.run(["findmnt", "-T", args.workdir, "-no", "FSTYPE"], capture_output=True,
                                         text=True, timeout=10).stdout.strip(),
            "postfix": subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True,
                                      timeout=10).stdout.strip()}
    print(f"# accept path, commit {meta['commit']}, {meta['date']}; {NOTE}", flush=True)
    if os.getloadavg()[0] > 1.0:
        print(f"# warning: load average {os.getloadavg()[0]:.2f} before the run: something else is using the "
              "cores, figures will be low and noisy (each trial records loadavg_before in the JSON)", flush=True)
    rows: list[dict] = []
    interrupted = False
    try:
        for size in args.sizes:
            for mode in args.modes:
                for t in range(args.trials):
                    for system in args.systems:
                        row = run_trial(args, system, size, mode, t)
                        rows.append(row)
                        extra = (f" msgs/sync {row.get('msgs_per_sync')}" if "msgs_per_sync" in row else "")
                        status = f"FAILED: {row['failed']}" if "failed" in row else ""
                        print(f"{system:8} {size:>6} B {mode:4} #{t + 1}: {row.get('accepted_per_s', '-'):>9}/s "
                              f"cpu {row.get('server_cpu_s', '-')} s{extra} {status}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
        interrupted = True
    finally:
        for fn in reversed(_cleanups):
            try:
                fn()
            except Exception:
                pass
    summary = summarize(rows, args)
    table = markdown(summary, args)
    print("\n" + table)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "summary": summary, "trials": rows, "table_markdown": table}, f, indent=1)
    print(f"\nwrote {args.out}")
    return 130 if interrupted else 1 if any("failed" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
