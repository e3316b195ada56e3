"""SPF (RFC 7208): check_host() and the MAIL FROM / HELO check, every DNS access through
`lookup.query`. A record is parsed whole before it is used; every fault of a published
policy, of DNS or of the input is one of the seven results, never an exception."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from dataclasses import dataclass, replace

from mta.policy.spfmacro import (MacroContext, MacroError, Tokens, parse, parse_domain_spec,
                                 render, render_domain, uses_ptr)

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
MAX_NAMES = 10  # MX names, or PTR names, looked at per term (section 4.6.4)

_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9._-]*)=(.*)\Z", re.DOTALL)
_DIRECTIVE = re.compile(r"([+?~-]?)([A-Za-z][A-Za-z0-9._-]*)(.*)\Z", re.DOTALL)
_DUAL_CIDR = re.compile(r"(.*?)(?:/([0-9]+))?(?://([0-9]+))?\Z", re.DOTALL)
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4 = re.compile(rf"({_QNUM}(?:\.{_QNUM}){{3}})(?:/([0-9]+))?\Z")
_CIDR_NUMBER = re.compile(r"(?:0|[1-9][0-9]*)\Z")
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}\Z")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class SpfResult:
    result: str  # one of RESULTS
    identity: str  # "mailfrom" | "helo"
    domain: str  # the domain checked
    reason: str  # short text for an Authentication-Results comment
    explanation: str | None = None  # exp= text (macro-expanded), only for "fail"


class SpfSyntaxError(ValueError):
    """A record that breaks RFC 7208's grammar (a permerror)."""


@dataclass(frozen=True, slots=True)
class Directive:
    """One mechanism with its result if it matches; `target` None means <domain>."""

    result: str
    kind: str  # one of _MECHANISMS
    text: str
    target: Tokens | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class Record:
    directives: tuple[Directive, ...]
    redirect: Tokens | None = None
    exp: Tokens | None = None


def is_spf_record(text: str) -> bool:
    """Whether a TXT record is an SPF record: "v=spf1" (any case), then a space or nothing."""
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def parse_record(text: str) -> Record:
    """Every term of an SPF record; raises SpfSyntaxError (section 4.6: whole record first)."""
    if not is_spf_record(text):
        raise SpfSyntaxError("not an SPF record")
    directives: list[Directive] = []
    mods: dict[str, Tokens] = {}
    for term in text[6:].split(" "):
        if not term:
            continue
        try:
            m = _MODIFIER.match(term)
            if m is not None:
                name = m.group(1).lower()
                if name in ("redirect", "exp"):
                    if name in mods:
                        raise SpfSyntaxError(f"more than one {name}= modifier")
                    mods[name] = parse_domain_spec(m.group(2))
                else:
                    parse(m.group(2))  # unknown modifiers are ignored, but must parse
                continue
            directives.append(_directive(term))
        except MacroError as e:
            raise SpfSyntaxError(f"{term!r}: {e}") from None
    return Record(tuple(directives), mods.get("redirect"), mods.get("exp"))


def _cidr(digits: str | None, limit: int, term: str) -> int:
    if digits is None:
        return limit
    if not _CIDR_NUMBER.match(digits) or int(digits) > limit:
        raise SpfSyntaxError(f"{term!r}: bad CIDR length /{digits}")
    return int(digits)


