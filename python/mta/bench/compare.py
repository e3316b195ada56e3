"""`mta bench compare`: the same workloads against several servers in alternation, each
trial on a fresh start in a fresh directory, the CPU and memory of the server's process tree
read from /proc; a server is a ready-made peer (mta.bench.peers) or start/stop commands."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from mta.bench import peers as peer_registry
from mta.bench.peers.runner import PeerProcess
from mta.bench.procs import free_port, terminate, tree_cpu_seconds, tree_memory_bytes, wait_greeting, wait_port_free
from mta.bench.sendrun import run_send
from mta.bench.workloads import KINDS, Workload


@dataclass
class System:
    name: str = ""  # default: the peer's name
    port: int = 0  # 0: a free port per trial (peers)
    start: str = ""
    stop: str = ""
    ready: str = ""  # a command that exits 0 when ready; default: a 220 greeting on the port
    pid: str = ""  # "" = the started process; "file:PATH" = a pid file
    drained: str = ""  # end-to-end: a command that exits 0 once the queue is empty
    relays: bool = False
    env: dict = field(default_factory=dict)
    peer: str = ""  # a ready-made peer (mta.bench.peers) instead of start/stop commands
    starttls: bool = True  # offers STARTTLS: takes part in STARTTLS workloads


@dataclass
class Plan:
    systems: list[System] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)
    repeats: int = 5
    sink_port: int = 2626
    output: str = "bench-results/compare"
    ready_timeout: float = 60.0
    drain_timeout: float = 300.0
    generator_workers: int = 0
    here: str = ""  # the config file's directory: {here} in commands
    tls_cert: str = ""  # the certificate peers offer (a throwaway one when empty)
    tls_key: str = ""


def _take(d: dict, cls, where: str):
    known = {k for k in cls.__dataclass_fields__ if k not in ("sweep", "rate")}
    bad = sorted(set(d) - known)
    if bad:
        raise ValueError(f"{where}: unknown key(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
    try:
        return cls(**d)
    except TypeError as e:
        raise ValueError(f"{where}: {e}") from None


def peer_system(name: str) -> System:
    """A System for the ready-made peer `name` (ValueError naming the known peers)."""
    peer = peer_registry.get(name)
    return System(name=name, peer=name, relays=peer.relays, starttls=peer.offers_starttls)


def load_plan(path: str) -> Plan:
    """Read the TOML file; every mistake is a ValueError naming the table and key."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    top = dict(doc.get("compare", {}))
    systems = []
    for i, s in enumerate(doc.get("system", [])):
        sysm = _take(s, System, f"[[system]] #{i + 1}")
        if sysm.peer:
            if sysm.start:
                raise ValueError(f"[[system]] #{i + 1}: peer and start exclude each other")
            try:
                peer = peer_registry.get(sysm.peer)
                sysm.relays, sysm.starttls = peer.relays, peer.offers_starttls
            except ValueError as e:
                raise ValueError(f"[[system]] #{i + 1}: peer: {e}") from None
            sysm.name = sysm.name or sysm.peer
        elif not sysm.name or not sysm.start or not sysm.port:
            raise ValueError(f"[[system]] #{i + 1}: needs peer = NAME, or name, start and port")
        systems.append(sysm)
    workloads = [_take(w, Workload, f"[[workload]] #{i + 1}") for i, w in enumerate(doc.get("workload", []))]
    if not systems:
        raise ValueError(f"{path}: no [[system]] tables")
    if not workloads:
        workloads = [Workload(name="accept-only 1 KiB")]
    for w in workloads:
        if w.kind not in KINDS:
            raise ValueError(f"workload {w.name!r}: kind must be one of {', '.join(KINDS)}")
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError("system names must be unique")
    if {"systems", "workloads"} & set(top):
        raise ValueError("[compare]: systems and workloads are [[system]] and [[workload]] tables")
    plan = _take(top, Plan, "[compare]")
    plan.systems, plan.workloads = systems, workloads
    plan.here = os.path.dirname(os.path.abspath(path))
    return plan


def _fill(cmd: str, sysm: System, plan: Plan, tmp: str) -> str:
    return cmd.format(port=sysm.port, sink_port=plan.sink_port, tmp=tmp, here=shlex.quote(plan.here),
                      python=shlex.quote(sys.executable))


