"""Process plumbing for the bench tools: forked workers that die with their parent, CPU of
a whole process tree from /proc (exited children included through their reaper's cutime/
cstime), and the scheduler's view of each thread of a tree (benches/threads.py)."""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

_CLK = os.sysconf("SC_CLK_TCK")


def fork_context():
    # fork: workers inherit the listening socket and the pre-built buffers for free.
    return mp.get_context("fork")


def worker_setup() -> None:
    """In a fresh worker: die with the parent, leave Ctrl-C to the parent."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+sys+cutime+cstime seconds) of one process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    ppid = int(fields[1])
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ppid, ticks / _CLK


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by `root` and every live descendant (and the reaped ones)."""
    procs: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                procs[int(name)] = st
    if root not in procs:
        return 0.0
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += procs[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def descendants(root: int) -> list[int]:
    """`root` and every process under it (its threads' children, from /proc)."""
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def vm_hwm(pid: int) -> int:
    """A running process's peak RSS (VmHWM) in bytes; 0 once it is gone. Read while a command
    runs, it is its own peak: wait4's ru_maxrss starts from the size of the process it was
    forked from (Linux keeps the old mm's peak at exec)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_memory_bytes(root: int) -> int:
    """Memory of `root` and its descendants now: the sum of their proportional set sizes
    (PSS: a page shared by N forked processes counts 1/N in each, so Postfix's or Exim's
    many processes are not charged N times), or of their RSS where PSS cannot be read."""
    total = 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
            continue
        except (OSError, ValueError):
            pass
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            pass
    return total


def wait_greeting(port: int, deadline: float) -> bool:
    """True once a server on 127.0.0.1:port greets with 220 (False at the deadline)."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port_free(port: int, deadline: float) -> bool:
    """True once nothing listens on 127.0.0.1:port (the previous server is gone)."""
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False


def terminate(proc, grace: float, group: bool = False) -> None:
    """Stop a started server: SIGTERM (to its whole process group when `group`), up to `grace`
    seconds for it to exit, then SIGKILL to the group; returns once it has been reaped."""
    if proc.poll() is not None:
        return
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
        proc.wait(grace)
    except ProcessLookupError:
        proc.wait()
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@dataclass(frozen=True)
class ThreadStat:
    """One thread as the scheduler saw it so far (/proc/PID/task/TID)."""

    name: str  # comm
    run_ns: int  # on a CPU (schedstat)
    wait_ns: int  # runnable but waiting for a CPU (schedstat)
    user_s: float
    sys_s: float
    voluntary: int  # context switches: went to sleep
    involuntary: int  # context switches: preempted

    def minus(self, before: "ThreadStat | None") -> "ThreadStat":
        if before is None:
            return self
        return ThreadStat(self.name, self.run_ns - before.run_ns, self.wait_ns - before.wait_ns,
                          self.user_s - before.user_s, self.sys_s - before.sys_s,
                          self.voluntary - before.voluntary, self.involuntary - before.involuntary)


def _thread(pid: int, tid: int) -> ThreadStat | None:
    base = f"/proc/{pid}/task/{tid}"
    try:
        with open(f"{base}/comm") as f:
            name = f.read().strip()
        with open(f"{base}/schedstat") as f:
            run_ns, wait_ns, _ = (int(x) for x in f.read().split())
        with open(f"{base}/stat", "rb") as f:
            raw = f.read()
        with open(f"{base}/status") as f:
            switches = {k: int(v) for k, v in (line.split(":") for line in f if "ctxt_switches" in line)}
    except (OSError, ValueError):
        return None  # gone meanwhile, or a kernel without schedstats
    if name.startswith("python") and pid == tid:  # which of mta's processes it is
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            name = "delivery-agent" if b"mta.delivery.agent" in argv else \
                "mta-worker" if b"mta" in argv and b"run" in argv else name
        except OSError:
            pass
    fields = raw[raw.rindex(b")") + 2:].split()
    return ThreadStat(name, run_ns, wait_ns, int(fields[11]) / _CLK, int(fields[12]) / _CLK,
                      switches.get("voluntary_ctxt_switches", 0), switches.get("nonvoluntary_ctxt_switches", 0))


def tree_threads(root: int) -> dict[str, ThreadStat]:
    """Every live thread of `root` and its descendants, keyed "pid/tid"."""
    out: dict[str, ThreadStat] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            st = _thread(pid, tid)
            if st is not None:
                out[f"{pid}/{tid}"] = st
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def cpu_times() -> dict[str, list[int]]:
    """/proc/stat's per-CPU counters (user nice system idle iowait irq softirq steal), in ticks."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu"):
                name, *vals = line.split()
                out[name] = [int(v) for v in vals[:8]]
    return out


def idle_share(window: float = 0.5) -> float:
    """The share of all CPUs' time spent idle (idle + iowait) over the next `window` seconds."""
    a = cpu_times()["cpu"]
    time.sleep(window)
    b = cpu_times()["cpu"]
    d = [y - x for x, y in zip(a, b)]
    return (d[3] + d[4]) / (sum(d) or 1)


def settle(limit: float = 15.0, idle: float = 0.9, window: float = 0.5) -> tuple[float, float]:
    """Before a trial: write back what earlier trials left dirty (sync), then wait until the
    CPUs are at least `idle` idle over a `window` (a server stopped just before may still be
    exiting, its removed spool still journalling), for at most `limit` seconds. Returns
    (seconds waited, the last idle share): a trial that starts on a busy machine says so."""
    t0 = time.monotonic()
    os.sync()
    share = idle_share(window)
    while share < idle and time.monotonic() - t0 < limit:
        share = idle_share(window)
    return time.monotonic() - t0, share
