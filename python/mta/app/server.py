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
from typing import TYPE_CHECKING, Callable, NamedTuple

from mta import log as fastlog
from mta import procs
from mta.errors import ConfigError, MtaError
from mta.app import privileges
from mta.app.control import socket_path
from mta.app.control_server import ControlServer
from mta.app.metrics import Metrics, Snapshots
from mta.auth.guard import AuthGuard
from mta.auth.senders import SenderLogin
from mta.auth.tokens import TokenDB
from mta.auth.users import UserDB
from mta.config import reload
from mta.config.reload import ConfigSource
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
from mta.queue.webhooks import Webhooks
from mta.smtp.limits import Limits
from mta.smtp.proxy import ProxyGate
from mta.smtp.rdns import ReverseResolver
from mta.smtp.sasl import MECHANISMS
from mta.smtp.seams import SessionSettings
from mta.smtp.session import Session
from mta.smtp.counts import TLS_FAILED, TLS_FULL, TLS_RESUMED
from mta.smtp.tls import HANDSHAKE_TIMEOUT, TlsContext, TlsError, build_contexts
from mta.smtp.tlstransport import implicit_tls

if TYPE_CHECKING:
    from mta.app import http, inject
    from mta.app.httpauth import Gate

log = logging.getLogger("mta")

SHUTDOWN_GRACE = 10.0
RETIRE_WAIT = 600.0  # seconds the plugins a reload replaced wait for their sessions to end


class _Parts(NamedTuple):
    """The components a reload replaces (Server._parts makes them, _install puts them in place)."""

    cfg: Config
    policy: RelayPolicy
    plugins: list
    router: Router
    rdns: ReverseResolver
    session_settings: SessionSettings
    users: UserDB | None
    sender_login: SenderLogin
    hooks: Chain
    proxy: ProxyGate


