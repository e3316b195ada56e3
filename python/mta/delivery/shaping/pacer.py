"""Ready queues in front of a throttle's rate budgets: per key, the jobs that wait for a
token go in arrival order as the budget allows, on one timer per waiting key (no polling
per job). With nobody waiting and a token at hand, a job pays one throttle call."""

from __future__ import annotations

import asyncio
from collections import deque

# What a waiting key's timer sleeps at least: a throttle that answers "0.0 but later" (a
# Redis reserve being refilled) must not spin the loop.
_MIN_SLEEP = 0.001


class Pacer:
    """`ready(key, ...)` for the callback paths (a token now, or False with nothing
    taken); `wait(key, ...)` for coroutines. `interval` <= 0 means no rate: always ready."""

    def __init__(self, throttle) -> None:
        self.throttle = throttle
        self._queues: dict[str, deque[asyncio.Future]] = {}
        self._params: dict[str, tuple[float, int]] = {}  # key -> the latest (interval, burst)
        self.waits = 0  # jobs that had to queue for a token (counters for stats and tests)
        self.wait_seconds = 0.0  # their time in the queue, counted when each ends (/metrics)

    def ready(self, key: str, interval: float, burst: int) -> bool:
        """A token of `key` taken now; False (nothing taken) when one is not at hand or
        others wait for one already (they go first)."""
        if interval <= 0.0:
            return True
        if key in self._queues:
            return False
        return self.throttle.take(key, interval, burst) == 0.0

    def waiting(self, key: str) -> int:
        q = self._queues.get(key)
        return len(q) if q else 0

    async def wait(self, key: str, interval: float, burst: int) -> None:
        """Return when a token of `key` is taken for the caller, after those queued before it."""
        if self.ready(key, interval, burst):
            return
        self.waits += 1
        loop = asyncio.get_running_loop()
        began = loop.time()
        fut = loop.create_future()
        self._params[key] = (interval, burst)
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
            q.append(fut)
            self._tick(key)
        else:
            q.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if not fut.cancelled() and fut.done():
                # Given a token, then cancelled: the token is spent (a throttle cannot
                # give one back), which errs on the slow side.
                pass
            raise
        finally:
            self.wait_seconds += loop.time() - began

    def _tick(self, key: str) -> None:
        q = self._queues.get(key)
        interval, burst = self._params[key]
        while q:
            if q[0].done():  # cancelled while waiting
                q.popleft()
                continue
            wait = self.throttle.take(key, interval, burst)
            if wait > 0.0:
                asyncio.get_running_loop().call_later(max(wait, _MIN_SLEEP), self._tick, key)
                return
            q.popleft().set_result(None)
        self._queues.pop(key, None)
        self._params.pop(key, None)
