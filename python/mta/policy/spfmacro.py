"""SPF macros (RFC 7208 section 7): a macro-string is parsed once, then rendered per check.
A malformed macro-string is never rendered: parse() raises MacroError and expand() returns
None (the check's permerror); render() itself never fails."""

from __future__ import annotations

import ipaddress
import re
import time
from dataclasses import dataclass
from urllib.parse import quote

LETTERS = "slodiphcrtv"
EXP_ONLY = "crt"  # client IP, receiving host, time: only in an explanation (section 7.3)
MAX_NAME = 253

_MACRO = re.compile(r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}")
# toplabel (section 7.1): not all digits, so an address never passes for a domain
_DOMAIN_END = re.compile(r"\.(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\.?\Z")


class MacroError(ValueError):
    """A macro-string that breaks the grammar of RFC 7208 section 7 (a permerror)."""


@dataclass(frozen=True, slots=True)
class Macro:
    """One %{...}: its letter (lower case), rightmost parts kept (0: all), reversal,
    delimiters, and whether the value is URL-escaped (an upper-case letter)."""

    letter: str
    keep: int
    reverse: bool
    delimiters: str
    escape: bool


@dataclass(frozen=True, slots=True)
class MacroContext:
    """What the letters stand for in one check_host() call; `ptr` is the validated
    name for %{p}, looked up by the caller only when a macro-string uses it."""

    sender: str  # local@domain, "postmaster" already put in for an empty local part
    domain: str
    ip: str
    helo: str
    hostname: str = "unknown"
    ptr: str = "unknown"
    now: int | None = None


Tokens = tuple  # of str (literal text) and Macro


def parse(text: str, *, exp: bool = False) -> Tokens:
    """The tokens of a macro-string; `exp` admits spaces and %{c} %{r} %{t} (an
    explanation's text). Raises MacroError."""
    return _parse(text, exp)[0]


def parse_domain_spec(text: str) -> Tokens:
    """The tokens of a domain-spec: a macro-string that ends in a macro or in
    "." toplabel ["."]. Raises MacroError."""
    if not text:
        raise MacroError("empty domain")
    tokens, ends_in_macro = _parse(text, False)
    if not ends_in_macro and text.endswith(".") and text[:-1]:
        # "%{d}." is outside the grammar but means the same name: taken as written
        ends_in_macro = _parse(text[:-1], False)[1]
    if not ends_in_macro and not _DOMAIN_END.search(text):
        raise MacroError(f"{text!r} does not end in a top-level domain name")
    return tokens


def uses_ptr(tokens: Tokens) -> bool:
    return any(isinstance(t, Macro) and t.letter == "p" for t in tokens)


def render(tokens: Tokens, ctx: MacroContext) -> str:
    out = []
    for tok in tokens:
        if isinstance(tok, str):
            out.append(tok)
            continue
        value = _transform(_value(tok.letter, ctx), tok)
        out.append(quote(value, safe="") if tok.escape else value)
    return "".join(out)


def render_domain(tokens: Tokens, ctx: MacroContext) -> str:
    """A domain-spec's name: no final dot, and cut to 253 octets by dropping labels
    from the left (section 7.3)."""
    name = render(tokens, ctx).removesuffix(".")
    while len(name) > MAX_NAME:
        _, dot, rest = name.partition(".")
        name = rest if dot else ""
    return name


def expand(text: str, ctx: MacroContext, *, exp: bool = False) -> str | None:
    """A macro-string rendered, or None when it is malformed (the check's permerror)."""
    try:
        return render(parse(text, exp=exp), ctx)
    except MacroError:
        return None


def _parse(text: str, exp: bool) -> tuple[Tokens, bool]:
    """(tokens, whether the text ends in a macro-expand): "%%" "%_" "%-" count as macros."""
    tokens: list = []
    literal: list[str] = []
    ends_in_macro = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "%":
            # macro-literal is %x21-24 / %x26-7E; an explanation also has spaces
            if not ("!" <= ch <= "~" or (exp and ch == " ")):
                raise MacroError(f"character {ch!r} is not allowed in a macro-string")
            literal.append(ch)
            i += 1
            ends_in_macro = False
            continue
        nxt = text[i + 1:i + 2]
        if nxt in ("%", "_", "-"):
            literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
            i += 2
            ends_in_macro = True
            continue
        m = _MACRO.match(text, i) if nxt == "{" else None
        if m is None:
            raise MacroError(f"malformed macro at {text[i:i + 16]!r}")
        letter = m.group(1).lower()
        if letter not in LETTERS:
            raise MacroError(f"unknown macro letter {m.group(1)!r}")
        if letter in EXP_ONLY and not exp:
            raise MacroError(f"%{{{m.group(1)}}} is allowed only in an explanation")
        digits = m.group(2).lstrip("0")
        if m.group(2) and not digits:
            raise MacroError("a macro keeps at least one part (digit 0)")
        # more parts than any name has means all of them; no huge int() from a record
        keep = 0 if not digits else int(digits) if len(digits) <= 4 else 10_000
        if literal:
            tokens.append("".join(literal))
            literal = []
        tokens.append(Macro(letter, keep, bool(m.group(3)), m.group(4), m.group(1).isupper()))
        i = m.end()
        ends_in_macro = True
    if literal:
        tokens.append("".join(literal))
    return tuple(tokens), ends_in_macro


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _value(letter: str, ctx: MacroContext) -> str:
    local, _, dom = ctx.sender.rpartition("@")
    if letter == "s":
        return ctx.sender
    if letter == "l":
        return local or "postmaster"
    if letter == "o":
        return dom
    if letter == "d":
        return ctx.domain
    if letter == "h":
        return ctx.helo
    if letter == "p":
        return ctx.ptr
    if letter == "r":
        return ctx.hostname or "unknown"
    if letter == "t":
        return str(int(time.time()) if ctx.now is None else ctx.now)
    ip = _address(ctx.ip)
    if letter == "v":
        return "ip6" if isinstance(ip, ipaddress.IPv6Address) else "in-addr"
    if ip is None:
        return ctx.ip
    if letter == "c":
        return str(ip)
    if isinstance(ip, ipaddress.IPv6Address):  # "i": dot-separated nibbles (section 7.3)
        return ".".join(ip.exploded.replace(":", ""))
    return str(ip)


def _transform(value: str, macro: Macro) -> str:
    if not macro.keep and not macro.reverse and macro.delimiters in ("", "."):
        return value
    delims = macro.delimiters or "."
    parts = re.split("[" + re.escape(delims) + "]", value)
    if macro.reverse:
        parts.reverse()
    if macro.keep:
        parts = parts[-macro.keep:]
    return ".".join(parts)
