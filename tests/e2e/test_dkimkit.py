"""The readers the authentication tests judge mta with (dkimkit.authres, fields, sig_tags):
tables of real-world shapes, and a hypothesis round trip for Authentication-Results, so a
wrong verdict cannot come from the reader."""

from __future__ import annotations

import pytest
from dkimkit import authres, fields, sig_tags
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize("value, want_id, want", [
    ("mx.example.test; none", "mx.example.test", []),
    ("mx.example.test 1; spf=pass smtp.mailfrom=a@b.example", "mx.example.test",
     [("spf", "pass", "", "", {"smtp.mailfrom": "a@b.example"})]),
    (('mx.example.test;\r\n\tdkim=fail reason="bad; sig" (body hash did not verify) header.d=b.example '
      "header.s=s1;\r\n\tdmarc=pass (p=reject dis=none) header.from=b.example; arc=none"), "mx.example.test",
     [("dkim", "fail", "bad; sig", "body hash did not verify", {"header.d": "b.example", "header.s": "s1"}),
      ("dmarc", "pass", "", "p=reject dis=none", {"header.from": "b.example"}),
      ("arc", "none", "", "", {})]),
    ("(a comment; with a semicolon) mx.example.test; spf=NEUTRAL (nested (comment))", "mx.example.test",
     [("spf", "neutral", "", "nested (comment)", {})]),
])
def test_authres_table(value, want_id, want):
    got_id, got = authres(value.replace("\r\n", ""))
    assert got_id == want_id
    assert [(r["method"], r["result"], r["reason"], r["comments"], r["props"]) for r in got] == want


_token = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
_comment = st.text("abcdefghij ;=.:", max_size=20).map(str.strip)


@given(st.lists(st.tuples(_token, _token, _comment, st.dictionaries(_token.map(lambda t: "header." + t), _token,
                                                                     max_size=3)), max_size=5))
def test_authres_round_trip(results):
    value = "mx.example.test;" + ";".join(
        f" {m}={r}" + (f" ({c})" if c else "") + "".join(f" {k}={v}" for k, v in p.items())
        for m, r, c, p in results)
    got_id, got = authres(value)
    assert got_id == "mx.example.test"
    assert [(r["method"], r["result"], r["comments"], r["props"]) for r in got] == \
        [(m, r, c, p) for m, r, c, p in results]


def test_fields_and_sig_tags():
    msg = (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com;\r\n\ts=s1; h=from : to;\r\n"
           b"\tb=abc\r\n def=\r\nFrom: a@example.com\r\nX-Empty:\r\n\r\nbody: not a field\r\n")
    got = fields(msg)
    assert [n for n, _v in got] == ["DKIM-Signature", "From", "X-Empty"]
    tags = sig_tags(got[0][1])
    assert tags == {"v": "1", "a": "rsa-sha256", "d": "example.com", "s": "s1", "h": "from:to", "b": "abcdef="}