def _directive(term: str) -> Directive:
    m = _DIRECTIVE.match(term)
    kind = m.group(2).lower() if m else ""
    if m is None or kind not in _MECHANISMS:
        raise SpfSyntaxError(f"unknown mechanism {term!r}")
    result, rest = _QUALIFIERS[m.group(1) or "+"], m.group(3)
    if kind == "all":
        if rest:
            raise SpfSyntaxError(f"{term!r}: 'all' takes no argument")
        return Directive(result, kind, term)
    if kind in ("include", "exists"):
        if not rest.startswith(":"):
            raise SpfSyntaxError(f"{term!r}: {kind} needs a domain")
        return Directive(result, kind, term, parse_domain_spec(rest[1:]))
    if kind == "ptr":
        if rest and not rest.startswith(":"):
            raise SpfSyntaxError(f"{term!r}: bad ptr argument")
        return Directive(result, kind, term, parse_domain_spec(rest[1:]) if rest else None)
    if kind == "ip4":
        ip4 = _IP4.match(rest[1:]) if rest.startswith(":") else None
        if ip4 is None:
            raise SpfSyntaxError(f"{term!r}: bad IPv4 network")
        net = ipaddress.IPv4Network(f"{ip4.group(1)}/{_cidr(ip4.group(2), 32, term)}", strict=False)
        return Directive(result, kind, term, network=net)
    if kind == "ip6":
        addr, slash, digits = rest[1:].partition("/")
        try:
            if not rest.startswith(":") or "%" in addr:
                raise ValueError
            ip6 = ipaddress.IPv6Address(addr)
        except ValueError:
            raise SpfSyntaxError(f"{term!r}: bad IPv6 network") from None
        cidr = _cidr(digits if slash else None, 128, term)
        return Directive(result, kind, term, network=ipaddress.IPv6Network(f"{ip6}/{cidr}", strict=False))
    # a and mx: [":" domain-spec] [ip4-cidr] ["//" ip6-cidr]
    if rest and rest[0] not in ":/":
        raise SpfSyntaxError(f"unknown mechanism {term!r}")
    spec, c4, c6 = _DUAL_CIDR.match(rest).groups()
    if spec and not spec.startswith(":"):
        raise SpfSyntaxError(f"{term!r}: bad CIDR length")
    target = parse_domain_spec(spec[1:]) if spec else None
    return Directive(result, kind, term, target, cidr4=_cidr(c4, 32, term), cidr6=_cidr(c6, 128, term))


def valid_domain(name: str) -> bool:
    """A multi-label domain name (section 4.3): at most 253 octets, labels of 1-63
    letters, digits, "-" or "_", the last not all digits (an address is no domain)."""
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return len(labels) > 1 and not labels[-1].isdigit() and all(map(_LABEL.match, labels))


def _queryable(name: str) -> bool:
    """A name a mechanism may look up: what a macro made of it need not be a host name."""
    return 0 < len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


class _Stop(Exception):
    """Ends check_host() with temperror or permerror."""

    def __init__(self, result: str, reason: str):
        super().__init__(reason)
        self.result = result
        self.reason = reason


