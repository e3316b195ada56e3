"""Traffic shaping, egress and throttle configuration: the kinds of [egress], [shaping] and
[throttle] and the resolved objects the delivery code uses (Shaping, Egress, Pool). Every name
a resolved object holds was checked at load; only a Pool's round-robin position ever changes."""

from __future__ import annotations

import dataclasses
import decimal
import difflib
import fnmatch
import ipaddress
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from mta.config.kinds import BAD, Duration, Errors, Kind, Tables, domain_name

log = logging.getLogger("mta.config")

# The bounce classifier's categories (mta.delivery.classify): a public contract.
REPLY_CLASSES = (
    "invalid_recipient", "inactive_mailbox", "mailbox_full", "bad_domain", "invalid_sender",
    "message_too_large", "spam", "virus", "content", "policy", "authentication", "rate_limited",
    "bad_connection", "tls", "routing", "protocol", "transient", "other",
)
ACTIONS = ("suspend", "slow", "bounce")
SHAPE_KEYS = ("connection_limit", "max_connection_rate", "max_message_rate", "max_deliveries_per_connection")
# Names end up in throttle keys "<source>|<site>", so "|" (and anything odd) is out.
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_NAME_TEXT = "a name of letters, digits, '_', '.' and '-'"
_HEADER_RE = re.compile(r"[!-9;-~]+")  # RFC 5322 field name: printable ASCII but ':'
_GLOB_RE = re.compile(r"[A-Za-z0-9.*?\[\]!_-]+")
_RATE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?) */ *(s|min|h)")
_RATE_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}
_RATE_TEXT = 'a rate "N/s", "N/min" or "N/h" (N a positive number, decimals allowed), or "" for unlimited'


# ---------------------------------------------------------------------------
# The resolved objects
# ---------------------------------------------------------------------------

class Rate(NamedTuple):
    count: float
    per: float  # seconds

    @property
    def interval(self) -> float:
        """Seconds per token (GCRA's emission interval)."""
        return self.per / self.count

    @property
    def burst(self) -> int:
        """Half a second's worth of tokens, at least one."""
        return max(1, math.floor(self.count / self.per * 0.5))

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}[self.per]
        # The shortest exact decimal, never in exponent form (which parse_rate refuses).
        count = format(decimal.Decimal(repr(self.count)), "f").removesuffix(".0")
        return f"{count}/{unit}"


def parse_rate(text: str) -> Rate | None:
    """"100/s" -> Rate(100, 1.0); "" -> None (unlimited). ValueError if malformed."""
    if text.strip() == "":
        return None
    m = _RATE_RE.fullmatch(text.strip())
    if not m or float(m[1]) <= 0:
        raise ValueError(text)
    return Rate(float(m[1]), _RATE_UNITS[m[2]])


class Shape(NamedTuple):
    connection_limit: int
    max_connection_rate: Rate | None
    max_message_rate: Rate | None
    max_deliveries_per_connection: int


class Source(NamedTuple):
    name: str
    address: str | None  # None: the kernel's choice
    ehlo: str | None  # None: the top-level hostname


DEFAULT_SOURCE = Source("default", None, None)


class Pool:
    """Smooth weighted round robin (nginx's): every pick adds each source's weight to its
    current weight, takes the largest and subtracts the total from it. The picks are periodic
    with period sum(weights), each source `weight` times per period, spread out."""

    __slots__ = ("name", "sources", "_current", "_total")

    def __init__(self, name: str, sources: tuple[tuple[Source, int], ...]) -> None:
        self.name = name
        self.sources = sources
        self._current = [0] * len(sources)
        self._total = sum(w for _, w in sources)

    def next(self) -> Source:
        cur, best = self._current, 0
        for i, (_, weight) in enumerate(self.sources):
            cur[i] += weight
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self._total
        return self.sources[best][0]

    def __repr__(self) -> str:
        return f"Pool({self.name!r}, {[(s.name, w) for s, w in self.sources]!r})"


