"""Abuse limits: connections (in all, per IP, per minute per IP) and, per session,
messages, recipients, commands, the error tarpit and the minimum data rate. Every
counter is bounded; a delay never blocks the event loop. Counters are per worker."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from typing import Callable

from mta.config.schema import LimitsConfig
from mta.smtp.replies import (R_TOO_MANY_COMMANDS, R_TOO_MANY_CONNECTIONS, R_TOO_MANY_MESSAGES,
                              R_TOO_MANY_SESSION_RCPTS, R_TOO_SLOW, too_fast_from, too_many_from)

RATE_WINDOW = 60.0  # connection_rate_per_ip is per minute
_PRUNE_AT = 10_000  # IPs in the rate table before stale ones are swept


# A cluster-wide throttle would sit behind `Limits` (its counters are per worker process).
class Limits:
    """Server-wide (per worker) connection accounting."""

    def __init__(self, cfg: LimitsConfig):
        self.cfg = cfg
        self.total = 0
        self.per_ip: dict[str, int] = {}
        self._attempts: dict[str, deque] = {}

    def applies(self, trusted: bool) -> bool:
        return self.cfg.apply_to_mynetworks or not trusted

    def admit(self, ip: str, limited: bool) -> bytes | None:
        """Count a new session; a 421 reply (and no count) if it is refused.
        Every session counts towards the totals; only limited ones are refused."""
        cfg = self.cfg
        if limited:
            if cfg.connection_rate_per_ip and self._too_fast(ip, cfg.connection_rate_per_ip):
                return too_fast_from(ip)
            if cfg.max_connections and self.total >= cfg.max_connections:
                return R_TOO_MANY_CONNECTIONS
            if cfg.max_connections_per_ip and self.per_ip.get(ip, 0) >= cfg.max_connections_per_ip:
                return too_many_from(ip)
        self.total += 1
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        n = self.per_ip.get(ip, 0) - 1
        if n > 0:
            self.per_ip[ip] = n
        else:
            self.per_ip.pop(ip, None)

    def _too_fast(self, ip: str, rate: int) -> bool:
        now = time.monotonic()
        attempts = self._attempts.get(ip)
        if attempts is None:
            if len(self._attempts) >= _PRUNE_AT:
                self._prune(now)
            attempts = self._attempts[ip] = deque(maxlen=rate)
        while attempts and now - attempts[0] >= RATE_WINDOW:
            attempts.popleft()
        over = len(attempts) >= rate
        attempts.append(now)  # refused attempts count too, as Postfix's anvil does
        return over

    def _prune(self, now: float) -> None:
        stale = [ip for ip, a in self._attempts.items() if not a or now - a[-1] >= RATE_WINDOW]
        for ip in stale:
            del self._attempts[ip]


class SessionGuard:
    """One session's limits. `on` is False for clients the limits spare."""

    __slots__ = ("cfg", "on", "counted_ip", "rcpts", "commands_free", "rate_on", "timer", "_bytes", "_on_slow")

    def __init__(self, cfg: LimitsConfig):
        self.cfg = cfg
        self.on = False
        self.counted_ip: str | None = None  # set once Limits.admit counted the session
        self.rcpts = 0
        # What the session may read without a call (a call per command or read was
        # measurable): `command` refuses nothing up to this count, `data_started` does
        # nothing unless `rate_on`, and while `timer` is None no data rate is measured
        # (data_bytes and data_stopped have nothing to do).
        self.commands_free = sys.maxsize
        self.rate_on = False
        self.timer: asyncio.TimerHandle | None = None
        self._bytes = 0
        self._on_slow: Callable[[bytes], None] | None = None

    def enable(self, on: bool) -> None:
        """The limits apply to this session (or spare it)."""
        self.on = on
        n = self.cfg.max_commands
        self.commands_free = n if on and n else sys.maxsize
        self.rate_on = on and bool(self.cfg.min_data_rate)

    # --- per-session counters: each returns the refusal, or None ---------

    def command(self, count: int) -> bytes | None:
        n = self.cfg.max_commands
        return R_TOO_MANY_COMMANDS if self.on and n and count > n else None

    def mail(self, messages: int) -> bytes | None:
        n = self.cfg.max_messages_per_connection
        return R_TOO_MANY_MESSAGES if self.on and n and messages >= n else None

    def rcpt(self) -> bytes | None:
        n = self.cfg.max_recipients_per_connection
        return R_TOO_MANY_SESSION_RCPTS if self.on and n and self.rcpts >= n else None

    def error_delay(self, errors: int) -> float:
        """Seconds to hold the reply to the `errors`-th error (0: none)."""
        if self.on and self.cfg.error_tarpit > 0 and errors > self.cfg.soft_error_limit:
            return self.cfg.error_tarpit
        return 0.0

    # --- minimum data rate (slowloris) ---------------------------------------

    def data_started(self, on_slow: Callable[[bytes], None]) -> None:
        """DATA or a BDAT transaction began; idempotent across BDAT chunks."""
        if not self.on or not self.cfg.min_data_rate or self.timer is not None:
            return
        self._bytes = 0
        self._on_slow = on_slow
        self.timer = asyncio.get_running_loop().call_later(self.cfg.data_rate_window, self._tick)

    def data_bytes(self, n: int) -> None:
        if self.timer is not None:
            self._bytes += n

    def data_stopped(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._on_slow = None

    def _tick(self) -> None:
        window = self.cfg.data_rate_window
        if self._bytes / window < self.cfg.min_data_rate:
            on_slow = self._on_slow
            self.timer = None
            self._on_slow = None
            if on_slow is not None:
                on_slow(R_TOO_SLOW)
            return
        self._bytes = 0
        self.timer = asyncio.get_running_loop().call_later(window, self._tick)