class _Check:
    """One check_host() evaluation: the lookups it has made count against its limits,
    across every include and redirect."""

    def __init__(self, lookup, ip: Address, sender: str, helo: str, hostname: str,
                 lookup_limit: int, void_limit: int):
        self.lookup = lookup
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.hostname = hostname
        self.lookup_limit = lookup_limit
        self.void_limit = void_limit
        self.terms = 0
        self.voids = 0
        self.rtype = "A" if ip.version == 4 else "AAAA"
        self._validated: list[str] | None = None

    async def query(self, name: str, rdtype: str) -> tuple[str, list]:
        if not _queryable(name):
            return "nxdomain", []
        status, records = await self.lookup.query(name, rdtype)
        if status == "tempfail":
            raise _Stop("temperror", f"DNS lookup failed for {name} {rdtype}")
        return status, records

    def count_term(self) -> None:
        self.terms += 1
        if self.terms > self.lookup_limit:
            raise _Stop("permerror", f"too many DNS lookups (limit {self.lookup_limit})")

    def count_void(self) -> None:
        self.voids += 1
        if self.voids > self.void_limit:
            raise _Stop("permerror", f"too many void DNS lookups (limit {self.void_limit})")

    async def record(self, domain: str) -> Record | None:
        """The domain's parsed SPF record; None when it has none (or is no domain)."""
        if not valid_domain(domain):
            return None
        status, texts = await self.query(domain, "TXT")
        found = [t for t in texts if is_spf_record(t)] if status == "ok" else []
        if len(found) > 1:
            raise _Stop("permerror", f"{domain} has {len(found)} SPF records")
        if not found:
            return None
        try:
            return parse_record(found[0])
        except SpfSyntaxError as e:
            raise _Stop("permerror", f"syntax error in the record of {domain}: {e}") from None

    async def run(self, domain: str, explain: bool) -> tuple[str, str, str | None]:
        """(result, reason, explanation) of `domain`'s record: "none" is returned,
        temperror and permerror are raised (_Stop)."""
        rec = await self.record(domain)
        if rec is None:
            return "none", "no SPF record", None
        ctx = MacroContext(self.sender, domain, str(self.ip), self.helo, self.hostname)
        for d in rec.directives:
            if await self.matches(d, ctx):
                expl = None
                if d.result == "fail" and explain and rec.exp is not None:
                    expl = await self.explanation(rec.exp, ctx)
                return d.result, d.text, expl
        if rec.redirect is not None:
            self.count_term()
            target = await self.domain(rec.redirect, ctx)
            # the target's own exp= applies, not this record's (section 6.2)
            result, reason, expl = await self.run(target, explain)
            if result == "none":
                raise _Stop("permerror", f"redirect={target} has no SPF record")
            return result, reason, expl
        return "neutral", "no mechanism matched", None

    async def matches(self, d: Directive, ctx: MacroContext) -> bool:
        if d.kind == "all":
            return True
        if d.kind in ("ip4", "ip6"):
            return d.network.version == self.ip.version and self.ip in d.network
        self.count_term()
        target = await self.domain(d.target, ctx) if d.target is not None else ctx.domain
        if d.kind == "include":
            result, _reason, _expl = await self.run(target, False)
            if result == "none":
                raise _Stop("permerror", f"include:{target} has no SPF record")
            return result == "pass"
        if d.kind == "exists":
            status, _ = await self.query(target, "A")
            if status != "ok":
                self.count_void()
            return status == "ok"
        if d.kind == "ptr":
            names = await self.validated_names(count_void=True)
            target = target.lower()
            return any(n == target or n.endswith("." + target) for n in names)
        cidr = d.cidr4 if self.ip.version == 4 else d.cidr6
        if d.kind == "a":
            status, addrs = await self.query(target, self.rtype)
            if status != "ok":
                self.count_void()
            return self.in_network(addrs, cidr)
        return await self.mx_matches(target, cidr)

    async def mx_matches(self, target: str, cidr: int) -> bool:
        status, mxs = await self.query(target, "MX")
        if status != "ok":
            self.count_void()
            return False
        hosts = [host for _pref, host in mxs if host != "."]
        if len(hosts) > MAX_NAMES:
            raise _Stop("permerror", f"{target} has more than {MAX_NAMES} MX names")
        answers = await asyncio.gather(*(self.lookup.query(h, self.rtype) for h in hosts))
        if any(st == "ok" and self.in_network(addrs, cidr) for st, addrs in answers):
            return True
        for host, (st, _addrs) in zip(hosts, answers):
            if st == "tempfail":
                raise _Stop("temperror", f"DNS lookup failed for {host} {self.rtype}")
        return False

    def in_network(self, addrs: list, cidr: int) -> bool:
        bits = 32 if self.ip.version == 4 else 128
        mine = int(self.ip) >> (bits - cidr)
        for text in addrs:
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if addr.version == self.ip.version and int(addr) >> (bits - cidr) == mine:
                return True
        return False

    async def validated_names(self, count_void: bool = False) -> list[str]:
        """The client's PTR names (the first 10) whose addresses include it; a DNS
        failure skips a name, or all of them (section 5.5)."""
        if self._validated is not None:
            return self._validated
        status, names = await self.lookup.query(self.ip.reverse_pointer, "PTR")
        if status in ("nxdomain", "nodata") and count_void:
            self.count_void()
        if status != "ok":
            return []
        names = [n.lower().rstrip(".") for n in names[:MAX_NAMES]]
        answers = await asyncio.gather(*(self.lookup.query(n, self.rtype) for n in names))
        mine = str(self.ip)
        self._validated = [n for n, (st, addrs) in zip(names, answers)
                           if st == "ok" and any(_same(a, mine) for a in addrs)]
        return self._validated

    async def ptr_name(self, domain: str) -> str:
        """%{p}: a validated name, <domain> itself or a subdomain preferred."""
        names = await self.validated_names()
        domain = domain.lower()
        for pick in (lambda n: n == domain, lambda n: n.endswith("." + domain), lambda n: True):
            for n in names:
                if pick(n):
                    return n
        return "unknown"

    async def domain(self, tokens: Tokens, ctx: MacroContext) -> str:
        if uses_ptr(tokens):
            ctx = replace(ctx, ptr=await self.ptr_name(ctx.domain))
        return render_domain(tokens, ctx)

    async def explanation(self, spec: Tokens, ctx: MacroContext) -> str | None:
        """exp= text; any failure means no explanation, never a different result (6.2)."""
        try:
            name = await self.domain(spec, ctx)
            if not valid_domain(name):
                return None
            status, texts = await self.lookup.query(name, "TXT")
            if status != "ok" or len(texts) != 1:
                return None
            tokens = parse(texts[0], exp=True)
            if uses_ptr(tokens):
                ctx = replace(ctx, ptr=await self.ptr_name(ctx.domain))
            return render(tokens, ctx)
        except (_Stop, MacroError):
            return None