class ShapeRule(NamedTuple):
    domain: str | None  # "example.test" (and its subdomains) or "*.example.test" (subdomains only)
    site: str | None  # glob on MX host names, lower case
    overrides: tuple[tuple[str, Any], ...]  # only the keys the rule sets

    def matches(self, domain: str, site: str) -> bool:
        if self.domain is not None:
            if self.domain.startswith("*."):
                return domain.endswith(self.domain[1:])
            return domain == self.domain or domain.endswith("." + self.domain)
        return site_matches(self.site, site)


class ReplyRule(NamedTuple):
    match: re.Pattern | None
    cls: str | None
    site: str | None
    action: str
    duration: float  # seconds; 0.0 for bounce


_SITE_SPLIT = re.compile(r"[\s,|]+")


def site_matches(glob: str | None, site: str) -> bool:
    """A site names the MX hosts of a destination, one or several joined by ',', '|' or
    spaces; a glob matches the site if it matches any of its host names (or the whole)."""
    if glob is None:
        return True
    site = site.lower()
    if fnmatch.fnmatchcase(site, glob):
        return True
    return any(fnmatch.fnmatchcase(h.rstrip("."), glob) for h in _SITE_SPLIT.split(site) if h)


class Shaping:
    """The limits of each destination. shape() merges the default, a transport's own limits
    and the matching rules; reply_rule() picks the on_reply rule for a failure reply."""

    _CACHE_MAX = 4096

    def __init__(self, default: Shape, rules: tuple[ShapeRule, ...] = (),
                 on_reply: tuple[ReplyRule, ...] = ()) -> None:
        self.default = default
        self.rules = rules
        self.on_reply = on_reply
        self.binding = bool(rules or on_reply or default.max_connection_rate or default.max_message_rate)
        self._cache: dict[tuple, Shape] = {}

    def shape(self, domain: str, site: str, connections: int = 0, per_connection: int = 0) -> Shape:
        key = (domain, site, connections, per_connection)
        if (hit := self._cache.get(key)) is not None:
            return hit
        out = self.default
        if connections:
            out = out._replace(connection_limit=connections)
        if per_connection:
            out = out._replace(max_deliveries_per_connection=per_connection)
        d = domain.lower().rstrip(".")
        for rule in self.rules:
            if rule.matches(d, site):
                out = out._replace(**dict(rule.overrides))
        if len(self._cache) >= self._CACHE_MAX:  # bounded: destinations are unbounded
            self._cache.clear()
        self._cache[key] = out
        return out

    def reply_rule(self, site: str, line: str, cls: str) -> ReplyRule | None:
        for rule in self.on_reply:
            if ((rule.cls is None or rule.cls == cls) and site_matches(rule.site, site)
                    and (rule.match is None or rule.match.search(line))):
                return rule
        return None


class Egress:
    """Sources and pools, and which pool a message goes from."""

    def __init__(self, sources: dict[str, Source], pools: dict[str, Pool], default_pool: str = "",
                 pool_header: str = "", sender_pools: dict[str, str] | None = None) -> None:
        self.sources = sources
        self.pools = pools
        self.default_pool = default_pool
        self.pool_header = pool_header
        self.sender_pools = dict(sender_pools or {})
        self._warned: set[str] = set()

    def pool_for(self, sender: str, notes: dict | None) -> Pool | None:
        """notes["pool"] (a plugin's) wins, then sender_pools by the sender's domain (or a
        parent), then default_pool. None: the default source."""
        if notes and (name := notes.get("pool")):
            pool = self.pools.get(name) if isinstance(name, str) else None
            if pool is None and (key := repr(name)) not in self._warned:
                self._warned.add(key)
                log.warning("egress: unknown pool %s named by a plugin; sending from the default source", key)
            return pool
        if self.sender_pools and "@" in sender:
            domain = sender.rpartition("@")[2].lower().rstrip(".")
            while domain:
                if (name := self.sender_pools.get(domain)) is not None:
                    return self.pools[name]
                domain = domain.partition(".")[2]
        return self.pools[self.default_pool] if self.default_pool else None


