"""The `redis` throttle backend: GCRA rates, connection-slot leases and flags shared by every node.
Invariant: no call ever raises or blocks on Redis; while Redis is unreachable the answers come
from the local fallback with limits divided by the expected node count."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from mta.delivery.shaping.throttle import divided

if TYPE_CHECKING:
    from mta.delivery.shaping.throttle import Throttle

log = logging.getLogger(__name__)

# GCRA in microseconds of the server's clock, so that nodes with skewed clocks still agree.
# Grants the largest k <= n that fits; the wait is until the n - k missing tokens would fit, so
# a client that honours it comes back for a whole batch rather than one token per round trip.
_RATE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allow = burst * interval
local k = math.floor((allow - (tat - now)) / interval + 1e-9)
if k > n then k = n end
if k < 0 then k = 0 end
if k > 0 then
  tat = tat + k * interval
  redis.call('SET', KEYS[1], string.format('%.3f', tat),
             'PX', math.ceil((tat - now) / 1000) + 1000)
end
local wait = 0
if k < n then wait = tat + (n - k) * interval - allow - now end
if wait < 0 then wait = 0 end
return {k, math.ceil(wait)}
"""

# Leases: a sorted set scored by expiry (ms of the server's clock); expired members are
# dropped before counting, which is how a dead node's slots come back.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  return 1
end
return 0
"""

# Renewal re-adds rather than only updating: a lease lost with a restarted Redis still stands
# for a connection this node holds, so it must count again.
_RENEW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return #ARGV - 1
"""

_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)
_FLAGS_KEY = "mta:until"
_DEFAULT_WAIT = 0.001  # a refill is on its way (a loopback round trip is ~0.2 ms)
_REFILL_BEFORE = 0.1  # a batch this close to expiring has its successor fetched ahead
_RESERVE_TTL_MAX = 0.25


class _Reserve:
    """Tokens of one key granted by Redis ahead of use, in batches that expire."""

    __slots__ = ("batches", "refilling", "not_before", "last_wait")

    def __init__(self) -> None:
        self.batches: collections.deque[list[float]] = collections.deque()  # [tokens, expires]
        self.refilling = False
        self.not_before = 0.0  # monotonic: Redis said no tokens before then
        self.last_wait = 0.0

    def count(self, now: float) -> int:
        while self.batches and self.batches[0][1] <= now:
            self.batches.popleft()
        return int(sum(b[0] for b in self.batches))

    def expiring(self, now: float) -> bool:
        """The tokens at hand run out of time soon."""
        return not self.batches or self.batches[-1][1] - now < _REFILL_BEFORE

    def spend(self, n: int) -> None:
        while n:
            head = self.batches[0]
            used = min(n, int(head[0]))
            head[0] -= used
            n -= used
            if not head[0]:
                self.batches.popleft()


