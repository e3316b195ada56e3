"""RFC 3464 DSNs, checked by parsing them back with Python's `email`:
structure, per-recipient fields, RET, NOTIFY, ENVID/ORCPT, CRLF only."""

import email
import email.policy
import re

import pytest

from mta.queue.bounce import make_dsn, success_dsn, wants_dsn
from mta.delivery import OutMessage, OutRcpt, RcptResult

ORIG = (b"Received: from c.test by mx.a.test\r\nFrom: s@a.test\r\nTo: r1@b.test\r\n"
        b"Subject: hello\r\nMessage-ID: <m1@a.test>\r\n\r\nbody line 1\r\nbody line 2\r\n")
R1 = OutRcpt("r1@b.test", index=0)
R2 = OutRcpt("r2@c.test", orcpt="rfc822;orig+x@c.test", index=1)
FAIL1 = RcptResult("r1@b.test", 550, "5.1.1", "no such user", "mx.b.test", "192.0.2.1")
FAIL2 = RcptResult("r2@c.test", 554, None, "rejected\r\nfor policy")
NOW = 1_700_000_000.0


def message(**kw) -> OutMessage:
    args = dict(queue_id="Q1AB", sender="s@a.test", recipients=(R1, R2), data=ORIG,
                arrival=NOW - 3600)
    args.update(kw)
    return OutMessage(**args)


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def assert_crlf_only(raw: bytes):
    assert raw.count(b"\n") == raw.count(b"\r\n") == raw.count(b"\r")


def dsn(msg=None, failures=None, **kw):
    if failures is None:
        failures = [(R1, FAIL1), (R2, FAIL2)]
    return make_dsn(msg or message(), failures,
                    reporting_mta="mx.a.test", now=NOW, **kw)


