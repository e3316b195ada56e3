"""MX resolution for delivery (MX → A/AAAA, implicit MX, null MX, literals).
Never blocks the event loop: lookups bounded by a timeout, cached per TTL,
one query per name in flight; a failed lookup is a tempfail, never a bounce."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename

from mta.delivery import Target

_CACHE_MAX = 10_000
_NEGATIVE_TTL = 60.0
_QUERY_TYPES = {"A": dns.rdatatype.A, "AAAA": dns.rdatatype.AAAA, "MX": dns.rdatatype.MX,
                "TXT": dns.rdatatype.TXT, "PTR": dns.rdatatype.PTR}
_LITERALS_MAX = 1000  # cached resolve_host answers for address literals (they never change)


# --- MX resolution for outbound delivery (RFC 5321 §5.1, RFC 7505) ---------

@dataclass(frozen=True, slots=True)
class Resolution:
    """Where mail for one domain goes, or why it cannot go there now.

    kind "ok" carries `targets` in the order to try them; every other kind
    carries a synthetic reply (`code`, `enhanced`, `text`) that the caller
    turns into the recipients' result: 5xx bounces, 4xx defers.
    """

    kind: str  # "ok" | "null_mx" | "nxdomain" | "tempfail" | "no_hosts"
    targets: tuple[Target, ...] = ()
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def _failure(kind: str, code: int, enhanced: str, text: str) -> Resolution:
    return Resolution(kind, (), code, enhanced, text)


def _nxdomain(text: str = "domain not found") -> Resolution:
    return _failure("nxdomain", 550, "5.1.2", text)


_NULL_MX = _failure("null_mx", 556, "5.1.10", "Recipient address has null MX")
_NO_HOSTS = _failure("no_hosts", 550, "5.4.4", "no mail host")


def _tempfail(detail: str) -> Resolution:
    return _failure("tempfail", 451, "4.4.3", f"DNS lookup failed: {detail}")


@dataclass(frozen=True, slots=True)
class _Answer:
    """One query's outcome, as cached: records are texts (A/AAAA, TXT) or (pref, name) (MX)."""

    status: str  # "ok" | "nodata" | "nxdomain" | "tempfail"
    records: tuple = ()
    detail: str = ""


def _literal(text: str) -> str | None:
    """The IP of an address literal "[1.2.3.4]" / "[IPv6:...]", or None when malformed."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else None
    if inner is None:
        return None
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _negative_ttl(response) -> float:
    """RFC 2308: min(SOA TTL, SOA MINIMUM) from the authority section, else 60 s."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum))
    return _NEGATIVE_TTL