# On SIGTERM: stop accepting, let sessions finish their transaction (421 the idle
# ones), then close the spool (write, sync, complete what is in flight). SIGHUP re-reads
# the whole configuration (reload(): a new set of components for new connections and the
# next delivery attempts; open sessions go on with theirs). The shard's control
# socket (mta.app.control) lives from after the privilege drop until the start of the stop.
# The HTTP listener (mta.app.http) answers /health 503 from SIGTERM until the sessions
# are done, then closes before the queue and the spool do.
class Server:
    def __init__(self, cfg: Config, shard: int = 0, reuse_port: bool = False,
                 http_sockets: list[socket.socket] | None = None, run_id: int | None = None,
                 source: ConfigSource | None = None):
        self.cfg = cfg
        self.shard = shard
        self.reuse_port = reuse_port
        # Bound by the supervisor for all its workers (mta.app.workers), else by start().
        self.http_sockets = http_sockets
        self.run_id = run_id if run_id is not None else os.getpid()  # the workers' shared snapshot id
        self.metrics = Metrics((lst.address, lst.profile) for lst in cfg.listeners)
        self.http: http.HttpService | None = None
        self.gate: Gate | None = None  # made with the HTTP listener
        self.source = source  # where reload() reads the configuration again; None: it cannot
        self.injector: inject.Injector | None = None  # POST /api/inject/v1, made with the listener
        self.resolver = MxResolver(list(cfg.dns.nameservers) or None, port=cfg.dns.port, timeout=cfg.dns.timeout)
        # Everything a reload may replace (policy, plugins, router, settings, users, ...): made
        # by _parts, installed by _install, both again by apply().
        self._install(self._parts(cfg, None))
        a = cfg.auth
        self.auth_guard = AuthGuard(max_failures=a.max_failures, window=a.failure_window, tarpit_max=a.tarpit_max)
        # Raises TlsError (an MtaError) if the files are unusable at start-up.
        self.tls: TlsContext | None = TlsContext(cfg.tls) if cfg.tls.cert else None
        self.sessions: set[Session] = set()
        self.limits = Limits(cfg.limits)
        self.spool: SpoolService | None = None
        self.shaper: Shaper | None = None  # made with the queue manager
        self.smtp_client: SmtpDelivery | None = None  # the in-process delivery client, if deliveries run here
        self.smtp_transport: Smtp | None = None  # MX, smarthost and LMTP routes (made with the queue manager)
        self.queue: QueueManager | None = None
        self.webhooks: Webhooks | None = None  # made with the spool; senders start with the queue
        self.control: ControlServer | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._factories: list[tuple] = []  # (listener, [its session factory]): swapped by a reload
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()
        self._stopping = asyncio.Event()
        self._sweep_timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.affinity = procs.Affinity(cfg.cpu_affinity, shard)

    def _parts(self, cfg: Config, plugins: list | None) -> _Parts:
        """What a reload replaces, made from `cfg`; no event loop needed (a reload makes them
        in a thread: importing plugins and reading keys and files may take a while).
        `plugins`: the running plugin entries, kept when [[plugin]] did not change; None: load
        them (Plugin(options) per worker; ConfigError names the bad one)."""
        policy = RelayPolicy(Networks(cfg.mynetworks), cfg.local_domains, cfg.relay_domains)
        if plugins is None:
            plugins = loader.load(cfg.plugin, cfg.delivery.route_hook)
        router = Router(cfg, Chain(plugins))
        a = cfg.auth  # SMTP AUTH (mta.smtp.submission): no user file, no AUTH.
        users = UserDB(a.users_file) if a.users_file else None
        sender_login = SenderLogin.from_config(a)
        # The hook chain: the built-in policies first, then the plugins, in config order,
        # then the DKIM signer. Keyring raises ConfigError for a key it cannot use.
        hooks = builtins.chain(policy, router.expand, sender_login if users is not None else None, plugins,
                               verify=builtins.verifier(cfg.verify, self.resolver, cfg.hostname),
                               sign=builtins.signer(cfg.dkim),
                               pool=builtins.pool_header(cfg.egress.pool_header))
        return _Parts(cfg, policy, plugins, router, ReverseResolver(cfg.smtp.reverse_dns_timeout, cfg.smtp.reverse_dns),
                      SessionSettings.from_config(cfg, MECHANISMS), users, sender_login, hooks, ProxyGate(cfg))

    def _install(self, p: _Parts) -> None:
        self.cfg = p.cfg
        self.policy, self.plugins, self.router, self.rdns = p.policy, p.plugins, p.router, p.rdns
        self.session_settings, self.users, self.sender_login = p.session_settings, p.users, p.sender_login
        self.hooks, self.proxy = p.hooks, p.proxy
        if self.injector is not None:  # POST /api/inject/v1 takes the new chain too
            self.injector.use(self.hooks, self.session_settings, self.policy)

    async def reload(self) -> tuple[bool, list[str]]:
        """Read the configuration again (the file and `mta run`'s flags) and apply it: SIGHUP,
        `mta reload`, the HTTP admin API. (ok, messages): the errors when it was refused (the
        running config stays), else what changed and what waits for a restart."""
        async with self._reload_lock:
            if self.source is None:
                log.error("reload: refused: this server was started without a configuration source")
                return False, ["this server was started without a configuration source"]
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, self.source.load)
            except ConfigError as e:
                return self._refused(e.errors)
            return await self._apply(new)

    async def apply(self, new_cfg: Config) -> tuple[bool, list[str]]:
        """Swap in the components made from `new_cfg` (valid, as config.load gives it): new
        connections and the next delivery attempts use them; sessions in progress finish with
        what they were made with, whose plugins are stopped once those sessions have ended.
        Restart-only keys keep their running values and are logged as ignored."""
        async with self._reload_lock:
            return await self._apply(new_cfg)

    async def _apply(self, new_cfg: Config) -> tuple[bool, list[str]]:
        if self._stopping.is_set():  # stop() is retiring the components: nothing new may start
            return self._refused(["the server is stopping"])
        loop = asyncio.get_running_loop()
        plan = reload.plan(self.cfg, new_cfg)
        cfg = plan.config
        for item in plan.ignored:
            log.warning("reload: ignored until restart: %s", item)
        same_plugins = (cfg.plugin, cfg.delivery.route_hook) == (self.cfg.plugin, self.cfg.delivery.route_hook)

        def build() -> tuple[_Parts, object]:
            parts = self._parts(cfg, self.plugins if same_plugins else None)
            return parts, build_contexts(cfg.tls, self.tls.keys) if self.tls is not None else None
        try:
            parts, tls_ctx = await loop.run_in_executor(None, build)
        except TlsError as e:
            return self._refused([f"{e}; keeping the certificate loaded before"])
        except (MtaError, OSError) as e:  # ConfigError (plugins, DKIM keys), a users file
            return self._refused(e.errors if isinstance(e, ConfigError) else [str(e)])
        old_hooks = self.hooks
        if same_plugins:
            parts.hooks.adopt(old_hooks)  # the same running plugins: not set up again
        try:
            await parts.hooks.start()
        except ConfigError as e:
            return self._refused(e.errors)
        parts.hooks.adopt(old_hooks)  # a module-level plugin is one module: set up anew, not stopped
        # The swap: no await from here to the end, so no connection or attempt sees half of it.
        old_sessions, old_active = set(self.sessions), set(self.queue.active) if self.queue else set()
        old_webhooks = self.cfg.webhook
        self._install(parts)
        a = cfg.auth
        if (a.max_failures, a.failure_window, a.tarpit_max) != (self.auth_guard.max_failures,
                                                               self.auth_guard.window, self.auth_guard.tarpit_max):
            self.auth_guard = AuthGuard(max_failures=a.max_failures, window=a.failure_window, tarpit_max=a.tarpit_max)
        self.limits.cfg = cfg.limits  # counts go on; each session keeps the guard it was made with
        if tls_ctx is not None:
            self.tls.use(cfg.tls, tls_ctx)
        if self.smtp_client is not None:
            self.smtp_client.tls.forget()  # trust anchors are read again (a changed ca_file)
        for lst, cell in self._factories:
            cell[0] = self.session_factory(lst)
        if self.queue is not None:
            if cfg.webhook != old_webhooks:
                self._swap_webhooks()
            self._swap_delivery()
        task = loop.create_task(self._retire(old_hooks, old_sessions, old_active))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        what = reload.summary(plan.changed)
        log.info("reload: applied (changed: %s)", what)
        return True, [f"changed: {what}"] + [f"ignored until restart: {i}" for i in plan.ignored]

    def _refused(self, errors: list[str]) -> tuple[bool, list[str]]:
        log.error("reload: refused: %s", "; ".join(errors))
        return False, list(errors)

    def _swap_webhooks(self) -> None:
        """New senders for changed [[webhook]] tables. Recording switches at once (the store and
        the queue manager); the old senders finish or abandon their POST, then the new ones
        start from the cursors the spool keeps per webhook name (so nothing is sent twice by two
        senders at once, and nothing recorded meanwhile is lost)."""
        old = self.webhooks
        self.webhooks = new = Webhooks(self.cfg.webhook, self.spool)
        self.queue.use_events(self.spool.events)

        async def handover() -> None:
            if old is not None:
                await old.stop(grace=5.0)
            if not self._stopping.is_set():
                new.start()
        task = self.loop.create_task(handover())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _agent_report(self) -> bool | str:
        """What the delivery agent sends back with a job it delivered and logged: its rows for
        on_delivered hooks (True); for webhooks alone, the delivery log's text it wrote ("log":
        the delivered events are made from it in Rust, no row comes back); else nothing."""
        if self.hooks.on_delivered:
            return True
        return "log" if self.spool.events is not None and self.spool.events.delivered else False

    def _swap_delivery(self) -> None:
        """The queue's router, transports and hooks, and the shaper's rules, from self.cfg.
        The new SMTP transport shares the running one's wire (the delivery agent), resolver
        and MTA-STS cache; the old one goes with the attempts that hold it."""
        cfg, d = self.cfg, self.cfg.delivery
        old = self.queue.transports.smtp
        egress = egress_of(cfg)
        self.shaper.reconfigure(shaping_of(cfg), egress, d.max_active, cfg.shaping.max_site_share / 100,
                                hooks=self.hooks)
        smtp = Smtp(old.wire, old.resolver, old.tls_policy, d, cfg.hostname,
                    report=self._agent_report(),
                    shaper=self.shaper, tls_engine=cfg.tls.engine)
        smtp.mx_sites = old.mx_sites  # /metrics names sites by what deliveries learnt so far
        self.smtp_transport = smtp
        self.queue.swap(self.router, Transports(smtp, Maildir(cfg.hostname)), self.hooks, d,
                        bounce_max=cfg.bounce.max_returned_size, pools=bool(egress.pools),
                        delay_warning=cfg.bounce.delay_warning)

    async def _retire(self, hooks: Chain, sessions: set, active: set) -> None:
        """Stop the replaced plugins once the sessions and attempts that may call them have
        ended (bounded: a session may go on for ever), or at once when the server stops."""
        def in_use() -> bool:
            return bool(sessions & self.sessions or (self.queue is not None and active & self.queue.active))
        deadline = self.loop.time() + RETIRE_WAIT
        while in_use() and not self._stopping.is_set() and self.loop.time() < deadline:
            await asyncio.sleep(0.1)
        if hooks.plugins and sessions & self.sessions:
            log.warning("reload: stopping the replaced plugins with %d session(s) still using them",
                        len(sessions & self.sessions))
        await hooks.stop()

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
        self.webhooks = Webhooks(self.cfg.webhook, self.spool)  # before the queue: it records events
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
        self.metrics.scans.append(lambda: self.webhooks.metrics_series() if self.webhooks else [])
        self.metrics.sources.append(self._counted_elsewhere)
        self.metrics.site_of = self._site_of
        if self.cfg.http.listen:
            # Here, not at the top: aiohttp takes ~85 ms to import, paid only with a listener.
            from mta.app import admin_http, http, inject
            from mta.app.httpauth import Gate

            if self.http_sockets is None:
                self.http_sockets = http.bind(self.cfg.http.listen)  # before the drop: ports under 1024
            snaps = Snapshots(self.cfg.spool.dir, self.shard, self.cfg.workers, self.run_id,
                              agents=self.smtp_client is None)
            # HTTPS: a front context of its own (its failed handshakes are not an SMTP listener's)
            https = self.tls.implicit_front() if self.cfg.http.tls and self.tls is not None else None
            self.http = http.HttpService(self.http_sockets, self.metrics, snaps,
                                         self._stopping.is_set, self.spool.has_room,
                                         max_body=self.cfg.http.max_body, ssl_context=https)
            self.gate = Gate(TokenDB(self.cfg.http.tokens_file))  # guards the /api/... routes
            admin_http.add_routes(self.http.app, self.gate, self.cfg.spool.dir, self.cfg)
            queue_durable, metrics = self.queue.on_durable, self.metrics

            def injected(qid, recipients=None, notes=None) -> None:  # as a session's on_durable
                metrics.accepted += 1
                queue_durable(qid, recipients, notes)
            self.injector = inject.add_routes(
                self.http.app, self.gate, store=self.spool, hooks=self.hooks, on_durable=injected,
                settings=self.session_settings, trust=self.policy, stopping=self._stopping.is_set)
        for slot, lst in enumerate(self.cfg.listeners):
            family = socket.AF_INET6 if ":" in lst.host else socket.AF_INET
            tls = {}
            # Through a cell, so that a reload hands new connections new collaborators.
            cell = [self.session_factory(lst)]
            self._factories.append((lst, cell))
            factory = lambda cell=cell: cell[0]()  # noqa: E731
            if lst.tls == "implicit" and self.tls is not None:
                # The session is made after the handshake (greeting over TLS); a failed
                # handshake has no session: the listener's counts take it.
                counts = self.metrics.listener_counts[slot]
                if self.tls.server is not None:
                    factory = implicit_rustls(self.tls, factory, counts)
                else:
                    tls = {"ssl": self.tls.implicit_front(counts), "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}
            srv = await loop.create_server(
                factory, lst.host, lst.port, family=family,
                reuse_address=True, reuse_port=self.reuse_port or None, backlog=1024,
                start_serving=False, **tls,
            )
            self._servers.append(srv)
        # Bound, not yet accepting: drop root before any client byte or delivery.
        privileges.drop(self.cfg.privileges, self.cfg.spool.dir,
                        (self.cfg.auth.users_file, self.cfg.http.tokens_file if self.http else ""))
        self.queue.start()
        self.webhooks.start()
        # The admin's way in (mta queue hold|release|delete|flush): made after
        # the privilege drop, so the socket belongs to the user that serves.
        self.control = ControlServer(self.spool, self.queue, self.queue.dlog,
                                     socket_path(self.cfg.spool.dir, self.shard), self.shard,
                                     throttle=self.throttle, flags_changed=self.shaper.flags_changed,
                                     reload=self.reload)
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
        smtp = self.smtp_transport = Smtp(
            self._wire(dlog), resolver, OutboundTls(sts, d.tls_report_interval), d, cfg.hostname,
            report=self._agent_report(), shaper=shaper, tls_engine=cfg.tls.engine)
        return QueueManager(self.spool, self.router, Transports(smtp, Maildir(cfg.hostname)), dlog, d,
                            cfg.hostname, bounce_max=cfg.bounce.max_returned_size, hooks=self.hooks,
                            pools=bool(egress.pools), metrics=self.metrics,
                            delay_warning=cfg.bounce.delay_warning)

    def _queue_gauges(self) -> dict[str, int]:
        """Messages by state for mta_queue_messages, from the index (a walk of its slots, no
        envelope read), at most once a second (the metrics tick). Neither held nor in
        flight: deferred."""
        active = self.queue.active
        total, held, oldest = self.spool.gauges()
        now = time.time()
        self._queue_extra = [["mta_queue_oldest_message_age_seconds", {}, max(0.0, now - (oldest or now))],
                             ["mta_queue_suspended_messages", {}, self.queue.suspended_count(now)]]
        return {"active": len(active), "deferred": max(0, total - held - len(active)), "held": held}

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

    def _on_hup(self) -> None:
        log.info("SIGHUP: reloading the configuration")
        task = self.loop.create_task(self.reload())
        self._retiring.add(task)  # kept referenced until done
        task.add_done_callback(self._retiring.discard)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
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
        if self.webhooks is not None:  # a POST in flight finishes or is abandoned; unsent events stay
            await self.webhooks.stop(grace=max(deadline - loop.time(), 1.0))
        if self._retiring:  # the plugins a reload replaced, and a reload in progress
            await asyncio.gather(*self._retiring, return_exceptions=True)
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


def implicit_rustls(tls: TlsContext, factory: Callable[[], asyncio.Protocol], counts: list[int]):
    """A protocol factory for an implicit-TLS listener with tls.engine = "rustls": the handshake
    with the current config (a reload's for new connections), then `factory`'s session. Its
    handshakes count in `counts` (mta.smtp.counts) as OpenSSL's implicit_front counts them."""
    def failed(e: Exception) -> None:
        log.info("implicit TLS handshake failed: %s", e)
        counts[TLS_FAILED] += 1

    def done(conn) -> None:
        counts[TLS_RESUMED if conn.resumed else TLS_FULL] += 1

    return implicit_tls(factory, lambda: tls.server.accept(), HANDSHAKE_TIMEOUT, failed, done)
