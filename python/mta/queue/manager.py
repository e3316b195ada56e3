"""Queue manager: turns spooled recipients into deliveries, retries and bounces.

The spool is the source of truth: this module keeps only a bounded window
of active messages (`delivery.max_active`) and asks the spool which
messages are due. Every outcome is a durable state record before the next
step depends on it: a DSN is spooled before its recipient is recorded
bounced, and a message is deleted only once all its recipients are final.
A crash between a peer's 250 and our state record can duplicate that one
delivery; nothing else is repeated and nothing is lost. The common attempt
(to one smarthost, its address at hand, through the delivery agent) runs on
callbacks instead of a task (`_start_fast`); a new message's first one has its
job made from the spool entry in Rust (`_start_spooled`). Their outcomes are
recorded exactly as the general path records them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING

from mta.queue import bounce
from mta.app import privileges
from mta.delivery import OutMessage, OutRcpt, RcptResult, Target, results_for
from mta.delivery.agent import LOGGED, UNSENT, AgentDelivery, Deferred
from mta.delivery.maildir import deliver_maildir_async
from mta.delivery.smtp.client import SmtpDelivery, SmtpOptions
from mta.queue.deliverylog import DeliveryLog
from mta.delivery.mx import MxResolver
from mta.errors import SpoolError
from mta.delivery.mtasts import MtaStsCache, OutboundTls
from mta.delivery.router import split

if TYPE_CHECKING:
    from mta.config.routes import TransportSpec
    from mta.app.server import Server

log = logging.getLogger("mta.queue")

FINAL = ("delivered", "bounced")
_MAX_SLEEP = 30.0
_FAILED_ATTEMPT_BACKOFF = 30.0


class QueueManager:
    def __init__(self, server: Server):
        self.server = server
        self.cfg = server.cfg
        self.dcfg = server.cfg.delivery
        self.spool = server.spool
        self.router = server.router
        dns = server.cfg.dns
        self.resolver = MxResolver(list(dns.nameservers) or None, port=dns.port, timeout=dns.timeout)
        # SMTP/LMTP peers are talked to in the delivery agent process (mta.delivery.agent)
        # or here; both have the same deliver() and close().
        self.dlog = DeliveryLog(self.dcfg.log_file or None)
        agent = self.dcfg.agent
        if agent and (why := privileges.helper_blocked(server.cfg.privileges, "mta.delivery.agent",
                                                       AgentDelivery.environment())):
            # Made before the privilege drop; the agent is started after it, as that user.
            log.error("the delivery agent could not start as user %s (%s): delivering in the "
                      "worker instead, as with delivery.agent = false", server.cfg.privileges.user, why)
            agent = False
        self.smtp = AgentDelivery(cpus=server.affinity.helpers, log_fd=self.dlog.fd,
                                  encode=self.spool.spool.encode_jobs) if agent else SmtpDelivery()
        # (transport, how the callback lane reaches it: see _start_fast), made at first use.
        self._lane: tuple[object, str | None] = (None, None)
        self._fast_ways: dict[int, tuple] = {}  # id(spec) -> _fast_way(spec)
        self._keeping_fresh = False  # the spool keeps new messages' bytes for encode_jobs
        self._fast: set[str] = set()  # queue ids of attempts on the callback lane
        self._fast_idle: asyncio.Event | None = None  # set by stop() to learn when _fast empties
        self._abandoned = False  # stop() gave up waiting for the callback lane
        sts = MtaStsCache(self.resolver, port=self.dcfg.mta_sts_port, ca_file=self.dcfg.mta_sts_ca_file,
                          timeout=self.dcfg.mta_sts_timeout) if self.dcfg.mta_sts else None
        self.tls_policy = OutboundTls(sts, self.dcfg.tls_report_interval)
        self.active: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start(); kept: each lookup is a getpid()
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._opts_cache: dict = {}  # (TransportSpec, lmtp) → SmtpOptions; specs come from the config
        self._refill = False  # due work is waiting for room in the window
        self._wake_at = 0.0  # when the scheduling loop next looks at the spool by itself
        self._backoff: dict[str, float] = {}  # queue id → monotonic time before which it is not retried
        self._excluded: set[str] = set()  # ids an administrator's operation owns (mta.control)

    # --- scheduling -----------------------------------------------------------

    def start(self) -> None:
        if not self.dcfg.enabled:
            log.info("delivery disabled (delivery.enabled = false): mail is accepted and kept")
            return
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="queue-manager")
        if isinstance(self.smtp, AgentDelivery):
            self.smtp.prestart()  # after the privilege drop (start() is called after it)
        self.tls_policy.start()

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

    def new_message(self, qid: str, recipients: list[tuple] | None = None) -> None:
        """A message just became durable: start on it at once when the
        window has room, without asking the spool what is due. `recipients`:
        its recipients as spooled ((address, notify, orcpt)), from the session
        that spooled it, for `_start_spooled`."""
        if self._task is None or self._stopping:
            return
        if len(self.active) < self.dcfg.max_active:
            if recipients is None or not self._start_spooled(qid, recipients):
                self._start(qid)
        else:
            self._refill = True  # taken up when the window drains to half

    def _start(self, qid: str) -> None:
        if qid in self._excluded or qid in self.active:
            # At most one attempt per message: a DSN's new_message() comes a loop turn
            # after it became durable, and _schedule() may have started it meanwhile.
            return
        self.active.add(qid)
        prep = self._prepare(qid)
        if prep is None:
            self._finished(qid, None)  # gone, held or nothing due
            return
        try:
            fast = self._start_fast(prep)
        except Exception as e:  # a bug: the message stays queued and is retried later
            self._finished(qid, e)
            return
        if fast:
            return
        self._run_task(self._attempt(prep), qid, self._finished)

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            started = self._schedule()
            next_due = self.spool.spool.next_due()
            delay = _MAX_SLEEP if next_due is None else min(max(next_due - time.time(), 0.0), _MAX_SLEEP)
            if delay == 0.0 and not started:
                # Everything due is in flight, backing off, or waiting for
                # room in the window: wait for a change instead of spinning.
                delay = 1.0
            self._wake_at = time.time() + delay
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
        now = time.monotonic()
        for qid in self.spool.spool.due(time.time(), room + len(self.active) + len(self._backoff)):
            if qid in self.active or qid in self._excluded or self._backoff.get(qid, 0) > now:
                continue
            self._backoff.pop(qid, None)
            self._start(qid)
            started += 1
            if started == room:
                self._refill = True  # more may be due than the window holds
                break
        return started

    def _run_task(self, coro, qid: str, end) -> None:
        """Run an attempt's coroutine as a task (stop() waits for it); `end(qid, exc)` once it is over."""
        task = self._loop.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            end(qid, None if t.cancelled() else t.exception())
        task.add_done_callback(done)

    def _finished(self, qid: str, exc: BaseException | None) -> None:
        self.active.discard(qid)
        if exc is not None:
            log.error("delivery attempt for %s failed: %r", qid, exc, exc_info=exc)
            # Its state did not change, so it is still due: retry later, not at once.
            self._backoff[qid] = time.monotonic() + _FAILED_ATTEMPT_BACKOFF
        if self._refill and len(self.active) <= self.dcfg.max_active // 2:
            # Work waits for room in the window: refill half of it at once
            # (one look at the spool per many completions, not one each).
            self._refill = False
            self.kick()

    async def stop(self, grace: float) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._fast:  # attempts on the callback lane end when their results come
            self._fast_idle = asyncio.Event()
            try:
                await asyncio.wait_for(self._fast_idle.wait(), grace)
            except asyncio.TimeoutError:
                # As a cancelled attempt: whatever comes back is not recorded, and the
                # message is tried again after the restart.
                self._abandoned = True
                self._fast.clear()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        await self.smtp.close()
        self.dlog.close()
        await self.tls_policy.stop()

    # --- one attempt for one message ----------------------------------------

    def _delay(self, attempts: int) -> float:
        sched = self.dcfg.retry_schedule
        base = sched[attempts - 1] if attempts <= len(sched) else self.dcfg.retry_interval
        return base * (1 + random.uniform(0, self.dcfg.retry_jitter / 100))

    def _prepare(self, qid: str, made: bool = False) -> tuple | None:
        """(envelope, its recipients as read once, the message) for an attempt;
        None when there is nothing to attempt (gone, held, nothing due). `made`: for
        an attempt already made of a fresh message (_spooled_done): its recipients are
        the ones still queued, held or not (a hold during the attempt stops retries,
        not the recording of this one)."""
        spool = self.spool.spool
        env = spool.get(qid)
        if env is None or (env.held and not made):
            return None
        data = self.spool.message_data(qid, env.size)
        now = time.time()
        spooled = env.recipients  # each read of the property builds the list anew
        rcpts = tuple([OutRcpt(r.address, r.notify, r.orcpt, i) for i, r in enumerate(spooled)
                       if (st := r.state) == "queued"
                       or (st == "deferred" and not made and (r.next_attempt or 0) <= now)])
        if data is None or not rcpts:
            return None
        msg = OutMessage(qid, env.sender, rcpts, data, env.body, env.smtputf8, env.ret, env.envid, env.arrival)
        return env, spooled, msg

    # --- the callback lane: the common case without a coroutine ----------------

    def _start_fast(self, prep: tuple) -> bool:
        """Start an attempt without a task when nothing in it can suspend but the
        delivery itself: every recipient due, routed without a hook to one smarthost
        or LMTP host that needs no lookup now (an address, or a name with fresh
        answers in the DNS cache), through a transport that takes a callback (the
        delivery agent once running; in the worker, the SMTP client when a pooled
        connection is at hand). False: the caller takes the general path. Its outcome
        is recorded as `_record` would (see _fast_done)."""
        smtp = self.smtp
        if self._lane[0] is not smtp:  # (tests put stand-ins in its place)
            self._lane = (smtp, "agent" if isinstance(smtp, AgentDelivery) else
                          "worker" if isinstance(smtp, SmtpDelivery) else
                          "other" if hasattr(smtp, "submit") else None)
        lane = self._lane[1]
        env, spooled, msg = prep
        rcpts = msg.recipients
        if lane is None or self._stopping or len(rcpts) != len(spooled):
            return False
        route = self._lane_route(rcpts)
        if route is None:
            return False
        key, opts, targets = route
        if lane == "agent":
            # The agent logs an all-delivered outcome itself (its CPU is the less busy one)
            # and answers LOGGED; anything else comes back as results, recorded here.
            attempts = tuple(spooled[rc.index].attempts + 1 for rc in rcpts) if len(rcpts) > 1 \
                else (spooled[rcpts[0].index].attempts + 1,)
            ok = smtp.submit(key, targets, opts, msg, lambda out: self._fast_done(env, spooled, msg, out),
                             log=(env.arrival, attempts))
        elif lane == "other":
            ok = smtp.submit(key, targets, opts, msg, lambda out: self._fast_done(env, spooled, msg, out))
        else:
            # In-process delivery (delivery.agent = false): the client's own lane
            # (mta.delivery.lane) answers with RcptResult rows, or with an error text.
            ok = smtp.submit(key, targets, opts, msg,
                             lambda rows: self._fast_done(env, spooled, msg, [RcptResult(*r) for r in rows]),
                             lambda text: self._fast_done(env, spooled, msg, _lane_error(msg, text)))
        if not ok:
            return False
        self._fast.add(msg.queue_id)
        return True

    def _start_spooled(self, qid: str, recipients: list[tuple]) -> bool:
        """A fresh message's first attempt through the delivery agent, routed as
        `_start_fast` routes, with its job made from the spool entry in Rust
        (AgentDelivery.submit_spooled): nothing of the message becomes a Python
        object unless the outcome needs recording (see _spooled_done). False: the
        caller takes `_start`."""
        smtp = self.smtp
        if not isinstance(smtp, AgentDelivery) or qid in self._excluded or qid in self.active:
            return False
        route = self._lane_route(recipients)
        if route is None:
            return False
        key, opts, targets = route
        if not self._keeping_fresh:  # from the first: the job takes the bytes from memory
            self._keeping_fresh = True
            self.spool.spool.keep_fresh(True)
        self.active.add(qid)
        self._fast.add(qid)
        if not smtp.submit_spooled(key, targets, opts, qid, self._spooled_done, self._spooled_logged):
            self._fast.discard(qid)
            self.active.discard(qid)
            return False
        return True

    def _spooled_logged(self, qids: list[str]) -> None:
        """`_start_spooled` jobs of one answer frame, every recipient delivered and logged
        by the agent: one DELETE group (one sync, one completion) for them all."""
        if not self._abandoned:
            self.spool.delete_many_then(qids, self._spooled_deleted)

    def _spooled_deleted(self, qids: list[str], error: str | None) -> None:
        exc = None if error is None else SpoolError(error)
        for qid in qids:
            self._fast_end(qid, exc)

    def _spooled_done(self, qid: str, out) -> None:
        """The outcome of a `_start_spooled` job that was not all delivered and logged by
        the agent (those go to `_spooled_logged`): recorded as `_fast_done` records it, from
        the spool's entry (the message was not touched meanwhile: it is active)."""
        if self._abandoned:
            return
        if out is UNSENT:  # not fresh after all: the general way (after a restart, if stopping)
            self._fast_end(qid, None)
            if not self._stopping:
                self._start(qid)
            return
        try:
            prep = self._prepare(qid, made=True)
        except Exception as e:  # unreadable now: retried after the back-off
            self._fast_end(qid, e)
            return
        if prep is None:
            self._fast_end(qid, None)
            return
        env, spooled, msg = prep
        if isinstance(out, Deferred):
            out = results_for(msg, 451, out.enhanced, out.text)
        self._fast_done(env, spooled, msg, out)

    def _lane_route(self, rcpts) -> tuple | None:
        """(destination key, options, targets) when every recipient (OutRcpts, or a
        session's (address, notify, orcpt): the address first either way) goes, with no
        route hook, to one smarthost or LMTP host whose address is at hand (a literal, or
        a name with fresh answers in the DNS cache); None when a coroutine is needed."""
        fixed = self.router.fixed
        spec = fixed(rcpts[0][0])
        if spec is None:
            return None
        for r in rcpts[1:]:
            s = fixed(r[0])
            if s is not spec and s != spec:
                return None
        way = self._fast_ways.get(id(spec))
        if way is None or way[0] is not spec:
            way = self._fast_way(spec)
            if way is None:
                return None
        _, key, opts, targets = way
        if targets is None:
            res = self.resolver.cached_host(spec.host, spec.port)
            if res is None or not res.targets:
                return None
            targets = res.targets
        return key, opts, targets

    def _fast_way(self, spec: TransportSpec) -> tuple | None:
        """(spec, destination key, options, targets or None: a name, ask the DNS cache) for a
        transport the callback lane takes; None for the others. Kept per spec object
        (the router hands out the configuration's own): a spec's hash and options are
        made once, not per message."""
        kind = spec.kind
        if kind not in ("smarthost", "lmtp"):
            return None
        targets = (Target(spec.host, "unix", 0),) if kind == "lmtp" and spec.port == 0 else None
        if targets is None and (lit := self.resolver.literal_host(spec.host, spec.port)) is not None:
            targets = lit.targets  # an address: no DNS cache to ask per message
        if len(self._fast_ways) > 1000:  # a route hook may make specs on the fly
            self._fast_ways.clear()
        way = self._fast_ways[id(spec)] = (spec, f"{kind}:{spec.host}:{spec.port}",
                                           self._options(spec, lmtp=kind == "lmtp"), targets)
        return way

    def _fast_done(self, env, spooled: list, msg: OutMessage, out) -> None:
        """Every recipient delivered: the delivery log (unless the agent wrote it: `out`
        is LOGGED) and one DELETE, no coroutine. Anything else (a deferral, a bounce and
        its DSN) goes through `_record`."""
        if self._abandoned:
            return
        qid = msg.queue_id
        if out is not LOGGED:
            now = time.time()  # the outcome's time: the records' time and delay, and retries, count from it
            if any(r.status != "delivered" for r in out):
                results = {rc.index: r for rc, r in zip(msg.recipients, out)}
                self._run_task(self._record(env, spooled, msg, results, now), qid, self._fast_end)
                return
            for rc, res in zip(msg.recipients, out):
                self.dlog.record(queue_id=qid, recipient=rc.address, status="delivered", result=res,
                                 attempt=spooled[rc.index].attempts + 1, arrival=env.arrival, now=now)
        self.spool.delete_then(qid, lambda error: self._fast_end(qid, None if error is None else SpoolError(error)))

    def _fast_end(self, qid: str, exc: BaseException | None) -> None:
        self._fast.discard(qid)
        self._finished(qid, exc)
        if not self._fast and self._fast_idle is not None:
            self._fast_idle.set()

    # --- one attempt for one message (the general path) ------------------------

    async def _attempt(self, prep: tuple) -> None:
        env, spooled, msg = prep
        rcpts = msg.recipients
        groups: dict[tuple, tuple[TransportSpec, str, list[OutRcpt]]] = {}
        results: dict[int, RcptResult] = {}
        router = self.router
        for rc in rcpts:
            domain = split(rc.address)[1]
            spec = router.fixed(rc.address)
            if spec is None:
                try:
                    spec = await router.route(rc.address, env)
                except Exception as e:  # a broken route hook defers, it does not lose mail
                    log.error("route hook failed for %s: %r", rc.address, e)
                    results[rc.index] = RcptResult(rc.address, 451, "4.3.0", "routing error (route hook failed)")
                    continue
            key = (spec, domain if spec.kind == "mx" else "")
            group = groups.get(key)
            if group is None:
                groups[key] = (spec, domain, [rc])
            else:
                group[2].append(rc)
        if len(groups) == 1 and not results:
            # The common case (one destination): no gather, no extra tasks.
            spec, domain, rs = next(iter(groups.values()))
            try:
                outcomes = [await self._deliver(spec, domain, msg)]
            except Exception as e:
                outcomes = [e]
        else:
            outcomes = await asyncio.gather(
                *(self._deliver(spec, domain, _subset(msg, rs)) for spec, domain, rs in groups.values()),
                return_exceptions=True,
            )
        for (spec, _domain, rs), out in zip(groups.values(), outcomes):
            if isinstance(out, BaseException):
                log.error("transport %s failed for %s: %r", spec.text(), msg.queue_id, out, exc_info=out)
                out = results_for(_subset(msg, rs), 451, "4.3.0", "internal delivery error")
            for rc, res in zip(rs, out):
                results[rc.index] = res
        await self._record(env, spooled, msg, results, time.time())  # the outcome's time

    async def _record(self, env, spooled: list, msg: OutMessage, results: dict[int, RcptResult],
                      now: float) -> None:
        """`spooled`: env.recipients, read once by the caller."""
        expired = now - env.arrival > self.dcfg.max_lifetime
        changes, failures = [], []
        replan = False  # a retry falls before the loop's next look at the spool
        by_index = {rc.index: rc for rc in msg.recipients}
        for index, res in results.items():
            rc = by_index[index]
            attempts = spooled[index].attempts + 1
            status = res.status
            if status == "deferred" and expired:
                res = res._replace(code=550, enhanced="4.4.7",
                              text=f"delivery time expired; last error: {res.reply()}")
                status = "bounced"
            if status == "bounced":
                failures.append((rc, res))
                changes.append((index, "bounced", attempts, None, res.reply()))
            elif status == "delivered":
                changes.append((index, "delivered", attempts, None, res.reply()))
            else:
                retry_at = now + self._delay(attempts)
                changes.append((index, "deferred", attempts, retry_at, res.reply()))
                replan = replan or retry_at < self._wake_at
            self.dlog.record(queue_id=msg.queue_id, recipient=rc.address, status=status, result=res,
                             attempt=attempts, arrival=env.arrival, now=now)
        if failures:
            # The DSN is durable before any recipient is recorded bounced: a
            # crash in between can repeat the DSN, never lose it.
            await self._send_dsn(msg, failures)
        states = {i: r.state for i, r in enumerate(spooled)}
        states.update({c[0]: c[1] for c in changes})
        if all(s in FINAL for s in states.values()):
            # Every recipient is final: one DELETE record says it all (the
            # delivery log keeps the outcomes), so no STATE record first.
            await self.spool.delete(msg.queue_id)
        else:
            await self.spool.update(msg.queue_id, changes)
            if replan:
                self.kick()

    async def _send_dsn(self, msg: OutMessage, failures) -> None:
        dsn = bounce.make_dsn(msg, failures, reporting_mta=self.cfg.hostname,
                              max_returned=self.cfg.bounce.max_returned_size)
        if dsn is None:
            if not msg.sender:
                log.info("dropped bounce for %s: the sender is <> (never bounce a bounce)", msg.queue_id)
            return
        qid = await self.spool.inject(dsn, sender="", recipient=msg.sender)
        log.info("bounce %s for %s to <%s> nrcpt=%d", qid, msg.queue_id, msg.sender, len(failures))
        self.new_message(qid)

    # --- transports ------------------------------------------------------------

    def _options(self, spec: TransportSpec, lmtp: bool = False) -> SmtpOptions:
        opts = self._opts_cache.get((spec, lmtp))
        if opts is None:
            if len(self._opts_cache) > 1000:  # a route hook may make specs on the fly
                self._opts_cache.clear()
            opts = self._opts_cache[(spec, lmtp)] = self._make_options(spec, lmtp)
        return opts

    def _make_options(self, spec: TransportSpec, lmtp: bool) -> SmtpOptions:
        return SmtpOptions(
            helo=self.cfg.hostname,
            tls=spec.tls or self.dcfg.tls,
            auth=spec.auth,
            max_connections=spec.connections or self.dcfg.max_connections,
            max_messages_per_connection=spec.per_connection or self.dcfg.messages_per_connection,
            lmtp=lmtp,
            ca_file=self.dcfg.tls_ca_file or None,
        )

    async def _deliver(self, spec: TransportSpec, domain: str, msg: OutMessage) -> list[RcptResult]:
        kind = spec.kind
        if kind == "discard":
            return results_for(msg, 250, "2.0.0", "discarded by the transport map")
        if kind == "maildir":
            out = []
            for rc in msg.recipients:
                local, rdomain = split(rc.address)
                path = spec.path.format(user=local.lower(), domain=rdomain, address=rc.address.lower())
                out.append(await deliver_maildir_async(path, msg, rc, self.cfg.hostname))
            return out
        if kind == "mx":
            res, policy = await asyncio.gather(self.resolver.resolve(domain, self.dcfg.smtp_port),
                                               self.tls_policy.policy(domain))
            if res.kind != "ok":
                return results_for(msg, res.code, res.enhanced, res.text)
            return await self.tls_policy.deliver(self.smtp, f"mx:{domain}", domain, policy, res.targets,
                                                 self._options(spec), msg)
        if kind == "lmtp" and spec.port == 0:
            targets = [Target(spec.host, "unix", 0)]
        else:
            targets = await self.resolver.addresses(spec.host, spec.port)
            if not targets:
                return results_for(msg, 451, "4.4.4", f"cannot resolve {spec.host}")
        return await self.smtp.deliver(f"{kind}:{spec.host}:{spec.port}", targets,
                                       self._options(spec, lmtp=kind == "lmtp"), msg)


def _lane_error(msg: OutMessage, text: str) -> list[RcptResult]:
    """A bug in the in-process lane: deferred and retried, as the agent's "err" answer is."""
    log.error("delivery lane: job for %s failed: %s", msg.queue_id, text)
    return results_for(msg, 451, "4.3.0", "internal delivery error")


def _subset(msg: OutMessage, rcpts: list[OutRcpt]) -> OutMessage:
    return OutMessage(msg.queue_id, msg.sender, tuple(rcpts), msg.data, msg.body, msg.smtputf8,
                      msg.ret, msg.envid, msg.arrival)
