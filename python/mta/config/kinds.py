"""Value kinds of the configuration: each parses one raw TOML value or records
an error naming the key, the value and what was expected (into `Errors`, so one
load reports every problem). The bottom of `mta.config`: imports nothing of it."""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable



KiB, MiB, GiB = 1024, 1024**2, 1024**3

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BAD = object()  # a parse failed; the error is already recorded


class Errors:
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
# parse() records its own errors and returns BAD, so lists report every bad
# element rather than the first.
# ---------------------------------------------------------------------------

class Kind:
    type_name = "value"

    def parse(self, path: str, raw: Any, errs: Errors) -> Any:
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
    max: int | None = None
    type_name = "integer"

    def parse(self, path, raw, errs):
        if not _is_int(raw) or raw < self.min or (self.max is not None and raw > self.max):
            what = _bound_text(self.min, self.unit) if self.max is None else \
                f"an integer from {self.min} to {self.max}" + (f" ({self.unit})" if self.unit else "")
            errs.bad(path, what, raw)
            return BAD
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
    max: int | None = None
    type_name = "size"

    def parse(self, path, raw, errs):
        if _is_int(raw):
            value = raw
        elif isinstance(raw, str) and (m := _SIZE_RE.fullmatch(raw.strip())):
            value = int(m[1]) * _SIZE_UNITS[m[2] and m[2].lower()]
        else:
            errs.bad(path, 'a size: bytes as an integer, or a string such as "50M", "1MiB", "64k"', raw)
            return BAD
        if value < self.min:
            errs.bad(path, _bound_text(self.min, "bytes"), raw)
            return BAD
        if self.max is not None and value > self.max:
            errs.bad(path, f"a size of at most {self.render(self.max)}", raw)
            return BAD
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
            return BAD
        if value < 0 or (value == 0 and not self.allow_zero):
            errs.bad(path, f"a {bound} duration (seconds)", raw)
            return BAD
        if self.max is not None and value > self.max:
            errs.bad(path, f"a duration of at most {self.max:g} s", raw)
            return BAD
        return value

    def render(self, value):
        return repr(float(value))


@dataclass(frozen=True)
class Bool(Kind):
    type_name = "boolean"

    def parse(self, path, raw, errs):
        if not isinstance(raw, bool):
            errs.bad(path, "true or false", raw)
            return BAD
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
            return BAD
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
        return BAD


# Domain names: ASCII labels (IDNs in their xn-- form), 1..63 characters of
# letters, digits and hyphens, no hyphen at either end, 253 characters in all.
# Stored lowercased without the trailing dot. A last label of digits only is
# refused, so that an IP address is not mistaken for a domain.
_LABEL_RE = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def domain_name(raw: Any) -> str | None:
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
        name = domain_name(raw)
        if name is None:
            errs.bad(path, _DOMAIN_TEXT, raw)
            return BAD
        return name


def _each(path: str, raw: Any, errs: Errors, what: str, parse_one: Callable[[str, Any], Any]) -> list | None:
    """Parse a TOML array element by element; report every bad element."""
    if not isinstance(raw, list):
        errs.bad(path, f"a list of {what}", raw)
        return None
    out = [parse_one(f"{path}[{i}]", item) for i, item in enumerate(raw)]
    return None if any(v is BAD for v in out) else out


@dataclass(frozen=True)
class DomainSet(Kind):
    type_name = "list of strings (domain names)"

    def parse(self, path, raw, errs):
        def one(p, item):
            name = domain_name(item)
            if name is None:
                errs.bad(p, _DOMAIN_TEXT, item)
                return BAD
            return name
        names = _each(path, raw, errs, "domain names", one)
        return BAD if names is None else frozenset(names)

    def render(self, value):
        return json.dumps(sorted(value))


_LISTEN_TEXT = "HOST:PORT (IPv6 as [::1]:2525)"


