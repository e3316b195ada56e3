"""Configuration: a TOML file plus command-line overrides → frozen dataclasses.

The schema is declared once, as field metadata on the dataclasses below (kind,
default, doc); loading validates everything in one pass and raises a single
ConfigError listing every problem. No DNS, no filesystem access beyond reading
the file: a config that checks here checks the same on any machine.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import re
import socket
import tomllib
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, NamedTuple

from mta.errors import ConfigError

__all__ = [
    "DEFAULT_SPOOL_DIR", "Config", "SpoolConfig", "SmtpConfig", "LogConfig", "LimitsConfig",
    "PrivilegesConfig", "TlsConfig", "Listener", "AuthConfig",
    "Key", "load", "check", "schema", "schema_keys",
]

# Relative to the working directory so that an ordinary user can run
# `mta run` without root; production configs set an absolute path.
DEFAULT_SPOOL_DIR = "./mta-spool"

KiB, MiB, GiB = 1024, 1024**2, 1024**3

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_BAD = object()  # a parse failed; the error is already recorded


class _Errors:
    """Collects every problem; knows which keys the command line set, so a
    message can say where a bad value came from."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.from_cli: set[str] = set()

    def _origin(self, path: str) -> str:
        return " (from the command line)" if path.split("[", 1)[0] in self.from_cli else ""

    def bad(self, path: str, expected: str, got: Any) -> None:
        self.items.append(f"{path}: expected {expected}, got {got!r}{self._origin(path)}")

    def unknown(self, path: str, suggestion: str | None) -> None:
        hint = f" (did you mean {suggestion!r}?)" if suggestion else ""
        self.items.append(f"{path}: unknown key{hint}{self._origin(path)}")


# ---------------------------------------------------------------------------
# Kinds: how one value is parsed from TOML and rendered back for the docs.
# parse() records its own errors and returns _BAD, so lists report every bad
# element rather than the first.
# ---------------------------------------------------------------------------

class Kind:
    type_name = "value"

    def parse(self, path: str, raw: Any, errs: _Errors) -> Any:
        raise NotImplementedError

    def render(self, value: Any) -> str:
        """The default as it would be written in TOML (docs/configuration.md)."""
        return json.dumps(value)


def _is_int(raw: Any) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool)  # TOML true is not 1


def _bound_text(minimum: int | float, unit: str) -> str:
    what = {1: "a positive integer", 0: "a non-negative integer"}.get(minimum, f"an integer >= {minimum}")
    return f"{what} ({unit})" if unit else what


@dataclass(frozen=True)
class Int(Kind):
    min: int = 1
    unit: str = ""
    type_name = "integer"

    def parse(self, path, raw, errs):
        if not _is_int(raw) or raw < self.min:
            errs.bad(path, _bound_text(self.min, self.unit), raw)
            return _BAD
        return raw

    def render(self, value):
        return str(value)


# Sizes: a bare integer is bytes; a string is digits plus an optional unit
# k/M/G (case-insensitive, optionally followed by "iB" or "B"). Every unit is
# binary (1024-based): "50M" == "50MB" == "50MiB" == 52428800. Mail limits do
# not need the decimal/binary distinction, and one rule is easier to remember.
_SIZE_RE = re.compile(r"(\d+)\s*(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": KiB, "m": MiB, "g": GiB}


@dataclass(frozen=True)
class Size(Kind):
    min: int = 1
    type_name = "size"

    def parse(self, path, raw, errs):
        if _is_int(raw):
            value = raw
        elif isinstance(raw, str) and (m := _SIZE_RE.fullmatch(raw.strip())):
            value = int(m[1]) * _SIZE_UNITS[m[2] and m[2].lower()]
        else:
            errs.bad(path, 'a size: bytes as an integer, or a string such as "50M", "1MiB", "64k"', raw)
            return _BAD
        if value < self.min:
            errs.bad(path, _bound_text(self.min, "bytes"), raw)
            return _BAD
        return value

    def render(self, value):
        for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
            if value and value % unit == 0:
                return f'"{value // unit}{name}"'
        return str(value)


