"""AUTH failure accounting: a sliding window per client IP and per user name, the
tarpit delay and the block. Invariants: memory is bounded (max_keys, and per key);
users are slowed, never blocked; a password is never logged."""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable

from mta.auth.users import printable

log = logging.getLogger("mta.auth")


class AuthGuard:
    """Counts AUTH failures in a sliding window, per client IP and per user name.
    delay(): tarpit before the 535, 1 s, 2 s, 4 s ... up to tarpit_max, driven by
    the larger of the two counts. blocked(ip): max_failures reached for that IP
    (the session answers 421 4.7.0 and closes). Users are slowed, never blocked,
    so that a stranger cannot lock a user out. In-process (one per worker);
    memory is bounded by max_keys (the stalest keys are dropped first)."""

    def __init__(self, *, max_failures: int = 5, window: float = 600.0, tarpit_max: float = 8.0,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self.max_failures = max_failures
        self.window = window
        self.tarpit_max = tarpit_max
        self.clock = clock
        self.max_keys = max_keys
        self._ips: dict[str, deque] = {}
        self._users: dict[str, deque] = {}

    def _count(self, table: dict[str, deque], key: str, now: float) -> int:
        q = table.get(key)
        if q is None:
            return 0
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del table[key]
            return 0
        return len(q)

    def _add(self, table: dict[str, deque], key: str, now: float) -> int:
        q = table.pop(key, None)
        if q is None:
            q = deque()
        while q and q[0] <= now - self.window:
            q.popleft()
        q.append(now)
        if len(q) > 4 * self.max_failures + 8:  # enough to decide; bounded per key
            q.popleft()
        table[key] = q  # re-inserted: dict order is least recently failed first
        while len(table) > self.max_keys:
            del table[next(iter(table))]
        return len(q)

    def failures(self, ip: str, user: str | None = None) -> tuple[int, int]:
        now = self.clock()
        return self._count(self._ips, ip, now), (self._count(self._users, user, now) if user else 0)

    def failed(self, ip: str, user: str | None, mechanism: str = "") -> None:
        """Record one failure and log it (user name and IP; never the password)."""
        now = self.clock()
        n_ip = self._add(self._ips, ip, now)
        n_user = self._add(self._users, user, now) if user else 0
        log.warning("authentication failed: ip=%s user=%r mechanism=%s failures ip=%d user=%d",
                    ip, printable(user or ""), mechanism or "-", n_ip, n_user)

    def succeeded(self, ip: str, user: str) -> None:
        """A good login clears the user's count (the IP's stays: one valid account
        must not reset a guessing client's record)."""
        self._users.pop(user, None)
        log.info("authenticated: ip=%s user=%r", ip, printable(user))

    def delay(self, ip: str, user: str | None = None) -> float:
        """Seconds to wait before answering a failed AUTH: 0 with no failures."""
        n = max(self.failures(ip, user))
        if n == 0 or self.tarpit_max <= 0:
            return 0.0
        return min(2.0 ** min(n - 1, 30), self.tarpit_max)

    def blocked(self, ip: str) -> bool:
        return self.failures(ip)[0] >= self.max_failures
