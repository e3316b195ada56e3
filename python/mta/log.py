"""Logging: the standard `logging` module for rare events, and a fast path
for the two lines every message costs (session end, message queued).

The fast path formats like the standard handler but buffers lines and
writes them with one os.write per event-loop iteration: at thousands of
messages a second, `logging`'s per-record machinery was a fifth of the
server's CPU.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time

FORMAT = "%(asctime)s mta[%(process)d]: %(message)s"

_buf: list[str] = []
_scheduled = False
_enabled = True
_fd = 2
_prefix_sec = -1
_prefix = ""
_pid_tag = ""
_loop: asyncio.AbstractEventLoop | None = None  # kept: each get_running_loop() is a getpid()
_loop_thread = 0


def setup(level: str) -> None:
    """Configure `logging` to stderr and the fast path at the same level."""
    global _enabled, _pid_tag, _fd, _loop
    _loop = None  # a forked worker: the parent's loop is not ours
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(stream=sys.stderr, level=lvl, format=FORMAT)
    _enabled = lvl <= logging.INFO
    _pid_tag = f" mta[{os.getpid()}]: "
    _fd = sys.stderr.fileno()


def info(msg: str) -> None:
    """Log one INFO line; written at the end of this event-loop iteration."""
    global _scheduled, _prefix_sec, _prefix
    if not _enabled:
        return
    now = time.time()
    sec = int(now)
    if sec != _prefix_sec:
        _prefix_sec = sec
        _prefix = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(sec))
    _buf.append(f"{_prefix},{int((now - sec) * 1000):03d}{_pid_tag}{msg}\n")
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
    if not _buf:
        return
    data = "".join(_buf).encode("utf-8", "backslashreplace")
    _buf.clear()
    view = memoryview(data)
    while view:
        try:
            n = os.write(_fd, view)
        except BlockingIOError:
            continue
        except OSError:
            return  # stderr gone: nothing sensible left to do with the line
        view = view[n:]
