"""The one throttle interface (`Throttle`) and its `local` backend: `LocalThrottle` over the
machine-wide shared-memory table, `ProcessThrottle` (the same GCRA in dicts) when there is none.
Invariant: no call fails because of the table (it falls back, logged once); ValueError = a caller's bug."""

from __future__ import annotations

import logging
import math
import time
from typing import Protocol, runtime_checkable

from mta._native import ShmThrottle, ThrottleError

__all__ = ["DEFAULT_ENTRIES", "Divided", "LocalThrottle", "ProcessThrottle", "Throttle", "divided"]

log = logging.getLogger("mta.delivery")

DEFAULT_ENTRIES = 65536


@runtime_checkable
class Throttle(Protocol):
    """Rates (GCRA: a token per `interval` seconds, at most `burst` ahead), connection
    limits and flags per key (`"<source>|<site>"`, `"suspend|<site>"`, ...)."""

    stats: dict[str, int]

    def take(self, key: str, interval: float, burst: int, n: int = 1) -> float:
        """0.0: n tokens taken now; else seconds until they could be (nothing taken)."""
        ...

    async def acquire(self, key: str, limit: int) -> bool:
        """One connection slot of key if fewer than `limit` are held; False: none free now."""
        ...

    def release(self, key: str) -> None:
        """Give back one slot this process holds (never raises)."""
        ...

    async def set_until(self, key: str, until: float) -> None:
        """A flag until wall time `until` (0: clear)."""
        ...

    def until(self, key: str) -> float:
        """The flag's wall time, 0.0 if unset or past (may be <= 1 s stale)."""
        ...

    def flags(self) -> dict[str, float]:
        """Every flag set and not past."""
        ...

    async def close(self) -> None: ...


def _ns(seconds: float) -> int:
    """As the table rounds: to the ns, and a positive duration never to 0 (0 means no rate)."""
    n = math.floor(seconds * 1e9 + 0.5)  # half away from zero, as Rust's f64::round
    return max(n, 1) if seconds > 0 else 0


class ProcessThrottle:
    """The table's answers from this process's own dicts: the same GCRA in integer ns (so
    both agree to the ns), counts and flags; limits hold per process, not per machine."""

    def __init__(self) -> None:
        self.stats: dict[str, int] = {}
        self._tat: dict[str, int] = {}
        self._held: dict[str, int] = {}
        self._until: dict[str, float] = {}

    def take(self, key: str, interval: float, burst: int, n: int = 1, now: float | None = None) -> float:
        """As `ShmThrottle.take`; `now` (time.monotonic() seconds) for tests."""
        if not (math.isfinite(interval) and interval >= 0):
            raise ValueError("interval must be a finite number of seconds >= 0")
        if n < 0:
            raise ValueError("n must be >= 0")
        step = _ns(interval)
        if n == 0 or step == 0:
            return 0.0
        if burst < 1:
            raise ValueError("burst must be at least 1")
        if n > burst:
            raise ValueError("n must not exceed burst (it could never be granted)")
        t = _ns(time.monotonic() if now is None else now)
        new = max(self._tat.get(key, 0), t) + n * step
        tolerance = burst * step
        if new - t > tolerance:
            return (new - tolerance - t) / 1e9
        self._tat[key] = new
        return 0.0

    def acquire_now(self, key: str, limit: int) -> bool:
        """`acquire` without the coroutine."""
        held = self._held.get(key, 0)
        if held >= limit:
            return False
        self._held[key] = held + 1
        return True

    async def acquire(self, key: str, limit: int) -> bool:
        return self.acquire_now(key, limit)

    def release(self, key: str) -> None:
        held = self._held.get(key, 0)
        if held > 1:
            self._held[key] = held - 1
        elif held == 1:
            del self._held[key]

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def clear_slot(self) -> int:
        """Forget every connection held (this process's slot is all of it); how many."""
        freed = sum(self._held.values())
        self._held.clear()
        return freed

    def set_until_now(self, key: str, until: float) -> None:
        """`set_until` without the coroutine."""
        if until > 0:
            self._until[key] = until
        else:
            self._until.pop(key, None)

    async def set_until(self, key: str, until: float) -> None:
        self.set_until_now(key, until)

    def until(self, key: str) -> float:
        until = self._until.get(key, 0.0)
        return until if until > time.time() else 0.0

    def flags(self) -> dict[str, float]:
        now = time.time()
        return {k: v for k, v in self._until.items() if v > now}

    async def close(self) -> None:
        return None


