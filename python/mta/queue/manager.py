"""Queue manager: due message -> route -> transport -> outcome -> store record + delivery log,
for a bounded window of messages. Every outcome is durable before the next step relies on
it (a DSN before its bounced record; a delete only once every recipient is final)."""

from __future__ import annotations

import asyncio
import logging
import random
import time as _time
from typing import Callable

from mta.config.routes import TransportSpec, parse_transport
from mta.delivery import BOUNCED, DEFERRED, DELIVERED, FINAL, OutMessage, OutRcpt, RcptResult, results_for
from mta.delivery.deliverylog import DeliveryLog
from mta.delivery.router import Router, split
from mta.delivery.shaping.signals import Throttled
from mta.delivery.transport import LOGGED, UNSENT, Deferred, Route, Transports
from mta.errors import SpoolError
from mta.policy.chain import Chain
from mta.queue import delay, notices
from mta.queue.store import SpoolService
from mta.queue.views import QueuedMessage, notes_of
from mta.queue.views import event as make_event

log = logging.getLogger("mta.queue")

_MAX_SLEEP = 30.0
_FAILED_ATTEMPT_BACKOFF = 30.0


class Clock:
    """Wall time (records, retries, due times) and monotonic time (back-offs); tests pass their own."""

    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)


SYSTEM_CLOCK = Clock()