class RedisThrottle:
    """The Throttle interface over Redis (see the module docstring). Sync methods must be called
    from the event loop's thread: they start their Redis work as tasks on it."""

    def __init__(self, url: str, fallback: Throttle, *, node: str, expected_nodes: int = 1,
                 lease_ttl: float = 30.0, timeout: float = 0.5, loop=None) -> None:
        self.url = url
        self.node = node
        self.expected_nodes = max(1, int(expected_nodes))
        self.lease_ttl = float(lease_ttl)
        self.timeout = float(timeout)
        self.fallback = fallback
        self.divided = divided(fallback, self.expected_nodes)
        self.stats: dict[str, int] = {
            "redis_round_trips": 0, "fallbacks": 0, "reserve_hits": 0, "tokens_granted": 0,
            "redis_errors": 0,
        }
        self._loop = loop
        # A blocking pool: with the default one, more concurrent calls than its connections
        # raise "Too many connections", which would read as Redis being unreachable.
        self._client = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            url, max_connections=64, timeout=None, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, decode_responses=True))
        self._sha: dict[str, str] = {}
        self._up = True
        self._reserves: dict[str, _Reserve] = {}
        # key -> stack of leases: a member name (held in Redis) or None (held by the fallback)
        self._leases: dict[str, list[str | None]] = {}
        self._lease_seq = 0
        self._flags: dict[str, float] = {}
        self._flags_set = 0  # set_until calls ended: a refresh that raced one is dropped
        self._flag_writes = 0  # set_until calls in flight
        self._tasks: set[asyncio.Task] = set()
        self._runner: asyncio.Task | None = None
        self._closed = False

    # -- plumbing -----------------------------------------------------------------------

    def _get_loop(self) -> asyncio.AbstractEventLoop | None:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return None
        return self._loop

    def _spawn(self, coro) -> bool:
        loop = self._get_loop()
        if loop is None or self._closed:
            coro.close()
            return False
        self._start()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    def _start(self) -> None:
        if self._runner is None and not self._closed:
            loop = self._get_loop()
            if loop is not None:
                self._runner = loop.create_task(self._run())

    async def _call(self, fn, *args) -> Any:
        """One round trip, bounded by the timeout; a connection failure switches to the fallback."""
        self.stats["redis_round_trips"] += 1
        try:
            return await asyncio.wait_for(fn(*args), self.timeout)
        except _UNREACHABLE as exc:
            self._go_down(exc)
            raise

    async def _script(self, name: str, source: str, keys: list[str], args: list) -> Any:
        # The SHA is known without asking: concurrent first calls must not each load it.
        sha = self._sha.get(name)
        if sha is None:
            sha = self._sha[name] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self._call(self._client.evalsha, sha, len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted or SCRIPT FLUSH: load it again, once
            self._sha[name] = await self._call(self._client.script_load, source)
            return await self._call(self._client.evalsha, self._sha[name], len(keys), *keys, *args)

    def _go_down(self, exc: BaseException) -> None:
        if not self._up:
            return
        self._up = False
        self.stats["fallbacks"] += 1
        self._reserves.clear()  # tokens granted before the outage are not to be trusted later
        log.warning("throttle: redis at %s unreachable (%s): local limits divided by %d until it "
                    "returns", self.url, str(exc) or exc.__class__.__name__,
                    self.expected_nodes)

    def _other_error(self, what: str, exc: BaseException) -> None:
        self.stats["redis_errors"] += 1
        log.debug("throttle: redis %s failed: %r", what, exc)

    async def _run(self) -> None:
        """Background: lease renewal every lease_ttl/3, the flags cache every second and, while
        Redis is unreachable, a probe every second."""
        renew_every = self.lease_ttl / 3
        tick = min(1.0, renew_every)
        next_renew = next_flags = time.monotonic()
        while not self._closed:
            now = time.monotonic()
            try:
                if not self._up:
                    if now >= next_flags:
                        next_flags = now + 1.0
                        await self._probe()
                else:
                    if now >= next_renew:
                        next_renew = now + renew_every
                        await self._renew()
                    if self._up and now >= next_flags:
                        next_flags = now + 1.0
                        await self._refresh_flags()
            except _UNREACHABLE:
                pass  # already switched to the fallback by _call
            except RedisError as exc:
                self._other_error("maintenance", exc)
            await asyncio.sleep(tick)

    async def _probe(self) -> None:
        self.stats["redis_round_trips"] += 1
        try:
            await asyncio.wait_for(self._client.ping(), self.timeout)
        except (*_UNREACHABLE, RedisError):
            return
        self._sha.clear()  # a restarted server has no scripts
        # Slots taken from the fallback meanwhile stand for open connections too: they are
        # made leases and counted in Redis before anyone acquires there, or the limit
        # would be exceeded by them until they close.
        adopted = self._adopt()
        try:
            await self._renew()
        except BaseException:
            self._unadopt(adopted)
            raise
        for key, member in adopted:
            self.divided.release(key)
            if member not in self._leases.get(key, ()):  # released during the renewal
                self._spawn(self._zrem(key, member))
        self._up = True
        log.info("throttle: redis at %s is back", self.url)
        await self._refresh_flags()

    def _adopt(self) -> list[tuple[str, str]]:
        """Name each slot held from the fallback as a lease (renewed into Redis next)."""
        out = []
        for key, stack in self._leases.items():
            for i, member in enumerate(stack):
                if member is None:
                    self._lease_seq += 1
                    stack[i] = f"{self.node}:{os.getpid()}:{self._lease_seq}"
                    out.append((key, stack[i]))
        return out

    def _unadopt(self, adopted: list[tuple[str, str]]) -> None:
        """The renewal failed: the adopted slots are the fallback's again."""
        for key, member in adopted:
            stack = self._leases.get(key, [])
            if member in stack:
                stack[stack.index(member)] = None
            else:  # released meanwhile (while down: only its name went), so its fallback slot goes now
                self.divided.release(key)

    async def _renew(self) -> None:
        held = {k: [m for m in v if m is not None] for k, v in self._leases.items()}
        held = {k: v for k, v in held.items() if v}
        if not held:
            return
        ttl_ms = int(self.lease_ttl * 1000)
        for attempt in (1, 2):
            if "renew" not in self._sha:
                self._sha["renew"] = await self._call(self._client.script_load, _RENEW_LUA)
            pipe = self._client.pipeline(transaction=False)
            for key, members in held.items():
                pipe.evalsha(self._sha["renew"], 1, f"mta:conn:{key}", ttl_ms, *members)
            try:
                await self._call(pipe.execute)
                return
            except NoScriptError:  # flushed or restarted: load it again and renew at once
                self._sha.pop("renew", None)

    async def _refresh_flags(self) -> None:
        if self._flag_writes:
            return  # a write is in flight: the next refresh reads it back
        seen = self._flags_set
        raw = await self._call(self._client.hgetall, _FLAGS_KEY)
        if self._flag_writes or seen != self._flags_set:
            return  # written here meanwhile
        now = time.time()
        fresh, past = {}, []
        for key, value in raw.items():
            try:
                until = float(value)
            except ValueError:
                until = 0.0
            if until > now:
                fresh[key] = until
            else:
                past.append(key)
        self._flags = fresh
        if past:  # a flag that ran out is dropped by whichever node sees it first
            await self._call(self._client.hdel, _FLAGS_KEY, *past)

    # -- rates ---------------------------------------------------------------------------

    def take(self, key: str, interval: float, burst: int, n: int = 1) -> float:
        try:
            if not self._up:
                return self.divided.take(key, interval, burst, n)
            now = time.monotonic()
            res = self._reserves.get(key)
            if res is None:
                res = self._reserves[key] = _Reserve()
            batch = max(1, min(burst, math.ceil(0.05 / interval - 1e-9)))
            have = res.count(now)
            if have >= n:
                res.spend(n)
                self.stats["reserve_hits"] += 1
                if (have - n) * 2 < batch or res.expiring(now):  # running low: the next batch ahead
                    self._refill(key, interval, burst, max(batch, n) - (have - n), now)
                return 0.0
            if now < res.not_before:
                return res.not_before - now
            if not self._refill(key, interval, burst, max(batch, n) - have, now):
                return self.divided.take(key, interval, burst, n)  # no event loop to reach Redis
            return res.last_wait or _DEFAULT_WAIT
        except Exception:  # the hot path never fails delivery
            log.exception("throttle: take(%r) failed; answering from the fallback", key)
            return self.divided.take(key, interval, burst, n)

    def _refill(self, key: str, interval: float, burst: int, want: int, now: float) -> bool:
        res = self._reserves[key]
        if res.refilling or now < res.not_before:
            return True
        res.refilling = True
        if not self._spawn(self._fetch(key, res, interval, burst, want)):
            res.refilling = False
            return False
        return True

    async def _fetch(self, key: str, res: _Reserve, interval: float, burst: int, want: int) -> None:
        sent = time.monotonic()
        try:
            k, wait_us = await self._script(
                "rate", _RATE_LUA, [f"mta:rate:{key}"], [interval * 1e6, burst, want])
        except (*_UNREACHABLE, RedisError) as exc:
            if not isinstance(exc, _UNREACHABLE):
                self._other_error("take", exc)
            return
        finally:
            res.refilling = False
        k, wait = int(k), int(wait_us) / 1e6
        self.stats["tokens_granted"] += k
        if k:
            # Measured from before the request: a token spent later than this could fall in a
            # window it was not granted for.
            res.batches.append([k, sent + min(_RESERVE_TTL_MAX, burst * interval)])
        res.last_wait = wait
        res.not_before = time.monotonic() + wait if not k and wait else 0.0

    # -- connection slots ----------------------------------------------------------------

    async def acquire(self, key: str, limit: int) -> bool:
        self._start()
        if self._up:
            self._lease_seq += 1
            member = f"{self.node}:{os.getpid()}:{self._lease_seq}"
            try:
                got = await self._script("acquire", _ACQUIRE_LUA, [f"mta:conn:{key}"],
                                         [limit, member, int(self.lease_ttl * 1000)])
            except _UNREACHABLE:
                pass  # now down: the fallback answers below
            except Exception as exc:
                self._other_error("acquire", exc)
                return False
            else:
                if got:
                    self._leases.setdefault(key, []).append(member)
                return bool(got)
        try:
            got = await self.divided.acquire(key, limit)
        except Exception:
            log.exception("throttle: fallback acquire(%r) failed", key)
            return False
        if got:
            self._leases.setdefault(key, []).append(None)
        return got

    def release(self, key: str) -> None:
        try:
            stack = self._leases.get(key)
            if not stack:
                return
            member = stack.pop()
            if not stack:
                del self._leases[key]
            if member is None:
                self.divided.release(key)
            elif self._up:
                self._spawn(self._zrem(key, member))
            # else: the lease is no longer renewed, so Redis drops it after lease_ttl
        except Exception:
            log.exception("throttle: release(%r) failed", key)

    async def _zrem(self, key: str, member: str) -> None:
        try:
            await self._call(self._client.zrem, f"mta:conn:{key}", member)
        except (*_UNREACHABLE, RedisError):
            pass

    def held(self) -> dict[str, int]:
        """Slots this instance holds per key (Redis and fallback), for tests and admin."""
        return {k: len(v) for k, v in self._leases.items() if v}

    # -- flags ---------------------------------------------------------------------------

    async def set_until(self, key: str, until: float) -> None:
        self._start()
        # A refresh of the flags that overlaps this write is dropped (its read may predate it).
        self._flag_writes += 1
        try:
            await self._set_until(key, until)
        finally:
            self._flag_writes -= 1
            self._flags_set += 1

    async def _set_until(self, key: str, until: float) -> None:
        if until > 0:
            self._flags[key] = until
        else:
            self._flags.pop(key, None)
        if self._up:
            try:
                if until > 0:
                    await self._call(self._client.hset, _FLAGS_KEY, key, repr(float(until)))
                else:
                    await self._call(self._client.hdel, _FLAGS_KEY, key)
                return
            except _UNREACHABLE:
                pass
            except Exception as exc:
                self._other_error("set_until", exc)
        try:
            await self.divided.set_until(key, until)
        except Exception:
            log.exception("throttle: fallback set_until(%r) failed", key)

    def until(self, key: str) -> float:
        self._start()
        value = self._flags.get(key, 0.0)
        if not self._up:  # the last known cluster flags still stand, with the ones set since
            try:
                value = max(value, self.divided.until(key))
            except Exception:
                log.exception("throttle: fallback until(%r) failed", key)
        return value if value > time.time() else 0.0

    def flags(self) -> dict[str, float]:
        now = time.time()
        out = {k: v for k, v in self._flags.items() if v > now}
        if not self._up:
            try:
                for k, v in self.divided.flags().items():
                    if v > out.get(k, 0.0):
                        out[k] = v
            except Exception:
                log.exception("throttle: fallback flags() failed")
        return out

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._runner, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        leases, self._leases = self._leases, {}
        ours: dict[str, list[str]] = {}
        for key, stack in leases.items():
            for member in stack:
                if member is None:
                    self.divided.release(key)
                else:
                    ours.setdefault(key, []).append(member)
        if ours and self._up:
            pipe = self._client.pipeline(transaction=False)
            for key, members in ours.items():
                pipe.zrem(f"mta:conn:{key}", *members)
            try:
                await self._call(pipe.execute)
            except (*_UNREACHABLE, RedisError):
                pass  # best effort: unrenewed, they expire after lease_ttl
        try:
            await self._client.aclose()
            await self._client.connection_pool.disconnect()  # a pool handed in is not closed by aclose()
        except Exception:
            pass
