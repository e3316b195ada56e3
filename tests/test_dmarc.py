"""DMARC through the real loopback DNS server: organizational domains, the author domain,
the record parser, policy discovery, alignment and pct; property tests that the parsers
never raise on arbitrary text."""

from __future__ import annotations

import asyncio

import pytest
from dnsserver import DNSServer
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.delivery.mx import MxResolver
from mta.policy.dmarc import (POLICIES, DmarcRecord, author_domain, check, normalize_domain,
                              organizational_domain, parse_record)

LONG_RUA = ",".join(f"mailto:dmarc-reports-{i}@reports.example.com" for i in range(12))
ZONE = {
    "_dmarc.example.com": [("TXT", "v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com")],
    "_dmarc.own.example.com": [("TXT", "v=DMARC1; p=none")],
    "_dmarc.strict.example.net": [("TXT", "v=DMARC1; p=reject; adkim=s; aspf=s")],
    "_dmarc.example.org": [("TXT", "v=DMARC1; p=reject")],
    "_dmarc.pct0.example.org": [("TXT", "v=DMARC1; p=reject; pct=0")],
    "_dmarc.pct100.example.org": [("TXT", "v=DMARC1; p=reject; pct=100")],
    "_dmarc.pct50.example.org": [("TXT", "v=DMARC1; p=reject; pct=50")],
    "_dmarc.q50.example.org": [("TXT", "v=DMARC1; p=quarantine; pct=50")],
    "_dmarc.two.example.org": [("TXT", "v=DMARC1; p=none"), ("TXT", "v=DMARC1; p=reject")],
    "_dmarc.mixed.example.org": [("TXT", "v=spf1 -all"), ("TXT", "some verification=1"),
                                 ("TXT", "v=DMARC1; p=quarantine")],
    "_dmarc.bad.example.org": [("TXT", "v=DMARC1; p=bogus")],
    "_dmarc.nop.example.org": [("TXT", "v=DMARC1; adkim=s; rua=not a uri")],
    "_dmarc.badsp.example.org": [("TXT", "v=DMARC1; p=reject; sp=maybe")],
    "_dmarc.badrua.example.org": [("TXT", "v=DMARC1; p=bogus; rua=mailto:r@example.org")],
    "_dmarc.notdmarc.example.org": [("TXT", "v=DMARC2; p=none"), ("TXT", "p=none; v=DMARC1")],
    "_dmarc.junk.example.org": [("TXT", "v=DMARC1; p=quarantine; pct=abc; adkim=x; foo=bar; ;;x")],
    "_dmarc.long.example.org": [("TXT", f"v=DMARC1; p=quarantine; rua={LONG_RUA}")],
    "_dmarc.servfail.example.org": "servfail",
    "_dmarc.timeout.example.org": "timeout",
    "_dmarc.tempfailorg.co.uk": "servfail",
}
NONE = ("none", "")


@pytest.fixture(scope="module")
def dns():
    with DNSServer(ZONE) as srv:
        yield srv


def dmarc(srv: DNSServer, from_domain, spf=NONE, dkim=(), rng=lambda: 0.99):
    async def go():
        lookup = MxResolver(srv.nameservers, port=srv.port, timeout=1)
        return await check(lookup, from_domain, spf, list(dkim), rng=rng)
    return asyncio.run(go())


# -- organizational domains ----------------------------------------------------------------

@pytest.mark.parametrize("domain, org", [
    ("mail.example.co.uk", "example.co.uk"),
    ("example.co.uk", "example.co.uk"),
    ("co.uk", "co.uk"),                       # a public suffix is its own
    ("uk", "uk"),                             # a TLD
    ("com", "com"),
    ("example.com", "example.com"),
    ("a.b.c.d.e.mail.example.com", "example.com"),  # deep
    ("Mail.EXAMPLE.com.", "example.com"),     # case and the final dot
    ("foo.github.io", "foo.github.io"),       # private suffix in the list
    ("x.foo.github.io", "foo.github.io"),
    ("github.io", "github.io"),
    ("www.例子.中国", "xn--fsqu00a.xn--fiqs8s"),  # IDN as A-labels
    ("www.xn--fsqu00a.xn--fiqs8s", "xn--fsqu00a.xn--fiqs8s"),
    ("a.b.unlisted-tld", "b.unlisted-tld"),   # unknown TLDs are suffixes (the "*" rule)
    ("bad..name.com", "bad..name.com"),       # not a domain: returned as given, lower-cased
])
def test_organizational_domain(domain, org):
    assert organizational_domain(domain) == org