# Durations: a number is seconds; a string is a number plus ms, s, m or h.
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True)
class Duration(Kind):
    allow_zero: bool = False
    max: float | None = None  # seconds
    type_name = "duration"

    def parse(self, path, raw, errs):
        bound = "non-negative" if self.allow_zero else "positive"
        if (_is_int(raw) or isinstance(raw, float)) and math.isfinite(raw):
            value = float(raw)
        elif isinstance(raw, str) and (m := _DURATION_RE.fullmatch(raw.strip())):
            value = float(m[1]) * _DURATION_UNITS[m[2]]
        else:
            examples = '"300s", "5m", "500ms"'
            errs.bad(path, f"a {bound} duration: seconds as a number, or a string such as {examples}", raw)
            return _BAD
        if value < 0 or (value == 0 and not self.allow_zero):
            errs.bad(path, f"a {bound} duration (seconds)", raw)
            return _BAD
        if self.max is not None and value > self.max:
            errs.bad(path, f"a duration of at most {self.max:g} s", raw)
            return _BAD
        return value

    def render(self, value):
        return repr(float(value))


@dataclass(frozen=True)
class Bool(Kind):
    type_name = "boolean"

    def parse(self, path, raw, errs):
        if not isinstance(raw, bool):
            errs.bad(path, "true or false", raw)
            return _BAD
        return raw

    def render(self, value):
        return "true" if value else "false"


@dataclass(frozen=True)
class Text(Kind):
    nonempty: bool = False
    max_len: int | None = None
    ascii_printable: bool = False  # for text sent on the wire (no CR/LF injection)
    type_name = "string"

    def parse(self, path, raw, errs):
        ok = isinstance(raw, str) and "\0" not in raw
        if ok and self.nonempty:
            ok = raw != ""
        if ok and self.max_len is not None:
            ok = len(raw) <= self.max_len
        if ok and self.ascii_printable:
            ok = all(" " <= c <= "~" for c in raw)
        if not ok:
            parts = ["a non-empty string" if self.nonempty else "a string"]
            if self.ascii_printable:
                parts.append("of printable ASCII (no control characters)")
            if self.max_len is not None:
                parts.append(f"of at most {self.max_len} characters")
            errs.bad(path, " ".join(parts), raw)
            return _BAD
        return raw


@dataclass(frozen=True)
class Choice(Kind):
    options: tuple[str, ...] = ()

    @property
    def type_name(self):  # type: ignore[override]
        return "string: " + ", ".join(self.options)

    def parse(self, path, raw, errs):
        if isinstance(raw, str) and raw.lower() in self.options:
            return raw.lower()
        expected = "one of " + ", ".join(map(repr, self.options))
        if isinstance(raw, str) and (close := difflib.get_close_matches(raw.lower(), self.options, 1, 0.6)):
            expected += f" (did you mean {close[0]!r}?)"
        errs.bad(path, expected, raw)
        return _BAD


# Domain names: ASCII labels (IDNs in their xn-- form), 1..63 characters of
# letters, digits and hyphens, no hyphen at either end, 253 characters in all.
# Stored lowercased without the trailing dot. A last label of digits only is
# refused, so that an IP address is not mistaken for a domain.
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def _domain(raw: Any) -> str | None:
    if not isinstance(raw, str):
        return None
    name = raw.lower().removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or labels[-1].isdigit():
        return None
    return name if all(_LABEL_RE.fullmatch(label) for label in labels) else None


_DOMAIN_TEXT = "a domain name (ASCII labels of letters, digits and hyphens; IDNs as xn--)"


@dataclass(frozen=True)
class Hostname(Kind):
    type_name = "string (domain name)"

    def parse(self, path, raw, errs):
        name = _domain(raw)
        if name is None:
            errs.bad(path, _DOMAIN_TEXT, raw)
            return _BAD
        return name


