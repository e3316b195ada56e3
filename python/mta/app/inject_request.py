"""Validation of an /api/inject/v1 request body into drafts (envelope + message bytes), all or
nothing. Invariant: an address passes only if the SMTP parser (the Rust grammar the session
uses) takes it whole; message bytes have CRLF line ends and fit smtp.max_message_size."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from mta import _native
from mta.app.compose import ComposeError, compose

MAX_MESSAGES = 100  # per request ({"messages": [...]})
MAX_RECIPIENTS = 1000  # per message
CONTENT_KEYS = frozenset({"envelope_sender", "recipients", "content"})
FIELDS_KEYS = frozenset({"envelope_sender", "recipients", "from", "subject", "text_body", "html_body", "headers"})
_LINE_ENDS = re.compile(rb"\r\n|\r|\n")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")  # shown as is in a field path; others JSON-quoted


class Invalid(ValueError):
    """A request the API refuses as a whole (400): `field` is the path of the bad value,
    e.g. `messages[3].recipients[2]`."""

    def __init__(self, field: str, text: str):
        super().__init__(f"{field}: {text}" if field else text)
        self.field = field
        self.text = text


@dataclass
class Draft:
    """One message of a request, valid: the parsed MAIL and RCPTs (as the session gets them
    from the parser) and the message bytes (not yet with our Received header)."""

    index: int
    where: str  # "" for a single-message request, else "messages[i]"
    mail: object  # _native.MailArgs
    rcpts: list  # [_native.RcptArgs]
    data: bytes
    composed: bool  # fields mode: mta built the message

    @property
    def sender(self) -> str:
        return self.mail.address


def parse(doc: object, *, max_message_size: int, max_line: int = 512, hostname: str = "localhost",
          now: float | None = None) -> list[Draft]:
    """The request document as drafts, in order; raises Invalid naming the first bad field."""
    if not isinstance(doc, dict):
        raise Invalid("body", "must be a JSON object")
    if "messages" in doc:
        extra = sorted(set(doc) - {"messages"})
        if extra:
            key = extra[0]
            raise Invalid(key if _PLAIN_KEY.fullmatch(key) else json.dumps(key),
                          "not allowed beside messages (put it in each message)")
        items = doc["messages"]
        if not isinstance(items, list) or not items:
            raise Invalid("messages", "must be a non-empty array of message objects")
        if len(items) > MAX_MESSAGES:
            raise Invalid("messages", f"{len(items)} messages: at most {MAX_MESSAGES} per request")
        where = [f"messages[{i}]" for i in range(len(items))]
    else:
        items, where = [doc], [""]
    now = time.time() if now is None else now
    return [_message(i, w, item, max_message_size, max_line, hostname, now)
            for i, (w, item) in enumerate(zip(where, items))]


def field_path(where: str, name: str) -> str:
    """`name` inside the message at `where` ("" or "messages[i]")."""
    return f"{where}.{name}" if where else name


def _message(index: int, where: str, item: object, max_size: int, max_line: int, hostname: str,
             now: float) -> Draft:
    if not isinstance(item, dict):
        raise Invalid(where or "body", "must be a JSON object")
    fields_mode = "content" not in item
    allowed = FIELDS_KEYS if fields_mode else CONTENT_KEYS
    for key in item:
        if key not in allowed:
            why = ("not allowed with content (content is the whole message)" if not fields_mode and key in FIELDS_KEYS
                   else "unknown field")
            raise Invalid(field_path(where, key if _PLAIN_KEY.fullmatch(key) else json.dumps(key)), why)
    sender = item.get("envelope_sender")
    if not isinstance(sender, str):
        raise Invalid(field_path(where, "envelope_sender"), 'required: an address, or "" for the null sender')
    rcpts = item.get("recipients")
    if not isinstance(rcpts, list) or not rcpts:
        raise Invalid(field_path(where, "recipients"), "required: a non-empty array of addresses")
    if len(rcpts) > MAX_RECIPIENTS:
        raise Invalid(field_path(where, "recipients"), f"{len(rcpts)} recipients: at most {MAX_RECIPIENTS} per message")
    for i, r in enumerate(rcpts):
        if not isinstance(r, str):
            raise Invalid(field_path(where, f"recipients[{i}]"), "not an address: must be a string")
    data = _content(where, item, max_size) if not fields_mode else _composed(where, item, max_size, hostname, now)
    mail, parsed = _envelope(where, sender, rcpts, data, max_line)
    return Draft(index, where, mail, parsed, data, fields_mode)


def _content(where: str, item: dict, max_size: int) -> bytes:
    content = item["content"]
    if not isinstance(content, str):
        raise Invalid(field_path(where, "content"), "must be a string (the RFC 5322 message)")
    try:
        raw = content.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escape (\ud800) in the JSON
        raise Invalid(field_path(where, "content"), "not UTF-8 text (a lone surrogate)") from None
    return _sized(field_path(where, "content"), wire_lines(raw), max_size)


def _composed(where: str, item: dict, max_size: int, hostname: str, now: float) -> bytes:
    def text(key: str, required: bool = False) -> str | None:
        value = item.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise Invalid(field_path(where, key), "must be a string" + (" (required without content)" if required else ""))
        if not _utf8(value):
            raise Invalid(field_path(where, key), "not UTF-8 text (a lone surrogate)")
        return value

    headers = item.get("headers")
    headers = {} if headers is None else headers
    if not isinstance(headers, dict):
        raise Invalid(field_path(where, "headers"), "must be an object of name: value strings")
    for name, value in headers.items():
        if not isinstance(value, str) or not _utf8(value) or not _utf8(name):
            raise Invalid(field_path(where, f"headers.{name}"), "must be a string of UTF-8 text")
    if "text_body" not in item and "html_body" not in item:
        raise Invalid(field_path(where, "text_body"), "content, or text_body and/or html_body, is required")
    try:
        data = compose(sender=text("from", True), subject=text("subject") or "", text_body=text("text_body"),
                       html_body=text("html_body"), headers=headers, hostname=hostname, now=now)
    except ComposeError as e:
        raise Invalid(field_path(where, e.field), e.text) from None
    return _sized(where or "body", data, max_size)


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def wire_lines(raw: bytes) -> bytes:
    """CR LF for every line end (CR LF, bare LF, bare CR), and one at the end: the message as
    SMTP's DATA would carry it, never with a bare CR or LF (DESIGN invariant 2)."""
    crlf = raw.count(b"\r\n")
    # The usual case, every line end already CR LF, costs three scans and no copy.
    out = raw if raw.count(b"\r") == crlf == raw.count(b"\n") else _LINE_ENDS.sub(b"\r\n", raw)
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def _sized(field: str, data: bytes, max_size: int) -> bytes:
    if not data:
        raise Invalid(field, "the message is empty")
    if len(data) > max_size:
        raise Invalid(field, f"{len(data)} octets: over smtp.max_message_size ({max_size})")
    return data