@pytest.mark.parametrize("domain, norm", [
    ("Example.COM.", "example.com"), ("例子.中国", "xn--fsqu00a.xn--fiqs8s"), ("", None),
    ("a..b", None), ("a b.com", None), ("-x-.com", None), ("x" * 64 + ".com", None),
    (".".join(["a" * 60] * 5), None), ("_dmarc.example.com", "_dmarc.example.com"),
])
def test_normalize_domain(domain, norm):
    assert normalize_domain(domain) == norm


# -- the author domain ---------------------------------------------------------------------

@pytest.mark.parametrize("fields, want", [
    (["a@example.com"], ("example.com", "")),
    (["Bob <bob@Example.COM.>"], ("example.com", "")),
    (['"Bob Smith" <bob@example.com>'], ("example.com", "")),
    (['"a@evil.com, b" <x@good.org>'], ("good.org", "")),        # quoted display name
    (['"x@evil.com"@good.com'], ("good.com", "")),               # quoted local part with @
    (['"x\\"@evil.com"@good.com'], ("good.com", "")),            # escaped quote inside
    (["bob (Bob, @evil.com) <bob@x.org> (trailer)"], ("x.org", "")),  # comments
    (["bob@x.org (nested (comment) here)"], ("x.org", "")),
    (["=?utf-8?q?a,b@evil.com?= <z@good.net>"], ("good.net", "")),  # encoded word
    (["=?UTF-8?B?w5Zyc3RlZA==?= <z@good.net>"], ("good.net", "")),
    (["Team: a@b.com;"], ("b.com", "")),                         # group syntax
    (["<@route.com,@r2.com:user@final.com>"], ("final.com", "")),  # obs-route
    (["user@ example . com"], ("example.com", "")),              # obs CFWS in the domain
    (["x@例子.中国"], ("xn--fsqu00a.xn--fiqs8s", "")),           # RFC 6532 From
    ([], (None, "no From field")),
    (["a@b.com", "c@d.com"], (None, "2 From fields")),
    (["a@b.com, c@d.com"], (None, "From has 2 mailboxes")),
    (["Team: a@b.com, c@d.com;"], (None, "From has 2 mailboxes")),
    (["a@b.com, Team: c@d.com;, e@f.com"], (None, "From has 3 mailboxes")),
    (["<a@good.com> <b@evil.com>"], (None, "From has 2 mailboxes")),
    (["a@b.com,"], ("b.com", "")),                                # obs null list element
    (["undisclosed-recipients:;"], (None, "From has no domain")),
    (["bob"], (None, "From has no domain")),
    (["bob@"], (None, "From has no domain")),
    (["a@[192.0.2.1]"], (None, "From has no domain")),
    (["a@b@c.com"], (None, "From has no domain")),
    (["<a@good.com>evil.com"], (None, "From has no domain")),
    (["Bob <a@b.com"], (None, "From has no domain")),
    (['"unterminated <a@b.com>'], (None, "From has no domain")),
    (["(unterminated a@b.com"], (None, "From has no domain")),
    (["a@bad_label-.com"], (None, "From has no domain")),
    ([""], (None, "From has no domain")),
])
def test_author_domain(fields, want):
    assert author_domain(fields) == want


# -- the record parser ---------------------------------------------------------------------