def _each(path: str, raw: Any, errs: _Errors, what: str, parse_one: Callable[[str, Any], Any]) -> list | None:
    """Parse a TOML array element by element; report every bad element."""
    if not isinstance(raw, list):
        errs.bad(path, f"a list of {what}", raw)
        return None
    out = [parse_one(f"{path}[{i}]", item) for i, item in enumerate(raw)]
    return None if any(v is _BAD for v in out) else out


@dataclass(frozen=True)
class DomainSet(Kind):
    type_name = "list of strings (domain names)"

    def parse(self, path, raw, errs):
        def one(p, item):
            name = _domain(item)
            if name is None:
                errs.bad(p, _DOMAIN_TEXT, item)
                return _BAD
            return name
        names = _each(path, raw, errs, "domain names", one)
        return _BAD if names is None else frozenset(names)

    def render(self, value):
        return json.dumps(sorted(value))


_LISTEN_TEXT = "HOST:PORT (IPv6 as [::1]:2525)"


def _parse_listen(path: str, raw: Any, errs: _Errors) -> Any:
    """HOST is an IP literal, not a name: binding must not depend on DNS."""
    if not isinstance(raw, str):
        errs.bad(path, _LISTEN_TEXT, raw)
        return _BAD
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
        family = ipaddress.IPv6Address
    else:
        host, sep, port = raw.rpartition(":")
        family = ipaddress.IPv4Address
    if not sep or not host or not port.isdigit():
        errs.bad(path, _LISTEN_TEXT, raw)
        return _BAD
    try:
        family(host)
    except ValueError:
        ipv6_unbracketed = ":" in host
        name_text = "HOST:PORT with HOST an IP address, not a name"
        errs.bad(path, _LISTEN_TEXT if ipv6_unbracketed else name_text, raw)
        return _BAD
    if not 1 <= int(port) <= 65535:
        errs.bad(path, "a port in 1..65535", raw)
        return _BAD
    return (host, int(port))


@dataclass(frozen=True)
class ListenList(Kind):
    type_name = "list of strings (HOST:PORT)"

    def parse(self, path, raw, errs):
        addrs = _each(path, raw, errs, '"HOST:PORT" strings', lambda p, item: _parse_listen(p, item, errs))
        if addrs is None:
            return _BAD
        # Empty is allowed here when [[listener]] tables exist (a cross-check).
        for i, addr in enumerate(addrs):
            if addr in addrs[:i]:  # a second bind of the same address fails at start-up
                errs.bad(f"{path}[{i}]", "each address once", raw[i])
                return _BAD
        return tuple(addrs)

    def render(self, value):
        return json.dumps([f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in value])


def _parse_network(path: str, raw: Any, errs: _Errors) -> Any:
    if isinstance(raw, str):  # ip_network() would also take an int
        try:
            return ipaddress.ip_network(raw, strict=True)
        except ValueError:
            try:
                net = ipaddress.ip_network(raw, strict=False)
            except ValueError:
                pass
            else:
                errs.bad(path, f"a network without host bits set (did you mean {str(net)!r}?)", raw)
                return _BAD
    errs.bad(path, 'an IP network such as "10.0.0.0/8" or "::1/128", or a single address', raw)
    return _BAD


@dataclass(frozen=True)
class NetworkList(Kind):
    """Rule: a bare address means that one host (/32 or /128); a network with
    host bits set ("10.1.2.3/8") is refused, since it is most likely a typo
    and silently widening or narrowing a trust list is worse than an error."""

    type_name = "list of strings (CIDR)"

    def parse(self, path, raw, errs):
        nets = _each(path, raw, errs, "CIDR strings", lambda p, item: _parse_network(p, item, errs))
        return _BAD if nets is None else tuple(nets)

    def render(self, value):
        return json.dumps([str(n) for n in value])


# ---------------------------------------------------------------------------
# The schema: the dataclasses themselves. opt() attaches kind and doc to a
# field; section() marks a nested table.
# ---------------------------------------------------------------------------

# Routing and delivery kinds live in their own module (it imports the base
# kinds above, so this import must stay below them).
from mta.config_routes import (  # noqa: E402
    TLS_MODES, AddressList, AddressMap, DurationList, IpList, OptionalHostPort, SenderLoginMap, Transport,
    TransportMap, parse_transport,
)
from mta.config_listeners import (  # noqa: E402
    CipherString, Listener, ListenerTables, TlsVersion, cross_checks as _listener_checks, resolve as _resolve_listeners,
)


