"""Authentication-Results: golden fields for RFC 8601 appendix-style results, quoting,
escaping and folding, reading the authserv-id back (also from the RFC's own examples), and
properties: no bare CR or LF ever, and the reader never raises."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mta.policy.authres import authserv_id, claims, field

NAME = b"Authentication-Results: "


def value_of(raw: bytes) -> str:
    """The field's value as a reader gets it: name dropped, folds unfolded."""
    assert raw.startswith(NAME) and raw.endswith(b"\r\n")
    return raw[len(NAME):-2].replace(b"\r\n", b"").decode()


def assert_well_formed(raw: bytes, width: int = 78) -> None:
    assert raw.endswith(b"\r\n")
    body = raw[:-2]
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None, "bare CR or LF"
    lines = body.split(b"\r\n")
    assert all(line.startswith(b"\t") for line in lines[1:]), "folds are CRLF + tab"
    assert all(len(line) <= width for line in lines), [len(x) for x in lines]
    assert all(line.strip() for line in lines), "no blank line"


# -- golden fields (RFC 8601 appendix B, in our layout) ---------------------------------------

@pytest.mark.parametrize("authserv, results, want", [
    ("example.org", [], b"Authentication-Results: example.org; none\r\n"),          # B.2
    ("example.com", [("spf", "pass", "", {"smtp.mailfrom": "example.net"})],         # B.3
     b"Authentication-Results: example.com;\r\n\tspf=pass smtp.mailfrom=example.net\r\n"),
    ("example.com", [("auth", "pass", "cram-md5", {"smtp.auth": "sender@example.net"}),  # B.4
                     ("spf", "pass", "", {"smtp.mailfrom": "example.net"})],
     (b"Authentication-Results: example.com;\r\n"
     b"\tauth=pass (cram-md5) smtp.auth=sender@example.net;\r\n"
     b"\tspf=pass smtp.mailfrom=example.net\r\n")),
    ("example.com", [("iprev", "pass", "", {"policy.iprev": "192.0.2.200"})],       # B.4
     b"Authentication-Results: example.com;\r\n\tiprev=pass policy.iprev=192.0.2.200\r\n"),
    ("example.net", [("dkim", "pass", "good signature",                              # B.5
                      {"header.i": "@mail-router.example.net"})],
     (b"Authentication-Results: example.net;\r\n"
     b"\tdkim=pass (good signature) header.i=@mail-router.example.net\r\n")),
    ("example.com", [("dkim", "pass", "good signature", {"header.d": "mail-router.example.net"}),
                     ("dkim", "fail", "bad signature", {"header.d": "newyork.example.com"})],  # B.6
     (b"Authentication-Results: example.com;\r\n"
     b"\tdkim=pass (good signature) header.d=mail-router.example.net;\r\n"
     b"\tdkim=fail (bad signature) header.d=newyork.example.com\r\n")),
    ("mx.example.org", [
        ("dkim", "pass", "", {"header.d": "example.com", "header.s": "s1", "header.b": "AbCdEf12"}),
        ("spf", "fail", "127.0.0.2 is not permitted", {"smtp.mailfrom": "a@example.com"}),
        ("dmarc", "pass", "", {"header.from": "example.com"}),
        ("arc", "none", "", {})],
     (b"Authentication-Results: mx.example.org;\r\n"
     b"\tdkim=pass header.d=example.com header.s=s1 header.b=AbCdEf12;\r\n"
     b"\tspf=fail (127.0.0.2 is not permitted) smtp.mailfrom=a@example.com;\r\n"
     b"\tdmarc=pass header.from=example.com;\r\n"
     b"\tarc=none\r\n")),
])
def test_golden(authserv, results, want):
    got = field(authserv, results)
    assert got == want
    assert_well_formed(got)
    assert authserv_id(value_of(got)) == authserv.lower()


# -- quoting and escaping --------------------------------------------------------------------