@pytest.mark.parametrize("text, want", [
    ("v=DMARC1; p=reject", DmarcRecord(p="reject")),
    ("v = DMARC1 ;P=Quarantine; SP=None; pct=25; adkim=s; aspf=S; ri=3600; fo=1:d; rf=afrf;",
     DmarcRecord(p="quarantine", sp="none", pct=25, adkim="s", aspf="s", ri=3600, fo="1:d")),
    ("v=DMARC1; p=none; rua=mailto:a@x.com!10m, junk ,mailto:b@x.com; ruf=mailto:f@x.com",
     DmarcRecord(p="none", rua=("mailto:a@x.com!10m", "mailto:b@x.com"), ruf=("mailto:f@x.com",),
                 invalid=("rua",))),
    ("v=DMARC1; p=bogus", DmarcRecord(p=None, invalid=("p",))),
    ("v=DMARC1", DmarcRecord(p=None)),
    ("v=DMARC1; p=reject; sp=x; pct=101; adkim=; ri=-1",
     DmarcRecord(p="reject", invalid=("sp", "pct", "adkim", "ri"))),
    ("v=DMARC1; p=reject; p=none", DmarcRecord(p="reject")),   # the first of a repeated tag
    ("v=DMARC1;p=none;garbage;=x;9x=1", DmarcRecord(p="none")),
    ("v=DMARC1; pct=１", DmarcRecord(p=None, invalid=("pct",))),  # non-ASCII digits
    ("v=dmarc1; p=reject", None),                                 # the version is case-sensitive
    ("v=DMARC10; p=reject", None),
    ("p=reject; v=DMARC1", None),                                 # v= must come first
    ("v=spf1 -all", None),
    ("", None),
])
def test_parse_record(text, want):
    assert parse_record(text) == want


def test_record_validity():
    assert parse_record("v=DMARC1; p=none").valid
    assert not parse_record("v=DMARC1; p=bogus").valid
    assert not parse_record("v=DMARC1; p=none; sp=bogus").valid
    assert not parse_record("v=DMARC1").valid


# -- policy discovery ------------------------------------------------------------------------

def test_pass_with_aligned_dkim_at_the_from_domain(dns):
    r = dmarc(dns, "example.com", dkim=[("fail", "example.com"), ("pass", "example.com")])
    assert (r.result, r.policy, r.disposition, r.record_domain) == ("pass", "reject", "none",
                                                                     "example.com")
    assert r.reason == "p=reject dis=none" and r.from_domain == "example.com"


def test_fail_at_the_from_domain_uses_p(dns):
    r = dmarc(dns, "Example.COM.", spf=("pass", "other.net"), dkim=[("pass", "other.net")])
    assert (r.result, r.policy, r.disposition, r.from_domain) == ("fail", "reject", "reject",
                                                                  "example.com")
    assert r.reason == "p=reject dis=reject"


def test_subdomain_without_record_uses_sp_of_the_org_domain(dns):
    dns.reset_counts()
    r = dmarc(dns, "mail.example.com")
    assert (r.result, r.policy, r.disposition, r.record_domain) == ("fail", "quarantine",
                                                                     "quarantine", "example.com")
    assert dns.count("_dmarc.mail.example.com", "TXT") == 1
    assert dns.count("_dmarc.example.com", "TXT") == 1


def test_subdomain_with_its_own_record_uses_its_p(dns):
    r = dmarc(dns, "own.example.com")
    assert (r.result, r.policy, r.disposition, r.record_domain) == ("fail", "none", "none",
                                                                     "own.example.com")


def test_subdomain_without_sp_gets_p(dns):
    r = dmarc(dns, "deep.sub.example.org")
    assert (r.result, r.policy, r.disposition, r.record_domain) == ("fail", "reject", "reject",
                                                                     "example.org")


def test_no_record_anywhere_is_none(dns):
    dns.reset_counts()
    r = dmarc(dns, "sub.norecord.co.uk", dkim=[("pass", "sub.norecord.co.uk")])
    assert (r.result, r.policy, r.disposition, r.record_domain) == ("none", None, "none", None)
    assert r.reason == "no DMARC record"
    assert dns.count("_dmarc.sub.norecord.co.uk") == 1 and dns.count("_dmarc.norecord.co.uk") == 1
    assert dns.count("_dmarc.co.uk") == 0  # never above the organizational domain