def parse_listen(path: str, raw: Any, errs: Errors) -> Any:
    """HOST is an IP literal, not a name: binding must not depend on DNS."""
    if not isinstance(raw, str):
        errs.bad(path, _LISTEN_TEXT, raw)
        return BAD
    if raw.startswith("["):
        host, sep, port = raw[1:].partition("]:")
        family = ipaddress.IPv6Address
    else:
        host, sep, port = raw.rpartition(":")
        family = ipaddress.IPv4Address
    if not sep or not host or not port.isdigit():
        errs.bad(path, _LISTEN_TEXT, raw)
        return BAD
    try:
        family(host)
    except ValueError:
        ipv6_unbracketed = ":" in host
        name_text = "HOST:PORT with HOST an IP address, not a name"
        errs.bad(path, _LISTEN_TEXT if ipv6_unbracketed else name_text, raw)
        return BAD
    if not 1 <= int(port) <= 65535:
        errs.bad(path, "a port in 1..65535", raw)
        return BAD
    return (host, int(port))


@dataclass(frozen=True)
class ListenList(Kind):
    type_name = "list of strings (HOST:PORT)"

    def parse(self, path, raw, errs):
        addrs = _each(path, raw, errs, '"HOST:PORT" strings', lambda p, item: parse_listen(p, item, errs))
        if addrs is None:
            return BAD
        # Empty is allowed here when [[listener]] tables exist (a cross-check).
        for i, addr in enumerate(addrs):
            if addr in addrs[:i]:  # a second bind of the same address fails at start-up
                errs.bad(f"{path}[{i}]", "each address once", raw[i])
                return BAD
        return tuple(addrs)

    def render(self, value):
        return json.dumps([f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in value])


def _parse_network(path: str, raw: Any, errs: Errors) -> Any:
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
                return BAD
    errs.bad(path, 'an IP network such as "10.0.0.0/8" or "::1/128", or a single address', raw)
    return BAD


@dataclass(frozen=True)
class NetworkList(Kind):
    """Rule: a bare address means that one host (/32 or /128); a network with
    host bits set ("10.1.2.3/8") is refused, since it is most likely a typo
    and silently widening or narrowing a trust list is worse than an error."""

    type_name = "list of strings (CIDR)"

    def parse(self, path, raw, errs):
        nets = _each(path, raw, errs, "CIDR strings", lambda p, item: _parse_network(p, item, errs))
        return BAD if nets is None else tuple(nets)

    def render(self, value):
        return json.dumps([str(n) for n in value])


def unknown_keys(path: str, table: dict, keys, errs: Errors) -> None:
    """Report each key of `table` not in `keys`, with the closest known one as a hint."""
    for key in table:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, 1, 0.6)
            errs.unknown(f"{path}.{key}", f"{path}.{close[0]}" if close else None)


class Tables(Kind):
    """An array of tables ([[header]]): each table's unknown keys reported, then the table
    checked by `one(path, table, errs)`; `label(value)` names a table for the uniqueness check
    (None: no check), `duplicate` is what that error expects ({dup}: the repeated label).
    BAD if any table is bad (every problem of every table is reported first)."""

    header = ""
    keys: tuple[str, ...] = ()
    expect = ""  # what the array should be, for its error; default "an array of tables ([[header]])"
    duplicate = "each name once"

    def parse(self, path, raw, errs):
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            errs.bad(path, self.expect or f"an array of tables ([[{self.header}]])", raw)
            return BAD
        before = len(errs.items)
        out = []
        for i, t in enumerate(raw):
            p = f"{path}[{i}]"
            unknown_keys(p, t, self.keys, errs)
            out.append(self.one(p, t, errs))
        labels = [self.label(v) for v in out if v is not BAD]
        for dup in sorted({n for n in labels if n is not None and labels.count(n) > 1}, key=str):
            errs.bad(path, self.duplicate.format(dup=dup), self.shown(dup))
        return BAD if len(errs.items) > before or any(v is BAD for v in out) else tuple(out)

    def one(self, path: str, table: dict, errs: Errors) -> Any:
        raise NotImplementedError

    def label(self, value: Any) -> Any:
        return None

    def shown(self, label: Any) -> Any:
        """A repeated label as its error shows it."""
        return label

    def render(self, value):
        return json.dumps([])