def _same(text: str, mine: str) -> bool:
    try:
        return str(ipaddress.ip_address(text)) == mine
    except ValueError:
        return False


def client_address(ip: str) -> Address | None:
    """The client's address as SPF sees it: an IPv4-mapped IPv6 address is IPv4."""
    try:
        addr = ipaddress.ip_address(ip.strip())
    except (ValueError, AttributeError):
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _reason(result: str, ip: str, domain: str, why: str) -> str:
    if result == "pass":
        return f"{ip} is permitted by {domain}"
    if result == "fail":
        return f"{ip} is not permitted by {domain}"
    if result == "softfail":
        return f"{ip} is probably not permitted by {domain}"
    if result == "neutral":
        return f"{domain} neither permits nor denies {ip}"
    return why


async def check_host(lookup, ip: str, domain: str, sender: str, *, helo: str, hostname: str,
                     lookup_limit: int = 10, void_limit: int = 2,
                     identity: str = "mailfrom") -> SpfResult:
    """RFC 7208 check_host(): the result of `domain`'s policy for mail from `ip`.
    `identity` only labels the result ("mailfrom" or "helo")."""
    domain = domain.strip().rstrip(".").lower()
    addr = client_address(ip)
    if addr is None:
        return SpfResult("none", identity, domain, "no valid client IP address")
    if not valid_domain(domain):
        return SpfResult("none", identity, domain, "not a valid domain name")
    if "@" in sender:
        local, _, sender_domain = sender.rpartition("@")
        sender = f"{local or 'postmaster'}@{sender_domain}"
    else:
        sender = f"postmaster@{domain}"
    check = _Check(lookup, addr, sender, helo, hostname, lookup_limit, void_limit)
    try:
        result, why, expl = await check.run(domain, True)
    except _Stop as stop:
        return SpfResult(stop.result, identity, domain, stop.reason)
    return SpfResult(result, identity, domain, _reason(result, str(addr), domain, why), expl)


def _mailbox(sender: str) -> str:
    """A reverse-path's mailbox: no angle brackets, no source route."""
    sender = sender.strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    if sender.startswith("@") and ":" in sender:  # @relay1,@relay2:user@domain
        sender = sender.split(":", 1)[1]
    return sender


async def check(lookup, ip: str, sender: str, helo: str, *, hostname: str,
                timeout: float = 10.0) -> SpfResult:
    """RFC 7208 2.3/2.4: the MAIL FROM identity, or HELO's for the null sender; a
    sender without "@" is postmaster@helo. temperror past `timeout`; never raises."""
    identity, domain = "mailfrom", ""
    try:
        helo = (helo or "").strip().rstrip(".")
        mailbox = _mailbox(sender or "")
        if not mailbox:
            identity = "helo"
        if "@" not in mailbox:
            mailbox, domain = f"postmaster@{helo}", helo
        else:
            domain = mailbox.rpartition("@")[2]
        domain = _ascii(domain.rstrip(".")).lower()
        if not valid_domain(domain):
            return SpfResult("none", identity, domain, "not a valid domain name")
        return await asyncio.wait_for(
            check_host(lookup, ip, domain, mailbox, helo=helo, hostname=hostname, identity=identity),
            timeout)
    except TimeoutError:
        return SpfResult("temperror", identity, domain, f"SPF check timed out after {timeout:g}s")
    except Exception as e:  # the last guard of "never raises": a fault of ours defers
        return SpfResult("temperror", identity, domain, f"SPF check failed ({type(e).__name__})")


def _ascii(domain: str) -> str:
    """An internationalized domain in its A-label form; "" when it has none."""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return ""
