"""Config kinds for listeners and TLS: the `[[listener]]` array of tables (address, profile,
tls) and the TLS protocol version; `cross_checks` holds the rules that need [tls] and
`listen` too."""

from __future__ import annotations

import difflib
import json
import ssl
from dataclasses import dataclass
from typing import Any, NamedTuple

from mta.config.kinds import BAD, Choice, Errors, Kind, parse_listen

PROFILES = ("mx", "submission")
LISTENER_TLS = ("starttls", "implicit", "none")
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
_LISTENER_KEYS = ("address", "profile", "tls", "proxy_protocol")


class Listener(NamedTuple):
    """One listening address as the server uses it (see Config.listeners)."""

    host: str
    port: int
    profile: str  # "mx" | "submission"
    tls: str  # "starttls" | "implicit" | "none"; starttls only when [tls] is set
    proxy: bool = False  # a PROXY protocol header comes first (from proxy_from only)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ListenerSpec:
    """A `[[listener]]` table as written; tls None means "the default"
    (starttls when [tls] has a certificate, none otherwise)."""

    host: str
    port: int
    profile: str = "mx"
    tls: str | None = None
    proxy: bool | None = None  # None: the top-level proxy_protocol


@dataclass(frozen=True)
class ListenerTables(Kind):
    type_name = "array of tables (address, profile, tls, proxy_protocol)"

    def parse(self, path, raw, errs):
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            errs.bad(path, "an array of tables ([[listener]] with address, profile, tls, proxy_protocol)", raw)
            return BAD
        out = [self._one(f"{path}[{i}]", t, errs) for i, t in enumerate(raw)]
        return BAD if any(v is BAD for v in out) else tuple(out)

    @staticmethod
    def _one(path: str, table: dict, errs: Errors) -> Any:
        ok = True
        for key in table:
            if key not in _LISTENER_KEYS:
                close = difflib.get_close_matches(key, _LISTENER_KEYS, 1, 0.6)
                errs.unknown(f"{path}.{key}", f"{path}.{close[0]}" if close else None)
                ok = False
        if "address" not in table:
            errs.items.append(f"{path}.address: missing (HOST:PORT, IPv6 as [::1]:465)")
            return BAD
        addr = parse_listen(f"{path}.address", table["address"], errs)
        profile = Choice(PROFILES).parse(f"{path}.profile", table.get("profile", "mx"), errs)
        tls = table.get("tls")
        if tls is not None:
            tls = Choice(LISTENER_TLS).parse(f"{path}.tls", tls, errs)
        proxy = table.get("proxy_protocol")
        if proxy is not None and not isinstance(proxy, bool):
            errs.bad(f"{path}.proxy_protocol", "true or false", proxy)
            proxy = BAD
        if not ok or BAD in (addr, profile, tls, proxy):
            return BAD
        return ListenerSpec(addr[0], addr[1], profile, tls, proxy)

    def render(self, value):
        return json.dumps([])  # the only default; documented as []


@dataclass(frozen=True)
class TlsVersion(Kind):
    """Like Choice, but keeps the canonical spelling ("TLSv1.2")."""

    type_name = "string: " + ", ".join(TLS_VERSIONS)

    def parse(self, path, raw, errs):
        if isinstance(raw, str):
            for v in TLS_VERSIONS:
                if raw.lower() == v.lower():
                    return v
        errs.bad(path, "one of " + ", ".join(map(repr, TLS_VERSIONS)), raw)
        return BAD


@dataclass(frozen=True)
class CipherString(Kind):
    """An OpenSSL cipher string that selects something (no file access);
    empty means the ssl module's default."""

    type_name = "string"

    def parse(self, path, raw, errs):
        if not isinstance(raw, str) or "\0" in raw:
            errs.bad(path, "a string", raw)
            return BAD
        if raw:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(raw)
            except ssl.SSLError:
                errs.bad(path, "an OpenSSL cipher string that selects at least one cipher", raw)
                return BAD
        return raw


def resolve(cfg) -> tuple[Listener, ...]:
    """`listen` (plain mx listeners) followed by the `[[listener]]` tables,
    with the tls default filled in."""
    have_tls = bool(cfg.tls.cert)
    default = "starttls" if have_tls else "none"
    proxy = cfg.proxy_protocol
    out = [Listener(h, p, "mx", default, proxy) for h, p in cfg.listen]
    out += [Listener(s.host, s.port, s.profile, s.tls or default, proxy if s.proxy is None else s.proxy)
            for s in cfg.listener]
    return tuple(out)


def cross_checks(cfg, errs: Errors) -> None:
    tls = cfg.tls
    if bool(tls.cert) != bool(tls.key):
        missing, given = ("tls.key", "tls.cert") if tls.cert else ("tls.cert", "tls.key")
        errs.bad(missing, f"a PEM file path, since {given} is set (both or neither)", "")
    if not cfg.listen and not cfg.listener:
        errs.bad("listen", "at least one HOST:PORT", [])
    seen = {(h, p): "listen" for h, p in cfg.listen}
    have_tls = bool(tls.cert and tls.key)
    for i, spec in enumerate(cfg.listener):
        path = f"listener[{i}]"
        where = seen.get((spec.host, spec.port))
        if where is not None:
            addr = Listener(spec.host, spec.port, "", "").address
            errs.bad(f"{path}.address", f"each address once (it is also in {where})", addr)
        seen[(spec.host, spec.port)] = path
        if spec.tls in ("implicit", "starttls") and not have_tls:
            errs.items.append(f"{path}.tls: {spec.tls} needs tls.cert and tls.key")
