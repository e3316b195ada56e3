"""The transports behind one interface: `submit(route, msg, done, log)` on callbacks when
nothing needs a coroutine (else False), `deliver(route, msg)` otherwise; both give one
RcptResult per recipient. SMTP/LMTP go through a wire (the delivery agent or in-process)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Callable, NamedTuple, Protocol, Sequence

from mta.config.routes import TransportSpec
from mta.delivery import OutMessage, RcptResult, Target, results_for
from mta.delivery.agent import LOGGED, UNSENT, Deferred
from mta.delivery.maildir import deliver_maildir_async
from mta.delivery.mtasts import OutboundTls
from mta.delivery.mx import MxResolver
from mta.delivery.router import split
from mta.delivery.shaping.shaper import Shaper
from mta.delivery.shaping.signals import Throttled
from mta.delivery.smtp.client import SmtpDelivery, SmtpOptions

log = logging.getLogger("mta.queue")

__all__ = ["LOGGED", "UNSENT", "Deferred", "Discard", "InProcess", "Maildir", "Route", "Smtp", "Transport",
           "Transports", "Wire"]

# What a wire's callbacks may get besides results (defined with the agent, which sends them):
# LOGGED (all delivered and logged by the agent), and for jobs made from the store UNSENT
# (nothing was sent) or Deferred (failed as a whole: the caller makes the 451s).
Done = Callable[[object], None]  # gets list[RcptResult], or LOGGED


class Route(NamedTuple):
    """Where a group of a message's recipients goes: the transport spec, and for MX
    the recipients' domain ("" for the others: one group per spec); the egress pool a
    plugin or the pool header named (tx.notes["pool"]), if any."""

    spec: TransportSpec
    domain: str
    pool: str | None = None
    view: object = None  # the queued message as plugins see it, when `shaping` hooks ask


class Transport(Protocol):
    def submit(self, route: Route, msg: OutMessage, done: Done, log: tuple | None = None) -> bool: ...

    def submit_spooled(self, route: Route, queue_id: str, done: Callable, logged: Callable) -> bool: ...

    async def deliver(self, route: Route, msg: OutMessage) -> list[RcptResult]: ...


class Wire(Protocol):
    """Runs SMTP/LMTP transactions: the delivery agent (mta.delivery.agent) or `InProcess`."""

    def submit(self, key: str, targets: Sequence[Target], opts: SmtpOptions, msg: OutMessage,
               done: Done, log: tuple | None = None) -> bool: ...

    def submit_spooled(self, key: str, targets: Sequence[Target], opts: SmtpOptions, queue_id: str,
                       done: Callable, logged: Callable) -> bool: ...

    async def deliver(self, key: str, targets: Sequence[Target], opts: SmtpOptions,
                      msg: OutMessage) -> list[RcptResult]: ...

    def prestart(self) -> None: ...

    async def close(self) -> None: ...


class InProcess:
    """SMTP in the worker (delivery.agent = false): `SmtpDelivery` with the wire's interface."""

    def __init__(self, smtp: SmtpDelivery | None = None) -> None:
        self.smtp = smtp or SmtpDelivery()

    def submit(self, key, targets, opts, msg: OutMessage, done: Done, log: tuple | None = None) -> bool:
        # The client's callback lane answers rows, or an error text for a bug in it:
        # deferred and retried then, as the agent's "err" answer is.
        return self.smtp.submit(key, targets, opts, msg, lambda rows: done([RcptResult(*r) for r in rows]),
                                lambda text: done(lane_error(msg, text)))

    def submit_spooled(self, *_args) -> bool:
        return False  # jobs made from the spool are the agent's

    async def deliver(self, key, targets, opts, msg: OutMessage) -> list[RcptResult]:
        return await self.smtp.deliver(key, targets, opts, msg)

    def prestart(self) -> None:
        pass

    async def close(self) -> None:
        await self.smtp.close()


def lane_error(msg: OutMessage, text: str) -> list[RcptResult]:
    log.error("delivery lane: job for %s failed: %s", msg.queue_id, text)
    return results_for(msg, 451, "4.3.0", "internal delivery error")


class _NoCallbacks:
    """A transport whose deliveries always take a coroutine."""

    def submit(self, route: Route, msg: OutMessage, done: Done, log: tuple | None = None) -> bool:
        return False

    def submit_spooled(self, route: Route, queue_id: str, done: Callable, logged: Callable) -> bool:
        return False


