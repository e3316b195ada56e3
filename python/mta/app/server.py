"""The wiring: builds each component of one worker from the config, hands each what it
uses, and runs them. The spool is open (and recovered) before any socket listens, so
nothing is acknowledged that the spool cannot hold; SIGTERM stops in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import Callable

from mta import log as fastlog
from mta import procs
from mta.app import http, privileges
from mta.app.control import ControlServer, socket_path
from mta.app.metrics import Metrics, Snapshots
from mta.auth.guard import AuthGuard
from mta.auth.senders import SenderLogin
from mta.auth.users import UserDB
from mta.config.schema import Config
from mta.delivery.agent import AgentDelivery
from mta.delivery.deliverylog import DeliveryLog
from mta.delivery.mtasts import MtaStsCache, OutboundTls
from mta.delivery.mx import MxResolver
from mta.delivery.shaping import backends as shaping_backends
from mta.delivery.shaping.shaper import Shaper
from mta.delivery.smtp.client import SmtpDelivery
from mta.config.shaping import egress_of, shaping_of
from mta.delivery.router import Router
from mta.delivery.transport import InProcess, Maildir, Smtp, Transports
from mta.policy import builtins, loader
from mta.policy.chain import Chain
from mta.policy.relay import Networks, RelayPolicy
from mta.queue.manager import QueueManager
from mta.queue.store import SpoolService
from mta.smtp.counts import TLS_FAILED
from mta.smtp.limits import Limits
from mta.smtp.proxy import ProxyGate
from mta.smtp.rdns import ReverseResolver
from mta.smtp.sasl import MECHANISMS
from mta.smtp.seams import SessionSettings
from mta.smtp.session import Session
from mta.smtp.tls import HANDSHAKE_TIMEOUT, TlsContext

log = logging.getLogger("mta")

SHUTDOWN_GRACE = 10.0


# On SIGTERM: stop accepting, let sessions finish their transaction (421 the idle
# ones), then close the spool (write, sync, complete what is in flight). SIGHUP re-reads
# the TLS certificate and key (mta.smtp.tls); open sessions go on. The shard's control
# socket (mta.app.control) lives from after the privilege drop until the start of the stop.
# The HTTP listener (mta.app.http) answers /health 503 from SIGTERM until the sessions
# are done, then closes before the queue and the spool do.
class Server:
    def __init__(self, cfg: Config, shard: int = 0, reuse_port: bool = False,
                 http_sockets: list[socket.socket] | None = None, run_id: int | None = None):
        self.cfg = cfg
        self.shard = shard
        self.reuse_port = reuse_port
        # Bound by the supervisor for all its workers (mta.app.workers), else by start().
        self.http_sockets = http_sockets
        self.run_id = run_id if run_id is not None else os.getpid()  # the workers' shared snapshot id
        self.metrics = Metrics((lst.address, lst.profile) for lst in cfg.listeners)
        self.http: http.HttpService | None = None
        self.policy = RelayPolicy(Networks(cfg.mynetworks), cfg.local_domains, cfg.relay_domains)
        # The plugins, made once per worker (Plugin(options)); ConfigError names the bad one.
        plugins = loader.load(cfg.plugin, cfg.delivery.route_hook)
        self.router = Router(cfg, Chain(plugins))
        self.rdns = ReverseResolver(cfg.smtp.reverse_dns_timeout, cfg.smtp.reverse_dns)
        self.session_settings = SessionSettings.from_config(cfg, MECHANISMS)
        # SMTP AUTH (mta.smtp.submission): no user file, no AUTH.
        a = cfg.auth
        self.users: UserDB | None = UserDB(a.users_file) if a.users_file else None
        self.auth_guard = AuthGuard(max_failures=a.max_failures, window=a.failure_window, tarpit_max=a.tarpit_max)
        self.sender_login = SenderLogin.from_config(a)
        self.resolver = MxResolver(list(cfg.dns.nameservers) or None, port=cfg.dns.port, timeout=cfg.dns.timeout)
        # The hook chain: the built-in policies first, then the plugins, in config order,
        # then the DKIM signer. Keyring raises ConfigError for a key it cannot use.
        self.hooks = builtins.chain(self.policy, self.router.expand,
                                    self.sender_login if self.users is not None else None, plugins,
                                    verify=builtins.verifier(cfg.verify, self.resolver, cfg.hostname),
                                    sign=builtins.signer(cfg.dkim),
                                    pool=builtins.pool_header(cfg.egress.pool_header))
        # Raises TlsError (an MtaError) if the files are unusable at start-up.
        self.tls: TlsContext | None = TlsContext(cfg.tls) if cfg.tls.cert else None
        self.sessions: set[Session] = set()
        self.limits = Limits(cfg.limits)
        self.proxy = ProxyGate(cfg)
        self.spool: SpoolService | None = None
        self.shaper: Shaper | None = None  # made with the queue manager
        self.smtp_client: SmtpDelivery | None = None  # the in-process delivery client, if deliveries run here
        self.smtp_transport: Smtp | None = None  # MX, smarthost and LMTP routes (made with the queue manager)
        self.queue: QueueManager | None = None
        self.control: ControlServer | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._stopping = asyncio.Event()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.affinity = procs.Affinity(cfg.cpu_affinity, shard)

    async def start(self) -> None:
        # Kept for the sessions: asyncio.get_running_loop() costs a getpid() syscall per call.
        loop = self.loop = asyncio.get_running_loop()
        # The spool's writer thread inherits this thread's CPUs when it starts:
        # the helpers' set first, then the event loop's own (mta.procs).
        procs.pin(self.affinity.helpers, "spool writer")
        self.spool = SpoolService(self.cfg.spool, self.cfg.smtp.max_header_size, self.shard, self.cfg.hostname)
        procs.pin(self.affinity.loop, "event loop")
        if self.affinity:
            log.info(self.affinity.describe())
        for line in self.spool.recovery_report:
            log.info("spool recovery: %s", line)
        self.spool.attach(loop)
        await self.hooks.start()  # setup(options) / Plugin.start(): before any client or delivery
        # The shared budgets (mta.delivery.shaping): this worker reads flags from it; its
        # delivery agent (or this process, without one) takes slots and tokens.
        self.throttle_desc = shaping_backends.describe(self.cfg, self.shard)
        self.throttle = shaping_backends.make(self.throttle_desc, owner=not self.cfg.delivery.agent)
        self.queue = self._queue_manager()
        self.metrics.gauges = self._queue_gauges
        self.metrics.spool_stats = self.spool.stats
        self._queue_extra: list[list] = []  # made by _queue_gauges's walk, at the same tick
        self.metrics.scans += [lambda: self._queue_extra, self._open_sessions]
        if self.smtp_client is not None:  # else the delivery agent writes its own snapshot
            self.metrics.scans.append(self.smtp_client.metrics_series)
        self.metrics.sources.append(self._counted_elsewhere)
        self.metrics.site_of = self._site_of
        if self.cfg.http.listen:
            if self.http_sockets is None:
                self.http_sockets = http.bind(self.cfg.http.listen)  # before the drop: ports under 1024
            snaps = Snapshots(self.cfg.spool.dir, self.shard, self.cfg.workers, self.run_id,
                              agents=self.smtp_client is None)
            self.http = http.HttpService(self.http_sockets, self.metrics, snaps,
                                         self._stopping.is_set, self.spool.has_room)
        for slot, lst in enumerate(self.cfg.listeners):
            family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
            tls = {}
            if lst.tls == "implicit" and self.tls is not None:
                # The session is made after the handshake (greeting over TLS); a failed
                # handshake has no session: the listener's context counts it.
                front = self.tls.implicit_front(self.metrics.listener_counts[slot], TLS_FAILED)
                tls = {"ssl": front, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}
            srv = await loop.create_server(
                self.session_factory(lst), lst.host, lst.port, family=family,
                reuse_address=True, reuse_port=self.reuse_port or None, backlog=1024,
                start_serving=False, **tls,
            )
            self._servers.append(srv)
        # Bound, not yet accepting: drop root before any client byte or delivery.
        privileges.drop(self.cfg.privileges, self.cfg.spool.dir, (self.cfg.auth.users_file,))
        self.queue.start()
        # The admin's way in (mta queue hold|release|delete|flush): made after
        # the privilege drop, so the socket belongs to the user that serves.
        self.control = ControlServer(self.spool, self.queue, self.queue.dlog,
                                     socket_path(self.cfg.spool.dir, self.shard), self.shard,
                                     throttle=self.throttle, flags_changed=self.shaper.flags_changed)
        await self.control.start()
        self._sweep()
        if self.http is not None:  # up before the first greeting: a probe that got one can scrape
            await self.http.start()
        for srv in self._servers:
            await srv.start_serving()
        for lst in self.cfg.listeners:  # logged once connectable: tests and admins wait for it
            shown = "" if lst.tls == "none" else f" tls={lst.tls}"
            log.info("listening on %s as %s profile=%s%s", lst.address, self.cfg.hostname, lst.profile, shown)

    def session_factory(self, listener) -> Callable[[], Session]:
        """A new Session per connection on `listener`, handed its collaborators (made
        once, here); after start() has made the spool and the queue."""
        settings, loop, store, sessions = self.session_settings, self.loop, self.spool, self.sessions
        metrics = self.metrics
        queue_durable = self.queue.on_durable
        replies, connections = metrics.by_verb, metrics.connections
        slot = next((i for i, lst in enumerate(self.cfg.listeners) if lst == listener), None)
        counts = metrics.listener_counts[slot] if slot is not None else None

        def on_durable(qid, recipients=None, notes=None) -> None:  # the 250 went out; the queue takes it
            metrics.accepted += 1
            queue_durable(qid, recipients, notes)
        policy, hooks, limits, proxy_gate, tls = self.policy, self.hooks, self.limits, self.proxy, self.tls
        rdns = self.rdns if self.cfg.smtp.reverse_dns else None
        users, auth_guard = self.users, self.auth_guard

        # Positional, in Session's order: binding fourteen keywords cost 0.5 us per connection.
        def new_session() -> Session:
            if slot is not None:
                connections[slot] += 1
            return Session(listener, settings, loop, store, on_durable, policy, hooks, limits, sessions,
                           rdns, proxy_gate, tls, users, auth_guard, replies, counts)

        return new_session
    def _queue_manager(self) -> QueueManager:
        cfg, d = self.cfg, self.cfg.delivery
        dlog = DeliveryLog(d.log_file or None)
        resolver = self.resolver
        sts = MtaStsCache(resolver, port=d.mta_sts_port, ca_file=d.mta_sts_ca_file,
                          timeout=d.mta_sts_timeout) if d.mta_sts else None
        egress = egress_of(cfg)
        shaper = self.shaper = Shaper(shaping_of(cfg), egress, self.throttle, d.max_active, cfg.shaping.max_site_share / 100,
                        hooks=self.hooks)
        smtp = self.smtp_transport = Smtp(self._wire(dlog), resolver, OutboundTls(sts, d.tls_report_interval), d,
                                          cfg.hostname, report=bool(self.hooks.on_delivered), shaper=shaper)
        return QueueManager(self.spool, self.router, Transports(smtp, Maildir(cfg.hostname)), dlog, d,
                            cfg.hostname, bounce_max=cfg.bounce.max_returned_size, hooks=self.hooks,
                            pools=bool(egress.pools), metrics=self.metrics)

    def _queue_gauges(self) -> dict[str, int]:
        """Messages by state for mta_queue_messages: a scan of the spool's entries, made
        at most once a second (the metrics tick). Neither held nor in flight: deferred."""
        active = self.queue.active
        deferred = held = 0
        oldest = now = time.time()
        for env in self.spool.list():
            if env.held:
                held += 1
            elif env.queue_id not in active:
                deferred += 1
            if env.arrival < oldest:
                oldest = env.arrival
        self._queue_extra = [["mta_queue_oldest_message_age_seconds", {}, max(0.0, now - oldest)],
                             ["mta_queue_suspended_messages", {}, self.queue.suspended_count(now)]]
        return {"active": len(active), "deferred": deferred, "held": held}

    def _open_sessions(self) -> list[list]:
        """mta_connections_open: the sessions by listener (a walk, at the metrics tick)."""
        n = {lst.address: 0 for lst in self.cfg.listeners}
        for s in self.sessions:
            if s.listener is not None:
                n[s.listener.address] = n.get(s.listener.address, 0) + 1
        return [["mta_connections_open", {"listener": a}, k] for a, k in n.items()]

    def _site_of(self, domain: str) -> str:
        """mta_deliveries_by_site's site of a recipient domain: the shaping site of its MX
        hosts (as last delivered to), its smarthost's or LMTP server's host, else itself
        (local transports, or route hooks that decide per message)."""
        spec = self.router.fixed("@" + domain)
        if spec is None or spec.kind in ("maildir", "discard"):
            return domain
        if spec.kind == "mx":
            return self.smtp_transport.mx_sites.get(domain, domain)
        return spec.host

    def _counted_elsewhere(self) -> list[list]:
        """The counters the hook chain and the resolvers keep, as /metrics series."""
        out = []
        for plugin, hook, calls, seconds, failures in self.hooks.hook_stats():
            labels = {"plugin": plugin, "hook": hook}
            out += [["mta_plugin_hook_calls", labels, calls], ["mta_plugin_hook_seconds", labels, seconds],
                    ["mta_plugin_hook_failures", labels, failures]]
        out += [["mta_dns_lookups", {"type": t, "status": st}, n] for (t, st), n in self.resolver.lookups.items()]
        out += [["mta_dns_lookups", {"type": "PTR", "status": st}, n] for st, n in self.rdns.lookups.items() if n]
        out += [["mta_dns_cache_hits", {"cache": "mx"}, self.resolver.cache_hits],
                ["mta_dns_cache_hits", {"cache": "rdns"}, self.rdns.cache_hits]]
        return out

    def _wire(self, dlog: DeliveryLog):
        """Where SMTP/LMTP transactions run: the delivery agent process, or this one
        (then `smtp_client`, whose pool and waits /metrics reads)."""
        cfg = self.cfg
        if not cfg.delivery.agent:
            self.smtp_client = SmtpDelivery(self.throttle)
            return InProcess(self.smtp_client)
        why = privileges.helper_blocked(cfg.privileges, "mta.delivery.agent", AgentDelivery.environment())
        if why:
            # Made before the privilege drop; the agent is started after it, as that user.
            log.error("the delivery agent could not start as user %s (%s): delivering in the "
                      "worker instead, as with delivery.agent = false", cfg.privileges.user, why)
            self.smtp_client = SmtpDelivery(self.throttle)
            return InProcess(self.smtp_client)
        metrics = ""
        if cfg.http.listen:  # its snapshot, beside the workers' (mta.app.metrics.Snapshots)
            os.makedirs(os.path.join(cfg.spool.dir, "metrics"), exist_ok=True)
            metrics = f"{os.path.join(cfg.spool.dir, 'metrics', f'agent-{self.shard}.json')}|{self.run_id}"
        return AgentDelivery(cpus=self.affinity.helpers, log_fd=dlog.fd, encode=self.spool.encode_jobs,
                             throttle=shaping_backends.encode(self.throttle_desc), metrics=metrics)

    def _sweep(self) -> None:
        """Close the sessions idle for smtp.idle_timeout; a session is closed at most
        a quarter of the timeout (or a second) late."""
        timeout = self.cfg.smtp.idle_timeout
        now = time.monotonic()
        for s in list(self.sessions):
            s.idle_check(now, timeout)
        self._sweep_timer = self.loop.call_later(min(timeout / 4, 1.0), self._sweep)

    def request_stop(self) -> None:
        self._stopping.set()

    def reload_tls(self) -> None:
        if self.tls is None:
            log.info("SIGHUP: no [tls] configured, nothing to reload")
            return
        self.tls.reload()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)
        # A worker blocks these until its handlers exist (workers.py).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        await self.start()
        await self._stopping.wait()
        await self.stop()

    async def stop(self) -> None:
        log.info("stopping: %d sessions open", len(self.sessions))
        if self.control is not None:
            await self.control.stop()
        for srv in self._servers:
            srv.close()
        for s in list(self.sessions):
            s.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_GRACE
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for s in list(self.sessions):
            s.force_close()
        if self.http is not None:  # /health said 503 until now
            await self.http.stop()
        # Let the last completions reach their sessions, finish (or cut
        # short) deliveries in flight, then flush the spool.
        while self.spool.pending and loop.time() < deadline + 5:
            await asyncio.sleep(0.01)
        await self.queue.stop(grace=max(deadline - loop.time(), 1.0))
        await self.hooks.stop()
        await self.throttle.close()
        while self.spool.pending and loop.time() < deadline + 10:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self.spool.close()
        fastlog.flush()
        st = self.spool.stats()
        log.info(
            "spool stats: messages=%d batches=%d syncs=%d bytes=%d failed_batches=%d",
            st.get("messages", 0), st.get("batches", 0), st.get("syncs", 0),
            st.get("bytes", 0), st.get("failed_batches", 0),
        )
        log.info("stopped")