def opt(default: Any, kind: Kind, doc: str, *, factory: Callable[[], Any] | None = None,
        shown: str | None = None) -> Any:
    meta = {"kind": kind, "doc": doc, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type) -> Any:
    return field(default_factory=cls, metadata={"section": cls})


@dataclass(frozen=True)
class SpoolConfig:
    dir: str = opt(DEFAULT_SPOOL_DIR, Text(nonempty=True),
                   "Spool root; each worker owns the shard `<dir>/<worker>/`. "
                   "Created (mode 0700) if missing.")
    segment_size: int = opt(64 * MiB, Size(),
                            "A segment file is closed and a new one started past this size.")
    spill_threshold: int = opt(1 * MiB, Size(),
                               "Messages larger than this are streamed to the spool as they arrive "
                               "instead of buffered in memory.")
    min_free_space: int = opt(64 * MiB, Size(min=0),
                              "Below this much free disk space, new mail gets 452 4.3.1; "
                              "0 disables the check.")
    sync: bool = opt(True, Bool(),
                     "fdatasync before replying 250. false only for benchmarks: "
                     "it loses acknowledged mail on a crash.")
    commit_delay: float = opt(0.002, Duration(allow_zero=True, max=0.1),
                              "Group commit under load: while the spool writer is busy (it synced "
                              "a batch of several messages less than 5 ms ago), a message waits up "
                              "to this long for others to share its fdatasync (16 waiting end the "
                              "wait at once); an idle spool, or one client alone, syncs at once. "
                              "0 syncs every batch at once.")


@dataclass(frozen=True)
class SmtpConfig:
    max_line_length: int = opt(512, Int(min=512, unit="octets, RFC 5321 minimum 512"),
                               "Longest command line accepted, CRLF included.")
    max_message_size: int = opt(50 * MiB, Size(),
                                "Largest message accepted; advertised in the EHLO SIZE keyword.")
    max_header_size: int = opt(1 * MiB, Size(),
                               "Largest header block accepted "
                               "(the message as a whole is also bound by max_message_size).")
    max_recipients: int = opt(1000, Int(),
                              "Recipients per transaction (RFC 5321 asks servers to accept at least 100).")
    max_errors: int = opt(20, Int(), "Protocol errors in one session before the server disconnects.")
    idle_timeout: float = opt(300.0, Duration(), "How long a session may stay silent before it is closed.")
    greeting_delay: float = opt(1.0, Duration(allow_zero=True),
                                "Pause before the greeting for clients outside mynetworks; 0 disables.")
    max_hops: int = opt(50, Int(), "Received headers allowed before a message is refused as a mail loop.")
    bare_lf: str = opt("reject", Choice(("reject", "normalize")),
                       "A bare CR or LF in DATA: reject the message, or normalize it to CRLF.")
    reverse_dns: bool = opt(True, Bool(), "Look up the client's PTR name for the Received header and policy.")
    reverse_dns_timeout: float = opt(2.0, Duration(), "Give up on the PTR lookup after this long.")
    banner: str = opt("", Text(max_len=200, ascii_printable=True),
                      'Extra text after "ESMTP" in the 220 greeting.')