@pytest.mark.parametrize("value, written", [
    ("example.com", "example.com"),
    ("a@example.com", "a@example.com"),            # RFC 8601's local-part "@" domain-name
    ("@example.com", "@example.com"),
    ("first.last+tag@example.com", "first.last+tag@example.com"),
    ("AbC/dE+=", '"AbC/dE+="'),                    # base64 has tspecials
    ("<>", '"<>"'),
    ("a@localhost", '"a@localhost"'),              # domain-name needs two labels
    ('"quoted"@example.com', '"\\"quoted\\"@example.com"'),
    ("back\\slash", '"back\\\\slash"'),
    ("two words", '"two words"'),
    ("", '""'),
    ("semi;colon", '"semi;colon"'),
    ("cr\r\nlf\ttab", "crlftab"),                  # controls dropped, never written
])
def test_property_values(value, written):
    got = field("mx.example.org", [("spf", "pass", "", {"smtp.mailfrom": value})])
    assert got == f"Authentication-Results: mx.example.org;\r\n\tspf=pass smtp.mailfrom={written}\r\n".encode()


@pytest.mark.parametrize("reason, written", [
    ("plain", "(plain)"),
    ("has (parens) and \\", "(has \\(parens\\) and \\\\)"),
    (")(", "(\\)\\()"),
    ("line\r\nbreak\x00\x7f and\ttab", "(line break and tab)"),
    ("  spaced   out  ", "(spaced out)"),
    ("   ", None),
])
def test_reasons_are_escaped_comments(reason, written):
    got = field("mx", [("dkim", "fail", reason, {})])
    want = "Authentication-Results: mx;\r\n\tdkim=fail" + (f" {written}" if written else "") + "\r\n"
    assert got == want.encode()


def test_bad_keywords_are_left_out_not_mangled():
    got = field("mx", [("dk im", "pass", "", {}), ("spf", "pa;ss", "", {}), ("spf", "pass", "",
                       {"no-dot": "x", "smtp.mail from": "y", "smtp.helo": "ok.example", "a.b": None}),
                       ("bad",), None])
    assert got == b"Authentication-Results: mx;\r\n\tspf=pass smtp.helo=ok.example\r\n"
    assert field("mx", [("x y", "pass", "", {})]) == b"Authentication-Results: mx; none\r\n"


def test_keywords_lower_cased_and_method_version_kept():
    got = field("MX.Example.ORG", [("DKIM/1", "PASS", "", {"Header.D": "Example.COM"})])
    assert got == b"Authentication-Results: MX.Example.ORG;\r\n\tdkim/1=pass header.d=Example.COM\r\n"


def test_authserv_id_quoted_when_not_a_token():
    got = field('odd id"x', [])
    assert got == b'Authentication-Results: "odd id\\"x"; none\r\n'
    assert authserv_id(value_of(got)) == 'odd id"x'


def test_long_values_are_left_out_not_cut():
    got = field("mx", [("spf", "pass", "", {"smtp.mailfrom": "a" * 250 + "@example.com"})])
    assert got == b"Authentication-Results: mx;\r\n\tspf=pass\r\n"


def test_long_reasons_are_cut():
    got = field("mx", [("spf", "fail", "word " * 100, {})])
    assert_well_formed(got)
    assert len(got) < 300 and b"...)" in got


# -- non-ASCII ---------------------------------------------------------------------------------

def test_non_ascii_dropped_by_default():
    got = field("mx.bücher.de", [("spf", "pass", "grüße aus Köln",
                                  {"smtp.mailfrom": "jörg@bücher.de", "smtp.helo": "mx.bücher.de",
                                   "header.from": "bücher.de"})])
    assert got == (b"Authentication-Results: mx.xn--bcher-kva.de;\r\n"
                   b"\tspf=pass (gre aus Kln) smtp.helo=mx.xn--bcher-kva.de\r\n"
                   b"\theader.from=xn--bcher-kva.de\r\n")
    assert got.isascii()


def test_non_ascii_kept_in_comments_and_quoted_strings_with_utf8():
    got = field("mx.example.org", [("spf", "pass", "grüße", {"smtp.mailfrom": "jörg@bücher.de",
                                                             "header.from": "bücher.de"})], utf8=True)
    assert got == ('Authentication-Results: mx.example.org;\r\n'
                   '\tspf=pass (grüße) smtp.mailfrom="jörg@xn--bcher-kva.de"\r\n'
                   '\theader.from=xn--bcher-kva.de\r\n').encode()


# -- folding -----------------------------------------------------------------------------------