def _shape_of_default(d: Any) -> Shape:
    return Shape(d.connection_limit, d.max_connection_rate, d.max_message_rate, d.max_deliveries_per_connection)


def shaping_of(cfg: Any) -> Shaping:
    s = cfg.shaping
    return Shaping(_shape_of_default(s.default), tuple(s.rule), tuple(s.on_reply))


def egress_of(cfg: Any) -> Egress:
    e = cfg.egress
    sources = {s.name: Source(s.name, s.address, s.ehlo or cfg.hostname) for s in e.source}
    pools = {p.name: Pool(p.name, tuple((sources[n], w) for n, w in p.sources)) for p in e.pool}
    return Egress(sources, pools, e.default_pool, e.pool_header, e.sender_pools)


# ---------------------------------------------------------------------------
# Kinds
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RateKind(Kind):
    type_name = 'string (rate "N/s", "N/min", "N/h", or "")'

    def parse(self, path, raw, errs):
        if isinstance(raw, str):
            try:
                return parse_rate(raw)
            except ValueError:
                pass
        errs.bad(path, _RATE_TEXT, raw)
        return BAD

    def render(self, value):
        return json.dumps("" if value is None else str(value))


@dataclass(frozen=True)
class PoolName(Kind):
    type_name = "string (pool name, or empty)"

    def parse(self, path, raw, errs):
        if not isinstance(raw, str) or (raw and not _NAME_RE.fullmatch(raw)):
            errs.bad(path, f"{_NAME_TEXT} (an [[egress.pool]]), or \"\"", raw)
            return BAD
        return raw


@dataclass(frozen=True)
class HeaderName(Kind):
    type_name = "string (header field name, or empty)"

    def parse(self, path, raw, errs):
        if not isinstance(raw, str) or (raw and not _HEADER_RE.fullmatch(raw)):
            errs.bad(path, 'a header field name such as "X-Pool" (printable ASCII, no ":" or space), or ""', raw)
            return BAD
        return raw


@dataclass(frozen=True)
class RedisUrl(Kind):
    type_name = "string (redis:// URL)"

    def parse(self, path, raw, errs):
        if not isinstance(raw, str) or not re.fullmatch(r"(rediss?|unix)://\S+", raw):
            errs.bad(path, 'a URL such as "redis://127.0.0.1:6379/0" (redis://, rediss:// or unix://)', raw)
            return BAD
        return raw


@dataclass(frozen=True)
class SenderPools(Kind):
    type_name = "table: sender domain → pool name"

    def parse(self, path, raw, errs):
        if not isinstance(raw, dict):
            errs.bad(path, 'a table of sender domain = "pool name"', raw)
            return BAD
        out, ok = {}, True
        for key, value in raw.items():
            domain = domain_name(key)
            if domain is None:
                errs.bad(f"{path}.{key}", "a sender domain name as the key", key)
                ok = False
            elif not isinstance(value, str) or not _NAME_RE.fullmatch(value):
                errs.bad(f"{path}.{key}", f"the name of an [[egress.pool]] ({_NAME_TEXT})", value)
                ok = False
            else:
                out[domain] = value
        return out if ok else BAD


@dataclass(frozen=True)
class SourceSpec:
    name: str
    address: str | None
    ehlo: str | None  # None: the top-level hostname


@dataclass(frozen=True)
class PoolSpec:
    name: str
    sources: tuple[tuple[str, int], ...]  # (source name, weight), in the table's order


def _missing(errs: Errors, path: str, key: str, expected: str) -> None:
    errs.items.append(f"{path}.{key}: missing ({expected})")


def _name(path: str, table: dict, errs: Errors) -> str | None:
    name = table.get("name")
    if "name" not in table:
        _missing(errs, path, "name", _NAME_TEXT)
    elif not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        errs.bad(f"{path}.name", _NAME_TEXT, name)
    else:
        return name
    return None