@dataclass(frozen=True)
class DeliveryConfig:
    enabled: bool = opt(True, Bool(), "false: accept and spool mail but deliver nothing (maintenance, "
                                      "accept-path benchmarks); the --no-delivery flag.")
    agent: bool = opt(True, Bool(),
                      "SMTP and LMTP delivery run in a child process of each worker (the delivery "
                      "agent), so accepting and delivering use two cores; false: in the worker's "
                      "own event loop. Queue decisions and spool records stay in the worker either way.")
    relay_to: str = opt("", OptionalHostPort(),
                        "Smarthost HOST:PORT for all mail that is not local (the --relay-to flag); "
                        "empty: MX lookup, or the transport map.")
    local_transport: Any = opt(parse_transport("maildir ./mta-mail/{domain}/{user}"), Transport(),
                          "How mail for local domains is delivered unless the transport map says otherwise.")
    retry_schedule: tuple[float, ...] = opt((60.0, 300.0, 900.0, 1800.0, 3600.0), DurationList(),
                                            "Delays before the first retries of a deferred recipient.")
    retry_interval: float = opt(7200.0, Duration(), "Delay between later retries, once the schedule is used up.")
    retry_jitter: int = opt(10, Int(min=0, unit="percent"),
                            "Random spread added to each retry delay, in percent, so retries do not come in waves.")
    max_lifetime: float = opt(5 * 86400.0, Duration(),
                              "A recipient still deferred this long after arrival is bounced (4.4.7).")
    max_active: int = opt(1000, Int(unit="messages"),
                          "Messages being delivered at once; the rest wait in the spool, not in memory.")
    max_connections: int = opt(20, Int(), "Concurrent connections per destination (per route for smarthosts).")
    messages_per_connection: int = opt(100, Int(), "Messages sent over one connection before it is closed.")
    smtp_port: int = opt(25, Int(), "Port used for deliveries to MX hosts (25; another only for tests or private networks).")
    tls: str = opt("opportunistic", Choice(TLS_MODES),
                   "Outbound STARTTLS: none, opportunistic (unverified if offered), required (verified).")
    tls_ca_file: str = opt("", Text(), "Trust anchors (PEM file) for verified outbound TLS (tls = required, "
                                       "MTA-STS enforce); empty: the system's CAs.")
    mta_sts: bool = opt(True, Bool(), "Look up MTA-STS policies (RFC 8461) of MX destinations and apply them: "
                                      "enforce requires verified TLS to a matching MX, testing only reports.")
    mta_sts_port: int = opt(443, Int(), "HTTPS port of the mta-sts.<domain> policy hosts (443; another only "
                                        "for tests).")
    mta_sts_ca_file: str = opt("", Text(), "Trust anchors (PEM file) for the policy hosts' HTTPS certificates; "
                                           "empty: the system's CAs.")
    mta_sts_timeout: float = opt(10.0, Duration(), "Give up on fetching an MTA-STS policy after this long "
                                                   "(the domain is then treated as having none).")
    tls_report_interval: float = opt(3600.0, Duration(allow_zero=True),
                                     "How often the per-domain TLS counters (TLS-RPT style) are logged; they "
                                     "are also logged at shutdown. 0: only at shutdown.")
    log_file: str = opt("", Text(), "Delivery log (one JSON line per recipient outcome); empty: stderr.")
    route_hook: str = opt("", Text(), 'A "module:function" called for each recipient; a Route it returns '
                                      "wins over the transport map.")


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = opt((), IpList(), "Resolvers to ask; empty: the system's (/etc/resolv.conf).")
    port: int = opt(53, Int(), "The resolvers' port.")
    timeout: float = opt(5.0, Duration(), "Give up on a DNS query after this long (the mail is deferred).")


