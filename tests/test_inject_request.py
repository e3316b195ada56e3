"""The /api/inject/v1 request checks (mta.app.inject_request) and the fields-mode MIME builder
(mta.app.compose), without a server: tables of good and bad requests (each error names its
field), and properties (any text body and subject round-trips through `email`)."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mta.app.compose import ComposeError, compose
from mta.app.inject_request import (
    MAX_MESSAGES,
    MAX_RECIPIENTS,
    Invalid,
    parse,
    wire_lines,
)

MAX = 1_000_000
OK = {"envelope_sender": "a@sender.test", "recipients": ["r@dest.test"], "content": "Subject: x\r\n\r\nx\r\n"}
FIELDS = {"envelope_sender": "a@sender.test", "recipients": ["r@dest.test"], "from": "a@sender.test",
          "text_body": "hi"}


def one(doc, **kw):
    (d,) = parse(doc, max_message_size=kw.pop("max_message_size", MAX), hostname="mx.test", **kw)
    return d


@pytest.mark.parametrize("doc, field, text", [
    ("text", "body", "must be a JSON object"),
    ([OK], "body", "must be a JSON object"),
    ({}, "envelope_sender", "required"),
    (dict(OK, envelope_sender=None), "envelope_sender", "required"),
    (dict(OK, recipients="r@dest.test"), "recipients", "non-empty array"),
    (dict(OK, recipients=[]), "recipients", "non-empty array"),
    (dict(OK, recipients=["r@d.test"] * (MAX_RECIPIENTS + 1)), "recipients", "at most 1000"),
    (dict(OK, recipients=[None]), "recipients[0]", "must be a string"),
    (dict(OK, recipients=["r@d.test", ""]), "recipients[1]", "not an address"),
    (dict(OK, recipients=["r@d.test", "plain"]), "recipients[1]", "not an address"),
    (dict(OK, recipients=["a b@d.test"]), "recipients[0]", "bad recipient address syntax"),
    (dict(OK, recipients=["<r@d.test>"]), "recipients[0]", "not an address"),
    (dict(OK, recipients=["r@d.test> NOTIFY=NEVER"]), "recipients[0]", "not an address"),
    (dict(OK, recipients=["@relay.test:r@d.test"]), "recipients[0]", "no source route or parameters"),
    (dict(OK, recipients=["r@d.test\r\nDATA"]), "recipients[0]", "control characters"),
    (dict(OK, recipients=["r\x00@d.test"]), "recipients[0]", "control characters"),
    (dict(OK, recipients=["x" * 600 + "@d.test"]), "recipients[0]", "too long"),
    (dict(OK, recipients=["\ud800@d.test"]), "recipients[0]", "control characters"),
    (dict(OK, envelope_sender="no-at-sign"), "envelope_sender", "bad sender address syntax"),
    (dict(OK, envelope_sender="a@b.test> SIZE=1"), "envelope_sender", "not an address"),
    (dict(OK, content=5), "content", "must be a string"),
    (dict(OK, content=""), "content", "empty"),
    (dict(OK, content="\ud800"), "content", "lone surrogate"),
    (dict(OK, content="x" * 2000), "content", "over smtp.max_message_size"),
    (dict(OK, text_body="x"), "text_body", "not allowed with content"),
    (dict(OK, bogus=1), "bogus", "unknown field"),
    ({"messages": "x"}, "messages", "non-empty array"),
    ({"messages": []}, "messages", "non-empty array"),
    ({"messages": [OK] * (MAX_MESSAGES + 1)}, "messages", "at most 100"),
    ({"messages": [OK], "recipients": []}, "recipients", "beside messages"),
    ({"messages": [OK, 3]}, "messages[1]", "must be a JSON object"),
    ({"messages": [OK, OK, OK, dict(OK, recipients=["r@d.test", "s@d.test", "@@"])]},
     "messages[3].recipients[2]", "not an address"),
    ({"messages": [OK, dict(OK, envelope_sender=1)]}, "messages[1].envelope_sender", "required"),
    (dict(FIELDS, text_body=None, html_body=None), "text_body", "is required"),
    ({k: v for k, v in FIELDS.items() if k != "text_body"}, "text_body", "is required"),
    ({k: v for k, v in FIELDS.items() if k != "from"}, "from", "must be a string"),
    (dict(FIELDS, **{"from": "nobody"}), "from", "not an address"),
    (dict(FIELDS, subject=3), "subject", "must be a string"),
    (dict(FIELDS, subject="a\r\nBcc: x@y.test"), "subject", "one line"),
    (dict(FIELDS, headers=[]), "headers", "must be an object"),
    (dict(FIELDS, headers={"X-A": 1}), "headers.X-A", "string"),
    (dict(FIELDS, headers={"X A": "1"}), "headers.X A", "not a header field name"),
    (dict(FIELDS, headers={"X-A": "1\nBcc: x@y.test"}), "headers.X-A", "one line"),
    (dict(FIELDS, headers={"MIME-Version": "2.0"}), "headers.MIME-Version", "MIME structure"),
    (dict(FIELDS, headers={"from": "nobody"}), "headers.from", "not an address"),
    ({"messages": [FIELDS, dict(FIELDS, text_body="x" * 3000)]}, "messages[1]", "over smtp.max_message_size"),
])
def test_invalid_requests_name_the_field(doc, field, text):
    with pytest.raises(Invalid) as e:
        parse(doc, max_message_size=1000, hostname="mx.test")
    assert e.value.field == field
    assert text in e.value.text, e.value.text
    assert str(e.value).startswith(field + ": ")


@pytest.mark.parametrize("sender, rcpts, smtputf8, body", [
    ("a@sender.test", ["r@dest.test"], False, None),
    ("", ["r@dest.test"], False, None),  # the null sender
    ("a@sender.test", ["postmaster"], False, None),
    ("a@sender.test", ["r@[192.0.2.1]", '"quoted local"@dest.test'], False, None),
    ("ü@sender.test", ["r@dest.test"], True, None),
    ("a@sender.test", ["r@dest.test", "ø@dëst.test"], True, None),
])
def test_valid_envelopes(sender, rcpts, smtputf8, body):
    d = one(dict(OK, envelope_sender=sender, recipients=rcpts))
    assert d.sender == sender and d.mail.smtputf8 == smtputf8 and d.mail.body == body
    got = [r.address for r in d.rcpts]
    assert got == [("Postmaster" if r == "postmaster" else r) for r in rcpts]


def test_eight_bit_content_is_sent_as_8bitmime():
    d = one(dict(OK, content="Subject: é\r\n\r\nünïcode\r\n"))
    assert d.mail.body == "8BITMIME" and d.data == "Subject: é\r\n\r\nünïcode\r\n".encode()
    assert not d.composed


@pytest.mark.parametrize("raw, want", [
    (b"a\r\nb\r\n", b"a\r\nb\r\n"),
    (b"a\nb", b"a\r\nb\r\n"),
    (b"a\rb\r", b"a\r\nb\r\n"),
    (b"a\r\r\nb\n\n", b"a\r\n\r\nb\r\n\r\n"),
    (b"", b""),
])
def test_wire_lines(raw, want):
    assert wire_lines(raw) == want


@given(st.binary(max_size=200))
def test_wire_lines_leaves_no_bare_cr_or_lf(raw):
    out = wire_lines(raw)
    assert out.replace(b"\r\n", b"").count(b"\r") == 0 and out.replace(b"\r\n", b"").count(b"\n") == 0
    assert not out or out.endswith(b"\r\n")
    assert out.replace(b"\r\n", b"") == raw.replace(b"\r", b"").replace(b"\n", b"")


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30), max_size=5))
def test_recipients_pass_or_name_their_index(rcpts):
    """Any recipient list: parsed whole, or refused naming a field, never anything else."""
    try:
        d = one(dict(OK, recipients=rcpts))
    except Invalid as e:
        assert e.field == "recipients" or e.field.startswith("recipients[")
    else:
        assert len(d.rcpts) == len(rcpts)


def test_fields_mode_is_composed():
    d = one(dict(FIELDS, subject="Hi", html_body="<b>x</b>"))
    assert d.composed and d.data.endswith(b"\r\n") and b"\r\n\r\n" in d.data
    msg = email.message_from_bytes(d.data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Message-ID"].endswith("@mx.test>") and msg["Date"] is not None


def parsed(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def test_compose_headers_replace_and_add():
    data = compose(sender="a@s.test", subject="S", text_body="x", hostname="h.test",
                   headers={"Message-ID": "<mine@s.test>", "subject": "Other", "Reply-To": "r@s.test"})
    msg = parsed(data)
    assert msg["Message-ID"] == "<mine@s.test>" and msg["Subject"] == "Other" and msg["Reply-To"] == "r@s.test"
    assert data.lower().count(b"\r\nsubject:") == 1


def test_compose_html_only_and_utf8_address():
    msg = parsed(compose(sender="a@s.test", html_body="<p>x</p>"))
    assert msg.get_content_type() == "text/html"
    data = compose(sender="Jö <jö@s.test>", text_body="x")
    assert "jö@s.test".encode() in data  # no 7-bit form for a non-ASCII address: SMTPUTF8


def test_compose_refuses():
    with pytest.raises(ComposeError) as e:
        compose(sender="a@s.test")
    assert e.value.field == "text_body"


line_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=80)
body_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400)


def as_lines(text: str) -> str:
    """What a body becomes: line ends as \\n, ending in one."""
    t = text.replace("\r\n", "\n").replace("\r", "\n")
    return t if t.endswith("\n") else t + "\n"


@settings(max_examples=300, deadline=None)
@example(subject=" 0 ", text="", html=None)  # a subject's outer spaces are not kept by parsing
@given(subject=line_text, text=body_text, html=st.one_of(st.none(), body_text))
def test_compose_round_trips_through_email(subject, text, html):
    data = compose(sender="Sender <a@s.test>", subject=subject, text_body=text, html_body=html,
                   hostname="h.test", now=0)
    assert data.isascii()
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    msg = parsed(data)
    assert not msg.defects
    assert (msg["Subject"] or "") == subject.strip()
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == as_lines(text)
    if html is not None:
        assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == as_lines(html)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
keys = st.sampled_from(["envelope_sender", "recipients", "content", "from", "subject", "text_body", "html_body",
                        "headers", "messages", "x"])


@settings(max_examples=400, deadline=None)
@given(st.one_of(json_values, st.dictionaries(keys, json_values, max_size=6),
                 st.builds(lambda extra: dict(FIELDS, **extra), st.dictionaries(keys, json_values, max_size=3)),
                 st.builds(lambda extra: dict(OK, **extra), st.dictionaries(keys, json_values, max_size=3))))
def test_any_document_is_parsed_or_refused_naming_a_field(doc):
    """Whatever JSON arrives: drafts, or Invalid with a field; never another exception (a 500)."""
    try:
        drafts = parse(doc, max_message_size=MAX, hostname="mx.test")
    except Invalid as e:
        assert isinstance(e.field, str) and e.field
    else:
        assert drafts and all(d.data.endswith(b"\r\n") for d in drafts)


any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=400, deadline=None)
@given(sender=st.one_of(st.just("Näme <a@b.test>"), st.builds(lambda n: f"{n} <a@b.test>", any_text),
                        any_text, st.builds(lambda n, a: f"{n} <{a}>", any_text, any_text)),
       subject=any_text, headers=st.dictionaries(any_text, any_text, max_size=4),
       text=st.one_of(st.none(), any_text), html=st.one_of(st.none(), any_text))
def test_compose_builds_or_names_a_field(sender, subject, headers, text, html):
    """Any fields: a message the email package parses back, or ComposeError; nothing else."""
    try:
        data = compose(sender=sender, subject=subject, text_body=text, html_body=html, headers=headers)
    except ComposeError as e:
        assert e.field
    else:
        assert data.endswith(b"\r\n") and b"\r\n\r\n" in data
        assert b"\n" not in data.replace(b"\r\n", b"")
