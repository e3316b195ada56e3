"""Delivery status notifications (RFC 3464), re-injected with the null sender: never one to
<>, NOTIFY decides who is reported, CRLF only; of the original, its headers and at most
`max_returned` bytes of its body, read a block at a time (never a whole copy)."""

# Simplifications, on purpose: the original's headers are returned as
# text/rfc822-headers (RET=FULL on a failure, when the body fits: message/rfc822)
# with their bytes as they are and Content-Transfer-Encoding 8bit when not ASCII,
# rather than message/global-headers (RFC 6533); non-ASCII addresses are written as
# UTF-8 under address type rfc822. The re-injector sends the DSN with BODY=8BITMIME
# (and SMTPUTF8 when the original had it) whenever the bytes are not ASCII.

from __future__ import annotations

import re
import secrets
import time
from email.utils import formatdate, make_msgid

from mta.delivery import DELIVERED, OutMessage, OutRcpt, RcptResult
from mta.delivery.classify import DESCRIPTIONS, classify

__all__ = ["make_dsn", "success_dsn", "wants_dsn"]

# action → the NOTIFY keyword that asks for it (RFC 3461 §4.1).
_KEYWORD = {"failed": "FAILURE", "delayed": "DELAY",
            "delivered": "SUCCESS", "relayed": "SUCCESS", "expanded": "SUCCESS"}
_SUBJECT = {"failed": "Undelivered Mail Returned to Sender",
            "delayed": "Delayed Mail (still being retried)"}
_SUCCESS_SUBJECT = "Successful Mail Delivery Report"
_INTRO = {
    "failed": ("I'm sorry to have to inform you that your message could not\r\n"
               "be delivered to one or more recipients. The reasons follow."),
    "delayed": ("Your message could not be delivered yet to one or more\r\n"
                "recipients. It is still in the queue and will be retried;\r\n"
                "you do not need to send it again."),
    "delivered": "Your message was successfully delivered to the recipients below.",
    "relayed": ("Your message was relayed to the recipients below, to a system\r\n"
                "that does not report delivery; you may get no further notice."),
    "expanded": "Your message was delivered to the recipients below (expanded).",
}
_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_LINE_END = re.compile(rb"\r\n|\r|\n")
MAX_RETURNED = 50 * 1024  # bounce.max_returned_size's default
_READ_BLOCK = 64 * 1024
_MAX_HEAD = 1 << 20  # of a message with no empty line, at most this much is returned


def wants_dsn(rcpt: OutRcpt, action: str) -> bool:
    """Whether `rcpt`'s NOTIFY asks for a DSN of this action. Without NOTIFY
    we report failures and delays (RFC 3461 §4.1 leaves it to us) but not
    successes."""
    if rcpt.notify is None:
        return action in ("failed", "delayed")
    kws = {k.upper() for k in rcpt.notify}
    return "NEVER" not in kws and _KEYWORD[action] in kws


