"""The Pacer (mta.delivery.shaping.pacer) over a real process throttle: waiters of a key get
tokens in arrival order on one timer per key, a refusal takes nothing, cancelled waiters give
their place up without spending a token, and keys never wait behind each other."""

from __future__ import annotations

import asyncio
import time

import pytest

from mta.delivery.shaping.pacer import Pacer
from mta.delivery.shaping.throttle import ProcessThrottle


class Counting(ProcessThrottle):
    """The real GCRA, and a record of every take and its answer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, float]] = []

    def take(self, key, interval, burst, n=1, now=None):
        wait = super().take(key, interval, burst, n, now)
        self.calls.append((key, wait))
        return wait

    def granted(self, key: str) -> int:
        return sum(1 for k, w in self.calls if k == key and w == 0.0)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_no_rate_is_always_ready_without_asking_the_throttle():
    async def main():
        th = Counting()
        p = Pacer(th)
        assert all(p.ready("k", 0.0, 1) for _ in range(100))
        await p.wait("k", 0.0, 1)
        return th.calls
    assert run(main()) == []


def test_waiters_go_in_arrival_order_at_the_rate():
    interval = 0.02

    async def main():
        th = Counting()
        p = Pacer(th)
        order: list[int] = []
        start = time.monotonic()

        async def job(i):
            await p.wait("site", interval, 1)
            order.append(i)
        tasks = []
        for i in range(10):
            tasks.append(asyncio.create_task(job(i)))
            await asyncio.sleep(0)  # each queued before the next arrives
        await asyncio.gather(*tasks)
        return order, time.monotonic() - start, th, p
    order, elapsed, th, p = run(main())
    assert order == list(range(10))
    assert elapsed >= 9 * interval * 0.9  # one token per interval after the first (burst 1)
    assert th.granted("site") == 10
    assert p.waiting("site") == 0 and p.waits == 9
    # The nine waited 1, 2, ... 9 intervals (for /metrics: mta_throttle_wait_seconds).
    assert 45 * interval * 0.9 <= p.wait_seconds <= elapsed * 9


def test_one_timer_per_key_not_one_per_waiter():
    """50 waiters on one key: each timer tick either grants the head's token or sleeps
    once for it; the throttle is asked about twice per grant, not once per waiter per tick."""
    async def main():
        th = Counting()
        p = Pacer(th)
        await asyncio.gather(*(p.wait("k", 0.005, 1) for _ in range(50)))
        return th
    th = run(main())
    assert th.granted("k") == 50
    refusals = sum(1 for _k, w in th.calls if w > 0)
    assert refusals <= 2 * 50, refusals


def test_ready_takes_nothing_while_others_wait_and_nothing_when_refused():
    async def main():
        th = Counting()
        p = Pacer(th)
        assert p.ready("k", 10.0, 1)  # the one token of the burst
        assert not p.ready("k", 10.0, 1)  # refused by the throttle: nothing taken...
        # ...so the wait it reports stays the same (a take would have pushed it out)
        first = th.take("k", 10.0, 1)
        assert first == pytest.approx(th.take("k", 10.0, 1), abs=0.05)
        waiter = asyncio.create_task(p.wait("k", 10.0, 1))
        await asyncio.sleep(0.01)
        assert p.waiting("k") == 1
        calls = len(th.calls)
        assert not p.ready("k", 0.001, 1)  # someone waits: it goes first, the throttle is not asked
        assert len(th.calls) == calls
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return th
    run(main())


def test_a_cancelled_waiter_gives_up_its_place_without_a_token():
    interval = 0.03

    async def main():
        th = Counting()
        p = Pacer(th)
        assert p.ready("k", interval, 1)
        done: list[int] = []

        async def job(i):
            await p.wait("k", interval, 1)
            done.append(i)
        tasks = [asyncio.create_task(job(i)) for i in range(5)]
        await asyncio.sleep(0)
        tasks[2].cancel()
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert done == [1, 3, 4]
        assert th.granted("k") == 1 + 3  # the ready() one and the three that went
        assert p.waiting("k") == 0
        # the key's queue is gone: a lone waiter cancelled leaves nothing behind either
        t = asyncio.create_task(p.wait("k", 5.0, 1))
        await asyncio.sleep(0.01)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        await asyncio.sleep(0)
        return p
    run(main())


def test_keys_do_not_wait_behind_each_other():
    async def main():
        th = Counting()
        p = Pacer(th)
        assert p.ready("slow", 5.0, 1)
        slow = asyncio.create_task(p.wait("slow", 5.0, 1))  # about 5 s away
        await asyncio.sleep(0)
        t0 = time.monotonic()
        for _ in range(3):
            await p.wait("fast", 0.001, 1)
        fast = time.monotonic() - t0
        assert p.waiting("slow") == 1
        slow.cancel()
        await asyncio.gather(slow, return_exceptions=True)
        return fast
    assert run(main()) < 1.0


def test_budgets_count_slot_waits_once_per_connection_with_their_time():
    from mta.delivery.shaping.budgets import Budgets
    from mta.delivery.shaping.throttle import ProcessThrottle
    from mta.delivery.smtp.client import SmtpOptions

    async def main():
        b = Budgets(ProcessThrottle())
        opts = SmtpOptions("mx.test", shape_key="default|site.test", max_connections=1)
        assert await b.slot(opts, lambda key: False)  # the one slot
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, b.free, opts.shape_key)
        assert await b.slot(opts, lambda key: False)  # waits for the release
        return b
    b = run(main())
    assert b.slot_waiters == 1 and b.slot_waits >= 1
    assert 0.15 <= b.slot_wait_seconds < 5
    series = {(n, lab["kind"]): v for n, lab, v in b.wait_series()}
    assert series[("mta_throttle_waits", "slot")] == 1 and series[("mta_throttle_waits", "token")] == 0