@dataclass(frozen=True)
class SourceTables(Tables):
    type_name = "array of tables (name, address, ehlo)"
    header = "egress.source"
    keys = ("name", "address", "ehlo")

    def label(self, value):
        return value.name

    def one(self, p, t, errs):
        name = _name(p, t, errs)
        if name == "default":  # the kernel's-choice source; a second one would share its budgets
            errs.bad(f"{p}.name", 'a name other than "default" (reserved for the default source)', name)
        address = t.get("address")
        if "address" not in t:
            _missing(errs, p, "address", "an IPv4 or IPv6 address to send from")
        else:
            try:
                # ip_address() would also take an int
                address = str(ipaddress.ip_address(address if isinstance(address, str) else "-"))
            except ValueError:
                errs.bad(f"{p}.address", 'an IPv4 or IPv6 address such as "192.0.2.7" or "2001:db8::7"', address)
        ehlo = t.get("ehlo")
        if ehlo is not None and (ehlo := domain_name(t["ehlo"])) is None:
            errs.bad(f"{p}.ehlo", "a host name for EHLO", t["ehlo"])
        return SourceSpec(name, address, ehlo)


@dataclass(frozen=True)
class PoolTables(Tables):
    type_name = "array of tables (name, sources)"
    header = "egress.pool"
    keys = ("name", "sources")

    def label(self, value):
        return value.name

    def one(self, p, t, errs):
        name = _name(p, t, errs)
        sources = t.get("sources")
        pairs = []
        if "sources" not in t:
            _missing(errs, p, "sources", "a table of source name = weight")
        elif not isinstance(sources, dict) or not sources:
            errs.bad(f"{p}.sources", "a non-empty table of source name = weight (an integer >= 1)", sources)
        else:
            for src, weight in sources.items():
                if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
                    errs.bad(f"{p}.sources.{src}", "a weight: an integer >= 1", weight)
                pairs.append((src, weight))
        return PoolSpec(name, tuple(pairs))


def _positive_int(path: str, raw: Any, errs: Errors) -> Any:
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 1:
        errs.bad(path, "a positive integer", raw)
        return BAD
    return raw


def _glob(path: str, raw: Any, errs: Errors) -> str | None:
    if not isinstance(raw, str) or not _GLOB_RE.fullmatch(raw):
        errs.bad(path, 'a glob on MX host names such as "*.mail.protection.outlook.com"', raw)
        return None
    return raw.lower().rstrip(".")


@dataclass(frozen=True)
class RuleTables(Tables):
    type_name = "array of tables (domain or site, and shaping keys)"
    header = "shaping.rule"
    keys = ("domain", "site") + SHAPE_KEYS

    def one(self, p, t, errs):
        domain = site = None
        if ("domain" in t) == ("site" in t):
            errs.items.append(f"{p}: expected exactly one of domain and site")
        elif "domain" in t:
            raw_d = t["domain"]
            wild = isinstance(raw_d, str) and raw_d.startswith("*.")
            domain = domain_name(raw_d[2:] if wild else raw_d)
            if domain is None:
                errs.bad(f"{p}.domain", 'a recipient domain such as "example.test" or "*.example.test"', raw_d)
            elif wild:
                domain = "*." + domain
        else:
            site = _glob(f"{p}.site", t["site"], errs)
        overrides = []
        for key in SHAPE_KEYS:
            if key in t:
                kind = RateKind() if "rate" in key else None
                v = (kind.parse(f"{p}.{key}", t[key], errs) if kind
                     else _positive_int(f"{p}.{key}", t[key], errs))
                overrides.append((key, v))
        return ShapeRule(domain, site, tuple(overrides))


