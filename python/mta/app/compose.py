"""Builds the RFC 5322 / MIME message of an /api/inject/v1 request in fields mode (from, subject,
text_body, html_body, headers) with the stdlib `email` package. Invariant: the output has CRLF
line ends, a Message-ID and a Date, and is 7-bit clean unless an address needs UTF-8."""

from __future__ import annotations

import email.headerregistry
import email.policy
import email.utils
import re
import time
from email.message import EmailMessage



class _Registry(email.headerregistry.HeaderRegistry):
    """The stdlib's registry makes a new class each time it parses a header field (a third
    of a message's build time); one per field name does the same work."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._made.get(key)
        if cls is None:
            cls = self._made[key] = super().__getitem__(name)
        return cls


# 7-bit bodies (quoted-printable or base64 when needed): the message relays through any
# hop, 8BITMIME or not. SMTPUTF8 only when an address itself is non-ASCII.
_REGISTRY = _Registry()
POLICY = email.policy.SMTP.clone(cte_type="7bit", max_line_length=78, header_factory=_REGISTRY)
POLICY_UTF8 = email.policy.SMTPUTF8.clone(cte_type="7bit", max_line_length=78, header_factory=_REGISTRY)

# The MIME structure is ours: a caller's header may not contradict it.
STRUCTURAL = frozenset({"content-type", "content-transfer-encoding", "mime-version"})
_FIELD_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 ftext, a line's worth at most
_LINE_ENDS = re.compile(r"\r\n|\r")
# What would end or fold a header line (str.splitlines' breaks included) or has no place in one.
_NOT_ONE_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f\x85\u2028\u2029]")


class ComposeError(ValueError):
    """A field the message cannot be built from: `field` names it (relative to the message)."""

    def __init__(self, field: str, text: str):
        super().__init__(f"{field}: {text}")
        self.field = field
        self.text = text


def normalise_text(text: str) -> str:
    """Line ends as "\\n" (CR LF and bare CR included): what `email` writes as CRLF."""
    return _LINE_ENDS.sub("\n", text)


def header_name_ok(name: str) -> bool:
    return _FIELD_NAME.fullmatch(name) is not None


def compose(*, sender: str, subject: str = "", text_body: str | None = None, html_body: str | None = None,
            headers: dict[str, str] | None = None, hostname: str = "localhost",
            now: float | None = None) -> bytes:
    """The message as bytes (CRLF line ends). `sender` is the From field ("Name <a@b>" or
    "a@b"); at least one body; `headers` adds fields or replaces From, Subject, Message-ID,
    Date and any other but the MIME structure's. Raises ComposeError naming the bad field."""
    if text_body is None and html_body is None:
        raise ComposeError("text_body", "text_body or html_body is required")
    _, addr = email.utils.parseaddr(sender)
    if "@" not in addr or _NOT_ONE_LINE.search(sender):
        raise ComposeError("from", "not an address (\"Name <user@domain>\" or \"user@domain\")")
    if _NOT_ONE_LINE.search(subject):
        raise ComposeError("subject", "must be one line of text (no control characters)")
    # Whitespace at either end of a field body does not survive folding and parsing (a
    # reader sees " 0 " as "0 "), so the subject is sent as it will be read.
    subject = subject.strip()
    extra = headers or {}
    for name, value in extra.items():
        if not header_name_ok(name):
            raise ComposeError(f"headers.{name}", "not a header field name")
        if name.lower() in STRUCTURAL:
            raise ComposeError(f"headers.{name}", "set by mta from the bodies (the MIME structure)")
        if not isinstance(value, str):
            raise ComposeError(f"headers.{name}", "must be a string")
        if _NOT_ONE_LINE.search(value):
            raise ComposeError(f"headers.{name}", "must be one line of text (no control characters)")
        if name.lower() == "from" and "@" not in email.utils.parseaddr(value)[1]:
            raise ComposeError(f"headers.{name}", "not an address")
    # Non-ASCII display names and subjects become RFC 2047 encoded words; only a non-ASCII
    # address has no 7-bit form.
    policy = POLICY if addr.isascii() else POLICY_UTF8
    msg = EmailMessage(policy=policy)
    now = time.time() if now is None else now
    base = {"From": sender, "Subject": subject, "Date": email.utils.formatdate(now, localtime=True),
            "Message-ID": email.utils.make_msgid(domain=hostname)}
    given = {k.lower() for k in extra}
    try:
        for name, value in base.items():
            if name.lower() not in given and (value or name != "Subject"):
                msg[name] = value
        for name, value in extra.items():
            msg[name] = value
    except (ValueError, TypeError, IndexError) as e:  # the email package's header parsing
        raise ComposeError("headers", f"cannot be used: {e}") from None
    if text_body is not None:
        msg.set_content(normalise_text(text_body), subtype="plain")
        if html_body is not None:
            msg.add_alternative(normalise_text(html_body), subtype="html")
    else:
        msg.set_content(normalise_text(html_body), subtype="html")
    try:
        return msg.as_bytes(policy=policy)
    except (ValueError, TypeError, UnicodeError) as e:
        raise ComposeError("from", f"cannot be written: {e}") from None
