"""Outbound TLS policy: MTA-STS (RFC 8461) with a per-worker policy cache, and TLS-RPT-style
counters. Under an enforce policy a delivery that fails TLS is deferred, never sent
in clear; a DNS or fetch failure keeps a cached policy in force."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from mta.delivery import OutMessage, RcptResult, Target, results_for
from mta.delivery.deliverylog import rfc3339

# `MtaStsCache.policy(domain)` finds a domain's policy: the TXT record
# `_mta-sts.<domain>` ("v=STSv1; id=..."), then the policy file at
# `https://mta-sts.<domain>/.well-known/mta-sts.txt`, fetched by a tiny HTTP/1.1
# client on asyncio + ssl (certificate verified against the mta-sts host name;
# no redirects; 200 and text/plain only; 64 KiB cap; every step under a timeout).
# The host name resolves through the same configured DNS as MX lookups (so the
# tests' loopback DNS server can point it at 127.0.0.x), and the HTTPS port and
# trust anchors are configurable for tests.
#
# Caching (RFC 8461 §5): a policy is kept for its max_age; while the TXT id is the
# one it was fetched under, it is not fetched again. A new id refetches; when that
# fetch fails, the cached policy (if not expired) stays in force. No TXT record,
# or a DNS failure, keeps a cached policy in force too; without one the domain
# has no policy and mail goes as usual. A failed fetch is not retried for the same
# id for `fetch_retry` seconds. Policies live in memory only (per worker
# process): a restart fetches them again (nothing is persisted to disk, yet).
#
# `OutboundTls.deliver` applies the policy to one mx delivery:
# - enforce: only MX hosts matching the policy's mx patterns are tried (none
#   left: 451 4.7.5), with tls="required" (chain and MX host name verified); a
#   delivery that fails TLS is deferred, never sent in clear. Such connections
#   are pooled under their own key, so a clear connection opened before the
#   policy was known is never reused for it.
# - testing: the delivery is first tried as enforce would; if that cannot
#   establish a verified session (or no MX matches), it is logged and counted as
#   "would fail" and the mail goes as usual (opportunistic, every MX).
# - none / no policy: as usual.
# Every result carries `tls` ("none" | "opportunistic" | "verified" | "failed"),
# `policy` and `tls_failure` (a TLS-RPT result type, or "mx-mismatch"), which
# the delivery log records; per-domain counters are logged (one JSON line per
# domain and policy) every `report_interval` seconds and at shutdown.

if TYPE_CHECKING:
    from mta.delivery.mx import MxResolver
    from mta.delivery.smtp.client import SmtpDelivery, SmtpOptions

__all__ = ["Policy", "PolicyError", "parse_policy", "parse_txt", "mx_matches", "fetch_policy",
           "MtaStsCache", "OutboundTls", "TlsCounters", "MAX_AGE_LIMIT", "MAX_POLICY_SIZE"]

log = logging.getLogger("mta.mtasts")

MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: about one year
MAX_POLICY_SIZE = 64 * 1024
_MAX_HEADER_SIZE = 16 * 1024
POLICY_PATH = "/.well-known/mta-sts.txt"
MODES = ("enforce", "testing", "none")


class PolicyError(ValueError):
    """A policy file (or its fetch) that cannot be used; the text says why."""


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str  # "enforce" | "testing" | "none"
    mx: tuple[str, ...]  # patterns: "mx.example.net" or "*.example.net", lower case
    max_age: int  # seconds
    id: str = ""  # the TXT id it was fetched under

    def matches(self, host: str) -> bool:
        return any(mx_matches(p, host) for p in self.mx)

    @property
    def label(self) -> str:
        """The `policy` field of delivery log records."""
        return "none" if self.mode == "none" else f"mta-sts-{self.mode}"


# --- parsing ----------------------------------------------------------------

_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}")
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_FIELD_RE = re.compile(r"([A-Za-z0-9_.-]+):[ \t]*(.*?)[ \t]*")


def parse_txt(records: Sequence[str]) -> str | None:
    """The policy id from the TXT records of `_mta-sts.<domain>`, or None when the
    domain has no usable record (RFC 8461 §3.1: records not starting with
    "v=STSv1" are ignored; other than exactly one, or a bad one, means none)."""
    ours = [r for r in records if re.match(r"v=STSv1[ \t]*(;|\Z)", r)]
    if len(ours) != 1:
        return None
    fields: dict[str, str] = {}
    for part in ours[0].split(";"):
        part = part.strip(" \t")
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            return None
        fields.setdefault(key, value)
    ident = fields.get("id", "")
    return ident if _ID_RE.fullmatch(ident) else None


def _valid_pattern(p: str) -> bool:
    name = p[2:] if p.startswith("*.") else p
    labels = name.split(".")
    return bool(name) and len(name) <= 253 and len(labels) >= 2 and not labels[-1].isdigit() \
        and all(_LABEL_RE.fullmatch(label) for label in labels)


def parse_policy(text: str, ident: str = "") -> Policy:
    """Parse a policy file (RFC 8461 §3.2). Unknown keys are ignored; a repeated
    key other than mx counts once (the first). max_age over the RFC's limit is
    clamped to it. Raises PolicyError."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip(" \t"):
            continue
        m = _FIELD_RE.fullmatch(line)
        if m is None:
            raise PolicyError(f"line {n}: not a 'key: value' field")
        key, value = m[1], m[2]
        if key == "mx":
            pattern = value.lower().removesuffix(".")
            if not _valid_pattern(pattern):
                raise PolicyError(f"line {n}: invalid mx pattern {value!r}")
            if pattern not in mx:
                mx.append(pattern)
        else:
            fields.setdefault(key, value)
    version = fields.get("version")
    if version != "STSv1":
        raise PolicyError(f"version must be STSv1, not {version!r}" if version else "no version field")
    mode = fields.get("mode")
    if mode not in MODES:
        raise PolicyError(f"mode must be enforce, testing or none, not {mode!r}" if mode else "no mode field")
    age = fields.get("max_age")
    if age is None:
        raise PolicyError("no max_age field")
    if not re.fullmatch(r"[0-9]{1,10}", age):
        raise PolicyError(f"max_age must be 1 to 10 digits, not {age!r}")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} needs at least one mx field")
    return Policy(mode, tuple(mx), min(int(age), MAX_AGE_LIMIT), ident)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact (case-insensitive, final dot ignored), or "*.example.net"
    matching exactly one more label on the left ("a.example.net", not
    "example.net" nor "a.b.example.net")."""
    host = host.lower().removesuffix(".")
    pattern = pattern.lower().removesuffix(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


# --- the HTTPS fetch ----------------------------------------------------------

async def fetch_policy(host: str, ips: Sequence[str], port: int = 443, *, ca_file: str | None = None,
                       timeout: float = 10.0, max_size: int = MAX_POLICY_SIZE) -> str:
    """GET https://<host>:<port>/.well-known/mta-sts.txt from each address in turn
    until one answers; the body as text. The certificate must be valid for `host`
    (system trust store, or `ca_file`). Raises PolicyError."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    errors: list[str] = []
    for ip in ips:
        try:
            async with asyncio.timeout(timeout):
                return await _get(ctx, host, ip, port, max_size, timeout)
        except TimeoutError:
            errors.append(f"{ip}: timed out")
        except PolicyError as e:
            errors.append(f"{ip}: {e}")
        except (OSError, EOFError, ssl.SSLError, ValueError) as e:  # ssl/cert errors, refused, reset
            errors.append(f"{ip}: {type(e).__name__}: {e}")
    raise PolicyError("; ".join(errors) or f"{host} has no address")


