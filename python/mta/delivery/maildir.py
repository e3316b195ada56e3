"""Maildir delivery: one message, one recipient, one file in <root>/new/, with LF line
ends and Return-Path/Delivered-To on top. A file appears in new/ only complete and
fsync'ed, so a 250 survives a crash; every failure is a RcptResult, never an exception."""

# Write to tmp/, fsync, link into new/, fsync new/. Stored messages have CRLF line ends
# (the SMTP form); Maildir readers expect the local LF form, so CRLF becomes LF on the
# way in, as Postfix's local(8) and virtual(8) do. File names follow the Maildir spec,
# `<sec>.M<usec>P<pid>Q<n>.<host>`, with wall-clock time (readers use it as the arrival
# time) and a per-process counter; link() refuses to overwrite, so a clash is retried,
# never lost. A big message is read from the spool a block at a time (`_pieces`).

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import time
from concurrent.futures import Executor
from typing import Callable, Iterable, Iterator

from mta.delivery import OutMessage, OutRcpt, RcptResult

__all__ = ["deliver_maildir", "deliver_maildir_async", "maildir_bytes"]

log = logging.getLogger(__name__)

_READ_BLOCK = 256 * 1024
_counter = itertools.count(1)  # next() is atomic under the GIL: thread-safe
_ready: set[str] = set()  # roots whose tmp/new/cur we have seen or made

# Errno → (code, enhanced, text). Decision on permanent vs temporary: every
# local failure is temporary. A path that is not a directory, permission
# denied or a read-only file system is an operator's configuration mistake
# (the recipient was accepted at RCPT, so the mailbox is meant to exist);
# deferring keeps the message for the queue lifetime so the fix delivers it,
# where a 5xx would return it to the sender at once (and the queue lifetime
# still bounces it if nobody fixes it). Enhanced code 4.3.5: "system
# incorrectly configured" (RFC 3463). ENOSPC and EDQUOT: 4.2.2, mailbox full.
_FULL = (452, "4.2.2", "mailbox full")
_CONFIG = (451, "4.3.5", "mailbox unusable (local configuration)")
_ERRNO_MAP = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.ENOTDIR: _CONFIG,
    errno.EACCES: _CONFIG,
    errno.EPERM: _CONFIG,
    errno.EROFS: _CONFIG,
    errno.ELOOP: _CONFIG,
    errno.EISDIR: _CONFIG,
}
_OTHER = (451, "4.3.0", "local delivery failed")


def _clean(s: str) -> bytes:
    """An address as one header line: no CR/LF can smuggle in a header."""
    return s.replace("\r", "").replace("\n", "").encode("utf-8", "surrogateescape")


def maildir_bytes(msg: OutMessage, rcpt: OutRcpt) -> bytes:
    """The file's content: Return-Path and Delivered-To, then the message
    with LF line ends."""
    return b"".join(_pieces(msg, rcpt))


def _pieces(msg: OutMessage, rcpt: OutRcpt) -> Iterator[bytes]:
    """`maildir_bytes` in pieces: a big message (`_native.StoredMessage`) is read from
    the spool a block at a time, never whole."""
    yield b"Return-Path: <" + _clean(msg.sender) + b">\nDelivered-To: " + _clean(rcpt.address) + b"\n"
    data = msg.data
    if isinstance(data, bytes):
        yield data.replace(b"\r\n", b"\n")
        return
    reader = data.open()
    carry = b""  # a CR that ended a block: the next one may start with its LF
    while block := reader.read(_READ_BLOCK):
        block = carry + block
        carry = b"\r" if block.endswith(b"\r") else b""
        yield block[:len(block) - len(carry)].replace(b"\r\n", b"\n")
    yield carry


def _unique_name(hostname: str) -> str:
    ns = time.time_ns()
    sec, usec = divmod(ns // 1000, 1_000_000)
    # The spec's escapes for the two characters a name must not contain.
    host = hostname.replace("/", "\\057").replace(":", "\\072") or "localhost"
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{host}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _ensure_dirs(root: str) -> None:
    """Create root and root/{tmp,new,cur} (0700) when missing; make every
    directory we create durable by syncing its parent."""
    made: list[str] = []
    if not os.path.isdir(root):
        try:
            os.makedirs(root, 0o700, exist_ok=True)  # other threads may race us here
        except FileExistsError:  # exists, but not as a directory
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), root) from None
        made.append(root)
    for sub in ("tmp", "new", "cur"):
        p = os.path.join(root, sub)
        try:
            os.mkdir(p, 0o700)
            made.append(p)
        except FileExistsError:
            if not os.path.isdir(p):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), p) from None
    for p in made:
        _fsync_dir(os.path.dirname(os.path.abspath(p)))
    _ready.add(root)


def _write_tmp(path: str, content: Callable[[], Iterable[bytes]]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for piece in content():
            view = memoryview(piece)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(path)
        raise
    os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _store(root: str, content: Callable[[], Iterable[bytes]], hostname: str) -> str:
    """tmp → fsync → link into new/ → fsync new/. Returns the file name."""
    if root not in _ready:
        _ensure_dirs(root)
    for _ in range(10):
        name = _unique_name(hostname)
        tmp = os.path.join(root, "tmp", name)
        try:
            _write_tmp(tmp, content)
        except FileExistsError:
            continue
        except FileNotFoundError:
            # The maildir vanished since we last saw it: recreate, retry once.
            _ready.discard(root)
            _ensure_dirs(root)
            _write_tmp(tmp, content)
        new = os.path.join(root, "new", name)
        try:
            try:
                os.link(tmp, new)
            except FileExistsError:
                continue  # never overwrite a delivered message; new name
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                    raise
                # A file system without hard links: rename (checked first,
                # since rename would replace an existing file).
                if os.path.lexists(new):
                    continue
                os.rename(tmp, new)
            _fsync_dir(os.path.join(root, "new"))
        finally:
            _unlink_quietly(tmp)  # a leftover in tmp/ is harmless; readers sweep it
        return name
    raise OSError(errno.EEXIST, "no unique Maildir file name after 10 tries")


def deliver_maildir(root: str, msg: OutMessage, rcpt: OutRcpt, hostname: str) -> RcptResult:
    """Deliver `msg` for `rcpt` into the Maildir at `root` (blocking: disk
    and fsync; run it in a thread). 250 2.0.0 on success; 4xx on any
    failure (see `_ERRNO_MAP`); never raises OSError."""
    try:
        name = _store(root, lambda: _pieces(msg, rcpt), hostname)
    except OSError as e:
        _ready.discard(root)  # look again next time: it may have been fixed or removed
        code, enhanced, text = _ERRNO_MAP.get(e.errno or 0, _OTHER)
        # The path goes to our log only: the reply may reach a remote sender.
        log.warning("maildir %s: %s for %s: %s", root, msg.queue_id, rcpt.address, e)
        return RcptResult(rcpt.address, code, enhanced, f"{text}: {e.strerror or e}")
    return RcptResult(rcpt.address, 250, "2.0.0", f"Ok: delivered to maildir as {name}")


async def deliver_maildir_async(root: str, msg: OutMessage, rcpt: OutRcpt, hostname: str,
                                executor: Executor | None = None) -> RcptResult:
    """`deliver_maildir` in `executor` (default: the loop's), off the event loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, deliver_maildir, root, msg, rcpt, hostname)