@dataclass(frozen=True)
class LimitsConfig:
    apply_to_mynetworks: bool = opt(False, Bool(),
                                    "false: the limits below spare clients in mynetworks (benchmarks from "
                                    "loopback are not throttled); true: they apply to every client.")
    max_connections: int = opt(1000, Int(min=0),
                               "Concurrent sessions in all (per worker); a limited client beyond it gets "
                               "421 4.7.0 and is disconnected. 0: unlimited.")
    max_connections_per_ip: int = opt(20, Int(min=0),
                                      "Concurrent sessions from one client IP (per worker); beyond: 421 4.7.0. "
                                      "0: unlimited.")
    connection_rate_per_ip: int = opt(0, Int(min=0, unit="per minute"),
                                      "Connection attempts one client IP may make per minute (sliding window, "
                                      "refused attempts count); beyond: 421 4.7.0. 0: unlimited.")
    max_messages_per_connection: int = opt(0, Int(min=0),
                                           "Messages one session may send; the next MAIL gets 421 4.7.0 and "
                                           "the session is closed. 0: unlimited.")
    max_recipients_per_connection: int = opt(0, Int(min=0),
                                             "Recipients accepted in one session, over all its transactions; "
                                             "further RCPTs get 452 4.5.3. 0: unlimited.")
    max_commands: int = opt(0, Int(min=0),
                            "Commands in one session; the next one gets 421 4.7.0 and the session is "
                            "closed. 0: unlimited.")
    soft_error_limit: int = opt(3, Int(min=0),
                                "Errors a session may make before each further error reply is delayed by "
                                "error_tarpit (smtp.max_errors still disconnects).")
    error_tarpit: float = opt(1.0, Duration(allow_zero=True),
                              "Delay of each error reply past soft_error_limit; the server keeps serving "
                              "others meanwhile. 0 disables.")
    min_data_rate: int = opt(0, Int(min=0, unit="bytes/second"),
                             "Slowest DATA/BDAT transfer tolerated, measured over data_rate_window; slower: "
                             "421 4.4.2 and disconnect (slowloris). 0 disables.")
    data_rate_window: float = opt(10.0, Duration(), "The window over which min_data_rate is measured.")


@dataclass(frozen=True)
class PrivilegesConfig:
    user: str = opt("", Text(), "Started as root: after binding the listeners, drop to this user (the spool "
                                "is made theirs, mode 0700) before reading any client byte. Empty: stay.")
    group: str = opt("", Text(), "The group to drop to; empty: the user's primary group.")


@dataclass(frozen=True)
class TlsConfig:
    cert: str = opt("", Text(), "Server certificate chain (PEM file). With key: STARTTLS is offered on every "
                                'listener whose tls is "starttls" (and on every `listen` address); '
                                "re-read on SIGHUP.")
    key: str = opt("", Text(), "Private key of cert (PEM file, unencrypted); set both or neither.")
    min_version: str = opt("TLSv1.2", TlsVersion(), "Oldest TLS version a client may negotiate.")
    ciphers: str = opt("", CipherString(), "OpenSSL cipher string for TLS 1.2; empty: Python's default.")


@dataclass(frozen=True)
class AuthConfig:
    users_file: str = opt("", Text(),
                          "User file for SMTP AUTH (`user:$scrypt$...` lines, mode 0600, managed with "
                          "`mta user`; re-read when it changes). Empty: AUTH is not offered.")
    sender_login: dict = opt(None, SenderLoginMap(),
                             'User → envelope senders it may use (addresses, or "@domain" for a whole '
                             "domain); any other sender gets 553 5.7.1. The null sender <> is always allowed.",
                             factory=dict, shown="{}")
    sender_login_default: str = opt("none", Choice(("none", "self", "any")),
                                    "Senders allowed beyond the map: none, self (the user name, when it is "
                                    "an address), any (no check).")
    max_failures: int = opt(5, Int(), "AUTH failures from one IP within failure_window before 421 4.7.0 "
                                      "and disconnection.")
    failure_window: float = opt(600.0, Duration(), "Sliding window over which AUTH failures are counted, "
                                                   "per client IP and per user.")
    tarpit_max: float = opt(8.0, Duration(allow_zero=True),
                            "Longest delay before a 535 reply (1 s, 2 s, 4 s ... per recent failure); "
                            "0 disables the tarpit.")


@dataclass(frozen=True)
class LogConfig:
    level: str = opt("info", Choice(("debug", "info", "warning", "error")), "Least severe message logged.")


