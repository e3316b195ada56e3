#!/usr/bin/env python3
"""Queue at scale (issue 25): a real `mta run` whose next hop is down takes N messages, then is
restarted, listed, summarised, held and released, and drained into a sink; times, rates, the
worker's RSS/PSS and spool disk use per step. A step that fails says why and the others go on.

    python benches/queue_scale.py [--messages 100000,1000000] [--no-delivery] [--postfix | --no-postfix]
                                  [--postfix-messages 100000] [--work DIR] [--keep] [--out PREFIX]

Invariants: every wait and subprocess has a timeout; every server started is stopped on exit,
error or Ctrl-C; the load and the sink talk SMTP only, the queue tools are the `mta` CLI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:  # the installed package (pip install .), or the tree's when PYTHONPATH names it
    import mta._native  # noqa: F401
except ImportError:  # the tree, with its extension built in place (scripts/dev-build)
    sys.path.insert(0, str(ROOT / "python"))
import mta  # noqa: E402

# Where that package is, as an absolute path: the servers and CLIs run elsewhere (cwd).
SOURCE = [str(Path(mta.__file__).resolve().parents[1])]
from mta.bench.procs import free_port, tree_memory_bytes, vm_hwm, wait_greeting  # noqa: E402  (after the path)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from queue_scale_report import count_json_array, fmt_b, markdown  # noqa: E402  (its sibling)

MiB = 1 << 20
# Disk per 1 KiB message at the busiest point, measured at 100k: the spool before the drain
# (1.8 KiB: the message and its deferral, hold and release records), three delivery-log records
# (1.2 KiB), the list output (0.2 KiB); a Postfix queue file takes a 4 KiB block.
DISK_PER_MESSAGE = 3.2 * 1024
POSTFIX_DISK_PER_MESSAGE = 4 * 1024
SAMPLE_S = 0.25
POLL_S = 0.5
RECOVERY_RE = re.compile(r"recovery\b.*\b(done|complete|completed|finished|ended)\b", re.IGNORECASE)
RECOVERED_RE = re.compile(r"spool recovery: ")  # today's report, logged once the spool is read
LISTED_RE = re.compile(r"^-- (\d+) message\(s\)", re.MULTILINE)
# The servers and CLIs it runs import the same package as this script.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [*SOURCE, os.environ.get("PYTHONPATH")]))}
MTA = [sys.executable, "-m", "mta"]


class StepFailed(RuntimeError):
    """A step could not be measured; the text says why (it goes into the report)."""


def budget(n: int, per_s: float, floor: float = 60.0) -> float:
    """A timeout for handling n messages at no less than per_s a second."""
    return max(floor, n / per_s)


def memory(pid: int) -> tuple[int, int]:
    """(VmRSS, Pss) of one process in bytes; (0, 0) when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        with open(f"/proc/{pid}/smaps_rollup") as f:
            pss = next((int(line.split()[1]) for line in f if line.startswith("Pss:")), 0)
    except (OSError, ValueError):
        return 0, 0
    return rss * 1024, pss * 1024