def test_structure_and_top_headers():
    raw = dsn()
    assert_crlf_only(raw)
    m = parse(raw)
    assert m["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.a.test"
    assert m["From"].addresses[0].display_name == "Mail Delivery System"
    assert m["To"].addresses[0].addr_spec == "s@a.test"
    assert m["Subject"] == "Undelivered Mail Returned to Sender"
    assert m["Auto-Submitted"] == "auto-replied"
    assert m["Date"].datetime.timestamp() == NOW
    assert re.fullmatch(r"<[^<>@\s]+@mx\.a\.test>", m["Message-ID"])
    assert m.get_content_type() == "multipart/report"
    assert m.get_param("report-type") == "delivery-status"
    parts = m.get_payload()
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert not m.defects and all(not p.defects for p in parts)


def test_human_part_names_each_recipient_and_reply():
    text = parse(dsn()).get_payload()[0].get_content()
    assert "<r1@b.test>: host mx.b.test[192.0.2.1] said: 550 5.1.1 no such user" in text
    assert "<r2@c.test>: 554 rejected for policy" in text
    assert "mx.a.test" in text


def test_delivery_status_fields():
    blocks = parse(dsn()).get_payload()[1].get_payload()
    assert len(blocks) == 3
    msgf, b1, b2 = blocks
    assert msgf["Reporting-MTA"] == "dns; mx.a.test"
    assert msgf["Original-Envelope-Id"] is None
    assert email.utils.parsedate_to_datetime(msgf["Arrival-Date"]).timestamp() == NOW - 3600
    assert b1["Final-Recipient"] == "rfc822; r1@b.test"
    assert b1["Original-Recipient"] is None
    assert b1["Action"] == "failed"
    assert b1["Status"] == "5.1.1"
    assert b1["Remote-MTA"] == "dns; mx.b.test"
    assert b1["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert email.utils.parsedate_to_datetime(b1["Last-Attempt-Date"]).timestamp() == NOW
    # No enhanced code: derived from the class; no remote host: our own diagnostic type.
    assert b2["Final-Recipient"] == "rfc822; r2@c.test"
    assert b2["Status"] == "5.0.0"
    assert b2["Remote-MTA"] is None
    assert b2["Diagnostic-Code"] == "X-mta; 554 rejected for policy"


def test_each_failure_carries_its_class():
    """X-Mta-Class (an RFC 3464 extension field) after Diagnostic-Code: mta.delivery.classify's
    category; the human-readable part says it in words."""
    m = parse(dsn())
    _, b1, b2 = m.get_payload()[1].get_payload()
    assert (b1["X-Mta-Class"], b2["X-Mta-Class"]) == ("invalid_recipient", "policy")
    raw = m.get_payload()[1].as_bytes()
    assert raw.index(b"Diagnostic-Code: smtp; 550 5.1.1") < raw.index(b"X-Mta-Class: invalid_recipient")
    text = m.get_payload()[0].get_content()
    assert "550 5.1.1 no such user\r\n    (in short: the recipient address does not exist)\r\n" in text
    assert "(in short: the receiving system's policy refused the message)" in text


def test_orcpt_and_envid_echoed():
    blocks = parse(dsn(message(envid="env-42+x"))).get_payload()[1].get_payload()
    assert blocks[0]["Original-Envelope-Id"] == "env-42+x"
    assert blocks[2]["Original-Recipient"] == "rfc822;orig+x@c.test"


def test_headers_only_by_default_and_for_ret_hdrs():
    for ret in (None, "HDRS"):
        part = parse(dsn(message(ret=ret))).get_payload()[2]
        assert part.get_content_type() == "text/rfc822-headers"
        assert part.get_payload(decode=True) == ORIG.split(b"\r\n\r\n")[0] + b"\r\n"


def test_ret_full_returns_whole_message():
    part = parse(dsn(message(ret="FULL"))).get_payload()[2]
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_payload()[0]
    assert inner["Subject"] == "hello" and inner["Message-ID"] == "<m1@a.test>"
    assert inner.get_payload() == "body line 1\r\nbody line 2\r\n"
    raw = dsn(message(ret="FULL"))
    assert ORIG in raw


def test_ret_full_ignored_for_delay_and_oversize(monkeypatch):
    part = parse(dsn(message(ret="FULL"), action="delayed")).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"
    part = parse(dsn(message(ret="FULL"), max_returned=10)).get_payload()[2]
    assert part.get_content_type() == "text/rfc822-headers"


def test_null_sender_never_bounced():
    assert dsn(message(sender="")) is None
    assert success_dsn(message(sender=""), [(R1, FAIL1)], reporting_mta="x") is None


@pytest.mark.parametrize("notify,failed,delayed,success", [
    (None, True, True, False),
    (("NEVER",), False, False, False),
    (("FAILURE",), True, False, False),
    (("DELAY",), False, True, False),
    (("SUCCESS",), False, False, True),
    (("success", "failure", "delay"), True, True, True),
])
def test_notify_rules(notify, failed, delayed, success):
    r = OutRcpt("r1@b.test", notify=notify)
    assert wants_dsn(r, "failed") is failed
    assert wants_dsn(r, "delayed") is delayed
    assert wants_dsn(r, "delivered") is success and wants_dsn(r, "relayed") is success
    assert (dsn(failures=[(r, FAIL1)]) is not None) is failed
    assert (dsn(failures=[(r, FAIL1)], action="delayed") is not None) is delayed


def test_notify_filters_recipients_individually():
    quiet = OutRcpt("r2@c.test", notify=("NEVER",))
    blocks = parse(dsn(failures=[(R1, FAIL1), (quiet, FAIL2)])).get_payload()[1].get_payload()
    assert [b["Final-Recipient"] for b in blocks[1:]] == ["rfc822; r1@b.test"]
    assert dsn(failures=[(quiet, FAIL2)]) is None
    assert dsn(failures=[]) is None


def test_delayed_dsn():
    defer = RcptResult("r1@b.test", 451, "4.4.1", "connection refused", "mx.b.test", "192.0.2.1")
    m = parse(dsn(failures=[(R1, defer)], action="delayed", retry_until=NOW + 86400))
    assert m["Subject"] == "Delayed Mail (still being retried)"
    b1 = m.get_payload()[1].get_payload()[1]
    assert (b1["Action"], b1["Status"]) == ("delayed", "4.4.1")
    assert b1["X-Mta-Class"] == "bad_connection"
    assert email.utils.parsedate_to_datetime(b1["Will-Retry-Until"]).timestamp() == NOW + 86400


def test_success_dsn():
    ok = RcptResult("r1@b.test", 250, "2.0.0", "Ok: delivered to maildir as x")
    r = OutRcpt("r1@b.test", notify=("SUCCESS",), orcpt="rfc822;r1@b.test")
    m = parse(success_dsn(message(ret="FULL"), [(r, ok)], reporting_mta="mx.a.test", now=NOW))
    assert m["Subject"] == "Successful Mail Delivery Report"
    parts = m.get_payload()
    b1 = parts[1].get_payload()[1]
    assert (b1["Action"], b1["Status"]) == ("delivered", "2.0.0")
    assert b1["Original-Recipient"] == "rfc822;r1@b.test"
    assert b1["X-Mta-Class"] is None and "in short" not in parts[0].get_content()  # no failure, no class
    assert parts[2].get_content_type() == "text/rfc822-headers"  # RET is for failures
    relayed = parse(success_dsn(message(), [(r, ok)], reporting_mta="x", relayed=True, now=NOW))
    assert relayed.get_payload()[1].get_payload()[1]["Action"] == "relayed"
    # Without NOTIFY=SUCCESS: nothing.
    assert success_dsn(message(), [(R1, ok)], reporting_mta="x") is None


def test_bare_line_ends_in_original_become_crlf():
    bad = b"Subject: x\nX-A: y\rZ: z\r\n\r\nbody\nmore\r\n"
    raw = dsn(message(data=bad, ret="FULL"))
    assert_crlf_only(raw)
    inner = parse(raw).get_payload()[2].get_payload()[0]
    assert inner["Subject"] == "x" and inner["Z"] == "z"


def test_8bit_headers_kept_as_is():
    orig = "Subject: Grüße\r\nFrom: ü@a.test\r\n\r\nbody\r\n".encode()
    raw = dsn(message(data=orig, smtputf8=True))
    assert_crlf_only(raw)
    m = parse(raw)
    assert m["Content-Transfer-Encoding"] == "8bit"
    part = m.get_payload()[2]
    assert part["Content-Transfer-Encoding"] == "8bit"
    assert part.get_payload(decode=True) == orig.split(b"\r\n\r\n")[0] + b"\r\n"
    # ASCII everywhere else: 7bit.
    assert parse(dsn())["Content-Transfer-Encoding"] == "7bit"


def test_boundary_not_in_content_and_unknown_action():
    m = parse(dsn())
    assert m.get_boundary().encode() not in ORIG
    with pytest.raises(ValueError):
        dsn(action="bogus")