class QueueManager:
    # A crash between a peer's 250 and our state record can repeat that one delivery;
    # nothing else is repeated and nothing is lost.

    def __init__(self, store: SpoolService, router: Router, transports: Transports, dlog: DeliveryLog,
                 dcfg, hostname: str, clock: Clock = SYSTEM_CLOCK,
                 jitter: Callable[[float, float], float] = random.uniform, *,
                 bounce_max: int = 50 * 1024, hooks: Chain | None = None, pools: bool = False,
                 metrics=None, delay_warning: float = 4 * 3600.0) -> None:
        self.store = store
        self.router = router
        self.transports = transports
        self._by_kind = transports.by_kind
        self.dlog = dlog
        self.dcfg = dcfg  # the [delivery] section
        self.hostname = hostname
        self.bounce_max = bounce_max  # [bounce] max_returned_size: body bytes a RET=FULL DSN returns
        self.delay_warning = delay_warning  # [bounce] delay_warning: seconds before a delay notice; 0: none
        self.clock = clock
        self._jitter = jitter
        # The plugins' outbound hooks (on_delivered, on_deferred, on_bounced); with an
        # on_delivered hook, outcomes come back here rather than being logged by the agent.
        self.hooks = hooks if hooks is not None else Chain()
        self.pools = pools  # egress pools are configured: a message's notes may name its pool
        # Plugins choose a message's pool (`egress`) or change its shape (`shaping`): asked
        # on the coroutine path, with the queued message's view.
        self._egress_hooks = bool(self.hooks.egress or self.hooks.shaping)
        self._observed = bool(self.hooks.on_delivered or self.hooks.on_deferred or self.hooks.on_bounced)
        # Webhook events (mta.queue.events), recorded with the outcome's own record; None: none.
        self.events = getattr(store, "events", None)
        hooked = self.events is not None and self.events.delivered
        # Delivered outcomes come back here (not logged by the agent alone) for hooks or webhooks.
        self._want_delivered = bool(self.hooks.on_delivered) or hooked
        self.active: set[str] = set()  # queue ids with an attempt in flight
        self._keeping_fresh = False  # the store keeps new messages' bytes for jobs made from it
        self._idle: asyncio.Event | None = None  # set by stop() to learn when `active` empties
        self._abandoned = False  # stop() gave up waiting: outcomes that come later are not recorded
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(); kept: each lookup is a getpid()
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._refill = False  # due work is waiting for room in the window
        self._wake_at = 0.0  # when the scheduling loop next looks at the store by itself
        self._backoff: dict[str, float] = {}  # queue id -> monotonic time before which it is not retried
        self._excluded: set[str] = set()  # ids an administrator's operation owns (mta.app.control)
        self._fresh_notes: dict[str, dict] = {}  # spooled-lane attempts: notes from the session, for on_delivered
        # mta.app.metrics.Metrics (or None): recipient outcomes counted where they are recorded;
        # a spooled-lane attempt's recipient count is kept for the agent's LOGGED answer.
        # Outcomes by site (the recipient's domain) and the latency histogram are counted
        # too; `suspended`: ids shaping held back -> until when (mta_queue_suspended_messages).
        self.metrics = metrics
        self._fresh_count: dict[str, tuple[int, str, float]] = {}  # id -> (recipients, domain, arrival)
        self.suspended: dict[str, float] = {}

    # --- scheduling -----------------------------------------------------------

    def start(self) -> None:
        if not self.dcfg.enabled:
            log.info("delivery disabled (delivery.enabled = false): mail is accepted and kept")
            return
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="queue-manager")
        self.transports.start()

    def swap(self, router: Router, transports: Transports, hooks: Chain, dcfg, *,
             bounce_max: int | None = None, pools: bool | None = None,
             delay_warning: float | None = None) -> None:
        """A reloaded configuration (mta.app.server): the next attempts route, deliver and
        report through these. An attempt in flight keeps the router and transport it took;
        its outcome is recorded under the new [delivery] settings and told to the new hooks.
        `transports` is not started here: it shares the running one's wire."""
        self.router = router
        self.transports = transports
        self._by_kind = transports.by_kind
        self.hooks = hooks
        self._egress_hooks = bool(hooks.egress or hooks.shaping)
        self._observed = bool(hooks.on_delivered or hooks.on_deferred or hooks.on_bounced)
        self._want_delivered = bool(hooks.on_delivered) or bool(self.events is not None and self.events.delivered)
        self.dcfg = dcfg
        if bounce_max is not None:
            self.bounce_max = bounce_max
        if pools is not None:
            self.pools = pools
        if delay_warning is not None:
            self.delay_warning = delay_warning
        self.kick()  # a larger window, or a route that was failing

    def use_events(self, events) -> None:
        """The store's event recorder after a reload changed the [[webhook]] tables (None: none
        wanted); the outcomes recorded from now on carry the events it makes."""
        self.events = events
        self._want_delivered = bool(self.hooks.on_delivered) or bool(events is not None and events.delivered)

    def kick(self) -> None:
        """Look at the queue now (the window had no room, or the schedule changed)."""
        self._wake.set()

    def exclude(self, qids) -> None:
        """Start no attempt for these ids until `include` (an admin delete is being synced)."""
        self._excluded.update(qids)

    def include(self, qids) -> None:
        self._excluded.difference_update(qids)

    def retry_now(self, qids=None) -> None:
        """Forget the back-off after failed attempts (all ids, or these): `mta queue flush`."""
        if qids is None:
            self._backoff.clear()
        else:
            for q in qids:
                self._backoff.pop(q, None)
        self.kick()

    async def bounce_recipients(self, qid: str, indices: list[int], reply, wait: float = 10.0) -> int | None:
        """Bounce these recipients of `qid` now with `reply` (anything with code, enhanced and
        text: `mta queue bounce`): a DSN, the delivery log and the bounced records, as an
        attempt's failures are. An attempt in flight is waited for (up to `wait` s, none
        starting meanwhile); None if it has not ended, else how many were bounced (those
        final by then, or a message gone, are skipped)."""
        self.exclude((qid,))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + wait
            while qid in self.active:
                if loop.time() >= deadline:
                    return None
                await asyncio.sleep(0.05)
            env = self.store.get(qid)
            data = self.store.message_data(qid, env.size) if env is not None else None
            if data is None:
                return 0
            spooled, wanted = env.recipients, set(indices)
            rcpts = tuple(OutRcpt(r.address, r.notify, r.orcpt, i) for i, r in enumerate(spooled)
                          if i in wanted and r.state not in FINAL)
            if not rcpts:
                return 0
            msg = OutMessage(qid, env.sender, rcpts, data, env.body, env.smtputf8, env.ret, env.envid, env.arrival)
            results = {rc.index: RcptResult(rc.address, reply.code, reply.enhanced, reply.text) for rc in rcpts}
            await self._record(env, spooled, msg, results, self.clock.time())
            return len(rcpts)
        finally:
            self.include((qid,))

    def on_durable(self, qid: str, recipients: list[tuple] | None = None, notes: dict | None = None) -> None:
        """A message just became durable: start on it at once when the window has room,
        without asking the store what is due. `recipients`: as spooled ((address, notify,
        orcpt)), from the session that spooled it: its job may then be made from the store;
        `notes`: its transaction's notes, as stored (so the fast lane need not read them)."""
        if self._task is None or self._stopping:
            return
        if len(self.active) < self.dcfg.max_active:
            if recipients is None or not self._start_spooled(qid, recipients, notes):
                self._start(qid)
        else:
            self._refill = True  # taken up when the window drains to half


    async def _run(self) -> None:
        clock = self.clock
        while not self._stopping:
            self._wake.clear()
            started = self._schedule()
            next_due = self.store.next_due()
            delay = _MAX_SLEEP if next_due is None else min(max(next_due - clock.time(), 0.0), _MAX_SLEEP)
            if delay == 0.0 and not started:
                # Everything due is in flight, backing off, or waiting for
                # room in the window: wait for a change instead of spinning.
                delay = 1.0
            self._wake_at = clock.time() + delay
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    def _schedule(self) -> int:
        room = self.dcfg.max_active - len(self.active)
        if room <= 0:
            self._refill = True
            return 0
        started = 0
        now = self.clock.monotonic()
        for qid in self.store.due(self.clock.time(), room + len(self.active) + len(self._backoff)):
            if qid in self.active or qid in self._excluded or self._backoff.get(qid, 0) > now:
                continue
            self._backoff.pop(qid, None)
            self._start(qid)
            started += 1
            if started == room:
                self._refill = True  # more may be due than the window holds
                break
        return started

    def suspended_count(self, now: float) -> int:
        """Messages shaping holds back now (mta_queue_suspended_messages), forgetting the
        holds that are over: at the metrics tick."""
        held = self.suspended
        for qid in [q for q, until in held.items() if until <= now]:
            del held[qid]
        return len(held)

    def _end(self, qid: str, exc: BaseException | None) -> None:
        """An attempt is over (recorded, or failed with `exc`, a bug: retried after a back-off)."""
        self.active.discard(qid)
        if self._fresh_notes:
            self._fresh_notes.pop(qid, None)
        if exc is not None:
            log.error("delivery attempt for %s failed: %r", qid, exc, exc_info=exc)
            # Its state did not change, so it is still due: retry later, not at once.
            self._backoff[qid] = self.clock.monotonic() + _FAILED_ATTEMPT_BACKOFF
        if self._refill and len(self.active) <= self.dcfg.max_active // 2:
            # Work waits for room in the window: refill half of it at once
            # (one look at the store per many completions, not one each).
            self._refill = False
            self.kick()
        if not self.active and self._idle is not None:
            self._idle.set()

    def _run_task(self, coro, qid: str, last: bool) -> None:
        """Run a step of `qid`'s attempt as a task (stop() cancels it after the grace); a
        failure ends the attempt, and so does the end of the `last` step."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            exc = None if t.cancelled() else t.exception()
            if exc is not None or last or t.cancelled():
                self._end(qid, exc)
        task.add_done_callback(done)

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.active:  # attempts in flight end when their outcomes are recorded
            self._idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except asyncio.TimeoutError:
                # As a cancelled attempt: whatever comes back is not recorded, and the
                # message is tried again after the restart.
                self._abandoned = True
                self.active.clear()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transports.close()
        self.dlog.close()

    # --- one attempt for one message -------------------------------------------

    def _start(self, qid: str, routed: dict | None = None) -> None:
        """`routed`: the route hooks' answers already asked for this attempt (address -> spec or awaitable)."""
        if qid in self._excluded or qid in self.active:
            # At most one attempt per message: a DSN's on_durable() comes a loop turn
            # after it became durable, and _schedule() may have started it meanwhile.
            return
        self.active.add(qid)
        try:
            prep = self._prepare(qid)
            if prep is None:
                self._end(qid, None)  # gone, held or nothing due
                return
            env, spooled, msg = prep
            groups, failed, pending = self._route(env, spooled, msg.recipients, routed)
            if pending is None and not failed and len(groups) == 1 and self._submit(prep, groups[0]):
                return
        except Exception as e:  # a bug: the message stays queued and is retried later
            self._end(qid, e)
            return
        self._run_task(self._attempt(prep, groups, failed, pending), qid, last=False)

    def _prepare(self, qid: str, made: bool = False) -> tuple | None:
        """(envelope, its recipients as read once, the message) for an attempt;
        None when there is nothing to attempt (gone, held, nothing due). `made`: for
        an attempt already made of a fresh message (_spooled_done): its recipients are
        the ones still queued, held or not (a hold during the attempt stops retries,
        not the recording of this one)."""
        store = self.store
        env = store.get(qid)
        if env is None or (env.held and not made):
            return None
        data = store.message_data(qid, env.size)
        now = self.clock.time()
        spooled = env.recipients  # each read of the property builds the list anew
        rcpts = tuple([OutRcpt(r.address, r.notify, r.orcpt, i) for i, r in enumerate(spooled)
                       if (st := r.state) == "queued"
                       or (st == "deferred" and not made and (r.next_attempt or 0) <= now)])
        if data is None or not rcpts:
            return None
        msg = OutMessage(qid, env.sender, rcpts, data, env.body, env.smtputf8, env.ret, env.envid, env.arrival)
        return env, spooled, msg

    def _route(self, env, spooled: list, rcpts, routed: dict | None = None) -> tuple[list, dict, list | None]:
        """([[spec, domain, recipients]] one per destination, {index: result} of those whose
        route hook failed, [(recipient, awaitable route)] of those a hook answers later or None).
        A recipient's stored next route (from on_deferred) comes first, then `routed`, then
        the router (route hooks, tables)."""
        groups: list[list] = []
        failed: dict[int, RcptResult] = {}
        pending = None
        fixed, route_now = self.router.fixed, self.router.route_now
        view = None
        for rc in rcpts:
            try:
                stored = spooled[rc.index].route
                if stored is not None and (spec := parse_transport(stored)) is not None:
                    pass
                elif routed is not None and rc.address in routed:
                    spec = routed[rc.address]
                    if isinstance(spec, Exception):  # the hook failed when asked (_start_routed)
                        raise spec
                elif (spec := fixed(rc.address)) is None:  # None: there are route hooks to ask
                    if view is None:
                        view = self._view(env)
                    spec = route_now(rc.address, view)
            except Exception as e:  # a broken route hook defers, it does not lose mail
                failed[rc.index] = _route_failed(rc, e)
                continue
            if isinstance(spec, TransportSpec):
                _group(groups, spec, rc)
            else:
                pending = pending or []
                pending.append((rc, spec))
        return groups, failed, pending

    def _submit(self, prep: tuple, group: list) -> bool:
        """The attempt on callbacks, when its transport takes it (no lookup, nothing to
        await): no task, no coroutine per message. False: the caller makes a task."""
        if self._stopping or self._egress_hooks:
            return False
        env, spooled, msg = prep
        spec, domain, _ = group
        rcpts = msg.recipients
        # With every recipient in it, an all-delivered attempt may be logged by the
        # delivery agent (it answers LOGGED) and the message deleted at once.
        ctx = None
        if len(rcpts) == len(spooled) and not self._want_delivered:
            ctx = (env.arrival, (spooled[rcpts[0].index].attempts + 1,) if len(rcpts) == 1
                   else tuple(spooled[rc.index].attempts + 1 for rc in rcpts))
        return self._by_kind[spec.kind].submit(Route(spec, domain, self._pool(env)), msg,
                                                 lambda out: self._done(env, spooled, msg, out), ctx)

    def _start_spooled(self, qid: str, recipients: list[tuple], notes: dict | None = None) -> bool:
        """A fresh message's first attempt with its job made from the store entry (the
        agent's submit_spooled): nothing of the message becomes a Python object unless
        the outcome needs recording (see _spooled_done). False: the caller takes `_start`."""
        if qid in self._excluded or qid in self.active or self._egress_hooks:
            return False
        fixed = self.router.fixed
        spec = fixed(recipients[0][0])
        if spec is None:  # route hooks: asked once here, their answers kept for _start if need be
            return self._start_routed(qid, recipients, notes)
        for r in recipients[1:]:
            s = fixed(r[0])
            if s is not spec and s != spec:
                return False
        if spec.kind == "mx":
            return False  # DNS and MTA-STS first: a coroutine
        return self._submit_spooled(qid, spec, notes, split(recipients[0][0])[1], len(recipients))

    def _submit_spooled(self, qid: str, spec: TransportSpec, notes: dict | None, domain: str,
                        count: int = 1) -> bool:
        """Hand a fresh message to its transport's spooled lane (the job made from the store
        entry); False, and nothing started, when the transport does not take it. `domain`:
        its first recipient's (shaping rules and suspensions go by it); `count`: its recipients."""
        self.active.add(qid)
        pool = notes.get("pool") if self.pools and notes else None
        if not self._by_kind[spec.kind].submit_spooled(Route(spec, domain, pool), qid, self._spooled_done,
                                                         self._spooled_logged):
            self.active.discard(qid)
            return False
        if not self._keeping_fresh:  # from the first: later jobs take the bytes from memory
            self._keeping_fresh = True
            self.store.keep_fresh(True)
        if notes and self.hooks.on_delivered:
            self._fresh_notes[qid] = notes
        if self.metrics is not None:
            self._fresh_count[qid] = (count, domain, self.clock.time())  # (durable just now)
        return True

    def _start_routed(self, qid: str, recipients: list[tuple], notes: dict | None) -> bool:
        """`_start_spooled` when route hooks decide: they are asked now, once; when all answer
        at once with one non-MX route the job is still made from the store, else `_start`
        goes on with their answers."""
        view = QueuedMessage(qid, notes, self.store)
        routed: dict = {}
        for r in recipients:
            if r[0] not in routed:
                try:
                    routed[r[0]] = self.router.route_now(r[0], view)
                except Exception as e:  # noqa: BLE001 - kept: _route defers that recipient with it
                    routed[r[0]] = e
        specs = list(routed.values())
        first = specs[0]
        if (isinstance(first, TransportSpec) and first.kind != "mx"
                and all(s is first or s == first for s in specs[1:])
                and self._submit_spooled(qid, first, notes, split(recipients[0][0])[1], len(recipients))):
            return True
        self._start(qid, routed)
        return True

    def _view(self, env) -> QueuedMessage:
        """The queued message as route hooks see it (headers and body read on demand)."""
        return QueuedMessage(env.queue_id, notes_of(env), self.store, env)

    def _spooled_logged(self, qids: list[str], rows: dict | None = None) -> None:
        """`_start_spooled` jobs of one answer frame, every recipient delivered and logged
        by the agent: one DELETE group (one sync, one completion) for them all. `rows`: their
        results by queue id, when on_delivered hooks are to be told (SmtpOptions.report)."""
        if self._abandoned:
            return
        if (m := self.metrics) is not None:
            counts, now = self._fresh_count, self.clock.time()
            for qid in qids:
                n, domain, arrival = counts.pop(qid, None) or (1, "other", now)
                m.delivered += n
                m.sites.add(domain, 0, n)
                m.latency.observe(now - arrival, n)
        logged = ""
        if rows and any(type(rows.get(q)) is str for q in qids):  # SmtpOptions.report "log": webhooks alone
            # The agent's delivery-log lines (`rows` has the whole frame's: only these ids'); the
            # spool makes the delivered events from them. Texts and rows mix only across a reload.
            mine = [rows.get(q) for q in qids]
            logged = "".join([t for t in mine if type(t) is str])
            rows = {q: r for q, r in zip(qids, mine) if r is not None and type(r) is not str}
        hooked = self.events is not None and self.events.delivered
        logged = logged if hooked else ""
        hooked = hooked and rows and self._spooled_events(qids, rows)
        if not rows or not self.hooks.on_delivered:
            self.store.delete_many_then(qids, self._spooled_deleted, hooked or None, logged or None)
            return
        events = []
        fresh = self._fresh_notes
        for qid in qids:  # a fresh message's first attempt (its notes came from the session)
            notes = fresh.get(qid) or {}
            events.extend(make_event(qid, row[0], RcptResult(*row), 1, None, notes) for row in rows.get(qid, ()))
        self.store.delete_many_then(qids, lambda done, error: self._spooled_deleted(done, error, events),
                                    hooked or None, logged or None)

    def _spooled_events(self, qids: list[str], rows: dict) -> list[str]:
        """The webhooks' delivered events of fresh messages the agent delivered and logged."""
        out = []
        for qid in qids:
            env = self.store.get(qid)
            arrival = env.arrival if env is not None else 0.0
            out.extend(self.events.outcome("delivered", queue_id=qid, recipient=row[0], status=DELIVERED,
                                           result=RcptResult(*row), attempt=1, arrival=arrival)
                       for row in rows.get(qid, ()))
        return out

    def _spooled_deleted(self, qids: list[str], error: str | None, events: list | None = None) -> None:
        exc = None if error is None else SpoolError(error)
        for qid in qids:
            self._end(qid, exc)
        if events and error is None:
            gone = set(qids)
            for event in events:
                if event.queue_id in gone:
                    self.hooks.notify(self.hooks.on_delivered, event)

    def _spooled_done(self, qid: str, out) -> None:
        """The outcome of a `_start_spooled` job not all delivered and logged by the agent
        (those go to `_spooled_logged`): recorded from the store's entry (the message was
        not touched meanwhile: it is active)."""
        if self._abandoned:
            return
        if self.metrics is not None:
            self._fresh_count.pop(qid, None)  # counted in _done, where the outcome is recorded
        if out is UNSENT:  # not fresh after all: the general way (after a restart, if stopping)
            self._end(qid, None)
            if not self._stopping:
                self._start(qid)
            return
        try:
            prep = self._prepare(qid, made=True)
        except Exception as e:  # unreadable now: retried after the back-off
            self._end(qid, e)
            return
        if prep is None:
            self._end(qid, None)
            return
        env, spooled, msg = prep
        if isinstance(out, Deferred):
            out = results_for(msg, 451, out.enhanced, out.text)
        self._done(env, spooled, msg, out)

    async def _attempt(self, prep: tuple, groups: list, failed: dict, pending: list | None) -> None:
        """The attempt when something must be awaited: a route hook's answer, a lookup, or
        several destinations at once. Ends in `_done`, as the callbacks do."""
        env, spooled, msg = prep
        for rc, later in pending or ():
            try:
                _group(groups, await later, rc)
            except Exception as e:  # a broken route hook defers, it does not lose mail
                failed[rc.index] = _route_failed(rc, e)
        results = failed
        pool, view = self._pool(env), None
        if self._egress_hooks:
            view = self._view(env)
            if self.hooks.egress:
                pool = await self.hooks.first(self.hooks.egress, (view,), _pool_name) or pool
            if not self.hooks.shaping:
                view = None
        if len(groups) == 1 and not failed:
            # The common case (one destination): no gather, no extra tasks.
            spec, domain, rs = groups[0]
            try:
                outcomes = [await self._by_kind[spec.kind].deliver(Route(spec, domain, pool, view), msg)]
            except Exception as e:
                outcomes = [e]
        else:
            outcomes = await asyncio.gather(
                *(self._by_kind[spec.kind].deliver(Route(spec, domain, pool, view), _subset(msg, rs))
                  for spec, domain, rs in groups),
                return_exceptions=True,
            )
        held: dict[int, Throttled] = {}
        for (spec, _domain, rs), out in zip(groups, outcomes):
            if isinstance(out, BaseException):
                log.error("transport %s failed for %s: %r", spec.text(), msg.queue_id, out, exc_info=out)
                out = results_for(_subset(msg, rs), 451, "4.3.0", "internal delivery error")
            elif isinstance(out, Throttled):  # not tried: shaping holds it back until out.until
                held.update((rc.index, out) for rc in rs)
                out = results_for(_subset(msg, rs), 451, "4.7.0", out.reason)
            for rc, res in zip(rs, out):
                results[rc.index] = res
        self._done(env, spooled, msg, [results[rc.index] for rc in msg.recipients], held)

    def _pool(self, env) -> str | None:
        """The egress pool the message's notes name (a plugin, or the pool header)."""
        if not self.pools or not env.notes:
            return None
        pool = notes_of(env).get("pool")
        return pool if isinstance(pool, str) else None

    def _done(self, env, spooled: list, msg: OutMessage, out, held: dict | None = None) -> None:
        """An attempt's outcome (one result per recipient of `msg`, or LOGGED: all delivered
        and logged by the agent, or Throttled: held back by shaping). All delivered and
        nothing else waiting: the delivery log and one DELETE, no coroutine; else the
        records of `_record`. `held`: recipients shaping held back (index -> Throttled)."""
        if self._abandoned:
            return
        qid = msg.queue_id
        if isinstance(out, Throttled):
            held = {rc.index: out for rc in msg.recipients}
            out = results_for(msg, 451, "4.7.0", out.reason)
        if out is LOGGED:
            if self.metrics is not None:
                self._count_delivered(msg, env.arrival, self.clock.time())
        else:
            now = self.clock.time()  # the outcome's time: the records' time and delay, and retries, count from it
            if len(out) != len(spooled) or any(r.status != DELIVERED for r in out):
                results = {rc.index: r for rc, r in zip(msg.recipients, out)}
                self._run_task(self._record(env, spooled, msg, results, now, held), qid, last=True)
                return
            if self.metrics is not None:
                self._count_delivered(msg, env.arrival, now)
            for rc, res in zip(msg.recipients, out):
                self.dlog.record(queue_id=qid, recipient=rc.address, status=DELIVERED, result=res,
                                 attempt=spooled[rc.index].attempts + 1, arrival=env.arrival, now=now)
            hooked = None
            if self.events is not None and self.events.delivered:  # webhooks: durable with the DELETE
                hooked = [self.events.outcome("delivered", queue_id=qid, recipient=rc.address, status=DELIVERED,
                                              result=res, attempt=spooled[rc.index].attempts + 1,
                                              arrival=env.arrival, now=now)
                          for rc, res in zip(msg.recipients, out)]
            if self.hooks.on_delivered:  # told once the outcome is durable
                notes = notes_of(env)
                events = [make_event(qid, rc.address, res, spooled[rc.index].attempts + 1, None, notes)
                          for rc, res in zip(msg.recipients, out)]
                self.store.delete_then(qid, lambda error: self._deleted(qid, error, events), hooked)
                return
            if hooked:
                self.store.delete_then(qid, lambda error: self._end(qid, None if error is None else SpoolError(error)),
                                       hooked)
                return
        self.store.delete_then(qid, lambda error: self._end(qid, None if error is None else SpoolError(error)))

    def _count_delivered(self, msg: OutMessage, arrival: float, now: float) -> None:
        """Every recipient of `msg` delivered: its counts, by the first recipient's domain."""
        m, n = self.metrics, len(msg.recipients)
        m.delivered += n
        m.sites.add(split(msg.recipients[0].address)[1], 0, n)
        m.latency.observe(now - arrival, n)

    def _deleted(self, qid: str, error: str | None, events: list) -> None:
        self._end(qid, None if error is None else SpoolError(error))
        if error is None:
            for event in events:
                self.hooks.notify(self.hooks.on_delivered, event)

    async def _record(self, env, spooled: list, msg: OutMessage, results: dict[int, RcptResult],
                      now: float, held: dict | None = None) -> None:
        """`spooled`: env.recipients, read once by the caller; `held`: recipients shaping
        held back (index -> Throttled): due again at its `until`, no attempt counted, no
        delivery-log record, no hook (nothing was tried)."""
        expired = now - env.arrival > self.dcfg.max_lifetime
        changes, failures, events = [], [], []
        notes = notes_of(env) if self._observed else None
        recorder, hooked = self.events, []
        replan = False  # a retry falls before the loop's next look at the store
        m = self.metrics
        by_index = {rc.index: rc for rc in msg.recipients}
        for index, res in results.items():
            rc = by_index[index]
            if held and index in held:
                t = held[index]
                self.suspended[msg.queue_id] = t.until
                changes.append((index, DEFERRED, spooled[index].attempts, t.until, res.reply()))
                replan = replan or t.until < self._wake_at
                continue
            attempts = spooled[index].attempts + 1
            if expired and res.status == DEFERRED:
                res = res._replace(code=550, enhanced="4.4.7", text=f"delivery time expired; last error: {res.reply()}")
            outcome = res.outcome
            retry_at = None
            if outcome.status == DEFERRED:
                retry_at = now + self._delay(attempts)
                replan = replan or retry_at < self._wake_at
            elif outcome.status == BOUNCED:
                failures.append((rc, res))
            change = (index, outcome.status, attempts, retry_at, outcome.reply())
            if self._observed:
                event = make_event(msg.queue_id, rc.address, res, attempts, retry_at, notes)
                if outcome.status == DEFERRED and self.hooks.on_deferred:
                    nxt = await self.hooks.deferred(event)  # a Route: where its next attempt goes
                    if nxt is not None:
                        change += (nxt.full_text(),)
                events.append((outcome.status, event))
            changes.append(change)
            if m is not None:
                domain = split(rc.address)[1]
                if outcome.status == DELIVERED:
                    m.delivered += 1
                    m.sites.add(domain, 0)
                    m.latency.observe(now - env.arrival)
                elif outcome.status == DEFERRED:
                    m.deferred += 1
                    m.sites.add(domain, 1)
                else:
                    m.bounced += 1
                    m.sites.add(domain, 2)
                    m.latency.observe(now - env.arrival)
            self.dlog.record(queue_id=msg.queue_id, recipient=rc.address, status=outcome.status, result=res,
                             attempt=attempts, arrival=env.arrival, now=now)
            if recorder is not None and outcome.status in recorder.kinds:
                hooked.append(recorder.outcome(outcome.status, queue_id=msg.queue_id, recipient=rc.address,
                                               status=outcome.status, result=res, attempt=attempts,
                                               arrival=env.arrival, now=now))
        if failures:
            # The DSN is durable before any recipient is recorded bounced: a
            # crash in between can repeat the DSN, never lose it.
            await self._send_dsn(msg, failures)
        states = {i: r.state for i, r in enumerate(spooled)}
        states.update({c[0]: c[1] for c in changes})
        if all(s in FINAL for s in states.values()):
            # Every recipient is final: one DELETE record says it all (the
            # delivery log keeps the outcomes), so no STATE record first.
            await (self.store.delete(msg.queue_id, hooked) if hooked else self.store.delete(msg.queue_id))
        else:
            await (self.store.update(msg.queue_id, changes, hooked) if hooked else
                   self.store.update(msg.queue_id, changes))
            if replan:
                self.kick()
            if delay.due(self.delay_warning, env.delay_warned, env.arrival, now):
                await self._send_delay_notice(env, spooled, msg, changes, results, now)
        hooks = self.hooks
        for status, event in events:  # once the outcome is durable
            if status == DELIVERED:
                hooks.notify(hooks.on_delivered, event)
            elif status == BOUNCED:
                hooks.notify(hooks.on_bounced, event)

    def _delay(self, attempts: int) -> float:
        sched = self.dcfg.retry_schedule
        base = sched[attempts - 1] if attempts <= len(sched) else self.dcfg.retry_interval
        return base * (1 + self._jitter(0, self.dcfg.retry_jitter / 100))

    async def _send_dsn(self, msg: OutMessage, failures) -> None:
        qid = await notices.send_bounce(self.store, msg, failures, hostname=self.hostname,
                                        max_returned=self.bounce_max)
        if qid is not None:
            self.on_durable(qid)

    async def _send_delay_notice(self, env, spooled: list, msg: OutMessage, changes: list,
                                 results: dict, now: float) -> None:
        qid = await notices.send_delay_notice(self.store, self.dlog, env, spooled, msg, changes, results, now,
                                              hostname=self.hostname,
                                              retry_until=env.arrival + self.dcfg.max_lifetime)
        if qid is not None:
            self.on_durable(qid)


def _group(groups: list, spec: TransportSpec, rc: OutRcpt) -> None:
    """Add `rc` to its destination's group: one per spec, and per domain for MX."""
    domain = split(rc.address)[1] if spec.kind == "mx" else ""
    for g in groups:
        s = g[0]
        if (s is spec or s == spec) and g[1] == domain:
            g[2].append(rc)
            return
    groups.append([spec, domain, [rc]])


def _pool_name(answer) -> str:
    """An `egress` hook's answer: a pool's name."""
    if not isinstance(answer, str) or not answer:
        raise TypeError(f"returned {answer!r}: not None or a pool name")
    return answer


def _route_failed(rc: OutRcpt, e: Exception) -> RcptResult:
    log.error("route hook failed for %s: %s", rc.address, e)
    return RcptResult(rc.address, 451, "4.3.0", "routing error (route hook failed)")


def _subset(msg: OutMessage, rcpts: list[OutRcpt]) -> OutMessage:
    return OutMessage(msg.queue_id, msg.sender, tuple(rcpts), msg.data, msg.body, msg.smtputf8,
                      msg.ret, msg.envid, msg.arrival)