class MxResolver:
    """MX → A/AAAA resolution with a bounded TTL cache; one query per name in flight.

    nameservers None reads the system's resolv.conf; a list (with `port`) points
    at given servers, e.g. the tests' loopback server. Every failure to get an
    answer (SERVFAIL, REFUSED, timeout, no nameserver) is a tempfail: mail is
    deferred, never bounced, for a DNS problem. `timeout` bounds each query;
    resolve() makes at most two rounds (MX, then the hosts' A/AAAA in parallel).
    """

    def __init__(self, nameservers: list[str] | None = None, port: int = 53,
                 timeout: float = 5.0, prefer_ipv6: bool = False):
        self.timeout = timeout
        self.prefer_ipv6 = prefer_ipv6
        self._cache: OrderedDict[tuple[str, int], tuple[_Answer, float]] = OrderedDict()
        self._literals: dict[tuple[str, int], Resolution] = {}
        self._inflight: dict[tuple[str, int], asyncio.Task] = {}
        self._setup_error: str | None = None
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.lookups: dict[tuple[str, str], int] = {}  # (type, status) -> queries sent (for /metrics)
        self.cache_hits = 0  # answers taken from the cache, fresh
        try:
            resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
            resolver.port = port  # applies to every plain nameserver, at query time
            if nameservers is not None:
                resolver.nameservers = list(nameservers)
            resolver.timeout = min(2.0, timeout)  # per attempt; retried within `timeout`
            resolver.lifetime = timeout
            resolver.cache = None  # ours: per TTL, bounded, with negative entries
            self._resolver = resolver
        except (dns.exception.DNSException, OSError, ValueError) as e:
            self._setup_error = f"no usable nameserver ({e})"

    # -- public ------------------------------------------------------------

    async def resolve(self, domain: str, port: int = 25) -> Resolution:
        """The targets for mail to `domain` (the part after "@"), in order to try."""
        domain = domain.strip()
        if domain.startswith("["):
            ip = _literal(domain)
            if ip is None:
                return _nxdomain("invalid address literal")
            return Resolution("ok", (Target(ip, ip, port),))
        domain = domain.rstrip(".").lower()
        if _is_ip(domain):
            return _nxdomain("an IP address is not a domain (use an address literal)")
        name = _name(domain)
        if name is None:
            return _nxdomain("invalid domain name")

        mx = await self._query(name, dns.rdatatype.MX)
        if mx.status == "tempfail":
            return _tempfail(f"MX {domain}: {mx.detail}")
        if mx.status == "nxdomain":
            return _nxdomain()
        if mx.status == "nodata":  # no MX: the domain itself is the mail host
            ips, status, detail = await self._addresses_of(name)
            if ips:
                return Resolution("ok", tuple(Target(domain, ip, port) for ip in ips))
            if status == "tempfail":
                return _tempfail(f"A/AAAA {domain}: {detail}")
            return _NO_HOSTS

        hosts = [(pref, host) for pref, host in mx.records if host != "."]
        if not hosts:  # RFC 7505: "MX 0 ." and nothing else
            return _NULL_MX
        order = _mx_order(hosts)
        looked_up = await asyncio.gather(*(self._addresses_of(dns.name.from_text(h)) for h in order))
        targets: list[Target] = []
        seen: set[str] = set()
        failures: list[str] = []
        for host, (ips, status, detail) in zip(order, looked_up):
            if status == "tempfail":
                failures.append(f"{host}: {detail}")
            for ip in ips:
                if ip not in seen:
                    seen.add(ip)
                    targets.append(Target(host, ip, port))
        if targets:
            return Resolution("ok", tuple(targets))
        if failures:  # some MX host may exist: try later (RFC 5321 §5.1)
            return _tempfail("; ".join(failures))
        return _failure("no_hosts", 550, "5.4.4", "no mail host (no MX host has an address)")

    def literal_host(self, host: str, port: int) -> Resolution | None:
        """`resolve_host` without a coroutine when no lookup is needed (an address,
        or "[address]"); None when the host is a name to look up."""
        hit = self._literals.get((host, port))
        if hit is not None:  # a smarthost given as an address: parsed once, not per message
            return hit
        h = host.strip()
        ip = None
        if h.startswith("[") and h.endswith("]"):
            ip = _literal(h)
            h = h[1:-1]
        if ip is None:
            h = h.rstrip(".").lower()
            ip = h if _is_ip(h) else None
        if ip is None:
            return None
        return self._literal_result((host, port), Resolution("ok", (Target(ip, ip, port),)))

    def cached_host(self, host: str, port: int) -> Resolution | None:
        """`resolve_host` without a coroutine when its answer is at hand: an address, or
        a name whose A and AAAA answers are both in the cache, fresh, with an address
        among them. None: ask `resolve_host` (which looks up and caches)."""
        hit = self.literal_host(host, port)
        if hit is not None:
            return hit
        h = _host_text(host)
        if not h.isascii():
            return None  # an IDN's cache key is its A-label form: leave it to resolve_host
        a, aaaa = self._fresh((f"{h}.", dns.rdatatype.A)), self._fresh((f"{h}.", dns.rdatatype.AAAA))
        if a is None or aaaa is None:
            return None
        ips = _combine(a, aaaa, self.prefer_ipv6)[0]
        return Resolution("ok", tuple(Target(h, ip, port) for ip in ips)) if ips else None

    async def resolve_host(self, host: str, port: int) -> Resolution:
        """A/AAAA of one host (no MX), e.g. a smarthost; "[name]" means the name, a literal is used as is."""
        hit = self.literal_host(host, port)
        if hit is not None:
            return hit
        host = _host_text(host)
        name = _name(host)
        if name is None:
            return _nxdomain("invalid host name")
        ips, status, detail = await self._addresses_of(name)
        if ips:
            return Resolution("ok", tuple(Target(host, ip, port) for ip in ips))
        if status == "tempfail":
            return _tempfail(f"A/AAAA {host}: {detail}")
        if status == "nxdomain":
            return _nxdomain("host not found")
        return _NO_HOSTS

    async def addresses(self, host: str, port: int) -> list[Target]:
        """Targets for one host; empty when it has no address now (the caller defers)."""
        return list((await self.resolve_host(host, port)).targets)

    async def txt(self, name: str) -> tuple[str, list[str]]:
        """TXT records of `name` (each record's strings joined, decoded as UTF-8) through
        the same servers and TTL cache: ("ok" | "nodata" | "nxdomain" | "tempfail", records)."""
        qname = _name(name.strip().rstrip(".").lower())
        if qname is None:
            return "nxdomain", []
        ans = await self._query(qname, dns.rdatatype.TXT)
        return ans.status, list(ans.records)

    async def query(self, name: str, rdtype: str) -> tuple[str, list]:
        """One lookup through the same servers and TTL cache, for the message-authentication
        checks: ("ok" | "nodata" | "nxdomain" | "tempfail", records). Records are texts for
        A, AAAA, PTR (names without the final dot, lower case) and TXT (each record's
        strings joined), (preference, name) pairs for MX. A malformed name is "nxdomain"."""
        kind = _QUERY_TYPES.get(rdtype.upper())
        if kind is None:
            raise ValueError(f"unsupported record type {rdtype!r}")
        qname = _name(name.strip().rstrip(".").lower())
        if qname is None:
            return "nxdomain", []
        ans = await self._query(qname, kind)
        return ans.status, list(ans.records)

    def clear(self) -> None:
        self._cache.clear()
        self._literals.clear()

    def _literal_result(self, key: tuple[str, int], res: Resolution) -> Resolution:
        if len(self._literals) >= _LITERALS_MAX:  # route hooks may name addresses on the fly
            self._literals.clear()
        self._literals[key] = res
        return res

    # -- internals ---------------------------------------------------------

    async def _addresses_of(self, name: dns.name.Name) -> tuple[list[str], str, str]:
        """(ips in preference order, "ok" | "nxdomain" | "nodata" | "tempfail", detail)."""
        a, aaaa = await asyncio.gather(self._query(name, dns.rdatatype.A),
                                       self._query(name, dns.rdatatype.AAAA))
        return _combine(a, aaaa, self.prefer_ipv6)

    def _fresh(self, key: tuple[str, int]) -> _Answer | None:
        """A cached answer that has not expired (no query)."""
        hit = self._cache.get(key)
        if hit is None or hit[1] <= time.monotonic():
            return None
        self._cache.move_to_end(key)
        self.cache_hits += 1
        return hit[0]

    async def _query(self, name: dns.name.Name, rdtype: int) -> _Answer:
        """One (name, type) through the cache; concurrent callers share one query."""
        key = (name.to_text().lower(), rdtype)
        hit = self._cache.get(key)
        if hit is not None:
            if hit[1] > time.monotonic():
                self._cache.move_to_end(key)
                self.cache_hits += 1
                return hit[0]
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(key, name, rdtype))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        # shield: a cancelled caller does not cancel the query the others wait for
        return await asyncio.shield(task)

    async def _fetch(self, key: tuple[str, int], name: dns.name.Name, rdtype: int) -> _Answer:
        answer, ttl = await self._ask(name, rdtype)
        counted = (dns.rdatatype.to_text(rdtype), answer.status)
        self.lookups[counted] = self.lookups.get(counted, 0) + 1
        if answer.status != "tempfail" and ttl > 0:
            self._cache[key] = (answer, time.monotonic() + ttl)
            self._cache.move_to_end(key)
            while len(self._cache) > _CACHE_MAX:
                self._cache.popitem(last=False)
        return answer

    async def _ask(self, name: dns.name.Name, rdtype: int) -> tuple[_Answer, float]:
        if self._resolver is None:
            return _Answer("tempfail", detail=self._setup_error or "no resolver"), 0.0
        try:
            ans = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False,
                                               search=False, lifetime=self.timeout)
        except dns.resolver.NXDOMAIN as e:
            responses = list((e.kwargs.get("responses") or {}).values())
            return _Answer("nxdomain"), _negative_ttl(responses[-1] if responses else None)
        except dns.resolver.NoNameservers as e:
            return _Answer("tempfail", detail=_rcodes(e)), 0.0
        except dns.exception.Timeout:
            return _Answer("tempfail", detail="timed out"), 0.0
        except (dns.exception.DNSException, OSError, ValueError) as e:
            return _Answer("tempfail", detail=f"{type(e).__name__}: {e}"), 0.0
        if ans.rrset is None:
            return _Answer("nodata"), _negative_ttl(ans.response)
        ttl = float(ans.chaining_result.minimum_ttl)
        if rdtype == dns.rdatatype.MX:
            records = tuple((r.preference, r.exchange.to_text(omit_final_dot=True).lower() or ".")
                            for r in ans.rrset)
        elif rdtype == dns.rdatatype.TXT:
            records = tuple(b"".join(r.strings).decode("utf-8", "replace") for r in ans.rrset)
        elif rdtype == dns.rdatatype.PTR:
            records = tuple(r.target.to_text(omit_final_dot=True).lower() for r in ans.rrset)
        else:
            records = tuple(r.address for r in ans.rrset)
        return _Answer("ok", records), ttl