async def _get(ctx: ssl.SSLContext, host: str, ip: str, port: int, max_size: int, timeout: float) -> str:
    reader, writer = await asyncio.open_connection(ip, port, ssl=ctx, server_hostname=host,
                                                   ssl_handshake_timeout=timeout + 1.0,
                                                   limit=_MAX_HEADER_SIZE)
    try:
        authority = host if port == 443 else f"{host}:{port}"
        writer.write((f"GET {POLICY_PATH} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: mta\r\n"
                      "Accept: text/plain\r\nConnection: close\r\n\r\n").encode("ascii"))
        await writer.drain()
        status_line = await _line(reader)
        m = re.fullmatch(r"HTTP/1\.[01] ([0-9]{3})(?: .*)?", status_line)
        if m is None:
            raise PolicyError(f"not an HTTP response: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        size = len(status_line)
        while line := await _line(reader):
            size += len(line)
            if size > _MAX_HEADER_SIZE:
                raise PolicyError("response headers too large")
            name, sep, value = line.partition(":")
            if not sep:
                raise PolicyError(f"malformed header {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        status = int(m[1])
        if status != 200:  # RFC 8461 §3.3: redirects are not followed
            raise PolicyError(f"HTTP status {status}")
        ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "text/plain":
            raise PolicyError(f"content type {ctype or 'missing'!r}, not text/plain")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _chunked(reader, max_size)
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit():
                raise PolicyError(f"bad Content-Length {length!r}")
            if int(length) > max_size:
                raise PolicyError(f"policy larger than {max_size} bytes")
            body = await reader.readexactly(int(length))
        else:
            body = b""
            while chunk := await reader.read(65536):
                body += chunk
                if len(body) > max_size:
                    raise PolicyError(f"policy larger than {max_size} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("policy is not UTF-8 text") from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


async def _line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise PolicyError("response line too long") from None
    except asyncio.IncompleteReadError:
        raise PolicyError("connection closed in the response headers") from None
    return raw.decode("latin-1").rstrip("\r\n")


async def _chunked(reader: asyncio.StreamReader, max_size: int) -> bytes:
    body = b""
    while True:
        size_text = (await _line(reader)).split(";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise PolicyError(f"bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            return body  # trailers, if any, are not read: the connection is closed
        if len(body) + size > max_size:
            raise PolicyError(f"policy larger than {max_size} bytes")
        body += await reader.readexactly(size)
        await _line(reader)


# --- the cache ----------------------------------------------------------------

class MtaStsCache:
    """Policies per domain, in memory; see the module docstring for the rules."""

    fetch_retry = 60.0  # seconds before a failed fetch for the same TXT id is tried again

    def __init__(self, resolver: MxResolver, *, port: int = 443, ca_file: str | None = None,
                 timeout: float = 10.0) -> None:
        self.resolver = resolver
        self.port = port
        self.ca_file = ca_file or None
        self.timeout = timeout
        self._policies: dict[str, tuple[Policy, float]] = {}  # domain → (policy, monotonic expiry)
        self._failed: dict[str, tuple[str, float]] = {}  # domain → (TXT id, monotonic time it failed)
        self._inflight: dict[tuple[str, str], asyncio.Task] = {}
        self.fetches = 0  # HTTPS fetches started (for tests and stats)

    def cached(self, domain: str) -> Policy | None:
        hit = self._policies.get(domain)
        if hit is None:
            return None
        if hit[1] <= time.monotonic():
            del self._policies[domain]
            return None
        return hit[0]

    async def policy(self, domain: str) -> Policy | None:
        """The policy in force for `domain`, or None. Never raises."""
        domain = domain.strip().lower().removesuffix(".")
        if not domain or domain.startswith("[") or not _valid_pattern(domain):
            return None  # address literals and odd names have no policy
        try:
            return await self._policy(domain)
        except Exception:  # a bug here must not stop delivery
            log.exception("MTA-STS: policy lookup for %s failed", domain)
            return self.cached(domain)

    async def _policy(self, domain: str) -> Policy | None:
        cached = self.cached(domain)
        status, records = await self.resolver.txt(f"_mta-sts.{domain}")
        ident = parse_txt(records) if status == "ok" else None
        if ident is None or (cached is not None and cached.id == ident):
            return cached
        failed = self._failed.get(domain)
        if failed is not None and failed[0] == ident and time.monotonic() - failed[1] < self.fetch_retry:
            return cached
        key = (domain, ident)
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(domain, ident))
            self._inflight[key] = task
            task.add_done_callback(lambda _t: self._inflight.pop(key, None))
        fetched = await asyncio.shield(task)
        return fetched if fetched is not None else cached

    async def _fetch(self, domain: str, ident: str) -> Policy | None:
        host = f"mta-sts.{domain}"
        self.fetches += 1
        try:
            res = await self.resolver.resolve_host(host, self.port)
            if not res.ok:
                raise PolicyError(f"{host}: {res.text}")
            text = await fetch_policy(host, [t.ip for t in res.targets], self.port,
                                      ca_file=self.ca_file, timeout=self.timeout)
            policy = parse_policy(text, ident)
        except PolicyError as e:
            log.warning("MTA-STS: no policy for %s (id %s): %s", domain, ident, e)
            self._failed[domain] = (ident, time.monotonic())
            return None
        self._failed.pop(domain, None)
        self._policies[domain] = (policy, time.monotonic() + policy.max_age)
        log.info("MTA-STS: %s policy id %s: mode %s, mx %s, max_age %d", domain, ident, policy.mode,
                 ",".join(policy.mx) or "-", policy.max_age)
        return policy


# --- counters ---------------------------------------------------------------------

class TlsCounters:
    """Per (domain, policy) counts of mx deliveries (one per delivery attempt of a
    message's recipients for a domain), TLS-RPT style: by TLS outcome, and by
    failure type (failures that deferred the mail, and "would fail" ones of
    testing policies). `report()` logs one JSON line each and starts a new period."""

    def __init__(self) -> None:
        self.started = time.time()
        self._counts: dict[tuple[str, str], dict[str, Counter]] = {}

    max_keys = 10_000  # more (domain, policy) pairs in one period: report early, so memory stays bounded

    def add(self, domain: str, policy: str, tls: str | None, failure: str | None,
            would_fail: bool = False) -> None:
        if (domain, policy) not in self._counts and len(self._counts) >= self.max_keys:
            self.report()
        c = self._counts.setdefault((domain, policy), {
            "total": Counter(), "tls": Counter(), "failures": Counter(), "would_fail": Counter()})
        c["tls"][tls or "no-session"] += 1
        c["total"]["sessions"] += 1
        if failure and would_fail:
            c["would_fail"][failure] += 1
        elif failure:
            c["failures"][failure] += 1
            c["total"]["failed"] += 1

    def snapshot(self) -> list[dict]:
        out = []
        for (domain, policy), c in sorted(self._counts.items()):
            rec = {"domain": domain, "policy": policy, "sessions": c["total"]["sessions"],
                   "failed": c["total"]["failed"], "tls": dict(c["tls"]), "failures": dict(c["failures"])}
            if c["would_fail"]:
                rec["would_fail"] = dict(c["would_fail"])
            out.append(rec)
        return out

    def report(self) -> list[dict]:
        """Log the period's counters (nothing when there were no mx deliveries); reset them."""
        now = time.time()
        records = self.snapshot()
        for rec in records:
            line = {"start": rfc3339(self.started), "end": rfc3339(now), **rec}
            log.info("tls-report %s", json.dumps(line, separators=(",", ":")))
        self._counts.clear()
        self.started = now
        return records


# --- applying the policy -----------------------------------------------------------

class OutboundTls:
    """The mx delivery path's TLS policy: MTA-STS lookup, enforcement, counters."""

    def __init__(self, cache: MtaStsCache | None, report_interval: float = 3600.0) -> None:
        self.cache = cache  # None: MTA-STS disabled
        self.report_interval = report_interval
        self.counters = TlsCounters()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.report_interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._reports(), name="tls-report")

    async def _reports(self) -> None:
        while True:
            await asyncio.sleep(self.report_interval)
            self.counters.report()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.counters.report()

    async def policy(self, domain: str) -> Policy | None:
        return await self.cache.policy(domain) if self.cache is not None else None

    async def deliver(self, smtp: SmtpDelivery, key: str, domain: str, policy: Policy | None,
                      targets: Sequence[Target], opts: SmtpOptions, msg: OutMessage) -> list[RcptResult]:
        """Deliver msg to the MX targets of `domain` under `policy` (from `self.policy`)."""
        if policy is None or policy.mode == "none":
            results = await smtp.deliver(key, targets, opts, msg)
            return self._done(domain, "none", results)
        label = policy.label
        matching = [t for t in targets if policy.matches(t.host)]
        strict = replace(opts, tls="required")
        skey = f"{key}|mta-sts"
        if policy.mode == "enforce":
            if not matching:
                log.warning("MTA-STS: %s: no MX host (%s) matches the policy (%s); deferred", domain,
                            ",".join(sorted({t.host for t in targets})), ",".join(policy.mx))
                results = results_for(msg, 451, "4.7.5", "MTA-STS: no MX host matches the policy",
                                      tls_failure="mx-mismatch")
            else:
                results = await smtp.deliver(skey, matching, strict, msg)
                if results and results[0].tls == "failed":
                    log.warning("MTA-STS: %s: deferred, no verified TLS (%s): %s", domain,
                                results[0].tls_failure, results[0].text)
            return self._done(domain, label, results)
        # testing: try as enforce would; when that cannot work, say so and go as usual
        why = "mx-mismatch"
        if matching:
            results = await smtp.deliver(skey, matching, strict, msg)
            if any(r.tls == "verified" for r in results):
                return self._done(domain, label, results)
            first = results[0] if results else None
            why = (first.tls_failure if first else None) or "connection-failure"
        log.warning("MTA-STS testing: delivery to %s would fail under enforce (%s); delivering as usual",
                    domain, why)
        results = await smtp.deliver(key, targets, opts, msg)
        return self._done(domain, label, results, would_fail=why)

    def _done(self, domain: str, label: str, results: list[RcptResult],
              would_fail: str | None = None) -> list[RcptResult]:
        out = [r._replace(policy=label, tls_failure=would_fail or r.tls_failure) for r in results]
        if out:
            first = out[0]
            self.counters.add(domain, label, first.tls, would_fail or first.tls_failure,
                              would_fail=would_fail is not None)
        return out
