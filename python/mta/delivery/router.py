"""Where a recipient goes: the address book at RCPT time (aliases, virtual, local users)
and the route at delivery time (a `route_hook` first, then the transport map, local
domains, `relay_to`, MX); the spool holds final recipients, each with its own state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable

from mta.config.routes import TransportSpec, parse_transport
from mta.config.schema import Config
from mta.plugin import Reject

if TYPE_CHECKING:
    from mta.policy.chain import Chain

MAX_EXPANSION_DEPTH = 10
MAX_EXPANDED = 1000

UNKNOWN_USER = Reject(550, "5.1.1", "User unknown in local recipient table")
EXPANSION_LOOP = Reject(550, "5.4.6", "Alias expansion loop or too many recipients")

MX = TransportSpec("mx")


def split(address: str) -> tuple[str, str]:
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower()


class Router:
    def __init__(self, cfg: Config, plugins: Chain | None = None):
        self.cfg = cfg
        self.local_domains = cfg.local_domains
        self.transport = cfg.transport
        self.aliases = cfg.aliases
        self.virtual = {k.lower(): v for k, v in cfg.virtual.items()}
        self.local_recipients = cfg.local_recipients
        # The plugins' route hooks (mta.policy.chain), or None when no plugin routes.
        self.hooks = plugins if plugins is not None and plugins.route else None
        self.relay = parse_transport(f"smarthost {cfg.delivery.relay_to}") if cfg.delivery.relay_to else None
        self._routes: dict[str, TransportSpec] = {}  # domain as written -> lookup(domain)

    # --- the address book (RCPT time) -------------------------------------

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self.local_domains

    def _known_local(self, address: str) -> bool:
        local, domain = split(address)
        local_l = local.lower()
        if local_l == "postmaster" or address.lower() == "postmaster":
            return True
        if not self.local_recipients:
            return True  # no list configured: every local part exists (Postfix's empty local_recipient_maps)
        return (local_l in self.local_recipients or f"{local_l}@{domain}" in self.local_recipients
                or local_l in self.aliases or address.lower() in self.virtual)

    def expand(self, address: str) -> tuple[Reject | None, list[str]]:
        """(refusal or None, final recipients). Unknown local users are
        refused here, at RCPT, so nothing is bounced later to a forged sender."""
        if not self.virtual:
            domain = split(address)[1]
            if domain and not self.is_local(domain):
                return None, [address]  # relayed as it is: nothing to expand (the common case)
        out: list[str] = []
        seen: set[str] = set()

        def walk(addr: str, depth: int) -> Reject | None:
            key = addr.lower()
            if depth > MAX_EXPANSION_DEPTH or len(out) > MAX_EXPANDED:
                return EXPANSION_LOOP
            if key in seen:
                return None  # a loop back to an address already expanded: deliver it once
            seen.add(key)
            targets = self.virtual.get(key)
            local, domain = split(addr)
            if targets is None and (not domain or self.is_local(domain)):
                targets = self.aliases.get(local.lower())
                if targets is None and not self._known_local(addr):
                    return UNKNOWN_USER
            if targets is None:
                out.append(addr)
                return None
            for t in targets:
                if t.lower() == key:
                    out.append(addr)  # "alice: alice, bob" keeps a copy for alice herself
                    continue
                refusal = walk(t, depth + 1)
                if refusal is not None:
                    return refusal
            return None

        refusal = walk(address, 0)
        if refusal is not None:
            return refusal, []
        if address.lower() == "postmaster" and [a.lower() for a in out] == ["postmaster"]:
            domain = sorted(self.local_domains)[0] if self.local_domains else self.cfg.hostname
            out = [f"postmaster@{domain}"]
        return None, out

    # --- routing (delivery time) -------------------------------------------

    def lookup(self, domain: str) -> TransportSpec:
        """The configured transport for a domain (no hook)."""
        d = domain.lower().rstrip(".")
        probe = d
        while probe:
            spec = self.transport.get(probe)
            if spec is not None:
                return spec
            probe = probe.partition(".")[2]
        if self.is_local(d):
            return self.cfg.delivery.local_transport
        spec = self.transport.get("*")
        if spec is not None:
            return spec
        return self.relay or MX

    def fixed(self, address: str) -> TransportSpec | None:
        """The transport when no route hook can change it (what route() would
        return, without a coroutine); None when there is a hook to ask."""
        if self.hooks is not None:
            return None
        # Once per domain (this runs per recipient and attempt: no further call on a hit)
        spec = self._routes.get(address[address.rfind("@") + 1:] if "@" in address else "")
        return spec if spec is not None else self._table(address)

    def _table(self, address: str) -> TransportSpec:
        # Once per domain, not per message: the tables are the configuration's, fixed
        # for the router's life (a reload makes a new router).
        domain = address[address.rfind("@") + 1:] if "@" in address else ""
        spec = self._routes.get(domain)
        if spec is None:
            if len(self._routes) > 10000:  # many domains: start over rather than grow
                self._routes.clear()
            spec = self._routes[domain] = self.lookup(domain)
        return spec

    async def route(self, address: str, msg: Any = None) -> TransportSpec:
        spec = self.route_now(address, msg)
        return spec if isinstance(spec, TransportSpec) else await spec

    def route_now(self, address: str, msg: Any = None) -> TransportSpec | Awaitable[TransportSpec]:
        """The route, decided per message: the plugins' `route` hooks first (an answer wins),
        then the tables; without a coroutine when no hook had to wait. Raises RouteError
        (mta.policy.chain) when a hook failed: the caller defers the recipient."""
        if self.hooks is None:
            return self._table(address)
        spec = self.hooks.route_now(address, msg)
        if spec is None:
            return self._table(address)
        if isinstance(spec, TransportSpec):
            return spec
        return self._hooked_later(address, spec)

    async def _hooked_later(self, address: str, pending: Awaitable) -> TransportSpec:
        spec = await pending
        return self._table(address) if spec is None else spec