def _combine(a: _Answer, aaaa: _Answer, prefer_ipv6: bool) -> tuple[list[str], str, str]:
    """A host's A and AAAA answers as (ips in preference order, "ok" | "nxdomain" |
    "nodata" | "tempfail", detail)."""
    first, second = (aaaa, a) if prefer_ipv6 else (a, aaaa)
    ips = [*(first.records if first.status == "ok" else ()),
           *(second.records if second.status == "ok" else ())]
    if ips:
        return ips, "ok", ""
    for ans in (a, aaaa):
        if ans.status == "tempfail":
            return [], "tempfail", ans.detail
    if a.status == "nxdomain" or aaaa.status == "nxdomain":
        return [], "nxdomain", ""
    return [], "nodata", ""


def _host_text(host: str) -> str:
    """A configured host as it is looked up: "[name]" is the name, no final dot, lower case."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".").lower()


def _name(text: str) -> dns.name.Name | None:
    try:
        return dns.name.from_text(text)
    except (dns.exception.DNSException, UnicodeError, ValueError):
        return None


def _mx_order(hosts: list[tuple[int, str]]) -> list[str]:
    """Ascending preference, a random order among equal preferences, each host once."""
    shuffled = list(hosts)
    random.shuffle(shuffled)
    shuffled.sort(key=lambda ph: ph[0])  # stable: the shuffle survives within a preference
    order: list[str] = []
    for _pref, host in shuffled:
        if host not in order:
            order.append(host)
    return order


def _rcodes(e: dns.resolver.NoNameservers) -> str:
    """"SERVFAIL" / "REFUSED" / ... from the nameservers' answers."""
    texts = []
    for err in e.kwargs.get("errors") or ():
        resp = err[-1] if isinstance(err, tuple) else None
        if isinstance(resp, dns.message.Message):
            texts.append(dns.rcode.to_text(resp.rcode()))
        elif isinstance(err, tuple) and len(err) >= 4:
            texts.append(str(err[3]))
    return ", ".join(dict.fromkeys(texts)) or "no nameserver answered"