def test_folding_keeps_every_line_within_78_octets():
    results = [("dkim", "fail", "signature did not verify: the body hash does not match the "
                "body, it was changed in transit " * 2,
                {"header.d": "a-rather-long-subdomain.mail.example.com", "header.s": "selector2026",
                 "header.b": "AbCdEf12", "header.i": "@a-rather-long-subdomain.mail.example.com"}),
               ("spf", "softfail", "x" * 150, {"smtp.mailfrom": "someone.with.a.long.name@example.com"})]
    got = field("mx.example.org", results)
    assert_well_formed(got)
    assert got.count(b"\r\n\t") > 6
    assert authserv_id(value_of(got)) == "mx.example.org"


def test_first_line_folds_none_for_a_long_id():
    long_id = "a" * 60 + ".example.com"
    got = field(long_id, [])
    assert got == f"Authentication-Results: {long_id};\r\n\tnone\r\n".encode()
    assert authserv_id(value_of(got)) == long_id


# -- reading the authserv-id ---------------------------------------------------------------------

@pytest.mark.parametrize("value, ident", [
    ("example.org 1; none", "example.org"),                              # RFC 8601 B.2
    ("example.com;\r\n          spf=pass smtp.mailfrom=example.net", "example.com"),  # B.3
    ("example.com; iprev=pass\r\n          policy.iprev=192.0.2.200", "example.com"),  # B.4
    (("foo.example.net (foobar) 1 (baz);\r\n    dkim (Because I like it) / 1 (One yay) = "
     "(wait for it) fail"), "foo.example.net"),                          # B.7
    ("(c) example.com; spf=pass", "example.com"),
    ("(nested (comment) \\) here) Example.COM ; none", "example.com"),
    ('"Quoted \\"id\\"" 2 ; none', 'quoted "id"'),
    ("EXAMPLE.com", "example.com"),                                     # no result at all
    ("mx.bücher.de; none", "mx.bücher.de"),
    ("example.com spf=pass", None),
    ("example.com 1 2; none", None),
    ("", None),
    ("   ", None),
    ("; spf=pass", None),
    ("(unterminated example.com; none", None),
    ('"unterminated; none', None),
    ('""; none', None),
    ("@example.com; none", None),
])
def test_authserv_id(value, ident):
    assert authserv_id(value) == ident


@pytest.mark.parametrize("value, ours, claimed", [
    ("example.com 1; spf=pass", "example.com", True),
    ("(c) example.com; spf=pass", "example.com", True),
    ("EXAMPLE.COM; none", "Example.Com", True),
    ("example.com.; none", "example.com", True),
    ("mx.xn--bcher-kva.de; none", "mx.bücher.de", True),
    ("mx.bücher.de; none", "mx.xn--bcher-kva.de", True),
    ("example.net; spf=pass", "example.com", False),
    ("mx.example.com; spf=pass", "example.com", False),
    ("example.com spf=pass", "example.com", False),
    ("example.com; none", "", False),
])
def test_claims(value, ours, claimed):
    assert claims(value, ours) is claimed


# -- properties --------------------------------------------------------------------------------

_texts = st.text(max_size=40) | st.text(st.sampled_from('ab ()\\";=@.\r\n\t\x00ü'), max_size=40)
_results = st.lists(st.tuples(
    st.sampled_from(["dkim", "spf", "dmarc", "arc"]) | _texts,
    st.sampled_from(["pass", "fail", "none"]) | _texts, _texts,
    st.dictionaries(st.sampled_from(["header.d", "smtp.mailfrom", "header.b"]) | _texts, _texts,
                    max_size=4)), max_size=4)


@settings(max_examples=300, deadline=None)
@given(_texts, _results, st.booleans())
def test_field_never_yields_a_bare_cr_or_lf(ident, results, utf8):
    got = field(ident, results, utf8=utf8)
    assert_well_formed(got, width=998)
    if not utf8:
        assert got.isascii()
    value = value_of(got)
    # the id comes back unless nothing of it could be written (then it is written "")
    assert (authserv_id(value) is None) == value.startswith('"";')


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?(?:\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
       _results)
def test_field_round_trips_host_name_ids(ident, results):
    got = field(ident, results)
    assert authserv_id(value_of(got)) == ident
    assert claims(value_of(got), ident.upper())


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=80) | st.text(st.sampled_from('ab1 ()\\";.\r\n'), max_size=40))
def test_authserv_id_never_raises(text):
    got = authserv_id(text)
    assert got is None or (got and got == got.lower())
    claims(text, "example.com")