class Discard(_NoCallbacks):
    async def deliver(self, route: Route, msg: OutMessage) -> list[RcptResult]:
        return results_for(msg, 250, "2.0.0", "discarded by the transport map")


class Maildir(_NoCallbacks):
    def __init__(self, hostname: str) -> None:
        self.hostname = hostname

    async def deliver(self, route: Route, msg: OutMessage) -> list[RcptResult]:
        out = []
        for rc in msg.recipients:
            local, rdomain = split(rc.address)
            path = route.spec.path.format(user=local.lower(), domain=rdomain, address=rc.address.lower())
            out.append(await deliver_maildir_async(path, msg, rc, self.hostname))
        return out


class Smtp:
    """MX, smarthost and LMTP routes over `wire`. On callbacks (`submit`) when the peer's
    address is at hand: a smarthost or LMTP host given as an address, or a name with
    fresh answers in the DNS cache; MX routes (DNS and MTA-STS each time) and the rest
    take `deliver`."""

    def __init__(self, wire: Wire, resolver: MxResolver, tls_policy: OutboundTls, dcfg, hostname: str,
                 report: bool | str = False, shaper: Shaper | None = None, tls_engine: str = "rustls") -> None:
        self.wire = wire
        self.tls_engine = tls_engine  # opportunistic TLS out (tls.engine); verified TLS is OpenSSL's
        # Traffic shaping (mta.delivery.shaping.shaper): each message's egress source, its
        # site's budgets in the options, the site's share of the window, the reply rules.
        self.shaper = shaper
        self._shaped: dict[tuple, tuple] = {}  # (key, options, source, site, shape) -> (key, options)
        # Recipient domain -> the site of its MX hosts, as last delivered to (for /metrics:
        # mta_deliveries_by_site); bounded like the other tables here.
        self.mx_sites: dict[str, str] = {}
        self._fixed: dict[tuple, tuple] = {}  # (id(options), site) -> (options, (key, options)): see shape
        self._logged_by_site: dict[str, tuple] = {}  # site -> (logged, its wrapper)
        self.report = report  # jobs logged by the agent come back with their rows or log text (SmtpOptions.report)
        self.resolver = resolver
        self.tls_policy = tls_policy
        self.dcfg = dcfg
        self.hostname = hostname
        self._opts_cache: dict = {}  # (TransportSpec, lmtp) -> SmtpOptions; specs come from the config
        self._ways: dict[int, tuple] = {}  # id(spec) -> (spec, key, options, targets or None)

    def start(self) -> None:
        self.wire.prestart()  # after the privilege drop: the agent runs as the serving user
        self.tls_policy.start()

    async def close(self) -> None:
        await self.wire.close()
        await self.tls_policy.stop()

    def submit(self, route: Route, msg: OutMessage, done: Done, log: tuple | None = None) -> bool:
        at = self.at_hand(route.spec)
        if at is None:
            return False
        key, opts, targets = at
        shaper = self.shaper
        if shaper is None:
            return self.wire.submit(key, targets, opts, msg, done, log=log)
        site = route.spec.host
        rcpt = msg.recipients[0].address
        if shaper.admit(site, rcpt=rcpt) is not None:
            return False  # `deliver` answers it (suspended, or over the site's share)
        key, opts = self.shape(route, key, opts, site, msg.sender, rcpt)
        if self.wire.submit(key, targets, opts, msg, lambda out: done(self._outcome(site, out)), log=log):
            return True
        shaper.done(site)
        return False

    def submit_spooled(self, route: Route, queue_id: str, done: Callable, logged: Callable) -> bool:
        """A fresh message's job made from its spool entry (the agent's; False elsewhere)."""
        at = self.at_hand(route.spec)
        if at is None:
            return False
        key, opts, targets = at
        shaper = self.shaper
        if shaper is None:
            return self.wire.submit_spooled(key, targets, opts, queue_id, done, logged)
        if not shaper.spooled_ok(route.pool):
            return False  # the sender or a recipient's domain decides: `submit` has the message
        site = route.spec.host
        if shaper.admit(site, route.domain) is not None:
            return False
        key, opts = self.shape(route, key, opts, site, "", "")

        def answered(qid: str, out) -> None:
            done(qid, self._outcome(site, out))
        if self.wire.submit_spooled(key, targets, opts, queue_id, answered, self._logged(site, logged)):
            return True
        shaper.done(site)
        return False

    def _logged(self, site: str, logged: Callable) -> Callable:
        """`logged` that also ends the site's attempts in the shaper: one per site, as the
        agent answers the jobs of one callback together (one DELETE group for them all)."""
        hit = self._logged_by_site.get(site)
        if hit is None or hit[0] is not logged:
            shaper = self.shaper
            if len(self._logged_by_site) > 1000:
                self._logged_by_site.clear()

            def all_logged(qids: list[str], *rest) -> None:
                for _ in qids:
                    shaper.done(site)
                logged(qids, *rest)
            hit = self._logged_by_site[site] = (logged, all_logged)
        return hit[1]

    def _outcome(self, site: str, out):
        self.shaper.done(site)
        return self.shaper.outcome(site, out)

    def shape(self, route: Route, key: str, opts: SmtpOptions, site: str, sender: str,
              rcpt: str) -> tuple[str, SmtpOptions]:
        """The destination key and options of one message: its egress source (bound
        address, EHLO name; the connection pool is per source) and its site's shape."""
        if self.shaper.fixed:  # no pool, no rule: the same for every message of (options, site)
            hit = self._fixed.get((id(opts), site))
            if hit is not None and hit[0] is opts:
                return hit[1]
            if len(self._fixed) > 1000:
                self._fixed.clear()
            source, shape = self._pick(route, site, sender, rcpt)
            out = self._shaped_options(key, opts, source, site, shape)
            self._fixed[(id(opts), site)] = (opts, out)
            return out
        source, shape = self._pick(route, site, sender, rcpt)
        return self._shaped_options(key, opts, source, site, shape)

    async def shape_async(self, route: Route, key: str, opts: SmtpOptions, site: str, sender: str,
                          rcpt: str) -> tuple[str, SmtpOptions]:
        """`shape`, with the plugins' `shaping` hooks asked (when the route carries the view)."""
        source, shape = self._pick(route, site, sender, rcpt)
        if route.view is not None:
            shape = await self.shaper.adjusted(shape, site, source.name if source else "default", route.view)
        return self._shaped_options(key, opts, source, site, shape)

    def _pick(self, route: Route, site: str, sender: str, rcpt: str) -> tuple:
        spec = route.spec
        domain = route.domain or (split(rcpt)[1] if rcpt else "")
        return (self.shaper.source(sender, route.pool),
                self.shaper.shaping.shape(domain, site, spec.connections, spec.per_connection))

    def _shaped_options(self, key: str, opts: SmtpOptions, source, site: str, shape) -> tuple[str, SmtpOptions]:
        ck = (key, id(opts), source, site, shape)  # by identity: hashing the options costs 1.5 us
        hit = self._shaped.get(ck)
        if hit is not None and hit[2] is opts:
            return hit[0], hit[1]
        if len(self._shaped) > 1000:  # domains and sites come and go
            self._shaped.clear()
        name = source.name if source is not None else "default"
        mr, cr = shape.max_message_rate, shape.max_connection_rate
        shaped = replace(
            opts, helo=(source.ehlo if source is not None and source.ehlo else opts.helo),
            source_address=source.address if source is not None else None,
            shape_key=f"{name}|{site}", shaped=self.shaper.shaping.binding,
            max_connections=shape.connection_limit,
            max_messages_per_connection=shape.max_deliveries_per_connection,
            message_interval=mr.interval if mr else 0.0, message_burst=mr.burst if mr else 1,
            connection_interval=cr.interval if cr else 0.0, connection_burst=cr.burst if cr else 1)
        hit = self._shaped[ck] = (key if source is None else f"{key}@{name}", shaped, opts)
        return hit[0], hit[1]

    def at_hand(self, spec: TransportSpec) -> tuple | None:
        """(destination key, options, targets) when no lookup is needed now; None else."""
        way = self._ways.get(id(spec))
        if way is None or way[0] is not spec:
            way = self._way(spec)
            if way is None:
                return None
        _, key, opts, targets = way
        if targets is None:
            res = self.resolver.cached_host(spec.host, spec.port)
            if res is None or not res.targets:
                return None
            targets = res.targets
        return key, opts, targets

    def _way(self, spec: TransportSpec) -> tuple | None:
        # Kept per spec object (the router hands out the configuration's own): a spec's
        # key and options are made once, not per message.
        kind = spec.kind
        if kind not in ("smarthost", "lmtp"):
            return None
        targets = (Target(spec.host, "unix", 0),) if kind == "lmtp" and spec.port == 0 else None
        if targets is None and (lit := self.resolver.literal_host(spec.host, spec.port)) is not None:
            targets = lit.targets  # an address: no DNS cache to ask per message
        if len(self._ways) > 1000:  # a route hook may make specs on the fly
            self._ways.clear()
        way = self._ways[id(spec)] = (spec, f"{kind}:{spec.host}:{spec.port}",
                                      self.options(spec, lmtp=kind == "lmtp"), targets)
        return way

    async def deliver(self, route: Route, msg: OutMessage) -> list[RcptResult] | Throttled:
        spec, domain = route.spec, route.domain
        kind = spec.kind
        shaper = self.shaper
        if kind == "mx":
            res, policy = await asyncio.gather(self.resolver.resolve(domain, self.dcfg.smtp_port),
                                               self.tls_policy.policy(domain))
            if res.kind != "ok":
                return results_for(msg, res.code, res.enhanced, res.text)
            key, opts = f"mx:{domain}", self.options(spec)
            if shaper is None:
                return await self.tls_policy.deliver(self.wire, key, domain, policy, res.targets, opts, msg)
            site = shaper.site(t.host for t in res.targets)
            if len(self.mx_sites) > 10000:
                self.mx_sites.clear()
            self.mx_sites[domain] = site
            if (no := shaper.admit(site, domain)) is not None:
                return no
            try:
                key, opts = await self.shape_async(route, key, opts, site, msg.sender, "")
                out = await self.tls_policy.deliver(self.wire, key, domain, policy, res.targets, opts, msg)
            finally:
                shaper.done(site)
            return shaper.outcome(site, out)
        if kind == "lmtp" and spec.port == 0:
            targets = [Target(spec.host, "unix", 0)]
        else:
            targets = await self.resolver.addresses(spec.host, spec.port)
            if not targets:
                return results_for(msg, 451, "4.4.4", f"cannot resolve {spec.host}")
        key, opts = f"{kind}:{spec.host}:{spec.port}", self.options(spec, lmtp=kind == "lmtp")
        if shaper is None:
            return await self.wire.deliver(key, targets, opts, msg)
        site = spec.host
        if (no := shaper.admit(site, split(msg.recipients[0].address)[1])) is not None:
            return no
        try:
            key, opts = await self.shape_async(route, key, opts, site, msg.sender, msg.recipients[0].address)
            out = await self.wire.deliver(key, targets, opts, msg)
        finally:
            shaper.done(site)
        return shaper.outcome(site, out)

    def options(self, spec: TransportSpec, lmtp: bool = False) -> SmtpOptions:
        opts = self._opts_cache.get((spec, lmtp))
        if opts is None:
            if len(self._opts_cache) > 1000:  # a route hook may make specs on the fly
                self._opts_cache.clear()
            d = self.dcfg
            opts = self._opts_cache[(spec, lmtp)] = SmtpOptions(
                helo=self.hostname,
                tls=spec.tls or d.tls,
                auth=spec.auth,
                max_connections=spec.connections or d.max_connections,
                max_messages_per_connection=spec.per_connection or d.messages_per_connection,
                lmtp=lmtp,
                ca_file=d.tls_ca_file or None,
                tls_engine=self.tls_engine,
                report=self.report,
            )
        return opts


class Transports:
    """The transport for each kind of route."""

    def __init__(self, smtp: Smtp, maildir: Maildir, discard: Discard | None = None) -> None:
        self.smtp = smtp
        # A plain dict: looked up once per attempt.
        self.by_kind: dict[str, Transport] = {"mx": smtp, "smarthost": smtp, "lmtp": smtp,
                                              "maildir": maildir, "discard": discard or Discard()}

    def start(self) -> None:
        self.smtp.start()

    async def close(self) -> None:
        await self.smtp.close()
