"""Authentication-Results (RFC 8601): writing our field, and reading the authserv-id of
fields already in a message. A written field never holds a bare CR or LF, only CRLF + tab
folds, and no non-ASCII unless asked for (RFC 6532, in comments and quoted strings only)."""

from __future__ import annotations

import re

from mta.policy.lexer import comment_end

__all__ = ["authserv_id", "claims", "field"]

NAME = "Authentication-Results"
WIDTH = 78          # octets per line, CRLF not counted (RFC 5322 2.1.1)
MAX_VALUE = 255     # longer property values are left out rather than cut (a cut one would lie)
MAX_REASON = 200    # longer reasons are cut: they are comments, read by people only
_WORD = 60          # longest comment word before it is broken up

_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+\Z")   # RFC 2045 token
_ATEXT = r"[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z]+"
_SUBDOMAIN = r"[0-9A-Za-z](?:[0-9A-Za-z-]*[0-9A-Za-z])?"
# RFC 8601 pvalue's other form: [ [ local-part ] "@" ] domain-name, left unquoted as in its examples
_ADDRESS = re.compile(rf"(?:{_ATEXT}(?:\.{_ATEXT})*)?@{_SUBDOMAIN}(?:\.{_SUBDOMAIN})+\Z")
_METHOD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}(?:/[0-9]{1,9})?\Z")
_RESULT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_PROPERTY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}\.[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_CONTROLS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")  # and lone surrogates: not text


def _alabels(text: str) -> str:
    """text with a non-ASCII domain (or the domain of local@domain) in A-labels, when it
    converts; otherwise unchanged."""
    local, at, domain = text.rpartition("@")
    try:
        ascii_domain = ".".join(label.encode("idna").decode("ascii") if not label.isascii()
                                else label for label in domain.split("."))
    except UnicodeError:
        return text
    if not re.fullmatch(rf"{_SUBDOMAIN}(?:\.{_SUBDOMAIN})*", ascii_domain):
        return text  # the codec takes spaces and symbols too: only a host name is converted
    return f"{local}{at}{ascii_domain}"


def _value(text: str, utf8: bool) -> str | None:
    """A value as a token, an address, or a quoted string; None when it cannot be written
    truthfully (too long, or non-ASCII that has no ASCII form when utf8 is off)."""
    text = _CONTROLS.sub("", str(text))
    if not text.isascii():
        text = _alabels(text)
        if not text.isascii() and not utf8:
            return None
    if _octets(text) > MAX_VALUE:
        return None
    if _TOKEN.match(text) or _ADDRESS.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _comment_words(reason: str, utf8: bool) -> list[str]:
    """A reason as the words of one comment, "(" on the first and ")" on the last."""
    text = " ".join(_CONTROLS.sub(" ", str(reason)).split())
    if not utf8:
        text = " ".join(text.encode("ascii", "ignore").decode("ascii").split())
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON - 3].rstrip() + "..."
    words = []
    for word in text.split(" "):
        # a long word is broken only inside a comment, where the space it adds means nothing
        words.extend(word[i:i + _WORD] for i in range(0, len(word), _WORD))
    words = [w.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for w in words if w]
    if not words:
        return []
    words[0] = "(" + words[0]
    words[-1] += ")"
    return words


def _result_words(entry, utf8: bool) -> list[str] | None:
    try:
        method, result, reason, properties = entry
    except (TypeError, ValueError):
        return None
    method, result = str(method).strip(), str(result).strip().lower()
    if not _METHOD.match(method) or not _RESULT.match(result):
        return None  # keywords come from our code: a bad one is left out, never mangled
    words = [f"{method.lower()}={result}"] + _comment_words(reason or "", utf8)
    for key, raw in (properties or {}).items():
        key = str(key).strip()
        value = None if raw is None else _value(raw, utf8)
        if _PROPERTY.match(key) and value is not None:
            words.append(f"{key.lower()}={value}")
    return words


def _octets(text: str) -> int:
    return len(text.encode("utf-8"))


def _id(authserv: str, utf8: bool) -> str:
    text = _CONTROLS.sub("", str(authserv)).strip()
    if not text.isascii():
        text = _alabels(text)
        if not utf8:
            text = text.encode("ascii", "ignore").decode("ascii")
    return text if _TOKEN.match(text) else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def field(authserv_id: str, results: list[tuple[str, str, str, dict[str, str]]], *,
          utf8: bool = False) -> bytes:
    """One Authentication-Results field, CRLF-terminated, each result on lines of its own
    (folded at WIDTH, a line exceeds it only for one unbreakable property). utf8 keeps
    non-ASCII in comments and quoted strings (RFC 6532: for SMTPUTF8 messages only)."""
    lines = [f"{NAME}: {_id(authserv_id, utf8)};"]
    entries = [w for w in (_result_words(e, utf8) for e in results or ()) if w]
    if not entries:
        if _octets(lines[0]) + 5 <= WIDTH:
            lines[0] += " none"
        else:
            lines.append("\tnone")
    for n, words in enumerate(entries):
        if n < len(entries) - 1:
            words[-1] += ";"
        line = "\t" + words[0]
        for word in words[1:]:
            if _octets(line) + 1 + _octets(word) > WIDTH:
                lines.append(line)
                line = "\t" + word
            else:
                line += " " + word
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# -- reading ---------------------------------------------------------------------------------

_TSPECIALS = set('()<>@,;:\\"/[]?=')


def _skip_cfws(text: str, i: int) -> int:
    """The index after whitespace and (nested) comments from i; -1 for an open comment."""
    n = len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "(":
            i = comment_end(text, i)
            if i < 0:
                return -1
        else:
            break
    return i


def authserv_id(value: str) -> str | None:
    """The authserv-id that starts a field's value (CFWS skipped, a version number after it
    allowed, then ";" or the end), lower-cased; None when the value does not start so."""
    text = str(value)
    i = _skip_cfws(text, 0)
    if i < 0 or i >= len(text):
        return None
    if text[i] == '"':
        out = []
        i += 1
        while i < len(text) and text[i] != '"':
            if text[i] == "\\":
                i += 1
                if i >= len(text):
                    return None
            out.append(text[i])
            i += 1
        if i >= len(text):
            return None
        ident = "".join(out)
        i += 1
    else:
        start = i
        while i < len(text) and not text[i].isspace() and text[i] not in _TSPECIALS \
                and text[i] >= " " and text[i] != "\x7f":
            i += 1
        ident = text[start:i]
    if not ident:
        return None
    i = _skip_cfws(text, i)
    if 0 <= i < len(text) and text[i].isascii() and text[i].isdigit():
        while i < len(text) and text[i].isascii() and text[i].isdigit():
            i += 1
        i = _skip_cfws(text, i)
    if i < 0 or (i < len(text) and text[i] != ";"):
        return None
    return ident.lower()


def _canon(ident: str) -> str:
    text = ident.strip().rstrip(".").lower()
    return _alabels(text).lower() if not text.isascii() else text


def claims(value: str, our_id: str) -> bool:
    """Whether a field's value claims our authserv-id (compared case-insensitively, IDNs by
    their A-labels): such a field from outside is forged and must go."""
    found = authserv_id(value)
    return found is not None and bool(our_id.strip()) and _canon(found) == _canon(our_id)
