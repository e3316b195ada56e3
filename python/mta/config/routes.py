"""Config kinds for routing and delivery: transport specs, address maps, retry
schedules. A transport spec is one string, as Postfix's transport map reads it."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from mta.config.kinds import BAD, Duration, Errors, Kind, domain_name

# "mx" | "discard" | "smarthost HOST:PORT [opts]" | "lmtp HOST:PORT [opts]"
# | "lmtp unix:/path" | "maildir PATH", with opts `tls=none|opportunistic|required`,
# `auth=USER:PASSWORD`, `connections=N`, `per_connection=N`. A maildir PATH may use
# {user}, {domain} and {address}.

TLS_MODES = ("none", "opportunistic", "required")
_SPEC_TEXT = ('a transport: "mx", "discard", "smarthost HOST:PORT [tls=..] [auth=USER:PASS] '
              '[connections=N] [per_connection=N]", "lmtp HOST:PORT", "lmtp unix:/path" or "maildir PATH"')


@dataclass(frozen=True)
class TransportSpec:
    kind: str  # mx | smarthost | lmtp | maildir | discard
    host: str = ""  # smarthost/lmtp host (name or IP), or a unix socket path for lmtp
    port: int = 0
    path: str = ""  # maildir template
    tls: str | None = None  # None: the [delivery] default
    auth: tuple[str, str] | None = None
    connections: int | None = None
    per_connection: int | None = None

    def __str__(self) -> str:
        return self.text()

    def text(self) -> str:
        if self.kind in ("mx", "discard"):
            return self.kind
        if self.kind == "maildir":
            return f"maildir {self.path}"
        if self.port == 0:
            return f"{self.kind} unix:{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"

    def full_text(self) -> str:
        """text() with the options: what parse_transport reads back into this spec."""
        words = [self.text()]
        if self.tls is not None:
            words.append(f"tls={self.tls}")
        if self.auth is not None:
            words.append(f"auth={self.auth[0]}:{self.auth[1]}")
        if self.connections is not None:
            words.append(f"connections={self.connections}")
        if self.per_connection is not None:
            words.append(f"per_connection={self.per_connection}")
        return " ".join(words)


def _host_port(text: str) -> tuple[str, int] | None:
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if domain_name(host) is None:
            return None
    return host, int(port)


def parse_transport(text: Any) -> TransportSpec | None:
    if not isinstance(text, str):
        return None
    words = text.split()
    if not words:
        return None
    kind, args = words[0].lower(), words[1:]
    if kind in ("mx", "discard"):
        return TransportSpec(kind) if not args else None
    if kind == "maildir":
        path = text.split(None, 1)[1].strip() if args else ""
        return TransportSpec("maildir", path=path) if path else None
    if kind not in ("smarthost", "lmtp") or not args:
        return None
    target, opts = args[0], args[1:]
    if kind == "lmtp" and target.startswith("unix:") and len(target) > 5:
        host, port = target[5:], 0
    else:
        hp = _host_port(target)
        if hp is None:
            return None
        host, port = hp
    fields: dict[str, Any] = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            return None
        if key == "tls" and value in TLS_MODES:
            fields["tls"] = value
        elif key == "auth" and ":" in value:
            user, _, password = value.partition(":")
            fields["auth"] = (user, password)
        elif key in ("connections", "per_connection") and value.isdigit() and int(value) > 0:
            fields[key] = int(value)
        else:
            return None
    return TransportSpec(kind, host=host, port=port, **fields)


@dataclass(frozen=True)
class Transport(Kind):
    type_name = "string (transport)"

    def parse(self, path, raw, errs):
        spec = parse_transport(raw)
        if spec is None:
            errs.bad(path, _SPEC_TEXT, raw)
            return BAD
        return spec

    def render(self, value):
        return json.dumps(value.text())


@dataclass(frozen=True)
class TransportMap(Kind):
    """A table of domain (or "*") → transport spec."""

    type_name = "table: domain or \"*\" → transport"

    def parse(self, path, raw, errs: Errors):
        if not isinstance(raw, dict):
            errs.bad(path, "a table of domain = transport", raw)
            return BAD
        out = {}
        for key, value in raw.items():
            domain = "*" if key == "*" else domain_name(key)
            if domain is None:
                errs.bad(f"{path}.{key}", 'a domain name or "*" as the key', key)
                continue
            spec = Transport().parse(f'{path}."{key}"', value, errs)
            if spec is not BAD:
                out[domain] = spec
        return out

    def render(self, value):
        return "{}" if not value else json.dumps({k: v.text() for k, v in value.items()})


def _address_ok(text: Any) -> bool:
    if not isinstance(text, str) or not text or any(c.isspace() or c in "<>" for c in text):
        return False
    local, at, domain = text.rpartition("@")
    return bool(at and local and domain_name(domain))


@dataclass(frozen=True)
class AddressMap(Kind):
    """A table of key (a local part, or a full address) → list of addresses."""

    full_keys: bool = False  # virtual maps are keyed by whole addresses
    type_name = "table: key → list of addresses"

    def parse(self, path, raw, errs: Errors):
        if not isinstance(raw, dict):
            errs.bad(path, "a table of name = [addresses]", raw)
            return BAD
        out = {}
        for key, value in raw.items():
            kpath = f'{path}."{key}"'
            if self.full_keys and not _address_ok(key):
                errs.bad(kpath, "a key of the form user@domain", key)
                continue
            if not self.full_keys and (not key or "@" in key or any(c.isspace() for c in key)):
                errs.bad(kpath, "a key that is a local part (no @)", key)
                continue
            values = [value] if isinstance(value, str) else value
            if not isinstance(values, list) or not values or not all(_address_ok(v) for v in values):
                errs.bad(kpath, "an address or a non-empty list of addresses (user@domain)", value)
                continue
            out[key.lower()] = tuple(values)
        return out

    def render(self, value):
        return "{}" if not value else json.dumps({k: list(v) for k, v in value.items()})


@dataclass(frozen=True)
class SenderLoginMap(Kind):
    """[auth] sender_login: user name → the envelope senders it may use, each an
    address or "@domain" (every address in that domain)."""

    type_name = "table: user → list of addresses or @domains"

    def parse(self, path, raw, errs: Errors):
        from mta.auth.users import valid_user_name  # the one rule for user names

        if not isinstance(raw, dict):
            errs.bad(path, 'a table of user = ["address", "@domain", ...]', raw)
            return BAD
        out = {}
        for key, value in raw.items():
            kpath = f'{path}."{key}"'
            if not valid_user_name(key):
                errs.bad(kpath, "a user name (no whitespace, ':' or control characters)", key)
                continue
            values = [value] if isinstance(value, str) else value
            ok = isinstance(values, list) and all(
                isinstance(v, str) and (_address_ok(v) or (v.startswith("@") and domain_name(v[1:]) is not None))
                for v in values)
            if not ok:
                errs.bad(kpath, 'an address, "@domain", or a list of them', value)
                continue
            out[key] = tuple(v.lower() for v in values)
        return out

    def render(self, value):
        return "{}" if not value else json.dumps({k: list(v) for k, v in value.items()})


@dataclass(frozen=True)
class AddressList(Kind):
    """Addresses, or bare local parts (valid in every local domain)."""

    type_name = "list of strings (addresses or local parts)"

    def parse(self, path, raw, errs: Errors):
        if not isinstance(raw, list):
            errs.bad(path, "a list of addresses or local parts", raw)
            return BAD
        out = []
        for i, item in enumerate(raw):
            if isinstance(item, str) and item and (("@" not in item and not any(c.isspace() for c in item)) or _address_ok(item)):
                out.append(item.lower())
            else:
                errs.bad(f"{path}[{i}]", "an address (user@domain) or a local part", item)
        return frozenset(out)

    def render(self, value):
        return json.dumps(sorted(value))


@dataclass(frozen=True)
class DurationList(Kind):
    type_name = "list of durations"

    def parse(self, path, raw, errs: Errors):
        if not isinstance(raw, list) or not raw:
            errs.bad(path, 'a non-empty list of durations such as ["1m", "5m"]', raw)
            return BAD
        out = [Duration().parse(f"{path}[{i}]", item, errs) for i, item in enumerate(raw)]
        return BAD if any(v is BAD for v in out) else tuple(out)

    def render(self, value):
        return json.dumps([_short(v) for v in value])


def _short(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class IpList(Kind):
    type_name = "list of strings (IP addresses)"

    def parse(self, path, raw, errs: Errors):
        if not isinstance(raw, list):
            errs.bad(path, "a list of IP addresses", raw)
            return BAD
        out = []
        for i, item in enumerate(raw):
            try:
                out.append(str(ipaddress.ip_address(item)))
            except (ValueError, TypeError):
                errs.bad(f"{path}[{i}]", "an IP address", item)
        return tuple(out)


@dataclass(frozen=True)
class OptionalHostPort(Kind):
    type_name = "string (HOST:PORT, or empty)"

    def parse(self, path, raw, errs: Errors):
        if raw == "":
            return ""
        if isinstance(raw, str) and _host_port(raw) is not None:
            return raw
        errs.bad(path, 'HOST:PORT (IPv6 as [2001:db8::1]:25), or "" for none', raw)
        return BAD
