"""The `[[webhook]]` tables: where delivery events are POSTed, which ones, in what batches, with
what back-off. Every value of a resolved WebhookSpec was checked at load; names are unique
(the spool keys each webhook's progress by its name)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from mta.config.kinds import BAD, Duration, Errors, Int, Tables

EVENTS = ("delivered", "deferred", "bounced", "accepted")
_KEYS = ("name", "url", "events", "batch", "max_backlog", "timeout", "headers", "retry_min", "retry_max")
# Headers the sender sets itself (or aiohttp does): a table naming one would fight it.
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding"})


@dataclass(frozen=True)
class WebhookSpec:
    url: str
    name: str = ""  # default: the url
    events: tuple[str, ...] = EVENTS
    batch: int = 100  # records per POST
    max_backlog: int = 100_000  # events kept for this webhook; beyond, the oldest are dropped
    timeout: float = 10.0  # seconds per POST
    headers: dict = field(default_factory=dict)  # extra request headers
    retry_min: float = 1.0  # back-off after a failure doubles from retry_min to retry_max
    retry_max: float = 300.0

    @property
    def label(self) -> str:
        return self.name or self.url


@dataclass(frozen=True)
class WebhookTables(Tables):
    type_name = "array of tables (name, url, events, batch, max_backlog, timeout, headers, retry_min, retry_max)"
    expect = "an array of tables ([[webhook]] with url, events, batch, ...)"
    duplicate = 'distinct webhook names (set name = "..." on one of the two {dup!r})'
    keys = _KEYS

    def label(self, value):
        return value.label

    def one(self, path: str, table: dict, errs: Errors) -> Any:
        before = len(errs.items)
        url = _url(f"{path}.url", table, errs)
        name = table.get("name", "")
        if not isinstance(name, str) or len(name.encode()) > 1024 or any(ord(c) < 32 for c in name):
            errs.bad(f"{path}.name", "a string of at most 1024 bytes, no control characters", name)
        events = _events(f"{path}.events", table.get("events", list(EVENTS)), errs)
        batch = Int(1, max=10_000).parse(f"{path}.batch", table.get("batch", 100), errs)
        backlog = Int(1).parse(f"{path}.max_backlog", table.get("max_backlog", 100_000), errs)
        timeout = Duration(max=3600).parse(f"{path}.timeout", table.get("timeout", 10.0), errs)
        headers = _headers(f"{path}.headers", table.get("headers", {}), errs)
        rmin = Duration().parse(f"{path}.retry_min", table.get("retry_min", 1.0), errs)
        rmax = Duration().parse(f"{path}.retry_max", table.get("retry_max", 300.0), errs)
        if rmin is not BAD and rmax is not BAD and rmax < rmin:
            errs.bad(f"{path}.retry_max", f"a duration of at least retry_min ({rmin:g} s)", table.get("retry_max"))
        if len(errs.items) > before:
            return BAD
        return WebhookSpec(url, name, events, batch, backlog, timeout, headers, rmin, rmax)


def _url(path: str, table: dict, errs: Errors) -> Any:
    if "url" not in table:
        errs.items.append(f'{path}: missing (where events are POSTed, such as "http://127.0.0.1:9000/events")')
        return BAD
    raw = table["url"]
    try:
        parts = urllib.parse.urlsplit(raw) if isinstance(raw, str) else None
        ok = parts is not None and parts.scheme in ("http", "https") and bool(parts.hostname)
        ok = ok and (parts.port is None or parts.port > 0)  # .port raises ValueError when not a number
    except ValueError:
        ok = False
    if not ok or any(c.isspace() for c in raw):
        errs.bad(path, 'an http:// or https:// URL with a host, such as "http://127.0.0.1:9000/events"', raw)
        return BAD
    return raw


def _events(path: str, raw: Any, errs: Errors) -> Any:
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) for e in raw):
        errs.bad(path, f"a non-empty list of event names from {list(EVENTS)}", raw)
        return BAD
    unknown = [e for e in raw if e not in EVENTS]
    if unknown:
        errs.bad(path, f"event names from {list(EVENTS)} (unknown: {', '.join(map(repr, unknown))})", raw)
        return BAD
    return tuple(dict.fromkeys(raw))


def _headers(path: str, raw: Any, errs: Errors) -> Any:
    if not isinstance(raw, dict):
        errs.bad(path, 'a table of strings (headers = { Authorization = "Bearer ..." })', raw)
        return BAD
    ok = True
    for k, v in raw.items():
        token = k and all(33 <= ord(c) <= 126 and c not in '()<>@,;:\\"/[]?={}' for c in k)
        if not token or k.lower() in _OWN_HEADERS:
            errs.bad(f"{path}.{k}", "a header field name (not Content-Type, Content-Length, Host, "
                                    "Transfer-Encoding: the sender sets those)", k)
            ok = False
        elif not isinstance(v, str) or any(c in v for c in "\r\n\0"):
            errs.bad(f"{path}.{k}", "a string without CR, LF or NUL", v)
            ok = False
    return dict(raw) if ok else BAD
