"""Process helpers for the workers and the delivery agent: dying with the parent, and CPU
placement (`cpu_affinity = "auto"`). It imports nothing of mta, so the agent uses it
without the app layer; nothing here raises on a refused setting (it is logged)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when `parent` dies (Linux), so no orphan keeps a port or a
    shard; exit at once if the parent is already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM still reaches us
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

# Like nginx's `worker_cpu_affinity auto`: for a host that runs the relay and little
# else, so the thread that answers clients is never preempted by its own helpers.

log = logging.getLogger("mta")


class Affinity:
    """The CPU sets of one worker: `loop` for its event loop, `helpers` for its
    spool writer and delivery agent. Empty sets mean: leave scheduling alone."""

    def __init__(self, mode: str, shard: int) -> None:
        self.loop: frozenset[int] = frozenset()
        self.helpers: frozenset[int] = frozenset()
        if mode != "auto" or not hasattr(os, "sched_getaffinity"):
            return
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return  # one CPU: nothing to separate
        own = cpus[shard % len(cpus)]
        self.loop = frozenset({own})
        self.helpers = frozenset(cpus) - self.loop

    def __bool__(self) -> bool:
        return bool(self.loop)

    def describe(self) -> str:
        return (f"cpu affinity: event loop on CPU {_list(self.loop)}; "
                f"spool writer and delivery agent on CPU {_list(self.helpers)}")


def pin(cpus: frozenset[int] | set[int], what: str) -> None:
    """Pin the calling thread (threads it starts afterwards inherit the set)."""
    if not cpus:
        return
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        log.warning("cpu affinity: cannot pin the %s to CPU %s: %s", what, _list(cpus), e)


def parse(text: str) -> frozenset[int]:
    """The agent's command-line form of a set: "1,3" (empty: none)."""
    return frozenset(int(x) for x in text.split(",") if x)


def _list(cpus) -> str:
    return ",".join(map(str, sorted(cpus)))
