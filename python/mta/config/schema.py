"""The configuration's schema (every key, its kind, default and doc, as field metadata of
frozen dataclasses) and load/check: a TOML file plus overrides, validated in one pass
into one ConfigError listing every problem; no DNS or filesystem access but the file."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import socket
import tomllib
from dataclasses import MISSING, dataclass, field
from typing import Any, Callable, NamedTuple

from mta.errors import ConfigError

from mta.config.kinds import (  # noqa: F401 (re-exported: tests and docs name kinds through the schema)
    BAD, Bool, Choice, DomainSet, Duration, Errors, GiB, Hostname, Int, KiB, Kind, ListenList, MiB, Network, NetworkList, Size, Text,
)
from mta.config.listeners import (
    CipherString, Listener, ListenerTables, TlsVersion, cross_checks as listener_checks, resolve as resolve_listeners,
)
from mta.config.dkim import SignTables
from mta.config.plugins import PluginTables
from mta.config.webhooks import WebhookTables
from mta.config.shaping import (
    HeaderName, PoolName, PoolTables, RateKind, RedisUrl, ReplyTables, RuleTables, SenderPools, SourceTables,
    cross_checks as shaping_checks, resolve_aliases,
)
from mta.config.routes import (
    TLS_MODES, AddressList, AddressMap, DurationList, IpList, OptionalHostPort, SenderLoginMap, Transport,
    TransportMap, parse_transport,
)

__all__ = [
    "DEFAULT_SPOOL_DIR", "Config", "SpoolConfig", "SmtpConfig", "LogConfig", "LimitsConfig",
    "PrivilegesConfig", "TlsConfig", "Listener", "AuthConfig",
    "Key", "load", "check", "schema", "schema_keys",
]

# Relative to the working directory so that an ordinary user can run
# `mta run` without root; production configs set an absolute path.
DEFAULT_SPOOL_DIR = "./mta-spool"


# The schema: the dataclasses themselves. opt() attaches kind and doc to a
# field; section() marks a nested table.

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
    segment_size: int = opt(64 * MiB, Size(max=64 * GiB),
                            "A segment file is closed and a new one started past this size "
                            "(at most 64GiB).")
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
    active_limit: int = opt(20000, Int(min=0),
                            "Envelopes of the newest arrivals kept in memory, as Postfix's "
                            "qmgr_message_active_limit: a message's first attempt reads its envelope "
                            "from there. Every other queued message costs about 150 bytes of index, "
                            "and its envelope is read back from the spool when it is due. "
                            "0 keeps none.")


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
    max_connections: int = opt(20, Int(), "Concurrent connections per destination (per route for smarthosts). "
                                          "An alias of shaping.default.connection_limit, which wins when set "
                                          "(both set to different values: an error).")
    messages_per_connection: int = opt(100, Int(), "Messages sent over one connection before it is closed. An alias "
                                                   "of shaping.default.max_deliveries_per_connection, which wins "
                                                   "when set (both set to different values: an error).")
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
    route_hook: str = opt("", Text(), 'Deprecated: a "module:function" loaded as a plugin with only a '
                                      '"route" hook (list the module under [[plugin]] instead).')


@dataclass(frozen=True)
class EgressConfig:
    source: tuple = opt((), SourceTables(),
                        'Egress sources, each an [[egress.source]] table: name = "ip2" (unique; letters, digits, '
                        '"_", "." and "-"; not "default"), address = "192.0.2.2" (IPv4 or IPv6 address to send '
                        'from), ehlo = "out2.example.com" (default: hostname). Limits are kept per source and '
                        'site. Without sources, mail goes from the default source (the kernel\'s choice of '
                        'address). See docs/shaping.md.')
    pool: tuple = opt((), PoolTables(),
                      'Egress pools, each an [[egress.pool]] table: name = "bulk" (unique), sources = { ip2 = 3, '
                      'ip3 = 1 } (every source an [[egress.source]], each weight an integer >= 1): connections '
                      'go from the sources in smooth weighted round robin.')
    default_pool: str = opt("", PoolName(),
                            'The pool of messages no other rule picks (a plugin\'s tx.notes["pool"], pool_header, '
                            'sender_pools); "": the default source.')
    pool_header: str = opt("", HeaderName(),
                           'A header naming the pool of a message (such as "X-Pool"), read at receipt and '
                           'removed before sending; "": none.')
    sender_pools: dict = opt(None, SenderPools(),
                             'Sender domain → pool name; a domain covers its subdomains ("example.com" covers '
                             '"a.example.com"), the longest match wins.', factory=dict, shown="{}")


@dataclass(frozen=True)
class ShapeDefaults:
    connection_limit: int = opt(20, Int(),
                                "Concurrent connections per egress source and destination site, per machine (all "
                                "workers). Alias: delivery.max_connections (this key wins when set; both set to "
                                "different values is an error). A transport's connections= overrides it for its "
                                "routes, and a matching [[shaping.rule]] overrides both.")
    max_connection_rate: Any = opt(None, RateKind(),
                                   'New connections per source and site: "N/s", "N/min" or "N/h" (N may be a '
                                   'decimal), smooth with a burst of half a second\'s worth; "": unlimited.')
    max_message_rate: Any = opt(None, RateKind(),
                                'Messages per source and site, as max_connection_rate; "": unlimited.')
    max_deliveries_per_connection: int = opt(100, Int(),
                                             "Messages sent over one connection before it is closed. Alias: "
                                             "delivery.messages_per_connection (this key wins when set; both set "
                                             "to different values is an error). A transport's per_connection= "
                                             "overrides it for its routes, and a matching [[shaping.rule]] "
                                             "overrides both.")


@dataclass(frozen=True)
class ShapingConfig:
    default: ShapeDefaults = section(ShapeDefaults)
    rule: tuple = opt((), RuleTables(),
                      'Per-destination limits, each a [[shaping.rule]] table: domain = "example.test" (the '
                      'recipient domain and its subdomains; "*.example.test": only subdomains) or site = '
                      '"*.mail.protection.outlook.com" (a glob on MX host names), exactly one of the two, and any '
                      'of connection_limit, max_connection_rate, max_message_rate, max_deliveries_per_connection '
                      '(unset: inherited). Every matching rule applies, in order; later ones win key by key.')
    on_reply: tuple = opt((), ReplyTables(),
                          'Reply-driven rules, each a [[shaping.on_reply]] table: match = "^421 .*TSS04" (a regex '
                          'on the remote reply) and/or class = "rate_limited" (a bounce class), site = "*.yahoodns.net" '
                          '(optional glob), action = "suspend" (no connection to the site), "slow" (halve its '
                          'message rate) or "bounce", duration = "30m" (for suspend and slow). The first matching '
                          'rule applies.')
    max_site_share: int = opt(50, Int(min=1, max=100, unit="percent"),
                              "The most of a worker's active window (delivery.max_active) a slow destination site may "
                              "hold once the window is nearly full (90%): a site is slow when ending what it has in "
                              "flight would take it over a second at its recent pace. Its other due messages wait in "
                              "the queue for about the time it takes to drain its excess (no attempt counted), so a "
                              "slow or suspended site never starves the others; a fast one, or one alone, may use "
                              "the whole window.")


@dataclass(frozen=True)
class ThrottleConfig:
    backend: str = opt("local", Choice(("local", "redis")),
                       '"local": limits shared by the workers of this machine; "redis": by every worker of every '
                       "node using the same Redis.")
    redis_url: str = opt("redis://127.0.0.1:6379/0", RedisUrl(), "The Redis server of backend = \"redis\".")
    expected_nodes: int = opt(1, Int(unit="nodes"),
                              "Nodes sharing the Redis budgets: while Redis is unreachable, each node falls back to "
                              "local limits divided by this.")
    lease_ttl: float = opt(30.0, Duration(),
                           "A connection slot held in Redis expires unless renewed within this long, so a dead "
                           "node's slots come back.")


@dataclass(frozen=True)
class BounceConfig:
    max_returned_size: int = opt(50 * KiB, Size(min=0),
                                 "A bounce for a sender who asked for the whole message back (RET=FULL) "
                                 "returns its headers and at most this much of its body; beyond it, the "
                                 "headers and this much of the body as text/rfc822-headers, with a note.")
    delay_warning: float = opt(4 * 3600.0, Duration(allow_zero=True),
                               "Once a message has waited this long since arrival with recipients still "
                               "deferred, its sender gets one delay notice (a DSN with Action: delayed) "
                               "listing them, once per message; 0: never.")


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[str, ...] = opt((), IpList(), "Resolvers to ask; empty: the system's (/etc/resolv.conf).")
    port: int = opt(53, Int(), "The resolvers' port.")
    timeout: float = opt(5.0, Duration(), "Give up on a DNS query after this long (the mail is deferred).")


@dataclass(frozen=True)
class DkimConfig:
    sign: tuple = opt((), SignTables(),
                      'Signing keys, each a [[dkim.sign]] table: domain = "example.com" (signs mail whose From: '
                      'is this domain or a subdomain), selector = "s2026", key = "/etc/mta/dkim/s2026.private" '
                      '(PEM; RSA 1024-4096 bits or Ed25519: the algorithm follows the key), and optionally '
                      'headers = [...] (default: From, To, Cc, Subject, Date, Message-ID, Reply-To, MIME and '
                      'List-* fields, with From over-signed), canonicalization = "relaxed/relaxed" '
                      '(or "simple/simple", "relaxed/simple", "simple/relaxed"), expire = "7d" (x= tag). '
                      'Two tables for one domain (RSA and Ed25519) sign twice. See docs/authentication.md.')
    default_domain: str = opt("", Text(),
                              'Sign mail from mynetworks and authenticated users whose From: domain has no key '
                              'with the keys of this [[dkim.sign]] domain. Empty: such mail goes unsigned.')
    sign_untrusted: bool = opt(False, Bool(),
                               "Also sign mail from clients outside mynetworks that did not authenticate "
                               "(false: only mail from mynetworks and authenticated users is signed).")
    on_key_error: str = opt("refuse", Choice(("refuse", "send-unsigned")),
                            '"refuse": a key that cannot be read or used is a configuration error at start-up '
                            'and check-config, and a message whose signing fails gets 451 4.7.0 (never sent '
                            'unsigned); "send-unsigned": such keys are logged and skipped, the mail goes unsigned.')


@dataclass(frozen=True)
class VerifyConfig:
    enabled: bool = opt(True, Bool(),
                        "Check DKIM, SPF, DMARC and ARC for mail from outside mynetworks that did not "
                        "authenticate, and add an Authentication-Results header with the results.")
    authserv_id: str = opt("", Text(ascii_printable=True),
                           "The authserv-id of our Authentication-Results headers (RFC 8601); incoming "
                           "headers claiming it are removed as forged. Empty: the host name.")
    dmarc_reject: str = opt("tag", Choice(("tag", "reject", "quarantine")),
                            'What to do with mail that fails DMARC under a p=reject policy: "tag" (only record '
                            'it in Authentication-Results), "reject" (550 5.7.1), "quarantine" (accept and hold '
                            'it in the queue: mta queue release). Mail under p=quarantine is held with '
                            '"reject" and "quarantine".')
    timeout: float = opt(10.0, Duration(),
                         "All the checks of one message (DNS included) end within this long; what is not "
                         "known by then is recorded as temperror.")


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
class RotationPeriod(Duration):
    """tls.ticket_rotation: long enough that tickets are worth handing out, short enough
    that a stolen ticket key opens little (a ticket lives at most two periods)."""

    lo: float = 60.0
    hi: float = 86400.0

    def parse(self, path, raw, errs):
        value = super().parse(path, raw, errs)
        if value is not BAD and not self.lo <= value <= self.hi:
            errs.bad(path, f"a duration from {self.lo:g} s to {self.hi:g} s (1m to 24h)", raw)
            return BAD
        return value


@dataclass(frozen=True)
class TlsConfig:
    cert: str = opt("", Text(), "Server certificate chain (PEM file). With key: STARTTLS is offered on every "
                                'listener whose tls is "starttls" (and on every `listen` address); '
                                "re-read on SIGHUP.")
    key: str = opt("", Text(), "Private key of cert (PEM file, unencrypted); set both or neither.")
    min_version: str = opt("TLSv1.2", TlsVersion(), "Oldest TLS version a client may negotiate.")
    ciphers: str = opt("", CipherString(), 'OpenSSL cipher string for TLS 1.2 (engine = "openssl" only); '
                                           "empty: Python's default.")
    engine: str = opt("rustls", Choice(("rustls", "openssl")),
                      'TLS for SMTP (STARTTLS and implicit-TLS listeners, opportunistic TLS out): "rustls" '
                      "(in mta's extension: about half OpenSSL 3's handshake CPU and a lighter transport) or "
                      '"openssl" (Python\'s ssl). HTTPS, and verified outbound TLS (delivery.tls = '
                      '"required", MTA-STS) always use OpenSSL.')
    session_tickets: bool = opt(True, Bool(),
                                "Resume TLS sessions from tickets (an abbreviated handshake for a returning "
                                "client), whichever worker took it and across reloads; false: every handshake "
                                "is full.")
    ticket_rotation: float = opt(3600.0, RotationPeriod(),
                                 "Ticket keys change every this long (1m to 24h); a ticket is honoured for one "
                                 "period (its lifetime hint) and at most two, then the handshake is full.")


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
class HttpConfig:
    listen: tuple[tuple[str, int], ...] = opt(
        (), ListenList(),
        "HTTP listeners (GET /metrics, GET /health; see docs/http.md): IP literals, IPv6 in brackets. "
        "Empty: no HTTP listener. Each port is this server's alone: a second server on it fails to start.")
    tokens_file: str = opt("./mta-tokens", Text(),
                           "Bearer tokens for /api/... (`name:scopes:senders:sha256:<hex>` lines, mode 0600, "
                           "managed with `mta http token`; re-read when it changes). /metrics and /health need none.")
    tls: bool = opt(False, Bool(), "Serve HTTPS with the [tls] certificate (which must then be set).")
    max_body: int = opt(10 * MiB, Size(), "Largest request body; a bigger one gets 413.")


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
    workers: int = opt(1, Int(unit="processes", max=64),
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
    plugin: tuple = opt((), PluginTables(),
                        'Python plugins, each a [[plugin]] table, run in the order listed after the built-in '
                        'policies: module = "an.importable.module" (or an entry point of the group '
                        '"mta.plugins"), options = { ... } (handed to the plugin), timeout = "5s" (per hook '
                        'call; default 5s), name = "..." (for logs; default the module). See docs/plugins.md.')
    webhook: tuple = opt((), WebhookTables(),
                         'Event webhooks, each a [[webhook]] table: url = "http://127.0.0.1:9000/events" (http or '
                         'https; required), and optionally name (default: the url; the spool keeps each webhook\'s '
                         'progress under it), events (default ["delivered", "deferred", "bounced", "accepted"]), '
                         'batch = 100 (records per POST, 1..10000), max_backlog = 100000 (events kept; beyond, the '
                         'oldest are dropped and counted), timeout = "10s" (per POST), headers = { ... } (extra '
                         'request headers), retry_min = "1s" and retry_max = "300s" (the back-off after a failure '
                         'doubles from one to the other). See docs/webhooks.md.')
    spool: SpoolConfig = section(SpoolConfig)
    delivery: DeliveryConfig = section(DeliveryConfig)
    egress: EgressConfig = section(EgressConfig)
    shaping: ShapingConfig = section(ShapingConfig)
    throttle: ThrottleConfig = section(ThrottleConfig)
    bounce: BounceConfig = section(BounceConfig)
    dns: DnsConfig = section(DnsConfig)
    dkim: DkimConfig = section(DkimConfig)
    verify: VerifyConfig = section(VerifyConfig)
    smtp: SmtpConfig = section(SmtpConfig)
    limits: LimitsConfig = section(LimitsConfig)
    privileges: PrivilegesConfig = section(PrivilegesConfig)
    tls: TlsConfig = section(TlsConfig)
    auth: AuthConfig = section(AuthConfig)
    log: LogConfig = section(LogConfig)
    http: HttpConfig = section(HttpConfig)

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """Every address to listen on, with its profile and TLS mode."""
        return resolve_listeners(self)


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


def _build(cls: type, table: dict, prefix: str, errs: Errors) -> Any:
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
        if value is not BAD:
            kwargs[f.name] = value
    return cls(**kwargs)


def _cross_checks(cfg: Config, errs: Errors) -> None:
    """Rules that span keys; run only once every value parsed, so they see real values."""
    for domain in sorted(cfg.local_domains & cfg.relay_domains):
        # Delivered here or relayed onward: it cannot be both.
        errs.bad("relay_domains", "no domain that is also in local_domains", domain)
    if not cfg.proxy_from and any(lst.proxy for lst in cfg.listeners):
        errs.bad("proxy_from", "at least one network when a listener has proxy_protocol = true", [])
    if cfg.privileges.group and not cfg.privileges.user:
        errs.bad("privileges.group", "privileges.user to be set too", cfg.privileges.group)
    listener_checks(cfg, errs)
    if cfg.tls.ciphers and cfg.tls.engine == "rustls":
        errs.bad("tls.ciphers", 'no cipher string with tls.engine = "rustls" (its suites are fixed: ECDHE with '
                 'AES-GCM or ChaCha20-Poly1305); set tls.engine = "openssl" to choose OpenSSL ciphers',
                 cfg.tls.ciphers)
    if cfg.http.tls and not cfg.tls.cert:
        errs.bad("http.tls", "tls.cert and tls.key to be set (HTTPS uses the [tls] certificate)", True)
    shaping_checks(cfg, errs)
    dk = cfg.dkim
    if dk.default_domain and dk.default_domain.lower().rstrip(".") not in {s.domain for s in dk.sign}:
        errs.bad("dkim.default_domain", "the domain of a [[dkim.sign]] table", dk.default_domain)
    if any(c in cfg.verify.authserv_id for c in ' \t;()"\\'):
        errs.bad("verify.authserv_id", "a token without spaces, ';', '(', ')' or quotes (such as the host name)",
                 cfg.verify.authserv_id)


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


def _apply_overrides(data: dict, overrides: dict, errs: Errors) -> None:
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
    errs = Errors()
    _apply_overrides(data, overrides or {}, errs)
    cfg = _build(Config, data, "", errs)
    if not errs.items:
        _cross_checks(cfg, errs)
    if not errs.items:
        cfg = resolve_aliases(cfg, data, errs)
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