def _until_ok(cmd: str, deadline: float, env: dict) -> bool:
    while time.monotonic() < deadline:
        if subprocess.run(cmd, shell=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return True
        time.sleep(0.2)
    return False


class Running:
    """A system started from its commands: its process (if the start command stays in the
    foreground), the PID whose tree is charged for CPU and memory, and how to stop it."""

    def __init__(self, sysm: System, plan: Plan, tmp: str, log) -> None:
        self.sysm, self.plan, self.tmp = sysm, plan, tmp
        self.env = {**os.environ, **{k: str(v) for k, v in sysm.env.items()}}
        wait_port_free(sysm.port, time.monotonic() + 10)
        cmd = _fill(sysm.start, sysm, plan, tmp)
        self.proc = subprocess.Popen(shlex.split(cmd), env=self.env, cwd=os.getcwd(), start_new_session=True,
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + plan.ready_timeout
        ok = (_until_ok(_fill(sysm.ready, sysm, plan, tmp), deadline, self.env) if sysm.ready
              else wait_greeting(sysm.port, deadline))
        if not ok:
            self.stop()
            raise RuntimeError(f"{sysm.name}: not ready within {plan.ready_timeout:.0f} s (see {tmp}/log)")
        self.pid = self._pid()

    def _pid(self) -> int:
        spec = self.sysm.pid
        if not spec:
            return self.proc.pid
        if spec.startswith("file:"):
            with open(_fill(spec[5:], self.sysm, self.plan, self.tmp)) as f:
                return int(f.read().split()[0])
        raise ValueError(f"{self.sysm.name}: pid must be empty or file:PATH, not {spec!r}")

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)

    def memory(self) -> int:
        return tree_memory_bytes(self.pid)

    def drained(self) -> bool:
        if not self.sysm.drained:
            return True
        return subprocess.run(_fill(self.sysm.drained, self.sysm, self.plan, self.tmp), shell=True, env=self.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0

    def stop(self) -> None:
        if self.sysm.stop:
            subprocess.run(_fill(self.sysm.stop, self.sysm, self.plan, self.tmp), shell=True, env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        terminate(self.proc, 30, group=True)


def peer_run(sysm: System, plan: Plan, tmp: str) -> peer_registry.PeerRun:
    from mta.bench.tlsutil import throwaway_certificate

    cert, key = (plan.tls_cert, plan.tls_key) if plan.tls_cert else throwaway_certificate("relay.bench.test")
    return peer_registry.PeerRun(home=peer_registry.peers_home(), work=Path(tmp) / "peer", port=sysm.port,
                                 sink_port=plan.sink_port, cert=cert, key=key, python=sys.executable)


def start_system(sysm: System, plan: Plan, tmp: str, log):
    """The system started and ready: a PeerProcess for a peer, else Running."""
    if not sysm.peer:
        return Running(sysm, plan, tmp, log)
    peer = peer_registry.get(sysm.peer)
    why = peer.missing(peer_registry.peers_home())
    if why:
        raise RuntimeError(f"{sysm.name}: {why}")
    return PeerProcess(peer, peer_run(sysm, plan, tmp), log, plan.ready_timeout)


def _start_sink(plan: Plan, count: int, tmp: str, log, starttls: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mta", "bench", "sink", "--listen", f"127.0.0.1:{plan.sink_port}",
           "--count", str(count), "--json", os.path.join(tmp, "sink.json"), "--quiet"]
    if not starttls:
        cmd.append("--no-starttls")
    import mta  # the sink must import the same package as this process, wherever it runs

    here = os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
    p = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    if not wait_greeting(plan.sink_port, deadline):
        p.kill()
        raise RuntimeError(f"the end-to-end sink did not start on port {plan.sink_port}")
    return p


def _finish_sink(p: subprocess.Popen, deadline: float, tmp: str) -> dict:
    import json

    try:
        p.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
    with open(os.path.join(tmp, "sink.json")) as f:
        return json.load(f)


class PeakMemory:
    """Samples the tree's memory a few times a second on a thread; `.stop()` -> peak bytes."""

    def __init__(self, server, every: float = 0.25) -> None:
        self.server, self.every, self.peak = server, every, 0
        self._done = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while True:
            try:
                self.peak = max(self.peak, self.server.memory())
            except (OSError, ValueError):
                pass
            if self._done.wait(self.every):
                return

    def stop(self) -> int:
        self._done.set()
        self._t.join(5)
        return self.peak


def run_trial(plan: Plan, sysm: System, wl: Workload, repeat: int, say) -> dict:
    """One system, one workload, once: start fresh, load, (drain), account, stop, clean up."""
    tmp = tempfile.mkdtemp(prefix=f"mta-compare-{sysm.name}-")
    e2e = wl.kind == "end-to-end"
    sink = None
    log = open(os.path.join(tmp, "log"), "wb")
    if sysm.peer and not sysm.port:  # a ready-made peer takes a free port per trial
        sysm = dataclasses.replace(sysm, port=free_port())
    try:
        if sysm.relays:  # a relay always has somewhere to deliver, so it never piles up retries
            sink = _start_sink(plan, wl.messages, tmp, log, wl.starttls)
        run = start_system(sysm, plan, tmp, log)
        try:
            cpu0 = run.cpu()
            mem = PeakMemory(run)
            t_wall = time.time()
            rep = run_send(f"127.0.0.1:{sysm.port}", messages=wl.messages, size=wl.size, sessions=wl.sessions,
                           per_connection=wl.per_connection, warmup=wl.warmup, workers=plan.generator_workers,
                           starttls=wl.starttls, rate=wl.rate, tls_resume=wl.tls_resume)
            row = {"system": sysm.name, "workload": wl.name, "kind": wl.kind, "repeat": repeat,
                   "sweep": wl.sweep, "rate": wl.rate,
                   "messages": rep["messages"], "accepted_per_s": rep["messages_per_s"],
                   "elapsed_s": rep["elapsed_s"], "latency_ms": rep["latency_ms"],
                   "latency_cdf_ms": rep.get("latency_cdf_ms"), "errors": rep["errors"]}
            if "tls_handshakes" in rep:  # STARTTLS trials: how many handshakes resumed
                row["tls_handshakes"] = rep["tls_handshakes"]
            if e2e:
                deadline = time.monotonic() + plan.drain_timeout
                if rep["messages"] < wl.messages:  # some were refused: the sink will not count N
                    deadline = min(deadline, time.monotonic() + 10)
                srep = _finish_sink(sink, deadline, tmp)
                sink = None
                while not run.drained() and time.monotonic() < deadline:
                    time.sleep(0.2)
                span = srep["last_message_at"] - t_wall if srep["messages"] else 0.0
                row["delivered"] = srep["messages"]
                row["end_to_end_per_s"] = round(srep["messages"] / span, 1) if span > 0 else 0.0
                row["integrity_errors"] = srep["integrity_errors"]
            cpu = run.cpu() - cpu0
            row["rss_peak_bytes"] = mem.stop()
        finally:
            run.stop()
        row["server_cpu_s"] = round(cpu, 3)
        row["server_cpu_s_per_msg"] = round(cpu / rep["messages"], 7) if rep["messages"] else None
        say(row)
        return row
    finally:
        if sink is not None:
            os.killpg(sink.pid, signal.SIGTERM)
            sink.wait(30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def run_compare(plan: Plan, say=lambda row: None) -> list[dict]:
    """Every workload (sweep points and offered rates already expanded); per workload
    `repeats` rounds of every system in order (A B C A B C), so drift hits all alike."""
    rows = []
    for wl in plan.workloads:
        systems = [s for s in plan.systems if (wl.kind == "accept-only" or s.relays) and (s.starttls or not wl.starttls)]
        for r in range(plan.repeats):
            for sysm in systems:
                try:
                    rows.append(run_trial(plan, sysm, wl, r, say))
                except (RuntimeError, OSError, ValueError) as e:
                    row = {"system": sysm.name, "workload": wl.name, "kind": wl.kind, "repeat": r,
                           "sweep": wl.sweep, "rate": wl.rate, "failed": str(e)}
                    say(row)
                    rows.append(row)
    return rows
