"""Event webhooks: one sender task per [[webhook]] in each worker, POSTing its shard's durable
events in order as JSON arrays; a 2xx moves the webhook's cursor (an EVENT_ACK record), anything
else is retried with back-off. The queue never waits on a sender: mail flows while one is down."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import aiohttp

from mta.queue.events import KINDS
from mta.queue.store import SpoolService

log = logging.getLogger("mta.webhooks")

_IDLE_POLL = 1.0  # seconds between looks at the spool when nothing woke the sender
_WARN_EVERY = 60.0  # a webhook's "dropped" warning at most this often
# A batch that is not full waits until this long after the last POST: under load events
# become durable a few at a time (each group commit), and a POST per commit cost more CPU
# than everything else of the webhooks together. Idle, the first event goes at once.
_LINGER = 0.1


class WebhookSender:
    """Sends one webhook's events from one shard. `sent`, `failures` and `dropped` are plain
    counters (events delivered with a 2xx, failed POSTs, events dropped beyond max_backlog)."""

    def __init__(self, spec, store: SpoolService, jitter=random.uniform) -> None:
        self.spec = spec
        self.name = spec.label
        self.store = store
        self.sent = 0
        self.failures = 0
        self.dropped = 0
        self._jitter = jitter
        # The kinds to put in a POST (None: every kind; the spool holds only kinds some webhook wants).
        self._kinds = None if set(spec.events) == set(KINDS) else list(spec.events)
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._warned = 0.0
        self._dropped_since_warn = 0
        self._last_post = 0.0  # monotonic
        self._idle = False  # waiting in _sleep for a wake-up

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"webhook {self.name}")

    def wake(self) -> None:
        """New events are durable: look now rather than at the next poll (called per message
        under load, when the sender is busy anyway: then it costs one test)."""
        if self._idle:
            self._idle = False
            self._wake.set()

    async def stop(self, grace: float) -> None:
        """Finish a POST in flight within `grace` seconds or abandon it (its events stay in the
        spool and are sent again after the restart); start no new one."""
        self._stopping = True
        self._idle = False
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except Exception:  # noqa: BLE001 - a timeout or a failure: abandoned: the spool keeps the events
            pass
        if not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - a cancelled sender has nothing to report
                pass

    async def _run(self) -> None:
        spec = self.spec
        headers = dict(spec.headers)
        headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=spec.timeout)
        delay = 0.0
        log.info("webhook %s: %d event(s) pending, sending to %s", self.name,
                 self.store.event_backlog(self.name, 0)[0], spec.url)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
            while not self._stopping:
                try:
                    await self._drop_excess()
                    # One bytes body made in Rust: no tuple or string per event here.
                    body, _, last, taken, count = self.store.events_body(self.name, spec.batch, self._kinds)
                except Exception:  # noqa: BLE001 - the spool closing under us: stop quietly
                    if self._stopping:
                        return
                    log.exception("webhook %s: reading events failed", self.name)
                    await self._sleep(1.0)
                    continue
                if not taken:
                    await self._sleep(_IDLE_POLL)
                    continue
                linger = self._last_post + _LINGER - time.monotonic()
                if taken < spec.batch and linger > 0 and not self._stopping:
                    await asyncio.sleep(linger)  # more may come to share this POST
                    continue
                if count and not await self._post(http, body):
                    self.failures += 1
                    delay = min(spec.retry_max, max(spec.retry_min, delay * 2))
                    await self._sleep(self._jitter(delay / 2, delay) if delay > spec.retry_min else delay)
                    continue
                delay = 0.0
                self.sent += count
                try:
                    await self.store.ack_events(self.name, last)
                except Exception as e:  # noqa: BLE001 - not recorded: the batch is sent again
                    log.error("webhook %s: cannot record progress: %s", self.name, e)
                    await self._sleep(1.0)

    async def _post(self, http: aiohttp.ClientSession, body: bytes) -> bool:
        self._last_post = time.monotonic()
        try:
            async with http.post(self.spec.url, data=body) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return True
                log.warning("webhook %s: %s answered %d; retrying", self.name, self.spec.url, resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            log.warning("webhook %s: %s: %s; retrying", self.name, self.spec.url, e or type(e).__name__)
        return False

    async def _drop_excess(self) -> None:
        """Beyond max_backlog: move the cursor past the oldest, and count them."""
        backlog, _ = self.store.event_backlog(self.name, 0)
        excess = backlog - self.spec.max_backlog
        if excess <= 0:
            return
        _, seq = self.store.event_backlog(self.name, excess)
        await self.store.ack_events(self.name, seq)
        self.dropped += excess
        self._dropped_since_warn += excess
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            log.warning("webhook %s: backlog over max_backlog (%d): dropped the %d oldest event(s) "
                        "(%d in all)", self.name, self.spec.max_backlog, self._dropped_since_warn, self.dropped)
            self._warned = now
            self._dropped_since_warn = 0

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            return
        self._idle = True
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        self._idle = False
        self._wake.clear()