def make_dsn(msg: OutMessage, failures: list[tuple[OutRcpt, RcptResult]], *, reporting_mta: str,
             action: str = "failed", now: float | None = None,
             retry_until: float | None = None, max_returned: int = MAX_RETURNED) -> bytes | None:
    """The DSN for `failures` (any action: failed, delayed, delivered,
    relayed, expanded), a complete message with CRLF line ends, addressed to
    msg.sender; None when there is nobody to tell (null sender, or NOTIFY
    excluded every recipient). `retry_until` adds Will-Retry-Until to a
    delayed DSN. RET=FULL on a failure returns the whole message when its body is at
    most `max_returned` bytes, else its headers and that much of the body (cut at a
    line end) as text/rfc822-headers, with a note saying so."""
    if action not in _KEYWORD:
        raise ValueError(f"unknown DSN action {action!r}")
    if msg.sender == "":
        return None
    todo = [(r, res) for r, res in failures if wants_dsn(r, action)]
    if not todo:
        return None
    now = time.time() if now is None else now
    mta = _one_line(reporting_mta)
    want_body = action == "failed" and (msg.ret or "").upper() == "FULL"
    head, sep, body, body_size = _original(msg.data, max_returned if want_body else 0)
    full = want_body and len(body) == body_size
    cut = None
    if full:
        original = _crlf(head + sep + body)
    else:
        if want_body:
            body = body[:max_returned]
            body = body[:body.rfind(b"\n") + 1]  # whole lines only
            cut = (len(msg.data), len(body))
            head += b"\r\n" + body if body else b""
        original = _crlf(head)

    parts = [
        _part(["Content-Description: Notification", "Content-Type: text/plain; charset=utf-8"],
              _human(msg, todo, action, mta, cut)),
        _part(["Content-Description: Delivery report", "Content-Type: message/delivery-status"],
              _status(msg, todo, action, mta, now, retry_until)),
    ]
    if full:
        parts.append(_part(["Content-Description: Undelivered Message",
                            "Content-Type: message/rfc822"], original))
    else:
        desc = "Undelivered Message Headers" if action == "failed" else "Message Headers"
        parts.append(_part([f"Content-Description: {desc}",
                            "Content-Type: text/rfc822-headers"], original))

    boundary = _boundary(msg.queue_id, parts)
    body = b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    body = (b"This is a MIME-encapsulated message.\r\n\r\n" + body + b"--" + boundary + b"--\r\n")
    head = "\r\n".join([
        f"From: Mail Delivery System <MAILER-DAEMON@{mta}>",
        f"To: {_one_line(msg.sender)}",
        f"Subject: {_SUBJECT.get(action, _SUCCESS_SUBJECT)}",
        f"Date: {formatdate(now, localtime=True)}",
        f"Message-ID: {make_msgid(_idstring(msg.queue_id), domain=mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary.decode()}"',
        f"Content-Transfer-Encoding: {'7bit' if body.isascii() else '8bit'}",
    ]).encode("utf-8", "surrogateescape")
    return head + b"\r\n\r\n" + body


def success_dsn(msg: OutMessage, deliveries: list[tuple[OutRcpt, RcptResult]], *,
                reporting_mta: str, relayed: bool = False,
                now: float | None = None) -> bytes | None:
    """NOTIFY=SUCCESS report: "delivered" for final delivery here (Maildir,
    LMTP), "relayed" when handed on to a peer that did not take the DSN
    request. Send none when the peer took it: it reports in our place."""
    return make_dsn(msg, deliveries, reporting_mta=reporting_mta,
                    action="relayed" if relayed else "delivered", now=now)


def _human(msg: OutMessage, todo: list[tuple[OutRcpt, RcptResult]], action: str, mta: str,
           cut: tuple[int, int] | None = None) -> bytes:
    lines = [f"This is the mail system at host {mta}.", "", _INTRO[action], ""]
    if action == "failed":
        lines += ["For further assistance, please send mail to postmaster.", ""]
    for rcpt, res in todo:
        where = ""
        if res.remote_host:
            ip = f"[{res.remote_ip}]" if res.remote_ip else ""
            where = f"host {res.remote_host}{ip} said: "
        lines.append(f"<{_one_line(rcpt.address)}>: {where}{_one_line(res.reply())}")
        if res.status != DELIVERED:
            lines.append(f"    (in short: {DESCRIPTIONS[_class(res)]})")
    lines += ["", f"The message had queue ID {msg.queue_id}.", ""]
    if cut is not None:
        lines += [f"The message ({cut[0]} octets) is too big to return whole: its headers and the first",
                  f"{cut[1]} octets of its body follow, as text/rfc822-headers.", ""]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape")


