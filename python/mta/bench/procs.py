"""Process plumbing shared by the bench tools: forked workers that die with their parent,
and CPU accounting of a whole process tree from /proc (user + system, exited children
included through their reaper's cutime/cstime, so nothing that ran is missed).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import socket
import time

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


def wait_port_free(port: int, deadline: float) -> bool:
    """True once nothing listens on 127.0.0.1:port (the previous server is gone)."""
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return True
        time.sleep(0.1)
    return False