@dataclass(frozen=True)
class Config:
    hostname: str = opt(None, Hostname(), "Our name in the greeting, EHLO replies and Received headers.",
                        factory=lambda: socket.gethostname(), shown="socket.gethostname()")
    listen: tuple[tuple[str, int], ...] = opt(
        (("127.0.0.1", 2525),), ListenList(),
        "Plain listeners (profile mx; STARTTLS offered when [tls] is set): IP literals, IPv6 in brackets. "
        "At least one address here or in [[listener]].")
    listener: tuple = opt((), ListenerTables(),
                          'More listeners, each a [[listener]] table: address = "HOST:PORT", '
                          'profile = "mx" or "submission" (default mx), tls = "starttls", "implicit" or "none" '
                          "(default starttls when [tls] is set, else none; implicit: TLS from the first byte), "
                          "proxy_protocol = true or false (default: the top-level proxy_protocol).")
    mynetworks: tuple[Network, ...] = opt(
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")), NetworkList(),
        "Trusted clients: may relay anywhere and skip greeting_delay.")
    local_domains: frozenset[str] = opt(frozenset(), DomainSet(),
                                        "Domains whose mail is delivered on this host.")
    relay_domains: frozenset[str] = opt(frozenset(), DomainSet(),
                                        "Domains we accept mail for from anyone and relay onward.")
    workers: int = opt(1, Int(unit="processes"),
                       "Worker processes sharing the listening ports (SO_REUSEPORT), each with its own "
                       "spool shard `<spool.dir>/<n>/`; they die with the main process.")
    cpu_affinity: str = opt("none", Choice(options=("none", "auto")),
                            "\"auto\": each worker's event loop is pinned to a CPU of its own (worker n to the "
                            "n-th allowed CPU) and its spool writer thread and delivery agent to the other CPUs, "
                            "so the thread that answers clients is not preempted by its helpers (nginx's "
                            "worker_cpu_affinity auto). For a host that runs the relay and little else; "
                            "\"none\" leaves placement to the kernel. No effect with one CPU.")
    local_recipients: frozenset[str] = opt(
        frozenset(), AddressList(),
        "Recipients that exist in the local domains (addresses, or local parts valid in every local domain); "
        "others get 550 5.1.1 at RCPT. Empty: every local part is accepted. postmaster, alias and "
        "virtual keys always count.")
    aliases: dict = opt(None, AddressMap(), "Local part → addresses, for the local domains.", factory=dict, shown="{}")
    virtual: dict = opt(None, AddressMap(full_keys=True), "Address → addresses (virtual recipients).",
                        factory=dict, shown="{}")
    transport: dict = opt(None, TransportMap(), 'Domain (or "*") → transport; overrides MX and relay_to.',
                          factory=dict, shown="{}")
    proxy_protocol: bool = opt(False, Bool(),
                               "Expect a HAProxy PROXY header (v1 or v2) first on every connection, and take "
                               "the client IP from it: the default of every listener ([[listener]] tables may set their own).")
    proxy_from: tuple[Network, ...] = opt((), NetworkList(),
                                          "Addresses allowed to send the PROXY header; with proxy_protocol, "
                                          "connections from elsewhere are closed.")
    spool: SpoolConfig = section(SpoolConfig)
    delivery: DeliveryConfig = section(DeliveryConfig)
    dns: DnsConfig = section(DnsConfig)
    smtp: SmtpConfig = section(SmtpConfig)
    limits: LimitsConfig = section(LimitsConfig)
    privileges: PrivilegesConfig = section(PrivilegesConfig)
    tls: TlsConfig = section(TlsConfig)
    auth: AuthConfig = section(AuthConfig)
    log: LogConfig = section(LogConfig)

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """Every address to listen on, with its profile and TLS mode."""
        return _resolve_listeners(self)


class Key(NamedTuple):
    name: str  # dotted
    type: str  # as documented
    default: Any  # the typed default (computed now for hostname)
    default_text: str  # as documented: TOML, or an expression for computed defaults
    doc: str


def _walk(cls: type, prefix: str = ""):
    for f in dataclasses.fields(cls):
        if "section" in f.metadata:
            yield from _walk(f.metadata["section"], f"{prefix}{f.name}.")
        else:
            yield prefix + f.name, f


def schema() -> list[Key]:
    keys = []
    for name, f in _walk(Config):
        kind = f.metadata["kind"]
        default = f.default_factory() if f.default is MISSING else f.default
        text = f.metadata["shown"] or kind.render(default)
        keys.append(Key(name, kind.type_name, default, text, f.metadata["doc"]))
    return keys