def _status(msg: OutMessage, todo: list[tuple[OutRcpt, RcptResult]], action: str, mta: str,
            now: float, retry_until: float | None) -> bytes:
    blocks = []
    fields = [f"Reporting-MTA: dns; {mta}", f"X-Mta-Queue-ID: {_one_line(msg.queue_id)}"]
    if msg.envid is not None:
        fields.append(f"Original-Envelope-Id: {_one_line(msg.envid)}")
    if msg.arrival:
        fields.append(f"Arrival-Date: {formatdate(msg.arrival, localtime=True)}")
    blocks.append(fields)
    for rcpt, res in todo:
        fields = []
        if rcpt.orcpt:
            fields.append(f"Original-Recipient: {_one_line(rcpt.orcpt)}")
        fields += [f"Final-Recipient: rfc822; {_one_line(rcpt.address)}",
                   f"Action: {action}", f"Status: {_status_code(res)}"]
        if res.remote_host:
            fields.append(f"Remote-MTA: dns; {_one_line(res.remote_host)}")
            diag = "smtp"  # a reply from the peer (or about it: see the report)
        else:
            diag = "X-mta"  # our own synthetic reply: DNS, expiry, local delivery
        fields.append(f"Diagnostic-Code: {diag}; {_one_line(res.reply())}")
        if res.status != DELIVERED:  # an extension field (RFC 3464 §2.4): mta.delivery.classify's category
            fields.append(f"X-Mta-Class: {_class(res)}")
        fields.append(f"Last-Attempt-Date: {formatdate(now, localtime=True)}")
        if action == "delayed" and retry_until:
            fields.append(f"Will-Retry-Until: {formatdate(retry_until, localtime=True)}")
        blocks.append(fields)
    return "\r\n\r\n".join("\r\n".join(b) for b in blocks).encode("utf-8", "surrogateescape") + b"\r\n"


def _class(res: RcptResult) -> str:
    return classify(res.code, res.enhanced, res.text)


def _status_code(res: RcptResult) -> str:
    """The RFC 3463 code: the reply's enhanced code, else one from its class."""
    if res.enhanced and _ENHANCED.match(res.enhanced):
        return res.enhanced
    cls = res.code // 100
    return f"{cls if cls in (2, 4, 5) else 5}.0.0"


def _part(headers: list[str], content: bytes) -> bytes:
    cte = "7bit" if content.isascii() else "8bit"
    head = "\r\n".join(headers + [f"Content-Transfer-Encoding: {cte}"]).encode()
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    return head + b"\r\n\r\n" + content


def _original(data, limit: int) -> tuple[bytes, bytes, bytes, int]:
    """(the header section, the empty line after it, at most `limit` + 1 bytes of the body, the body's size) of the
    stored message: bytes, or a `_native.StoredMessage` read a block at a time only as
    far as that needs."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        head = _header_block(data)
        skip = len(head) + (2 if data[len(head):len(head) + 2] == b"\r\n" else 1 if head != data else 0)
        return head, bytes(data[len(head):skip]), bytes(data[skip:skip + limit + 1]), len(data) - skip
    reader = data.open()
    buf = bytearray()
    while True:  # the header section (bounded by smtp.max_header_size at receive)
        block = reader.read(_READ_BLOCK)
        buf += block
        if not block or b"\r\n\r\n" in buf or b"\n\n" in buf:
            break
        if len(buf) > _MAX_HEAD:  # no end of the headers in sight: return their lines so far
            head = bytes(buf[:buf.rfind(b"\n") + 1])
            return head, b"", b"", len(data) - len(head)
    head = _header_block(bytes(buf))
    skip = len(head) + (2 if buf[len(head):len(head) + 2] == b"\r\n" else 1 if len(head) < len(buf) else 0)
    body = buf[skip:]
    while len(body) <= limit and (block := reader.read(_READ_BLOCK)):
        body += block
    return head, bytes(buf[len(head):skip]), bytes(body[:limit + 1]), len(data) - skip


def _header_block(data: bytes) -> bytes:
    """The header section, up to and including its last line end."""
    i = data.find(b"\r\n\r\n")
    if i >= 0:
        return data[: i + 2]
    j = data.find(b"\n\n")
    return data[: j + 1] if j >= 0 else data


def _crlf(data: bytes) -> bytes:
    """Every line end as CRLF (bare CR or LF never leaves us)."""
    if data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"):
        return data  # the usual case: already clean, no copy
    return _LINE_END.sub(b"\r\n", data)


def _boundary(queue_id: str, parts: list[bytes]) -> bytes:
    while True:
        b = f"{_idstring(queue_id)}.{secrets.token_hex(8)}/=_".encode()
        if not any(b in p for p in parts):
            return b


def _idstring(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", s)[:40] or "dsn"


def _one_line(s: str) -> str:
    """A value fit for one header line: line breaks become spaces, at most
    900 characters (the 998-octet line limit, with room for the field name)."""
    s = " ".join(s.splitlines()) if ("\n" in s or "\r" in s) else s
    return s[:900]