class Sampler:
    """Samples a process (or a tree) every SAMPLE_S in a thread, so each step can ask for its
    peak over its own window. `probe()` returns (rss, pss) now, or None while nothing runs."""

    def __init__(self, probe) -> None:
        self.probe = probe
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.take()
            self._stop.wait(SAMPLE_S)

    def take(self) -> tuple[int, int]:
        got = self.probe()
        if got and got[0]:
            self.samples.append((time.monotonic(), got[0], got[1]))
            return got
        return 0, 0

    def peak(self, t0: float, t1: float | None = None) -> tuple[int, int]:
        t1 = time.monotonic() if t1 is None else t1
        inside = [(r, p) for t, r, p in self.samples if t0 <= t <= t1]
        return (max(r for r, _ in inside), max(p for _, p in inside)) if inside else (0, 0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


CONFIG = """\
# written by benches/queue_scale.py: one worker, the next hop down (a closed loopback port),
# retries far off so the backlog stays deferred until `mta queue flush`.
hostname = "queue-scale.bench.test"
listen = ["127.0.0.1:{port}"]
workers = 1
[smtp]
reverse_dns = false
[spool]
dir = "{spool}"
[delivery]
enabled = {enabled}
relay_to = "127.0.0.1:{next_hop}"
tls = "none"
retry_schedule = ["6h"]
retry_interval = "6h"
log_file = "{dlog}"
[log]
level = "info"
"""


class Server:
    """`mta run` on loopback in `work`, its log in work/mta.log (whose own timestamps say when
    recovery ended); the worker is the process that owns the spool shard."""

    def __init__(self, work: Path, next_hop: int, delivery: bool) -> None:
        self.work, self.next_hop = work, next_hop
        self.port = free_port()
        self.spool, self.dlog = work / "spool", work / "delivery.log"
        self.config = work / "mta.toml"
        self.write_config(delivery)
        self.proc: subprocess.Popen | None = None
        self.log_path = work / "mta.log"
        self.t_exec, self.log_offset = 0.0, 0

    def write_config(self, delivery: bool) -> None:
        self.config.write_text(CONFIG.format(port=self.port, spool=self.spool, enabled=str(delivery).lower(),
                                             next_hop=self.next_hop, dlog=self.dlog))

    def start(self, timeout: float) -> float:
        """Exec and wait for the 220: the seconds from the exec."""
        self.t_exec, self.log_offset = time.time(), self.log_path.stat().st_size if self.log_path.exists() else 0
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:  # straight to the file: no reader of ours in the way
            self.proc = subprocess.Popen(MTA + ["run", "--config", str(self.config)], stdout=subprocess.DEVNULL,
                                         stderr=log, env=ENV, cwd=self.work)
        deadline = t0 + timeout
        while not wait_greeting(self.port, min(deadline, time.monotonic() + 0.05)):
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                why = f"exited with {self.proc.returncode}" if self.proc.poll() is not None else f"no 220 within {timeout:.0f} s"
                self.stop(10)
                raise StepFailed(f"mta run: {why}; log: {self.tail()}")
        return round(time.monotonic() - t0, 3)

    def log_mark(self, pattern: re.Pattern, timeout: float) -> float | None:
        """Seconds from the last exec to the first log line since then that matches (by the
        line's own timestamp); None when none comes within `timeout`."""
        deadline, offset = time.monotonic() + timeout, self.log_offset
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            cut = chunk.rfind(b"\n") + 1
            offset += cut
            for line in chunk[:cut].decode(errors="replace").splitlines():
                if pattern.search(line):
                    try:
                        t = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    except ValueError:  # a line without the usual stamp: when we saw it
                        t = time.time()
                    return round(t - self.t_exec, 3)
            if time.monotonic() >= deadline or self.proc is None or self.proc.poll() is not None:
                return None
            time.sleep(0.05)

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_bytes()[-4096:].decode(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.splitlines()[-lines:])

    def worker_pid(self) -> int | None:
        """The process serving the spool: `mta run` itself with workers = 1 (else its forked
        child of the same command line); None when the server is not running."""
        if self.proc is None or self.proc.poll() is not None:
            return None
        main = self.proc.pid
        try:
            with open(f"/proc/{main}/cmdline", "rb") as f:
                own = f.read()
            with open(f"/proc/{main}/task/{main}/children") as f:
                kids = [int(c) for c in f.read().split()]
            for kid in kids:
                with open(f"/proc/{kid}/cmdline", "rb") as f:
                    if f.read() == own:
                        return kid
        except OSError:
            pass
        return main

    def worker_memory(self) -> tuple[int, int] | None:
        pid = self.worker_pid()
        return memory(pid) if pid else None

    def stop(self, timeout: float) -> float | None:
        return terminate(self.proc, timeout) if self.proc is not None else 0.0


def terminate(proc: subprocess.Popen, timeout: float) -> float | None:
    """SIGTERM and wait: the seconds it took to exit (None: it had to be killed)."""
    if proc.poll() is not None:
        return 0.0
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return round(time.monotonic() - t0, 3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)
        return None


class DeliveryLog:
    """Counts the delivery log's records by status as it grows (read from where it stopped)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.rest = path, 0, b""
        self.counts: dict[str, int] = {}

    def read(self) -> dict[str, int]:
        try:
            f = open(self.path, "rb")  # noqa: SIM115  (a missing file is no record yet)
        except FileNotFoundError:
            return self.counts
        with f:
            f.seek(self.offset)
            while chunk := f.read(16 * MiB):  # in pieces: a million records is 400 MB
                self.offset += len(chunk)
                data = self.rest + chunk
                cut = data.rfind(b"\n") + 1
                data, self.rest = data[:cut], data[cut:]
                for status in ("delivered", "deferred", "bounced", "expired", "deleted"):
                    if n := data.count(b'"status":"%s"' % status.encode()):
                        self.counts[status] = self.counts.get(status, 0) + n
        return self.counts

    def wait(self, status: str, target: int, timeout: float) -> float:
        """Seconds until `target` records of `status`; StepFailed at the timeout."""
        t0 = time.monotonic()
        while self.read().get(status, 0) < target:
            if time.monotonic() - t0 > timeout:
                raise StepFailed(f"{self.counts.get(status, 0)} of {target} {status} records after {timeout:.0f} s")
            time.sleep(POLL_S)
        return time.monotonic() - t0


def run_cli(argv: list[str], timeout: float, out: Path) -> dict:
    """Run a command to its end, its stdout into `out`: the wall seconds, the max RSS of the
    process (its VmHWM while it runs), the exit status, its output's end (stderr's too)."""
    err = out.with_name(out.name + ".err")
    with open(out, "wb") as o, open(err, "wb") as e:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=o, stderr=e, env=ENV)
    got: list = []
    waiter = threading.Thread(target=lambda: got.append((os.wait4(proc.pid, 0), time.monotonic())), daemon=True)
    waiter.start()
    # Its own peak, read while it runs (procs.vm_hwm says why not wait4's).
    hwm = 0
    try:
        deadline = time.monotonic() + timeout
        while waiter.is_alive() and time.monotonic() < deadline:
            hwm = max(hwm, vm_hwm(proc.pid))
            waiter.join(0.02)
    finally:
        if not got:  # its timeout, or ours (SIGTERM, Ctrl-C): no child outlives the step
            proc.kill()
            waiter.join(30)
    if not got:
        raise StepFailed(f"{' '.join(argv[2:5])}: no end within {timeout:.0f} s")
    (_, status, usage), t1 = got[0]
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    with open(out, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
        said = f.read().decode(errors="replace").strip()
    return {"seconds": round(t1 - t0, 3), "max_rss": hwm or usage.ru_maxrss * 1024, "rc": proc.returncode,
            "said": said[-200:], "tail": said, "stderr": err.read_text(errors="replace")[-600:]}


def checked(res: dict, what: str) -> dict:
    if res["rc"] != 0:
        raise StepFailed(f"{what} exited with {res['rc']}: {res['stderr'].strip()[-300:]}")
    return res


def disk_use(path: Path) -> int:
    """Bytes allocated under path (du)."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
            except OSError:
                pass
    return total