def test_org_domain_is_not_asked_twice(dns):
    dns.reset_counts()
    assert dmarc(dns, "norecord.co.uk").result == "none"
    assert dns.count("_dmarc.norecord.co.uk") == 1


def test_two_records_is_none_and_stops_discovery(dns):
    dns.reset_counts()
    r = dmarc(dns, "two.example.org")
    assert (r.result, r.disposition, r.record_domain) == ("none", "none", "two.example.org")
    assert "2 DMARC records" in r.reason
    assert dns.count("_dmarc.example.org") == 0


def test_other_txt_records_are_ignored(dns):
    r = dmarc(dns, "mixed.example.org")
    assert (r.result, r.policy, r.record_domain) == ("fail", "quarantine", "mixed.example.org")


def test_records_not_starting_with_the_version_fall_through_to_the_org_domain(dns):
    r = dmarc(dns, "notdmarc.example.org")
    assert (r.result, r.policy, r.record_domain) == ("fail", "reject", "example.org")


def test_invalid_policy_without_rua_is_permerror(dns):
    for name, why in (("bad", "invalid p="), ("nop", "no p="), ("badsp", "invalid sp=")):
        r = dmarc(dns, f"{name}.example.org")
        assert (r.result, r.policy, r.disposition) == ("permerror", None, "none"), name
        assert why in r.reason


def test_invalid_policy_with_rua_acts_as_p_none(dns):
    r = dmarc(dns, "badrua.example.org")
    assert (r.result, r.policy, r.disposition) == ("fail", "none", "none")
    r = dmarc(dns, "badrua.example.org", dkim=[("pass", "example.org")])
    assert (r.result, r.policy) == ("pass", "none")


def test_invalid_optional_tags_take_defaults(dns):
    r = dmarc(dns, "junk.example.org", dkim=[("pass", "x.junk.example.org")])
    assert (r.result, r.policy) == ("pass", "quarantine")  # adkim=x is relaxed; pct=abc is 100
    r = dmarc(dns, "junk.example.org", rng=lambda: 0.999)
    assert (r.result, r.disposition) == ("fail", "quarantine")


def test_record_longer_than_one_txt_string(dns):
    r = dmarc(dns, "long.example.org")
    assert (r.result, r.policy, r.record_domain) == ("fail", "quarantine", "long.example.org")


@pytest.mark.parametrize("domain, where", [
    ("servfail.example.org", "servfail.example.org"),
    ("timeout.example.org", "timeout.example.org"),
    ("x.tempfailorg.co.uk", "tempfailorg.co.uk"),      # the org domain's lookup fails
])
def test_dns_failure_is_temperror(dns, domain, where):
    r = dmarc(dns, domain, dkim=[("pass", domain)])
    assert (r.result, r.policy, r.disposition) == ("temperror", None, "none")
    assert r.record_domain == where and where in r.reason


@pytest.mark.parametrize("bad", ["", "a..b", "[192.0.2.1]", "x" * 300])
def test_invalid_from_domain_is_permerror(dns, bad):
    r = dmarc(dns, bad)
    assert (r.result, r.disposition) == ("permerror", "none")


# -- alignment -----------------------------------------------------------------------------

