"""SPF macros and the record parser without DNS: RFC 7208 section 7.4's examples, every
letter and transformer, the errors (a permerror), and properties (the expander and the
parser never fail but by their own error, whatever the text)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.policy.spf import SpfSyntaxError, is_spf_record, parse_record, valid_domain
from mta.policy.spfmacro import (Macro, MacroContext, MacroError, expand, parse, parse_domain_spec,
                                 render_domain)

# section 7.4: <sender> strong-bad@email.example.com, <domain> email.example.com
CTX = MacroContext("strong-bad@email.example.com", "email.example.com", "192.0.2.3", "mx.example.org",
                   hostname="receiver.example.net", ptr="mx.example.org", now=1234567890)
CTX6 = MacroContext("strong-bad@email.example.com", "email.example.com", "2001:db8::cb01",
                    "mx.example.org")

RFC_7_4 = [
    ("%{s}", "strong-bad@email.example.com"), ("%{o}", "email.example.com"),
    ("%{d}", "email.example.com"), ("%{d4}", "email.example.com"), ("%{d3}", "email.example.com"),
    ("%{d2}", "example.com"), ("%{d1}", "com"), ("%{dr}", "com.example.email"),
    ("%{d2r}", "example.email"), ("%{l}", "strong-bad"), ("%{l-}", "strong.bad"),
    ("%{lr}", "strong-bad"), ("%{lr-}", "bad.strong"), ("%{l1r-}", "strong"),
    ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
    ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
    ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
    ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
    ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
]


@pytest.mark.parametrize("macro,expansion", RFC_7_4)
def test_rfc_7_4_examples(macro, expansion):
    assert expand(macro, CTX) == expansion


def test_rfc_7_4_ipv6_example():
    assert expand("%{ir}.%{v}._spf.%{d2}", CTX6) == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com")


@pytest.mark.parametrize("macro,expansion", [
    ("%{i}", "192.0.2.3"), ("%{h}", "mx.example.org"), ("%{p}", "mx.example.org"), ("%{v}", "in-addr"),
    ("%{D}", "email.example.com"), ("%{S}", "strong-bad%40email.example.com"),
    ("%{l+}", "strong-bad"), ("%{d0002}", "example.com"), ("%{d99}", "email.example.com"),
    ("%{d1R}", "email"), ("%{dR.}", "com.example.email"), ("%{s.-}", "strong.bad@email.example.com"),
    ("%%", "%"), ("%_", " "), ("%-", "%20"), ("a%%b%_c%-d", "a%b c%20d"), ("", ""),
    ("x.%{d}.y", "x.email.example.com.y"), ("%{l=,+/_}", "strong-bad"),
])
def test_letters_and_transformers(macro, expansion):
    assert expand(macro, CTX) == expansion


def test_url_escaping_of_upper_case_letters():
    ctx = MacroContext("a b/c~d@x.example", "x.example", "192.0.2.3", "h")
    assert expand("%{L}", ctx) == "a%20b%2Fc~d"
    assert expand("%{l}", ctx) == "a b/c~d"
    assert expand("%{I}.%{V}", CTX6).endswith(".ip6")


def test_explanation_only_letters():
    for letter in "crtCRT":
        assert expand(f"%{{{letter}}}", CTX) is None
    assert expand("%{c} %{r} %{t}", CTX, exp=True) == "192.0.2.3 receiver.example.net 1234567890"
    assert expand("%{c}", CTX6, exp=True) == "2001:db8::cb01"
    assert expand("%{i}", CTX6) == "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1"
    assert expand("%{t}", MacroContext("a@b.example", "b.example", "192.0.2.1", "h"), exp=True).isdigit()
    assert expand("%{r}", MacroContext("a@b.example", "b.example", "192.0.2.1", "h", hostname=""),
                  exp=True) == "unknown"
    assert expand("two words", CTX) is None and expand("two words", CTX, exp=True) == "two words"


def test_sender_parts():
    ctx = MacroContext("postmaster@b.example", "b.example", "::ffff:192.0.2.1", "h")
    assert expand("%{l}|%{o}|%{i}|%{v}", ctx) == "postmaster|b.example|192.0.2.1|in-addr"


@pytest.mark.parametrize("bad", ["%", "%a", "%{", "%{d", "%{x}", "%{d0}", "%{d00}", "%{dx}", "%{d r}",
                                 "%{d1rr}", "%{}", "{%}", "a b", "\u00e4", "tab\t", "%{d}%", "%{d.;}", "%{s.-@}"])
def test_malformed_macro_strings(bad):
    assert expand(bad, CTX) is None
    with pytest.raises(MacroError):
        parse(bad)


def test_parsed_tokens():
    assert parse("a%{d2r-}b") == ("a", Macro("d", 2, True, "-", False), "b")
    assert parse("%{L}") == (Macro("l", 0, False, "", True),)


@pytest.mark.parametrize("spec,ok", [
    ("example.com", True), ("example.com.", True), ("%{d}", True), ("_spf.%{d2}", True),
    ("x.%%", True), ("a-b.c-d", True), ("%{d}.123", False), ("192.0.2.1", False), ("com", False),
    ("example.com-", False), ("example.-com", False), ("", False), ("exa mple.com", False),
    ("example.c_m", False), ("x.1-2", True),
])
def test_domain_spec_end(spec, ok):
    if ok:
        parse_domain_spec(spec)
    else:
        with pytest.raises(MacroError):
            parse_domain_spec(spec)


def test_long_names_lose_labels_on_the_left():
    label = "a" * 62
    name = ".".join([label] * 4)  # 251 octets
    ctx = MacroContext("l@" + name, name, "192.0.2.1", "h")
    assert render_domain(parse_domain_spec("x.%{d}"), ctx) == "x." + name
    assert render_domain(parse_domain_spec("xx.%{d}"), ctx) == name
    assert render_domain(parse_domain_spec("%{d}."), ctx) == name
    assert len(render_domain(parse_domain_spec("%{d}.%{d}"), ctx)) <= 253


# --- the record parser -------------------------------------------------------

def test_record_terms():
    rec = parse_record("v=spf1 a mx/24//64 ~ptr ?ip4:192.0.2.1/8 -ip6:2001:DB8::1/32 include:x.%{d} "
                       "exists:%{i}.bl.example Redirect=r.example EXP=e.example foo.bar-1_x=%{s} -ALL")
    kinds = [(d.result, d.kind, d.text) for d in rec.directives]
    assert kinds == [("pass", "a", "a"), ("pass", "mx", "mx/24//64"), ("softfail", "ptr", "~ptr"),
                     ("neutral", "ip4", "?ip4:192.0.2.1/8"), ("fail", "ip6", "-ip6:2001:DB8::1/32"),
                     ("pass", "include", "include:x.%{d}"), ("pass", "exists", "exists:%{i}.bl.example"),
                     ("fail", "all", "-ALL")]
    assert (rec.directives[1].cidr4, rec.directives[1].cidr6) == (24, 64)
    assert rec.directives[3].network == ipaddress.ip_network("192.0.0.0/8")
    assert rec.directives[4].network == ipaddress.ip_network("2001:db8::/32")
    assert rec.redirect == ("r.example",) and rec.exp == ("e.example",)
    assert parse_record("v=spf1 a//0 mx:m.example/0").directives[1].cidr4 == 0
    assert parse_record("v=spf1").directives == ()


@pytest.mark.parametrize("bad", [
    "v=spf1 a/", "v=spf1 a/024", "v=spf1 a//", "v=spf1 a/24/", "v=spf1 a/33", "v=spf1 a//129",
    "v=spf1 mx:", "v=spf1 mx:/24", "v=spf1 ip4", "v=spf1 ip4:", "v=spf1 ip4:192.0.2", "v=spf1 ip4:192.0.2.256",
    "v=spf1 ip4:192.0.2.1//32", "v=spf1 ip6:192.0.2.1", "v=spf1 ip6:fe80::1%eth0", "v=spf1 ip6:::1/",
    "v=spf1 include", "v=spf1 exists:", "v=spf1 ptr:", "v=spf1 ptrx", "v=spf1 allx", "v=spf1 -all/24",
    "v=spf1 +-all", "v=spf1 redirect=", "v=spf1 exp=", "v=spf1 x=%{z}", "v=spf1 a:x.example:y",
    "v=spf1 REDIRECT=a.example redirect=b.example", "spf1 -all", "v=spf1\t-all",
])
def test_record_syntax_errors(bad):
    with pytest.raises(SpfSyntaxError):
        parse_record(bad)


def test_spf_record_selection_and_domains():
    assert is_spf_record("v=spf1") and is_spf_record("V=SpF1 -all")
    assert not is_spf_record("v=spf10") and not is_spf_record("v=spf1-all") and not is_spf_record(" v=spf1")
    assert valid_domain("a.example") and valid_domain("_spf.example.com") and valid_domain("x.1a")
    for bad in ("", "example", "a..example", ".a.example", "1.2.3.4", "a" * 64 + ".example",
                "a b.example", "[192.0.2.1]", "\u00e4.example", "a.example."):
        assert not valid_domain(bad), bad


# --- properties --------------------------------------------------------------

MACROISH = st.text(st.sampled_from(list("%{}_-.+,/=rR0123456789slodiphcrtvSLODIPHCRTVx @")), max_size=30)
CONTEXTS = st.builds(MacroContext, st.text(max_size=20), st.text(max_size=20),
                     st.one_of(st.ip_addresses().map(str), st.text(max_size=8)), st.text(max_size=10),
                     st.text(max_size=10), st.text(max_size=10), st.one_of(st.none(), st.integers()))


@settings(max_examples=300, deadline=None)
@given(st.one_of(MACROISH, st.text(max_size=30)), CONTEXTS, st.booleans())
def test_property_expander_never_raises(text, ctx, exp):
    out = expand(text, ctx, exp=exp)
    try:
        parse(text, exp=exp)
    except MacroError:
        assert out is None
    else:
        assert isinstance(out, str)
    try:
        tokens = parse_domain_spec(text)
    except MacroError:
        return
    assert len(render_domain(tokens, ctx)) <= 253


TERMS = st.one_of(
    st.sampled_from(["a", "mx", "ptr", "all", "ip4:", "ip6:", "include:", "exists:", "redirect=", "exp=",
                     "-", "+", "~", "?", "/", "//", ":", "%{d}", ".example", "192.0.2.1", "::1", "24", "x="]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=6))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(TERMS, max_size=4).map("".join), max_size=6), st.text(max_size=40))
def test_property_record_parser(terms, junk):
    for text in ("v=spf1 " + " ".join(terms), "v=spf1 " + junk, junk):
        try:
            rec = parse_record(text)
        except SpfSyntaxError:
            continue
        assert all(d.kind in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists") for d in rec.directives)
