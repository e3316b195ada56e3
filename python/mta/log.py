"""Logging: the standard `logging` module for rare events, and a fast path for the two
lines every message costs (session end, message queued), buffered and written once per
event-loop iteration by Rust's `_native.ServerLog`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading

from mta import _native

# At thousands of messages a second `logging`'s per-record machinery was a fifth of the
# server's CPU, and a Python time stamp per line 5% of the accept path.

FORMAT = "%(asctime)s mta[%(process)d]: %(message)s"

_lines = _native.ServerLog(f" mta[{os.getpid()}]: ")
_scheduled = False
_enabled = True
_fd = 2
_loop: asyncio.AbstractEventLoop | None = None  # kept: each get_running_loop() is a getpid()
_loop_thread = 0


def setup(level: str) -> None:
    """Configure `logging` to stderr and the fast path at the same level."""
    global _enabled, _lines, _fd, _loop
    _loop = None  # a forked worker: the parent's loop is not ours
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=lvl, format=FORMAT)
    _enabled = lvl <= logging.INFO
    # A forked worker's copy of its parent's lines is the parent's to write.
    _lines = _native.ServerLog(f" mta[{os.getpid()}]: ")
    _fd = sys.stderr.fileno()


def info(msg: str) -> None:
    """Log one INFO line; written at the end of this event-loop iteration."""
    if not _enabled:
        return
    _lines.add(msg)
    if not _scheduled:
        _schedule()


def _schedule() -> None:
    """Flush at the end of this loop iteration (at once outside a running loop)."""
    global _scheduled, _loop, _loop_thread
    loop = _loop
    if loop is None or _loop_thread != threading.get_ident() or not loop.is_running():
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            flush()
            return
        _loop, _loop_thread = loop, threading.get_ident()
    loop.call_soon(flush)
    _scheduled = True


def flush() -> None:
    global _scheduled
    _scheduled = False
    if _lines:
        _lines.write(_fd)  # False: stderr is gone, nothing sensible left to do with the lines
