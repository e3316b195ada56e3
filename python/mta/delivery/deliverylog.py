"""The delivery log: one JSON line per recipient outcome. A record is one write() of a
whole line to an O_APPEND file (lines from several workers never interleave); nothing here
raises into the caller (a failure goes to `logging`, with the line)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

from mta import _native
from mta.delivery import RcptResult
from mta.delivery.classify import classify

__all__ = ["DeliveryLog", "STATUSES"]

_CLASSIFIED = ("deferred", "bounced")  # the statuses whose records carry "class"

# "deleted": an administrator removed the message (mta queue delete) before this
# recipient was delivered or bounced; no DSN is sent. "delay_notice": the sender was
# told this recipient is still deferred (bounce.delay_warning), once per message.
STATUSES = ("delivered", "deferred", "bounced", "expired", "dropped", "deleted", "delay_notice")

log = logging.getLogger(__name__)


def rfc3339(t: float) -> str:
    """UTC with milliseconds: 2024-01-02T03:04:05.678Z (the records' time, made in Rust)."""
    return _native.rfc3339(t)


class DeliveryLog:
    """Appends records to `path`, or to stderr when `path` is None. If the
    file cannot be opened, records go to stderr until `reopen()` succeeds."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd: int | None = None
        self._stderr_pending: list[str] = []
        self._open()

    @classmethod
    def on_fd(cls, fd: int | None) -> "DeliveryLog":
        """Records to an fd opened elsewhere (the delivery agent writes through the
        worker's, which was opened before privileges were dropped); None: stderr."""
        dlog = cls(None)
        dlog._fd = fd
        return dlog

    @property
    def fd(self) -> int | None:
        """The open file the records go to; None while they go to stderr."""
        return self._fd

    def _open(self) -> None:
        if self.path is None:
            return
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as e:
            self._fd = None
            log.error("delivery log %s: cannot open (%s); writing records to stderr", self.path, e)

    def reopen(self) -> None:
        """Close and open the file again (after rotation, on SIGHUP)."""
        self.close()
        self._open()

    def close(self) -> None:
        self._flush_stderr()
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError as e:
                log.error("delivery log %s: close: %s", self.path, e)

    def record(self, *, queue_id: str, recipient: str, status: str, result: RcptResult | None,
               attempt: int, arrival: float, now: float | None = None) -> None:
        """Write one line. `status` is one of STATUSES; `result` is the reply
        that decided it (None when there was none, e.g. expired or dropped)."""
        try:
            line = self.format(queue_id=queue_id, recipient=recipient, status=status,
                               result=result, attempt=attempt, arrival=arrival, now=now)
        except Exception:  # a bad argument must not stop a delivery
            log.exception("delivery log: cannot format record for %s %s", queue_id, recipient)
            return
        self._write(line)

    def delivered(self, queue_id: str, rows: list[tuple], attempts, arrival: float, now: float) -> str:
        """`record(status="delivered")` for each of `rows` (RcptResult-shaped tuples, as the
        delivery agent has them) with its attempt number, the lines written together: the
        agent logs every message it delivered, and this is the per-message path. Returns the
        lines written ("" when they could not be made), which webhooks' events are made from."""
        try:
            text = "".join([_native.delivery_log_line(now, queue_id, row[0], "delivered", int(attempt),
                                                      arrival or 0.0, *row[1:])
                            for row, attempt in zip(rows, attempts)])
        except Exception:  # a bad argument must not stop a delivery
            log.exception("delivery log: cannot format the records of %s", queue_id)
            return ""
        self._write(text)
        return text

    @staticmethod
    def format(*, queue_id: str, recipient: str, status: str, result: RcptResult | None,
               attempt: int, arrival: float, now: float | None = None) -> str:
        """The JSON line (with its newline) that `record` writes: one object, keys in
        the order time, queue_id, recipient, status, remote_host, remote_ip, reply,
        attempt, delay_s, tls, policy, tls_failure (the last three are TLS-RPT style,
        see mta.mtasts: the session's TLS, the policy applied, and the failure type), and
        on a deferred or bounced record last `class`: the reply's category
        (mta.delivery.classify; "other" without a reply). Made in Rust
        (rust/src/logline.rs): this runs once per recipient on the worker's event loop."""
        now = time.time() if now is None else now
        if result is None:
            line = _native.delivery_log_line(now, queue_id, recipient, status, int(attempt), arrival or 0.0)
        else:
            line = _native.delivery_log_line(now, queue_id, recipient, status, int(attempt), arrival or 0.0,
                                             result.code, result.enhanced, result.text, result.remote_host,
                                             result.remote_ip, result.tls, result.policy, result.tls_failure)
        if status in _CLASSIFIED:
            # Spliced in before the closing brace: a category is a plain snake_case word
            # (no escaping), and the Rust line stays the one every other record uses.
            cls = classify(result.code, result.enhanced, result.text) if result is not None else "other"
            line = f'{line[:-2]},"class":"{cls}"}}\n'
        return line

    def _flush_stderr(self) -> None:
        lines, self._stderr_pending = self._stderr_pending, []
        if lines:
            self._stderr_write("".join(lines))

    @staticmethod
    def _stderr_write(text: str) -> None:
        try:
            # Looked up each time, so a replaced sys.stderr (tests, daemons) is honoured.
            sys.stderr.write(text)
            sys.stderr.flush()
        except Exception as e:
            log.error("delivery log: stderr: %s: %s", e, text.rstrip("\n"))

    def _write(self, line: str) -> None:
        if self._fd is None:
            # stderr: the lines of one event-loop iteration go out in one write
            # (under load, a flush per record was a syscall per message).
            if not self._stderr_pending:
                try:
                    asyncio.get_running_loop().call_soon(self._flush_stderr)
                except RuntimeError:
                    self._stderr_write(line)
                    return
            self._stderr_pending.append(line)
            return
        data = line.encode("utf-8", "backslashreplace")  # a lone surrogate stays valid JSON
        try:
            n = os.write(self._fd, data)
            if n != len(data):  # only on a full disk or a signal mid-write
                raise OSError(f"short write ({n} of {len(data)} bytes)")
        except OSError as e:
            log.error("delivery log %s: %s: %s", self.path, e, line.rstrip("\n"))
