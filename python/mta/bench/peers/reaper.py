"""`python -m mta.bench.peers.reaper -- ARGV`: run a peer as a child subreaper, so every
process it forks, daemonized or orphaned, stays in this one tree (its CPU is charged to our
cutime/cstime when reaped). SIGTERM is passed to every child; past a grace, SIGKILL."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
GRACE_S = 20.0


def _children() -> list[int]:
    me = os.getpid()
    out = []
    try:
        with open(f"/proc/{me}/task/{me}/children") as f:
            out = [int(p) for p in f.read().split()]
    except OSError:
        pass
    return out


def _signal_all(sig: int) -> None:
    for pid in _children():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m mta.bench.peers.reaper -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("reaper: prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)
        return 1
    stopping = [0.0]

    def on_term(*_):
        if not stopping[0]:
            stopping[0] = time.monotonic()
            _signal_all(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    first = os.fork()
    if first == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    status = 0
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status  # nothing left: the peer and everything it forked are gone
        if pid == first:
            status = os.waitstatus_to_exitcode(st)
        if pid == 0:
            if stopping[0] and time.monotonic() - stopping[0] > GRACE_S:
                _signal_all(signal.SIGKILL)
            time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
