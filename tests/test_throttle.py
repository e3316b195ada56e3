"""The throttle interface on both local implementations (the shared-memory table and the
per-process dicts), the table shared by processes (limits across them, clear_slot after a
death) and the GCRA bound as a property: tokens in any window <= rate * window + burst."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import os
import signal
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mta._native import ShmThrottle, ThrottleError
from mta.delivery.shaping.throttle import (
    LocalThrottle,
    ProcessThrottle,
    Throttle,
    divided,
)

T0 = 1000.0  # a monotonic "now" for the tests that pass one


@pytest.fixture(params=["table", "process"])
def throttle(request, tmp_path):
    if request.param == "table":
        t = LocalThrottle(str(tmp_path / "throttle"), 0, entries=1024, fresh=True)
        assert t.shm is not None
        return t
    return ProcessThrottle()


def test_both_are_throttles(throttle):
    assert isinstance(throttle, Throttle)
    assert isinstance(divided(throttle, 2), Throttle)
    assert isinstance(throttle.stats, dict)


def test_take_burst_then_rate(throttle):
    # 10/s, burst 5: five at once, then one per 0.1 s; a refusal takes nothing.
    assert [throttle.take("s|a", 0.1, 5, 1, now=T0) for _ in range(5)] == [0.0] * 5
    assert throttle.take("s|a", 0.1, 5, 1, now=T0) == pytest.approx(0.1)
    assert throttle.take("s|a", 0.1, 5, 2, now=T0 + 0.05) == pytest.approx(0.15)
    assert throttle.take("s|a", 0.1, 5, 1, now=T0 + 0.1) == 0.0
    assert throttle.take("s|a", 0.1, 5, 3, now=T0 + 0.4) == 0.0
    assert throttle.take("s|a", 0.1, 5, 1, now=T0 + 0.4) == pytest.approx(0.1)
    assert throttle.take("s|b", 0.1, 5, 5, now=T0) == 0.0, "another key, another budget"
    assert throttle.take("s|a", 0.0, 1, 100) == 0.0, "interval 0: no rate"
    assert throttle.take("s|c", 0.5, 1) == 0.0, "the real clock by default"
    assert throttle.take("s|c", 0.5, 1) > 0.4
    with pytest.raises(ValueError):
        throttle.take("s|a", 0.1, 2, 3)
    with pytest.raises(ValueError):
        throttle.take("s|a", 0.1, 0, 1)
    with pytest.raises(ValueError):
        throttle.take("s|a", -1.0, 1, 1)


def test_acquire_release(throttle):
    async def run():
        assert [await throttle.acquire("s|a", 2) for _ in range(3)] == [True, True, False]
        assert await throttle.acquire("s|b", 2)
        throttle.release("s|a")
        assert await throttle.acquire("s|a", 2)
        assert not await throttle.acquire("s|a", 2)
        for _ in range(4):
            throttle.release("s|a")  # more releases than held: never below zero
        throttle.release("never|seen")
        assert throttle.held("s|a") == 0
        assert [await throttle.acquire("s|a", 2) for _ in range(3)] == [True, True, False]
        assert not await throttle.acquire("s|z", 0)
        assert throttle.clear_slot() == 3
        assert throttle.held("s|a") == 0
        await throttle.close()

    asyncio.run(run())


def test_flags(throttle):
    async def run():
        now = time.time()
        await throttle.set_until("suspend|a", now + 60)
        await throttle.set_until("slow|b", now + 30)
        await throttle.set_until("slow|old", now - 1)
        await throttle.set_until("slow|b", 0)
        assert throttle.until("suspend|a") == pytest.approx(now + 60)
        assert throttle.until("slow|b") == 0.0
        assert throttle.until("slow|old") == 0.0, "past"
        assert throttle.until("never|set") == 0.0
        assert throttle.flags() == {"suspend|a": pytest.approx(now + 60)}

    asyncio.run(run())


def test_local_throttle_falls_back_when_the_table_cannot_be_opened(tmp_path, caplog):
    bad = tmp_path / "not-a-table"
    bad.write_bytes(b"x" * 100)
    t = LocalThrottle(str(bad), 1)
    assert t.shm is None and t.stats["fallbacks"] == 1
    assert "throttle table unusable" in caplog.text
    assert t.acquire_now("k", 1) and not t.acquire_now("k", 1)
    t.release("k")
    assert t.acquire_now("k", 1)
    assert LocalThrottle(None, 0).stats["fallbacks"] == 0, "no table asked: not a fallback"


def test_local_throttle_falls_back_per_key_when_the_table_is_full(tmp_path, caplog):
    t = LocalThrottle(str(tmp_path / "t"), 0, entries=2, fresh=True)
    assert t.acquire_now("a", 1) and t.acquire_now("b", 1)
    assert t.stats["fallbacks"] == 0
    # "c" has no room: answered by this process's dicts, never wrongly, never an exception.
    assert t.acquire_now("c", 1) and not t.acquire_now("c", 1)
    assert t.take("c", 0.1, 1, now=T0) == 0.0 and t.take("c", 0.1, 1, now=T0) > 0
    t.set_until_now("suspend|c", time.time() + 10)
    assert t.until("suspend|c") > 0 and "suspend|c" in t.flags()
    assert t.stats["fallbacks"] == 5  # two acquires, two takes, one flag
    assert caplog.text.count("throttle table unusable") == 1, "logged once"
    t.release("c")
    assert t.held("c") == 0 and t.acquire_now("c", 1)
    assert not t.acquire_now("a", 1), "keys in the table still answer from it"
    with pytest.raises(ThrottleError):
        ShmThrottle(str(tmp_path / "t"), 0)  # 65536 entries asked: not this file


def test_divided():
    inner = ProcessThrottle()
    d = divided(inner, 3)

    async def run():
        assert [await d.acquire("k", 7) for _ in range(3)] == [True, True, False]  # 7 // 3
        assert [await d.acquire("one", 2) for _ in range(2)] == [True, False]  # at least 1
        assert not await d.acquire("none", 0)
        d.release("k")
        assert inner.held("k") == 1
        await d.set_until("suspend|x", time.time() + 5)
        assert d.until("suspend|x") > 0 and list(d.flags()) == ["suspend|x"]
        await d.close()

    asyncio.run(run())
    # 30/s burst 15 on 3 nodes: 10/s burst 5.
    assert [d.take("r", 1 / 30, 15) for _ in range(6)][4:] == [0.0, pytest.approx(0.1, abs=0.01)]
    with pytest.raises(ValueError):
        d.take("r2", 1 / 30, 15, 6)  # more than the divided burst
    assert d.stats is inner.stats


# --- several processes on one table --------------------------------------------------------

_CTX = multiprocessing.get_context("fork")


def _hammer(path, slot, limit, rounds, inside, worst, lock, granted):
    t = LocalThrottle(path, slot)
    assert t.shm is not None
    for _ in range(rounds):
        if t.acquire_now("s|site", limit):
            with lock:
                inside.value += 1
                worst.value = max(worst.value, inside.value)
                granted.value += 1
            time.sleep(0)
            with lock:
                inside.value -= 1
            t.release("s|site")
    os._exit(0)


def test_acquire_across_processes_never_exceeds_the_limit(tmp_path):
    path = str(tmp_path / "t")
    LocalThrottle(path, 0, fresh=True)
    inside, worst, granted = _CTX.Value("i", 0), _CTX.Value("i", 0), _CTX.Value("i", 0)
    lock = _CTX.Lock()
    procs = [_CTX.Process(target=_hammer, args=(path, slot, 3, 3000, inside, worst, lock, granted))
             for slot in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert 0 < worst.value <= 3
    assert granted.value > 0
    assert ShmThrottle(path, 0).held("s|site") == 0


def _take_for(path, slot, seconds, granted, lock):
    t = LocalThrottle(path, slot)
    end = time.monotonic() + seconds
    got = 0
    while time.monotonic() < end:
        if t.take("s|rate", 0.002, 5, 1 + slot % 2) == 0.0:
            got += 1 + slot % 2
    with lock:
        granted.value += got
    os._exit(0)


def test_take_across_processes_never_exceeds_the_rate(tmp_path):
    path = str(tmp_path / "t")
    LocalThrottle(path, 0, fresh=True)
    granted, lock = _CTX.Value("i", 0), _CTX.Lock()
    start = time.monotonic()
    procs = [_CTX.Process(target=_take_for, args=(path, slot, 0.3, granted, lock)) for slot in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    elapsed = time.monotonic() - start
    assert granted.value <= 5 + elapsed / 0.002 + 1e-6
    assert granted.value > 0.3 / 0.002 / 2, "the rate is mostly used"


def _hold_and_die(path, slot, ready):
    t = LocalThrottle(path, slot)
    assert t.acquire_now("s|site", 5) and t.acquire_now("s|site", 5) and t.acquire_now("s|other", 5)
    ready.set()
    os.kill(os.getpid(), signal.SIGKILL)


def test_clear_slot_gives_back_what_a_killed_process_held(tmp_path):
    path = str(tmp_path / "t")
    mine = LocalThrottle(path, 0, fresh=True)
    assert mine.acquire_now("s|site", 5)
    ready = _CTX.Event()
    p = _CTX.Process(target=_hold_and_die, args=(path, 3, ready))
    p.start()
    p.join(30)
    assert ready.is_set() and p.exitcode == -signal.SIGKILL
    assert mine.held("s|site") == 3 and mine.held("s|other") == 1
    assert [mine.acquire_now("s|site", 5) for _ in range(3)] == [True, True, False]
    successor = LocalThrottle(path, 3)
    assert successor.clear_slot() == 3
    assert mine.held("s|site") == 3 and mine.held("s|other") == 0, "slot 0's own stay held"
    assert [mine.acquire_now("s|site", 5) for _ in range(3)] == [True, True, False]


# --- the GCRA bound, as a property ---------------------------------------------------------

_keys = itertools.count()


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("throttle") / "t")
    LocalThrottle(path, 0, fresh=True)
    return path


requests = st.lists(st.tuples(st.integers(0, 3_000_000_000), st.integers(1, 8)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(interval_ns=st.sampled_from([1_000_000, 3_333_333, 100_000_000, 1_000_000_000]),
       burst=st.integers(1, 8), steps=requests)
def test_tokens_in_any_window_within_rate_times_window_plus_burst(table_path, interval_ns, burst, steps):
    shm, process = LocalThrottle(table_path, 0), ProcessThrottle()
    key = f"s|prop{next(_keys)}"
    interval = interval_ns / 1e9
    now = 1_000_000_000_000  # ns
    granted: list[tuple[int, int]] = []
    for step, n in steps:
        now += step
        n = min(n, burst)
        wait = shm.take(key, interval, burst, n, now=now / 1e9)
        assert wait == process.take(key, interval, burst, n, now=now / 1e9), "both agree"
        assert wait >= 0.0
        if wait == 0.0:
            granted.append((now, n))
    # Windows between two grants are the worst ones: tokens * interval <= length + burst * interval.
    for i in range(len(granted)):
        tokens = 0
        for j in range(i, len(granted)):
            tokens += granted[j][1]
            assert tokens * interval_ns <= granted[j][0] - granted[i][0] + burst * interval_ns
