"""Process helpers for the workers and the delivery agent. It imports nothing of mta, so
the agent uses it without importing the app layer (which would make an import cycle)."""

from __future__ import annotations

import ctypes
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
