"""Reverse DNS of connecting clients, for Received and policy: never blocks the
event loop (each lookup bounded by a timeout), answers cached per TTL in a
bounded LRU, one query per address in flight; a failure reads as "unknown"."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import dns.asyncresolver
import dns.exception
import dns.reversename

_CACHE_MAX = 10_000
_NEGATIVE_TTL = 60.0


class ReverseResolver:
    def __init__(self, timeout: float = 2.0, enabled: bool = True):
        self.timeout = timeout
        self.enabled = enabled
        self._cache: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.lookups = {"ok": 0, "failed": 0}  # PTR queries sent, by outcome (for /metrics)
        self.cache_hits = 0

    def cached(self, ip: str) -> tuple[bool, str | None]:
        """(known, name) without waiting."""
        hit = self._cache.get(ip)
        if hit is not None and hit[1] > time.monotonic():
            return True, hit[0]
        return False, None

    def lookup(self, ip: str) -> asyncio.Future:
        """A future for the PTR name of ip (None when there is none); one query per ip in flight."""
        loop = asyncio.get_running_loop()
        known, name = self.cached(ip)
        if known:
            self.cache_hits += 1
        if known or not self.enabled:
            fut = loop.create_future()
            fut.set_result(name)
            return fut
        fut = self._inflight.get(ip)
        if fut is None:
            fut = loop.create_task(self._query(ip))
            self._inflight[ip] = fut
            fut.add_done_callback(lambda _f: self._inflight.pop(ip, None))
        return fut

    async def _query(self, ip: str) -> str | None:
        name: str | None = None
        ttl = _NEGATIVE_TTL
        try:
            if self._resolver is None:
                self._resolver = dns.asyncresolver.Resolver()
            answer = await self._resolver.resolve(
                dns.reversename.from_address(ip), "PTR", lifetime=self.timeout
            )
            name = str(answer[0].target).rstrip(".") or None
            ttl = float(answer.rrset.ttl)
        except (dns.exception.DNSException, OSError, ValueError, IndexError):
            pass
        self.lookups["ok" if name else "failed"] += 1
        self._cache[ip] = (name, time.monotonic() + ttl)
        self._cache.move_to_end(ip)
        while len(self._cache) > _CACHE_MAX:
            self._cache.popitem(last=False)
        return name