@dataclass(frozen=True)
class ReplyTables(Tables):
    type_name = "array of tables (match, class, site, action, duration)"
    header = "shaping.on_reply"
    keys = ("match", "class", "site", "action", "duration")

    def one(self, p, t, errs):
        match = cls = site = None
        if "match" not in t and "class" not in t:
            errs.items.append(f"{p}: expected match, class or both")
        if "match" in t:
            if not isinstance(t["match"], str):
                errs.bad(f"{p}.match", "a regular expression (a string)", t["match"])
            else:
                try:
                    match = re.compile(t["match"])
                except re.error as e:
                    errs.bad(f"{p}.match", f"a valid regular expression ({e})", t["match"])
        if "class" in t:
            cls = t["class"]
            if cls not in REPLY_CLASSES:
                close = difflib.get_close_matches(str(cls), REPLY_CLASSES, 1, 0.6)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errs.bad(f"{p}.class", "a bounce class: one of " + ", ".join(REPLY_CLASSES) + hint, cls)
        if "site" in t:
            site = _glob(f"{p}.site", t["site"], errs)
        action = t.get("action")
        if "action" not in t:
            _missing(errs, p, "action", "suspend, slow or bounce")
        elif action not in ACTIONS:
            errs.bad(f"{p}.action", "one of 'suspend', 'slow', 'bounce'", action)
        duration = 0.0
        if action in ("suspend", "slow"):
            if "duration" not in t:
                _missing(errs, p, "duration", f'how long to {action}, such as "30m"')
            else:
                duration = Duration().parse(f"{p}.duration", t["duration"], errs)
        elif action == "bounce" and "duration" in t:
            errs.bad(f"{p}.duration", "no duration with action = \"bounce\"", t["duration"])
        return ReplyRule(match, cls, site, action, duration)


# ---------------------------------------------------------------------------
# Rules that span keys
# ---------------------------------------------------------------------------

# (shaping.default key, delivery key): the delivery keys are older names of the same limits.
ALIASES = (("connection_limit", "max_connections"), ("max_deliveries_per_connection", "messages_per_connection"))


def cross_checks(cfg: Any, errs: Errors) -> None:
    e = cfg.egress
    sources = {s.name for s in e.source}
    for i, pool in enumerate(e.pool):
        for src, _w in pool.sources:
            if src not in sources:
                errs.bad(f"egress.pool[{i}].sources.{src}", "the name of an [[egress.source]]", src)
    pools = {p.name for p in e.pool}
    if e.default_pool and e.default_pool not in pools:
        errs.bad("egress.default_pool", "the name of an [[egress.pool]], or \"\"", e.default_pool)
    for domain, name in e.sender_pools.items():
        if name not in pools:
            errs.bad(f"egress.sender_pools.{domain}", "the name of an [[egress.pool]]", name)


def resolve_aliases(cfg: Any, data: dict, errs: Errors) -> Any:
    """Give each alias pair one value: the shaping key if set, else the delivery key if set
    (both set and different: an error naming both). `data` is the raw TOML after overrides."""
    shaping = data.get("shaping")
    shaping_default = shaping.get("default") if isinstance(shaping, dict) else None
    set_s = shaping_default if isinstance(shaping_default, dict) else {}
    set_d = data.get("delivery") if isinstance(data.get("delivery"), dict) else {}
    default, delivery = cfg.shaping.default, cfg.delivery
    for s_key, d_key in ALIASES:
        s_val, d_val = getattr(default, s_key), getattr(delivery, d_key)
        if s_key in set_s and d_key in set_d and s_val != d_val:
            errs.items.append(f"shaping.default.{s_key} = {s_val!r} and delivery.{d_key} = {d_val!r}: the same "
                              f"limit (delivery.{d_key} is an alias); set one, or both to the same value")
        elif s_key in set_s:
            delivery = dataclasses.replace(delivery, **{d_key: s_val})
        elif d_key in set_d:
            default = dataclasses.replace(default, **{s_key: d_val})
    shaping_cfg = dataclasses.replace(cfg.shaping, default=default)
    return dataclasses.replace(cfg, delivery=delivery, shaping=shaping_cfg)