def send(port: int, n: int, args, out: Path) -> dict:
    """The project's load generator over kept connections; its JSON report."""
    argv = MTA + ["bench", "send", "--target", f"127.0.0.1:{port}", "--messages", str(n), "--size", str(args.size),
                  "--sessions", str(args.sessions), "--per-connection", str(args.per_connection), "--json", str(out), "-q"]
    checked(run_cli(argv, budget(n, 200), out.with_suffix(".out")), "mta bench send")
    return json.loads(out.read_text())


STEPS = ("restart", "list", "summary", "hold", "release", "drain")


def run_step(steps: dict, label: str, name: str, fn) -> dict:
    """Run one step into steps[name]: its figures, or "failed" and why (the others go on)."""
    t0 = time.monotonic()
    say(f"{label}: {name} ...")
    try:
        res = {"status": "ok", **fn()}
    except StepFailed as e:
        res = {"status": "failed", "reason": str(e)}
    except Exception as e:  # noqa: BLE001  a bug in one step must not cost the others (nor leave a server behind)
        res = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
    res["wall_s"] = round(time.monotonic() - t0, 3)
    steps[name] = res
    say(f"{label}: {name}: " + (res["status"] if res["status"] == "ok" else f"FAILED: {res['reason']}"))
    return res


class Trial:
    """One N: a fresh spool, the server, its sampler, and each step's figures in `steps`."""

    def __init__(self, n: int, args, work: Path) -> None:
        self.n, self.args, self.work = n, args, work
        self.steps: dict[str, dict] = {}
        self.next_hop = free_port()  # nothing listens there until the drain's sink
        self.server = Server(work, self.next_hop, delivery=not args.no_delivery)
        self.dlog = DeliveryLog(self.server.dlog)
        self.sampler = Sampler(self.server.worker_memory)
        self.idle_rss = 0
        self.spool_cmd = ["--spool", str(self.server.spool)]

    def step(self, name: str, fn) -> dict:
        return run_step(self.steps, f"N={self.n:,}", name, fn)

    def running(self) -> None:
        if self.server.worker_pid() is None:
            raise StepFailed("the server is not running (an earlier step failed)")

    def settled(self, t0: float | None = None, t1: float | None = None, settle: float | None = None) -> dict:
        """The worker's memory after the settle; with t0, its peaks since then (until t1)."""
        time.sleep(self.args.settle if settle is None else settle)
        rss, pss = self.sampler.take()
        peak = self.sampler.peak(t0, t1) if t0 is not None else None
        return {"rss_end": rss, "pss_end": pss, **({"rss_peak": peak[0], "pss_peak": peak[1]} if peak else {})}

    # 0. an idle server with an empty queue: the baseline of RSS per queued message
    def idle(self) -> dict:
        res = {"listening_s": self.server.start(60), **self.settled()}
        self.idle_rss = res["rss_end"]
        return res

    # 1. accept N messages; with delivery on, each is tried once and deferred
    def accept(self) -> dict:
        self.running()
        t0 = time.monotonic()
        rep = send(self.server.port, self.n, self.args, self.work / "send.json")
        t1 = time.monotonic()
        res = {"accepted": rep["messages"], "seconds": rep["elapsed_s"], "rate": rep["messages_per_s"],
               "errors": rep["errors"], "latency_ms": rep["latency_ms"]}
        if not self.args.no_delivery:  # the end is once the first attempt of every message deferred
            res["deferred_after_s"] = round(self.dlog.wait("deferred", rep["messages"], budget(self.n, 500)), 3)
        res.update(self.settled(t0), rss_during_peak=self.sampler.peak(t0, t1)[0], idle_rss=self.idle_rss,
                   spool_bytes=disk_use(self.server.spool))
        res["rss_per_message"] = round((res["rss_end"] - self.idle_rss) / max(1, rep["messages"]), 1)
        pid = self.server.worker_pid()
        res["tree_pss_end"] = tree_memory_bytes(pid) if pid else 0  # the delivery agent with the worker
        if rep["messages"] != self.n:
            raise StepFailed(f"accepted {rep['messages']} of {self.n}: errors {rep['errors']}")
        return res

    # 2. SIGTERM, start again: time to the 220 and to the end of recovery, RSS after it
    def restart(self) -> dict:
        self.running()
        before = dict(self.dlog.read())
        stop_s = self.server.stop(budget(self.n, 20_000, 60))
        if stop_s is None:
            raise StepFailed("the server did not stop within its timeout after SIGTERM (killed)")
        listening = self.server.start(budget(self.n, 5_000, 60))
        t1 = time.monotonic()
        # Waited for at most about a second per 100,000 messages: it overlaps the settle.
        recovery = self.server.log_mark(RECOVERY_RE, max(self.args.settle, self.n / 100_000))
        recovered = self.server.log_mark(RECOVERED_RE, 0)
        res = {"stop_s": stop_s, "seconds": listening, "listening_s": listening, "recovery_s": recovery,
               "recovery_report_s": recovered, **self.settled(settle=max(0.0, self.args.settle - (time.monotonic() - t1)))}
        res["rss_per_message"] = round((res["rss_end"] - self.idle_rss) / self.n, 1)
        res["attempts_after_restart"] = sum(self.dlog.read().values()) - sum(before.values())
        return res

    # 3, 4. the queue tools that read the spool: list and summary, plain and --json
    def tool(self, verb: str, as_json: bool) -> dict:
        out = self.work / f"{verb}.{'json' if as_json else 'txt'}"
        argv = MTA + ["queue", verb, *self.spool_cmd] + (["--json"] if as_json else [])
        r = checked(run_cli(argv, budget(self.n, 5_000), out), f"mta queue {verb}")
        res = {"seconds": r["seconds"], "rate": round(self.n / r["seconds"], 1), "cli_max_rss": r["max_rss"],
               "output_bytes": out.stat().st_size}
        if verb == "summary":
            if as_json:
                res["total"] = json.loads(out.read_text())["total"]
        elif as_json:
            res["entries"] = count_json_array(out)
        else:
            found = LISTED_RE.findall(r["tail"])
            res["entries"] = int(found[-1]) if found else 0
        out.unlink()
        if res.get("entries", res.get("total", self.n)) != self.n:
            raise StepFailed(f"{verb} found {res.get('entries', res.get('total'))} messages, {self.n} queued")
        return res

    # 5. hold ALL, release ALL (through the control socket): the worker's peak meanwhile
    def admin(self, verb: str) -> dict:
        self.running()
        before = self.dlog.read().get("deferred", 0)
        t0 = time.monotonic()
        r = checked(run_cli(MTA + ["queue", verb, "ALL", *self.spool_cmd], budget(self.n, 2_000), self.work / verb),
                    f"mta queue {verb} ALL")
        res = {"seconds": r["seconds"], "rate": round(self.n / r["seconds"], 1), "said": r["said"]}
        if verb == "release" and not self.args.no_delivery:
            # release makes every message due now: each is tried against the closed port again
            res["deferred_again_s"] = round(self.dlog.wait("deferred", before + self.n, budget(self.n, 500)), 3)
        return {**res, **self.settled(t0, settle=self.args.settle / 2)}

    # 6. the next hop comes back: a sink on its port, `mta queue flush`, time to empty
    def drain(self) -> dict:
        sink_json = self.work / "sink.json"
        sink = subprocess.Popen(MTA + ["bench", "sink", "--listen", f"127.0.0.1:{self.next_hop}", "--no-starttls",
                                       "--count", str(self.n), "--json", str(sink_json), "-q"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            return self._drain(sink, sink_json)
        finally:
            terminate(sink, 15)

    def _drain(self, sink: subprocess.Popen, sink_json: Path) -> dict:
        if not wait_greeting(self.next_hop, time.monotonic() + 30):
            raise StepFailed("the sink did not greet within 30 s")
        before = self.dlog.read().get("delivered", 0)
        res: dict = {"spool_bytes_start": disk_use(self.server.spool)}
        t0 = time.monotonic()
        if self.args.no_delivery:  # nothing was ever tried: the server starts again with delivery on
            self.server.stop(budget(self.n, 20_000, 60))
            self.server.write_config(True)
            res["restart_listening_s"] = self.server.start(budget(self.n, 5_000, 60))
        else:
            self.running()
            r = checked(run_cli(MTA + ["queue", "flush", *self.spool_cmd], budget(self.n, 2_000, 120), self.work / "flush"),
                        "mta queue flush")
            res["flush_s"], res["said"] = r["seconds"], r["said"]
        deadline, mid = t0 + budget(self.n, 300), None
        while (done := self.dlog.read().get("delivered", 0) - before) < self.n:
            if mid is None and done >= self.n // 2:
                mid = disk_use(self.server.spool)
            if time.monotonic() > deadline or self.server.worker_pid() is None:
                raise StepFailed(f"{done} of {self.n} delivered after {time.monotonic() - t0:.0f} s")
            time.sleep(POLL_S)
        self.sampler.take()  # a drain shorter than SAMPLE_S has its peak from this sample at least
        t1 = time.monotonic()
        res.update(drained=done, seconds=round(t1 - t0, 3), rate=round(done / (t1 - t0), 1),
                   spool_bytes_mid=mid if mid is not None else res["spool_bytes_start"])
        res.update(self.settled(t0, t1), spool_bytes_end=disk_use(self.server.spool))
        try:
            sink.wait(30)
            got = json.loads(sink_json.read_text())
            res["sink"] = {k: got[k] for k in ("messages", "integrity_errors", "connections")}
        except (subprocess.TimeoutExpired, OSError, ValueError) as e:
            res["sink"] = {"error": str(e)}
        r = checked(run_cli(MTA + ["queue", "summary", "--json", *self.spool_cmd], 120, self.work / "left.json"),
                    "mta queue summary")
        res["left_queued"] = json.loads(r["tail"])["total"]
        if res["left_queued"]:
            raise StepFailed(f"{res['left_queued']} messages still queued after the drain")
        return res

    def result(self) -> dict:
        """The trial for the report; its steps fill in as they end (an interrupted run keeps them)."""
        return {"messages": self.n, "delivery": not self.args.no_delivery, "config": self.server.config.read_text(),
                "steps": self.steps}

    def run(self) -> None:
        wanted = self.args.steps

        def s(name: str, fn) -> dict:
            if name.split()[0] not in wanted:
                self.steps[name] = {"status": "skipped", "reason": "not in --steps"}
                return self.steps[name]
            return self.step(name, fn)

        try:
            if self.step("idle", self.idle)["status"] == "ok":
                self.step("accept", self.accept)
                s("restart", self.restart)
            for verb in ("list", "summary"):
                s(f"{verb} --json", lambda verb=verb: self.tool(verb, True))
                s(verb, lambda verb=verb: self.tool(verb, False))
            s("hold ALL", lambda: self.admin("hold"))
            s("release ALL", lambda: self.admin("release"))
            s("drain", self.drain)
        finally:
            self.server.stop(budget(self.n, 20_000, 60))
            self.sampler.stop()


def postfix_missing() -> str | None:
    """Why the Postfix peer cannot run here (None: it can)."""
    from mta.bench import peers

    return peers.get("postfix").missing(peers.peers_home())


def postfix_step(m: int, args, work: Path) -> dict:
    """Postfix (the project's peer, a private instance) with its relayhost on a closed port:
    accept m messages with the same generator; its whole tree's PSS; `mailq` over the backlog."""
    from mta.bench import peers
    from mta.bench.peers.runner import PeerProcess
    from mta.bench.tlsutil import throwaway_certificate

    peer = peers.get("postfix")
    home = work / "postfix-home"
    home.mkdir(exist_ok=True)
    why = peer.missing(home)
    if why:
        raise StepFailed(f"postfix: {why}")
    cert, key = throwaway_certificate("relay.bench.test")
    run = peers.PeerRun(home=home, work=home / "run", port=free_port(), sink_port=free_port(), cert=cert, key=key,
                        python=sys.executable)
    conf, queue = home / "postfix" / "etc", home / "postfix" / "queue"
    with open(work / "postfix.log", "ab") as log:
        proc = PeerProcess(peer, run, log, ready_timeout=120)
        sampler = Sampler(lambda: (tree_memory_bytes(proc.pid),) * 2)  # PSS in both places: no tree RSS
        try:
            t0 = time.monotonic()
            rep = send(run.port, m, args, work / "postfix-send.json")
            t1 = time.monotonic()
            res = {"messages": m, "accepted": rep["messages"], "seconds": rep["elapsed_s"], "rate": rep["messages_per_s"],
                   "errors": rep["errors"], "pss_during_peak": sampler.peak(t0, t1)[1]}
            deadline = time.monotonic() + budget(m, 500)
            while (n := sum(len(f) for _, _, f in os.walk(queue / "deferred"))) < rep["messages"]:
                if time.monotonic() > deadline:
                    raise StepFailed(f"postfix: {n} of {rep['messages']} deferred after {budget(m, 500):.0f} s")
                time.sleep(POLL_S)
            res["deferred_after_s"] = round(time.monotonic() - t1, 3)
            time.sleep(args.settle)
            res["pss_peak"], res["pss_end"] = sampler.peak(t0)[1], sampler.take()[1]
            r = checked(run_cli(["postqueue", "-c", str(conf), "-p"], budget(m, 2_000), work / "mailq.txt"), "postqueue -p")
            last = r["tail"].splitlines()[-1:]  # mailq | tail -1
            res["mailq"] = {"seconds": r["seconds"], "cli_max_rss": r["max_rss"], "last_line": last[0] if last else ""}
            (work / "mailq.txt").unlink()
            res["version"] = peer.version(home)
            return res
        finally:
            sampler.stop()
            proc.stop()


def say(text: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(float(x)) for x in text.replace("_", "").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--messages: expected N[,N...], got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--messages: every count must be at least 1")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=parse_counts, default=[100_000], metavar="N[,N...]",
                    help="Backlog sizes, one trial each on a fresh spool (default 100000).")
    ap.add_argument("--no-delivery", action="store_true", help="Accept with delivery off (as issue 25's table); "
                    "the drain then restarts the server with delivery on.")
    ap.add_argument("--postfix", dest="postfix", action="store_true", default=None,
                    help="Measure Postfix on the same backlog (default: when N <= 200000 and Postfix is set up).")
    ap.add_argument("--no-postfix", dest="postfix", action="store_false")
    ap.add_argument("--postfix-messages", type=int, default=100_000, metavar="M", help="Postfix's backlog: min(N, M).")
    ap.add_argument("--size", type=int, default=1024, help="Message size in bytes (default 1024).")
    ap.add_argument("--sessions", type=int, default=50, help="Generator connections (default 50).")
    ap.add_argument("--per-connection", type=int, default=100, help="Messages per connection (default 100).")
    ap.add_argument("--settle", type=float, default=2.0, metavar="S",
                    help="Pause before an end-of-step memory reading (default 2).")
    ap.add_argument("--work", type=Path, help="Where the spools go (default: a new directory under /var/tmp).")
    ap.add_argument("--keep", action="store_true", help="Keep the work directory (spools, logs).")
    ap.add_argument("--out", metavar="PREFIX", help="Write PREFIX.json and PREFIX.md.")
    ap.add_argument("--steps", type=lambda t: set(t.split(",")), default=set(STEPS), metavar="S[,S...]",
                    help=f"Steps after accept (default all: {','.join(STEPS)}); e.g. restart,list,summary "
                         "for a 10M backlog whose hold, release and drain take most of an hour.")
    args = ap.parse_args(argv)
    if bad := sorted(args.steps - set(STEPS)):
        ap.error(f"--steps: unknown {', '.join(bad)} (known: {', '.join(STEPS)})")
    command = "python benches/queue_scale.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    base = args.work or Path(tempfile.mkdtemp(prefix="mta-queue-scale-", dir="/var/tmp"))
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)  # Postfix's daemons (not root) must reach their queue under it
    # What the largest trial needs, and room left for everyone else: the machine is shared.
    need = int(max(args.messages) * DISK_PER_MESSAGE * args.size / 1024) + 256 * MiB
    if args.postfix is not False:  # its queue comes on top of the last trial's spool
        need += int(min(max(args.messages), args.postfix_messages) * POSTFIX_DISK_PER_MESSAGE)
    disk = shutil.disk_usage(base)
    free = disk.free - max(5 * 1024 * MiB, disk.total // 10)
    if need > free:
        print(f"queue_scale.py: {max(args.messages):,} messages need about {fmt_b(need)} under {base} "
              f"({DISK_PER_MESSAGE / 1024:.1f} KiB each), and only {fmt_b(max(0, free))} is free beyond "
              f"the 10% (at least 5 GiB) left to others: refusing", file=sys.stderr)
        if not args.work:
            shutil.rmtree(base, ignore_errors=True)
        return 2
    from mta.bench.machine import describe

    report = {"command": command, "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "machine": describe(str(base)), "size": args.size, "sessions": args.sessions,
              "per_connection": args.per_connection, "trials": []}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the finally blocks stop the servers
    postfix_done: dict[int, dict] = {}
    try:
        for n in args.messages:
            work = base / f"n{n}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(mode=0o755)
            t = Trial(n, args, work)
            report["trials"].append(trial := t.result())
            t.run()
            if args.postfix or (args.postfix is None and n <= 200_000):
                m = min(n, args.postfix_messages)
                if m in postfix_done:
                    trial["steps"]["postfix"] = {**postfix_done[m], "same_as": f"the run of {m:,} above"}
                elif args.postfix is None and (why := postfix_missing()):
                    trial["steps"]["postfix"] = {"status": "skipped", "reason": why}
                else:
                    postfix_done[m] = run_step(trial["steps"], f"N={n:,}", "postfix",
                                               lambda m=m, work=work: postfix_step(m, args, work))
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        report["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        text = markdown(report)
        if args.out:
            Path(f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
            Path(f"{args.out}.md").write_text(text)
        if not args.keep and not args.work:
            shutil.rmtree(base, ignore_errors=True)
        print(text)
    failed = [f"N={t['messages']}: {k}" for t in report["trials"] for k, v in t["steps"].items() if v["status"] == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