def _envelope(where: str, sender: str, rcpts: list[str], data: bytes, max_line: int):
    """MAIL and RCPT as the SMTP session's parser parses them (the same grammar, limits and
    replies), checked to have taken each address whole."""
    utf8 = not (sender.isascii() and all(r.isascii() for r in rcpts))
    params = (" SMTPUTF8" if utf8 else "") + (" BODY=8BITMIME" if not data.isascii() else "")
    fields = [(field_path(where, "envelope_sender"), sender)] + [(field_path(where, f"recipients[{i}]"), r)
                                                           for i, r in enumerate(rcpts)]
    for field, addr in fields:
        # Never let a value add a line or a parameter of its own.
        if _CONTROL.search(addr) or not _utf8(addr):
            raise Invalid(field, "not an address: control characters")
    lines = [f"MAIL FROM:<{sender}>{params}\r\n"] + [f"RCPT TO:<{r}>\r\n" for r in rcpts]
    parser = _native.SmtpParser(max_line=max_line)
    parser.set_smtputf8(utf8)
    events = parser.feed("".join(lines).encode("utf-8"))
    if len(events) != len(lines):
        raise Invalid(field_path(where, "recipients"), "not addresses the SMTP grammar takes")
    parsed = []
    for (field, addr), ev in zip(fields, events):
        if ev[0] != "cmd":
            text = "too long" if ev[1] == 500 else ev[3]
            raise Invalid(field, f"not an address ({text})")
        got = ev[2].address
        if got != addr and not (got == "Postmaster" and addr.lower() == "postmaster"):
            raise Invalid(field, "not an address (RFC 5321: local@domain, no source route or parameters)")
        parsed.append(ev[2])
    return parsed[0], parsed[1:]
