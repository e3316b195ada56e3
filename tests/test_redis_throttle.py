"""The Redis throttle backend against a real redis-server started by this module: GCRA window
bounds, slots shared by two nodes, leases of a dead node coming back, and the fallback to divided
local limits while Redis is down (and back when it returns)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from mta.delivery.shaping.redisthrottle import RedisThrottle

REDIS_SERVER = shutil.which("redis-server")
# Not a skip: scripts/test installs it, and a run without it must not pass silently.
assert REDIS_SERVER is not None, "redis-server is not installed (Debian package redis-server; scripts/test installs it)"

RATE = 200.0
INTERVAL = 1 / RATE
BURST = max(1, int(RATE * 0.5))
BATCH = max(1, min(BURST, int(RATE * 0.05)))


class ProcessLocal:
    """A minimal process-local throttle (GCRA, slot counts, flags) as the fallback."""

    def __init__(self) -> None:
        self.tat: dict[str, float] = {}
        self.slots: dict[str, int] = {}
        self.marks: dict[str, float] = {}
        self.stats: dict[str, int] = {}

    def take(self, key, interval, burst, n=1):
        now = time.monotonic()
        t = max(self.tat.get(key, 0.0), now)
        new = t + n * interval
        if new - now <= burst * interval + 1e-9:
            self.tat[key] = new
            return 0.0
        return new - burst * interval - now

    async def acquire(self, key, limit):
        if self.slots.get(key, 0) < limit:
            self.slots[key] = self.slots.get(key, 0) + 1
            return True
        return False

    def release(self, key):
        if self.slots.get(key, 0) > 0:
            self.slots[key] -= 1

    async def set_until(self, key, until):
        self.marks[key] = until

    def until(self, key):
        v = self.marks.get(key, 0.0)
        return v if v > time.time() else 0.0

    def flags(self):
        return {k: v for k, v in self.marks.items() if v > time.time()}

    async def close(self):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server on a loopback port, without persistence; stop/start keep the port."""

    def __init__(self, tmp_path) -> None:
        self.port = _free_port()
        self.dir = str(tmp_path)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def cli(self, *args: str) -> str:
        return subprocess.run(["redis-cli", "-p", str(self.port), *args], check=True,
                              capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def own_server(tmp_path):
    srv = RedisServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _key(name: str) -> str:
    return f"{name}-{os.getpid()}-{time.monotonic_ns()}"


async def _greedy(th, key, seconds):
    """Take tokens as fast as the throttle allows; the local times of the grants."""
    grants = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        wait = th.take(key, INTERVAL, BURST)
        if wait == 0.0:
            grants.append(time.monotonic())
        else:
            await asyncio.sleep(min(wait, 0.01))
    return grants


def _max_in_window(times, window):
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_rate_within_window_bound(server):
    async def main():
        th = RedisThrottle(server.url, ProcessLocal(), node="a")
        try:
            return await _greedy(th, _key("rate"), 2.0), dict(th.stats)
        finally:
            await th.close()

    grants, stats = asyncio.run(main())
    # A token is spent locally after Redis granted it, so the local count in a window can exceed
    # Redis's by at most what the reserve holds (one batch).
    for window in (0.05, 0.1, 0.25, 0.5, 1.0):
        assert _max_in_window(grants, window) <= RATE * window + BURST + BATCH, window
    # and the rate is actually reached: burst + rate * 2 s, less the start and the last waits
    assert len(grants) >= BURST + RATE * 2.0 * 0.8
    assert stats["fallbacks"] == 0


def test_two_nodes_share_the_rate(server):
    async def main():
        key = _key("shared-rate")
        a = RedisThrottle(server.url, ProcessLocal(), node="a")
        b = RedisThrottle(server.url, ProcessLocal(), node="b")
        try:
            ga, gb = await asyncio.gather(_greedy(a, key, 1.5), _greedy(b, key, 1.5))
        finally:
            await a.close()
            await b.close()
        return sorted(ga + gb)

    grants = asyncio.run(main())
    for window in (0.1, 0.5, 1.0):
        assert _max_in_window(grants, window) <= RATE * window + BURST + 2 * BATCH, window
    assert len(grants) <= BURST + RATE * 1.5 + 2 * BATCH


def test_round_trips_per_token_below_one_at_200_per_second(server):
    async def main():
        th = RedisThrottle(server.url, ProcessLocal(), node="a")
        key, taken = _key("paced"), 0
        start = time.monotonic()
        try:
            for i in range(200):  # one message every 5 ms for a second
                await asyncio.sleep(max(0.0, start + i * INTERVAL - time.monotonic()))
                while th.take(key, INTERVAL, BURST) != 0.0:
                    await asyncio.sleep(0.001)
                taken += 1
            return taken, dict(th.stats)
        finally:
            await th.close()

    taken, stats = asyncio.run(main())
    assert taken == 200
    assert stats["redis_round_trips"] / taken < 1
    # batches of 10: about one round trip per 5 tokens (refetched at half a batch), plus the loads
    assert stats["redis_round_trips"] / taken < 0.4, stats


def test_two_nodes_share_slots(server):
    async def main():
        key, limit = _key("slots"), 3
        a = RedisThrottle(server.url, ProcessLocal(), node="a")
        b = RedisThrottle(server.url, ProcessLocal(), node="b")
        try:
            got = await asyncio.gather(*[(a if i % 2 else b).acquire(key, limit)
                                         for i in range(20)])
            assert sum(got) == limit
            assert int(server.cli("ZCARD", f"mta:conn:{key}")) == limit
            held_a = a.held().get(key, 0)
            assert held_a + b.held().get(key, 0) == limit
            # churn: acquire/release from both, never above the limit in Redis
            for round_ in range(30):
                th = a if round_ % 2 else b
                if th.held().get(key):
                    th.release(key)
                    await asyncio.sleep(0.005)
                await asyncio.gather(a.acquire(key, limit), b.acquire(key, limit))
                assert int(server.cli("ZCARD", f"mta:conn:{key}")) <= limit
                assert a.held().get(key, 0) + b.held().get(key, 0) <= limit
            # release everything held by a; b can take the freed slots
            for _ in range(a.held().get(key, 0)):
                a.release(key)
            await asyncio.sleep(0.05)
            free = limit - b.held().get(key, 0)
            got = [await b.acquire(key, limit) for _ in range(free + 1)]
            assert got == [True] * free + [False]
        finally:
            await a.close()
            await b.close()
        assert int(server.cli("ZCARD", f"mta:conn:{key}")) == 0  # close releases the leases

    asyncio.run(main())


def test_reserve_tokens_expire(server):
    """Tokens fetched ahead are not spent more than 0.25 s after they were granted."""
    async def main():
        key = _key("stale")
        th = RedisThrottle(server.url, ProcessLocal(), node="a")
        try:
            assert th.take(key, INTERVAL, BURST) > 0  # empty reserve: a fetch starts
            await asyncio.sleep(0.05)
            assert th.take(key, INTERVAL, BURST) == 0.0  # from the batch of 10
            trips = th.stats["redis_round_trips"]
            await asyncio.sleep(0.3)
            assert th.take(key, INTERVAL, BURST) > 0  # the 9 left expired: fetch again
            await asyncio.sleep(0.05)
            assert th.stats["redis_round_trips"] == trips + 1
            assert th.take(key, INTERVAL, BURST) == 0.0
        finally:
            await th.close()

    asyncio.run(main())


def test_scripts_reloaded_after_script_flush(server):
    async def main():
        key = _key("flush")
        th = RedisThrottle(server.url, ProcessLocal(), node="a", lease_ttl=0.6)
        try:
            assert await th.acquire(key, 2)
            assert await _greedy(th, key, 0.05)
            server.cli("SCRIPT", "FLUSH")
            assert await th.acquire(key, 2)  # NOSCRIPT -> loaded again, still Redis
            assert int(server.cli("ZCARD", f"mta:conn:{key}")) == 2
            th.take(key + "2", INTERVAL, BURST)
            await asyncio.sleep(0.05)
            assert th.take(key + "2", INTERVAL, BURST) == 0.0
            server.cli("SCRIPT", "FLUSH")
            await asyncio.sleep(0.9)  # renewals (every 0.2 s) reload their script too
            assert int(server.cli("ZCARD", f"mta:conn:{key}")) == 2
            assert th.stats["fallbacks"] == 0
        finally:
            await th.close()

    asyncio.run(main())


NODE_SCRIPT = """
import asyncio, sys, time
from mta.delivery.shaping.redisthrottle import RedisThrottle
async def main():
    th = RedisThrottle(sys.argv[1], None, node="dead", lease_ttl=float(sys.argv[3]))
    assert await th.acquire(sys.argv[2], 1)
    print("held", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_lease_of_a_dead_node_comes_back_after_ttl(server):
    key, ttl = _key("dead"), 1.0
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    node = subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, server.url, key, str(ttl)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert node.stdout.readline().strip() == "held"

        async def main():
            th = RedisThrottle(server.url, ProcessLocal(), node="alive", lease_ttl=ttl)
            try:
                # the live node renews: still held after twice the ttl
                await asyncio.sleep(2 * ttl)
                assert not await th.acquire(key, 1)
                node.kill()
                node.wait()
                killed = time.monotonic()
                while not await th.acquire(key, 1):
                    assert time.monotonic() - killed < ttl + 1.0
                    await asyncio.sleep(0.05)
                return time.monotonic() - killed
            finally:
                await th.close()

        back_after = asyncio.run(main())
        assert back_after <= ttl + 0.5
    finally:
        node.kill()
        node.wait()


def test_flags_are_shared(server):
    async def main():
        key = _key("suspend|example.com")
        a = RedisThrottle(server.url, ProcessLocal(), node="a")
        b = RedisThrottle(server.url, ProcessLocal(), node="b")
        try:
            assert b.until(key) == 0.0
            until = time.time() + 30
            await a.set_until(key, until)
            assert a.until(key) == until  # at once on the node that set it
            deadline = time.monotonic() + 10  # refreshed once a second; generous for a loaded machine
            while b.until(key) != until:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert b.flags()[key] == until
            await a.set_until(key, 0)
            assert a.until(key) == 0.0
            while b.until(key) != 0.0:
                assert time.monotonic() < deadline + 10
                await asyncio.sleep(0.05)
            assert key not in b.flags()
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_redis_down_falls_back_then_returns(own_server, caplog):
    caplog.set_level(logging.INFO, logger="mta.delivery.shaping.redisthrottle")
    key = _key("outage")
    fallback = ProcessLocal()

    async def main():
        th = RedisThrottle(own_server.url, fallback, node="a", expected_nodes=2, timeout=0.3)
        try:
            assert await th.acquire(key, 4)
            assert int(own_server.cli("ZCARD", f"mta:conn:{key}")) == 1
            await _greedy(th, key, 0.2)
            own_server.stop()
            # calls keep answering, from the fallback with divided limits
            t0 = time.monotonic()
            grants = await _greedy(th, key, 1.0)
            assert time.monotonic() - t0 < 1.5  # nothing blocked on the dead server
            assert th.stats["fallbacks"] == 1
            # divided: rate 100/s and burst 50 for this node
            assert len(grants) <= BURST // 2 + RATE / 2 * 1.0 + 2
            assert len(grants) >= RATE / 2 * 0.7
            got = [await th.acquire(key, 4) for _ in range(3)]
            assert got == [True, True, False]  # limit 4 // 2 nodes from the fallback
            assert fallback.slots[key] == 2
            th.release(key)  # a fallback lease goes back to the fallback
            assert fallback.slots[key] == 1
            await th.set_until("slow|x", time.time() + 60)
            assert th.until("slow|x") > 0
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]
            msg = warnings[0].getMessage()
            assert f"redis at {own_server.url} unreachable" in msg
            assert "local limits divided by 2 until it returns" in msg

            own_server.start()
            deadline = time.monotonic() + 3.0
            while not any("is back" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            infos = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
            assert infos == [f"throttle: redis at {own_server.url} is back"]
            # Redis again: the lease held from before was renewed into the fresh server, the
            # slot taken from the fallback meanwhile became a lease there too (its connection
            # still counts), and a new one lands in Redis, not the fallback
            assert fallback.slots[key] == 0
            assert await th.acquire(key, 4)
            assert int(own_server.cli("ZCARD", f"mta:conn:{key}")) == 3
            assert fallback.slots[key] == 0
            assert not await th.acquire(key, 3)  # the three count against the limit
            grants = await _greedy(th, key, 0.3)
            assert grants and own_server.cli("EXISTS", f"mta:rate:{key}") == "1"
            assert th.stats["fallbacks"] == 1
            assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        finally:
            await th.close()
        assert fallback.slots[key] == 0  # close gave the fallback lease back too

    asyncio.run(main())


def test_unreachable_from_the_start(caplog):
    """Nothing listening at all: the first calls already answer from the fallback."""
    caplog.set_level(logging.INFO, logger="mta.delivery.shaping.redisthrottle")

    async def main():
        fallback = ProcessLocal()
        th = RedisThrottle(f"redis://127.0.0.1:{_free_port()}/0", fallback, node="a",
                           expected_nodes=3)
        try:
            assert await th.acquire("k", 6)
            assert fallback.slots["k"] == 1
            waits = [th.take("r", INTERVAL, BURST) for _ in range(100)]
            assert waits.count(0.0) == BURST // 3  # the divided burst, no wait yet
            th.release("k")
            assert fallback.slots["k"] == 0
            assert th.stats["fallbacks"] == 1
        finally:
            await th.close()

    asyncio.run(main())
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
