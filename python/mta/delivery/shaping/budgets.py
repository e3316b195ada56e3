"""The delivery client's side of traffic shaping: before a transaction, its site not
suspended and a message token; before a new connection, a slot of the (source, site) and a
connection token. Invariant: a slot is held exactly while its connection exists."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from mta.delivery.shaping.pacer import Pacer
from mta.delivery.shaping.signals import flag_key, site_of

_FLAGS_EVERY = 0.05  # seconds between reads of the throttle's flags (a scan of a small table)


class Budgets:
    """Reads `SmtpOptions`' shaping fields (shape_key, shaped, message_interval/burst,
    connection_interval/burst, max_connections) against one throttle."""

    # How often a connection that found every slot of its (source, site) held elsewhere
    # (another worker or node) asks again; a release in this process wakes it sooner.
    slot_poll = 0.05
    # How often an idle pooled connection holding a shared slot looks whether a delivery
    # elsewhere (another worker or node) waits for a slot of its (source, site): it is then
    # closed rather than kept to its idle timeout.
    want_poll = 0.25

    def __init__(self, throttle) -> None:
        self.throttle = throttle
        self.pacer = Pacer(throttle)
        self._freed: asyncio.Event | None = None
        self.slot_waits = 0  # times a connection found no slot free (each poll of a wait)
        self.slot_waiters = 0  # connections that waited for a slot, and their time (/metrics)
        self.slot_wait_seconds = 0.0
        # The suspend and slow flags, read from the throttle at most every _FLAGS_EVERY
        # seconds: two look-ups per message would cost more than the rest of shaping.
        self._flags: dict[str, float] = {}
        self._flags_at = 0.0

    def _flag(self, kind: str, shape_key: str) -> float:
        """When the `kind` flag of the site of `shape_key` ends (0.0: not set)."""
        now = time.time()
        if now >= self._flags_at:
            self._flags_at = now + _FLAGS_EVERY
            self._flags = {k: t for k, t in self.throttle.flags().items() if k.startswith(("suspend|", "slow|"))}
        if not self._flags:
            return 0.0
        until = self._flags.get(flag_key(kind, site_of(shape_key)), 0.0)
        return until if until > now else 0.0

    def suspended(self, opts) -> float:
        """When the site's suspension ends (0.0: it is not suspended)."""
        return self._flag("suspend", opts.shape_key) if opts.shaped else 0.0

    def limit(self, opts) -> int:
        """This process's concurrent deliveries for a destination: the connection limit,
        halved while a reply rule slows its site and no message rate is set to halve."""
        limit = max(1, opts.max_connections)
        if opts.shaped and not opts.message_interval and self._flag("slow", opts.shape_key):
            limit = max(1, limit // 2)
        return limit

    def interval(self, opts) -> float:
        """Seconds per message token of `opts`'s site now: doubled while a rule slows it."""
        interval = opts.message_interval
        if interval and self._flag("slow", opts.shape_key):
            interval *= 2
        return interval

    def may_send(self, opts) -> bool:
        """A shaped job may go on callbacks now: its site not suspended, and a message
        token taken (when it has a rate). False: nothing taken."""
        if self._flag("suspend", opts.shape_key):
            return False
        return not opts.message_interval or self.pacer.ready(opts.shape_key, self.interval(opts),
                                                             opts.message_burst)

    async def message(self, opts) -> None:
        """Wait, in order with the others of its site, for a message token."""
        if opts.message_interval:
            await self.pacer.wait(opts.shape_key, self.interval(opts), opts.message_burst)

    async def slot(self, opts, close_idle: Callable[[str], bool]) -> bool:
        """One of the (source, site)'s connection slots (shared by every worker, or node),
        and a token of its connection rate; waits for them. False: no shared budget kept
        (no shape key). `close_idle(key)` gives back one of this process's idle
        connections of the key, if it has one."""
        throttle, key = self.throttle, opts.shape_key
        if not key:
            return False
        limit = self.limit(opts)
        began = 0.0
        while not await throttle.acquire(key, limit):
            if not began:
                began = time.monotonic()
                self.slot_waiters += 1
            # Its slot returns once it has closed: wait for a release here, or poll.
            self.slot_waits += 1
            if not close_idle(key):
                # Held elsewhere: say so, so that idle connections there close (the flag is
                # renewed while this waits, at most every half second).
                now = time.time()
                if throttle.until(want_key(key)) < now + 0.5:
                    await throttle.set_until(want_key(key), now + 1.0)
            if self._freed is None or self._freed.is_set():
                self._freed = asyncio.Event()
            try:
                await asyncio.wait_for(self._freed.wait(), self.slot_poll)
            except TimeoutError:
                pass
        if began:
            self.slot_wait_seconds += time.monotonic() - began
        if opts.connection_interval:
            try:
                await self.pacer.wait("connect|" + key, opts.connection_interval, opts.connection_burst)
            except BaseException:
                self.free(key)
                raise
        return True

    def wait_series(self) -> list[list]:
        """mta_throttle_waits and mta_throttle_wait_seconds (mta.app.metrics)."""
        p = self.pacer
        return [["mta_throttle_waits", {"kind": "slot"}, self.slot_waiters],
                ["mta_throttle_waits", {"kind": "token"}, p.waits],
                ["mta_throttle_wait_seconds", {"kind": "slot"}, self.slot_wait_seconds],
                ["mta_throttle_wait_seconds", {"kind": "token"}, p.wait_seconds]]

    def wanted(self, shape_key: str) -> bool:
        """A delivery elsewhere waits for a slot of this (source, site)."""
        return self.throttle.until(want_key(shape_key)) > time.time()

    def free(self, key: str) -> None:
        self.throttle.release(key)
        if self._freed is not None:
            self._freed.set()


def want_key(shape_key: str) -> str:
    """The throttle flag of a (source, site) whose slots a delivery waits for."""
    return "want|" + shape_key
