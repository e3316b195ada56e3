"""The `[[dkim.sign]]` tables: domain, selector, key file and the signing options, checked
for shape only; reading and checking the key itself is mta.policy.dkim's job (at
check-config and start-up), as the schema touches no file but the config."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mta.config.kinds import BAD, Choice, Duration, Errors, Tables, domain_name

CANONICALIZATIONS = ("relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple", "relaxed", "simple")
_KEYS = ("domain", "selector", "key", "headers", "canonicalization", "expire")
# RFC 6376 3.1: a selector is dot-separated labels; RFC 5322 field names are printable
# ASCII without ":" (what a header list may name).
_SELECTOR_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")
_FIELD_RE = re.compile(r"[!-9;-~]+")


@dataclass(frozen=True)
class SignSpec:
    domain: str  # lower case, no final dot
    selector: str
    key: str  # the PEM file's path
    headers: tuple[str, ...] | None = None  # None: the default list (mta._native.DkimSigner)
    canonicalization: str = "relaxed/relaxed"
    expire: float | None = None  # seconds: x= is t= plus this

    @property
    def label(self) -> str:
        """How errors and logs name this key: "s2026._domainkey.example.com (/etc/...)"."""
        return f"{self.selector}._domainkey.{self.domain} ({self.key})"


@dataclass(frozen=True)
class SignTables(Tables):
    type_name = "array of tables (domain, selector, key, headers, canonicalization, expire)"
    expect = "an array of tables ([[dkim.sign]] with domain, selector, key)"
    duplicate = "one table per domain and selector"
    keys = _KEYS

    def label(self, value):
        return (value.domain, value.selector.lower())

    def shown(self, label):
        return f"{label[1]}._domainkey.{label[0]}"

    def one(self, path: str, table: dict, errs: Errors) -> Any:
        before = len(errs.items)
        domain = domain_name(table.get("domain"))
        if domain is None:
            _missing_or_bad(errs, table, path, "domain", 'a domain name such as "example.com"')
        selector = table.get("selector")
        if not isinstance(selector, str) or not _SELECTOR_RE.fullmatch(selector):
            _missing_or_bad(errs, table, path, "selector", 'a selector: DNS labels such as "s2026"')
        key = table.get("key")
        if not isinstance(key, str) or not key.strip() or "\0" in key:
            _missing_or_bad(errs, table, path, "key", "the path of a PEM private key file")
        headers = table.get("headers")
        if headers is not None:
            if (not isinstance(headers, list) or not all(isinstance(h, str) and _FIELD_RE.fullmatch(h) for h in headers)
                    or "from" not in {h.lower() for h in headers}):
                errs.bad(f"{path}.headers", 'a list of header field names that includes "From"', headers)
            else:
                headers = tuple(headers)
        canon = Choice(CANONICALIZATIONS).parse(f"{path}.canonicalization",
                                                table.get("canonicalization", "relaxed/relaxed"), errs)
        expire = table.get("expire")
        if expire is not None:
            expire = Duration(max=10 * 365 * 86400.0).parse(f"{path}.expire", expire, errs)
        if len(errs.items) > before:
            return BAD
        return SignSpec(domain, selector, key, headers, canon, expire)


def _missing_or_bad(errs: Errors, table: dict, path: str, key: str, expected: str) -> None:
    if key not in table:
        errs.items.append(f"{path}.{key}: missing ({expected})")
    else:
        errs.bad(f"{path}.{key}", expected, table[key])