class LocalThrottle:
    """The `local` backend: the machine-wide table at `path` (worker slot `slot`, 0..63),
    or a `ProcessThrottle` when `path` is None. A table that cannot be opened, or is full
    for a new key, sends the call to the `ProcessThrottle` (logged once; `stats["fallbacks"]`)."""

    def __init__(self, path: str | None, slot: int, *, entries: int = DEFAULT_ENTRIES,
                 fresh: bool = False) -> None:
        self.stats: dict[str, int] = {"fallbacks": 0}
        self.local = ProcessThrottle()
        self.shm: ShmThrottle | None = None
        self._warned = False
        self._spilled = False  # something went to `local` although there is a table
        if path is not None:
            try:
                self.shm = ShmThrottle(path, slot, entries, fresh)
            except (ThrottleError, OSError) as e:
                self._fell_back(e)

    def _fell_back(self, e: Exception) -> None:
        self.stats["fallbacks"] += 1
        self._spilled = True
        if not self._warned:
            self._warned = True
            log.warning("throttle table unusable, limits now hold per process for what it cannot take: %s", e)

    def take(self, key: str, interval: float, burst: int, n: int = 1, now: float | None = None) -> float:
        """As `Throttle.take`; `now` (time.monotonic() seconds) for tests."""
        shm = self.shm
        if shm is not None:
            try:
                if now is None:
                    return shm.take(key, interval, burst, n)
                return shm.take(key, interval, burst, n, now)
            except ThrottleError as e:
                self._fell_back(e)
        return self.local.take(key, interval, burst, n, now)

    def acquire_now(self, key: str, limit: int) -> bool:
        """`acquire` without the coroutine (it never waits)."""
        shm = self.shm
        if shm is not None:
            try:
                return shm.acquire(key, limit)
            except ThrottleError as e:
                self._fell_back(e)
        return self.local.acquire_now(key, limit)

    async def acquire(self, key: str, limit: int) -> bool:
        return self.acquire_now(key, limit)

    def release(self, key: str) -> None:
        try:
            # A key without a table entry stays without one, so its slots are all in `local`.
            if self.shm is None or (self._spilled and self.local.held(key)):
                self.local.release(key)
            else:
                self.shm.release(key)
        except Exception:  # never raises: a lost release only makes the limit stricter
            log.exception("throttle release of %r failed", key)

    def held(self, key: str) -> int:
        """Connections of `key` held: machine-wide from the table, plus this process's spilled ones."""
        held = self.local.held(key) if self._spilled or self.shm is None else 0
        return held + (self.shm.held(key) if self.shm is not None else 0)

    def clear_slot(self) -> int:
        """Give back what this slot held (its previous process died, or at start); how many."""
        freed = self.local.clear_slot()
        if self.shm is not None:
            freed += self.shm.clear_slot()
        return freed

    def set_until_now(self, key: str, until: float) -> None:
        """`set_until` without the coroutine."""
        shm = self.shm
        if shm is not None:
            try:
                shm.set_until(key, until)
                return
            except ThrottleError as e:
                self._fell_back(e)
        self.local.set_until_now(key, until)

    async def set_until(self, key: str, until: float) -> None:
        self.set_until_now(key, until)

    def until(self, key: str) -> float:
        if self.shm is None:
            return self.local.until(key)
        until = self.shm.until(key)
        return until or (self.local.until(key) if self._spilled else 0.0)

    def flags(self) -> dict[str, float]:
        found = self.local.flags()
        if self.shm is not None:
            found.update(self.shm.flags())
        return found

    async def close(self) -> None:
        # The mapping goes with the object; slots still held stay counted until the
        # successor's clear_slot or the next server start's fresh table.
        return None


class Divided:
    """A throttle whose limits and rates are 1/`nodes` of those asked: each node's share
    of a cluster budget while the cluster's store (Redis) is unreachable."""

    def __init__(self, inner: Throttle, nodes: int) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        self.inner = inner
        self.nodes = nodes

    @property
    def stats(self) -> dict[str, int]:
        return self.inner.stats

    def take(self, key: str, interval: float, burst: int, n: int = 1) -> float:
        """n must not exceed max(1, burst // nodes), the burst actually used."""
        return self.inner.take(key, interval * self.nodes, max(1, burst // self.nodes), n)

    async def acquire(self, key: str, limit: int) -> bool:
        return await self.inner.acquire(key, max(1, limit // self.nodes) if limit > 0 else 0)

    def release(self, key: str) -> None:
        self.inner.release(key)

    async def set_until(self, key: str, until: float) -> None:
        await self.inner.set_until(key, until)

    def until(self, key: str) -> float:
        return self.inner.until(key)

    def flags(self) -> dict[str, float]:
        return self.inner.flags()

    async def close(self) -> None:
        await self.inner.close()


def divided(throttle: Throttle, nodes: int) -> Divided:
    """`throttle` with limit -> max(1, limit // nodes), interval -> interval * nodes and
    burst -> max(1, burst // nodes) (the Redis backend's fallback on a cluster of `nodes`)."""
    return Divided(throttle, nodes)