def schema_keys() -> dict[str, tuple[Any, str]]:
    """Every dotted key → (default, doc)."""
    return {k.name: (k.default, k.doc) for k in schema()}


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

_ALL_KEYS = [name for name, _ in _walk(Config)]


def _suggest(path: str, siblings: list[str]) -> str | None:
    prefix, _, leaf = path.rpartition(".")
    prefix = prefix + "." if prefix else ""
    same_leaf = [k for k in _ALL_KEYS if k.rpartition(".")[2] == leaf]
    if same_leaf:  # right name, wrong table: `max_message_size` at the top level
        return same_leaf[0]
    if close := difflib.get_close_matches(leaf, siblings, 1, 0.7):
        return prefix + close[0]
    close = difflib.get_close_matches(path, _ALL_KEYS, 1, 0.7)
    return close[0] if close else None


def _build(cls: type, table: dict, prefix: str, errs: _Errors) -> Any:
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    for name in table:
        if name not in names:
            errs.unknown(prefix + name, _suggest(prefix + name, names))
    kwargs = {}
    for f in fields:
        path = prefix + f.name
        if "section" in f.metadata:
            raw = table.get(f.name, {})
            if isinstance(raw, dict):
                kwargs[f.name] = _build(f.metadata["section"], raw, path + ".", errs)
            else:
                errs.bad(path, f"a table ([{path}])", raw)
            continue
        kind: Kind = f.metadata["kind"]
        if f.name in table:
            value = kind.parse(path, table[f.name], errs)
        elif f.default_factory is not MISSING:
            # A computed default (the host name) comes from the machine, so it
            # is validated like user input, and the error says where it came from.
            before = len(errs.items)
            value = kind.parse(path, f.default_factory(), errs)
            if len(errs.items) > before:
                errs.items[-1] += f" (the default, {f.metadata['shown']}; set {path} or use --{f.name})"
        else:
            continue
        if value is not _BAD:
            kwargs[f.name] = value
    return cls(**kwargs)


def _cross_checks(cfg: Config, errs: _Errors) -> None:
    """Rules that span keys; run only once every value parsed, so they see real values."""
    for domain in sorted(cfg.local_domains & cfg.relay_domains):
        # Delivered here or relayed onward: it cannot be both.
        errs.bad("relay_domains", "no domain that is also in local_domains", domain)
    if not cfg.proxy_from and any(lst.proxy for lst in cfg.listeners):
        errs.bad("proxy_from", "at least one network when a listener has proxy_protocol = true", [])
    if cfg.privileges.group and not cfg.privileges.user:
        errs.bad("privileges.group", "privileges.user to be set too", cfg.privileges.group)
    _listener_checks(cfg, errs)


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return max(1, f.read().count(b"\n") + 1)


def _read(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        # The message carries "(at line N, column M)", except at end of input.
        where = "" if "(at line" in str(e) else f" (line {_count_lines(path)})"
        raise ConfigError(f"{path}: invalid TOML: {e}{where}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8 (byte offset {e.start})") from e


def _apply_overrides(data: dict, overrides: dict, errs: _Errors) -> None:
    """Dotted keys from CLI flags replace (not merge with) the file's values.
    None means "flag not given", so the CLI can pass every flag through."""
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break  # the file's own type error for that table is reported
        else:
            node[leaf] = value
            errs.from_cli.add(key)


def load(path: str | None, overrides: dict | None = None) -> Config:
    """Read, override, validate. path None means the built-in defaults.
    Raises ConfigError listing every problem."""
    data = _read(path) if path is not None else {}
    errs = _Errors()
    _apply_overrides(data, overrides or {}, errs)
    cfg = _build(Config, data, "", errs)
    if not errs.items:
        _cross_checks(cfg, errs)
    if errs.items:
        raise ConfigError(errs.items)
    return cfg


def check(path: str | None, overrides: dict | None = None) -> list[str]:
    """For `mta check-config`: every problem, or [] if the file is good."""
    try:
        load(path, overrides)
    except ConfigError as e:
        return e.errors
    return []