@pytest.mark.parametrize("from_domain, spf, dkim, result", [
    # relaxed (example.com has no adkim/aspf): same organizational domain
    ("example.com", ("pass", "bounce.example.com"), [], "pass"),
    ("mail.example.com", ("pass", "example.com"), [], "pass"),
    ("mail.example.com", ("pass", "other.example.com"), [], "pass"),
    ("example.com", ("pass", "example.com.evil.net"), [], "fail"),
    ("example.com", ("softfail", "example.com"), [], "fail"),
    ("example.com", ("PASS", "EXAMPLE.com"), [], "pass"),
    ("example.com", NONE, [("pass", "s.mail.example.com")], "pass"),
    ("mail.example.com", NONE, [("pass", "example.com")], "pass"),
    ("example.com", NONE, [("fail", "example.com"), ("pass", "evil.net")], "fail"),
    ("example.com", NONE, [("pass", "")], "fail"),
    # strict (strict.example.net: adkim=s aspf=s): equal domains only
    ("strict.example.net", ("pass", "strict.example.net"), [], "pass"),
    ("strict.example.net", ("pass", "bounce.strict.example.net"), [], "fail"),
    ("strict.example.net", ("pass", "example.net"), [], "fail"),
    ("strict.example.net", NONE, [("pass", "Strict.Example.NET.")], "pass"),
    ("strict.example.net", NONE, [("pass", "example.net")], "fail"),
    ("strict.example.net", NONE, [("pass", "a.strict.example.net")], "fail"),
    ("strict.example.net", ("fail", "strict.example.net"), [("pass", "strict.example.net")], "pass"),
])
def test_alignment(dns, from_domain, spf, dkim, result):
    assert dmarc(dns, from_domain, spf=spf, dkim=dkim).result == result


# -- pct -------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain, rng, disposition", [
    ("pct0.example.org", 0.0, "quarantine"),        # pct=0: never subject to reject
    ("pct100.example.org", 0.999999, "reject"),     # pct=100: always
    ("pct50.example.org", 0.2, "reject"),           # sampled: 20 < 50
    ("pct50.example.org", 0.7, "quarantine"),       # not sampled: reject -> quarantine
    ("q50.example.org", 0.2, "quarantine"),
    ("q50.example.org", 0.7, "none"),               # not sampled: quarantine -> none
])
def test_pct_sampling(dns, domain, rng, disposition):
    calls = []

    def fixed():
        calls.append(1)
        return rng
    r = dmarc(dns, domain, rng=fixed)
    assert (r.result, r.disposition) == ("fail", disposition)
    assert r.policy in ("reject", "quarantine") and f"dis={disposition}" in r.reason
    assert len(calls) == (1 if "50" in domain else 0)  # 0 and 100 need no dice


def test_pct_is_not_consulted_on_pass(dns):
    def boom():
        raise AssertionError("rng called")
    r = dmarc(dns, "pct50.example.org", dkim=[("pass", "pct50.example.org")], rng=boom)
    assert (r.result, r.disposition) == ("pass", "none")


# -- properties --------------------------------------------------------------------------

_atext = st.text(st.sampled_from("abcxyz0189!#$%&'*+-/=?^_`{|}~"), min_size=1, max_size=8)
_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_domain = st.lists(_label, min_size=1, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=80), max_size=3))
def test_author_domain_never_raises(fields):
    domain, reason = author_domain(fields)
    assert (domain is None) != (reason == "")
    if domain is not None:
        assert normalize_domain(domain) == domain


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from('ab@.<>,:;"()[]\\ =?\t\r\n'), max_size=40))
def test_author_domain_never_raises_on_specials(text):
    author_domain([text])


@settings(max_examples=200, deadline=None)
@given(st.lists(_atext, min_size=1, max_size=3).map(".".join), _domain,
       st.text(max_size=20), st.booleans())
def test_author_domain_finds_the_address(local, domain, name, angle):
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    value = f"{quoted} <{local}@{domain}>" if angle else f"{local}@{domain}"
    assert author_domain([value]) == (domain, "")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120),
                 st.text(st.sampled_from("vVDMARC1=;pspctadkimaspfruf: ,!mailto@rejectnone"),
                         max_size=80).map(lambda t: "v=DMARC1;" + t)))
def test_parse_record_never_raises(text):
    rec = parse_record(text)
    if rec is not None:
        assert rec.p in POLICIES + (None,) and rec.sp in POLICIES + (None,)
        assert 0 <= rec.pct <= 100 and rec.adkim in "rs" and rec.aspf in "rs"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_organizational_domain_never_raises(text):
    org = organizational_domain(text)
    assert isinstance(org, str)
