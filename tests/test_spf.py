"""SPF check_host() and check() through the loopback DNS server and MxResolver: RFC 7208
appendix A, the lookup limits, error propagation, exp=, IPv6, the HELO identity, and a
property (any record, any client address: one of the seven results, never an exception)."""

from __future__ import annotations

import asyncio
import ipaddress
import itertools

import pytest
from dnsserver import DNSServer
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.delivery.mx import MxResolver
from mta.policy.spf import RESULTS, SpfResult, check, check_host

# RFC 7208 appendix A's zone, and the names the other tests publish on
ZONE = {
    "example.com": [("MX", "10 mail-a.example.com"), ("MX", "20 mail-b.example.com"),
                    ("A", "192.0.2.10"), ("A", "192.0.2.11")],
    "amy.example.com": [("A", "192.0.2.65")],
    "bob.example.com": [("A", "192.0.2.66")],
    "mail-a.example.com": [("A", "192.0.2.129")],
    "mail-b.example.com": [("A", "192.0.2.130")],
    "www.example.com": [("CNAME", "example.com")],
    "example.org": [("MX", "10 mail-c.example.org")],
    "mail-c.example.org": [("A", "192.0.2.140")],
    "10.2.0.192.in-addr.arpa": [("PTR", "example.com.")],
    "11.2.0.192.in-addr.arpa": [("PTR", "example.com.")],
    "65.2.0.192.in-addr.arpa": [("PTR", "amy.example.com.")],
    "66.2.0.192.in-addr.arpa": [("PTR", "bob.example.com.")],
    "129.2.0.192.in-addr.arpa": [("PTR", "mail-a.example.com.")],
    "130.2.0.192.in-addr.arpa": [("PTR", "mail-b.example.com.")],
    "140.2.0.192.in-addr.arpa": [("PTR", "mail-c.example.org.")],
    "4.0.0.10.in-addr.arpa": [("PTR", "bob.example.com.")],  # the rogue reverse entry
    # A.3
    "mary.mobile-users._spf.example.com": [("A", "127.0.0.2")],
    "fred.mobile-users._spf.example.com": [("A", "127.0.0.2")],
    "15.15.168.192.joel.remote-users._spf.example.com": [("A", "127.0.0.2")],
    "16.15.168.192.joel.remote-users._spf.example.com": [("A", "127.0.0.2")],
    "mobile-users._spf.example.com": [("TXT", "v=spf1 exists:%{l1r+}.%{d}")],
    "remote-users._spf.example.com": [("TXT", "v=spf1 exists:%{ir}.%{l1r+}.%{d}")],
    # A.4 (with erratum 6216: "-ptr:example.com", as "-ptr" alone would ask for ptr._spf.example.com)
    "ip4._spf.example.com": [("TXT", "v=spf1 -ip4:192.0.2.0/24 +all")],
    "ptr._spf.example.com": [("TXT", "v=spf1 -ptr:example.com +all")],
    "la.example.org": [("TXT", "v=spf1 redirect=example.org")],
    "ny.example.org": [("TXT", "v=spf1 redirect=example.org")],
    "sf.example.org": [("TXT", "v=spf1 redirect=example.org")],
    "example.net": [("TXT", "v=spf1 mx:example.org -all")],
    # for the limits and the failures
    "host.lim.test": [("A", "192.0.2.99"), ("AAAA", "2001:db8::99")],
    "v6.test": [("AAAA", "2001:db8:1::1"), ("A", "192.0.2.50"),
                ("MX", "10 mx.v6.test")],
    "mx.v6.test": [("AAAA", "2001:db8:2::25")],
    "broken.test": "servfail",
    "slow.test": [("TXT", "v=spf1 -all")],
    "noexp.test": [("TXT", "first"), ("TXT", "second")],
    "explain.test": [("TXT", "%{i} is not one of %{d}'s designated mail servers (%{c} %{r} %{L}).")],
    "nospf.test": [("TXT", "some other text"), ("A", "192.0.2.1")],
}
ALL_IPS = ["192.0.2.10", "192.0.2.11", "192.0.2.65", "192.0.2.66", "192.0.2.129",
           "192.0.2.130", "192.0.2.140", "10.0.0.4"]

SRV: DNSServer | None = None
_names = itertools.count()


@pytest.fixture(scope="module", autouse=True)
def srv():
    global SRV
    with DNSServer(ZONE, ttl=300) as server:
        server.behave("slow.test", "timeout", rdtype="TXT")
        server.behave("broken.test", "servfail")
        SRV = server
        yield server
    SRV = None


def resolver() -> MxResolver:
    # a fresh cache per check: tests republish names
    return MxResolver(nameservers=SRV.nameservers, port=SRV.port, timeout=1.0)


def publish(name: str, *txt: str, extra=()) -> None:
    SRV.add(name, [*ZONE.get(name, ()), *extra, *(("TXT", t) for t in txt)])


def fresh(*txt: str, extra=()) -> str:
    """A new name under lim.test that publishes the records `txt`."""
    name = f"n{next(_names)}.lim.test"
    SRV.add(name, [*extra, *(("TXT", t) for t in txt)])
    return name


def spf(ip: str, domain: str = "example.com", sender: str | None = None, **kw) -> SpfResult:
    kw.setdefault("helo", "mail.example.net")
    kw.setdefault("hostname", "mx.receiver.test")
    return asyncio.run(check_host(resolver(), ip, domain, sender or f"user@{domain}", **kw))


def result(ip: str, domain: str = "example.com", sender: str | None = None, **kw) -> str:
    return spf(ip, domain, sender, **kw).result


# --- RFC 7208 appendix A -----------------------------------------------------

A1 = [
    ("v=spf1 +all", None),  # any <ip> passes
    ("v=spf1 a -all", ["192.0.2.10", "192.0.2.11"]),
    ("v=spf1 a:example.org -all", []),
    ("v=spf1 mx -all", ["192.0.2.129", "192.0.2.130"]),
    ("v=spf1 mx:example.org -all", ["192.0.2.140"]),
    ("v=spf1 mx mx:example.org -all", ["192.0.2.129", "192.0.2.130", "192.0.2.140"]),
    ("v=spf1 mx/30 mx:example.org/30 -all", ["192.0.2.129", "192.0.2.130", "192.0.2.140",
                                             "192.0.2.128", "192.0.2.131", "192.0.2.143"]),
    ("v=spf1 ptr -all", ["192.0.2.10", "192.0.2.11", "192.0.2.65", "192.0.2.66",
                         "192.0.2.129", "192.0.2.130"]),
    ("v=spf1 ip4:192.0.2.128/28 -all", ["192.0.2.129", "192.0.2.130", "192.0.2.140",
                                        "192.0.2.128", "192.0.2.132", "192.0.2.143"]),
]


@pytest.mark.parametrize("record,passing", A1, ids=[r for r, _ in A1])
def test_appendix_a1(record, passing):
    publish("example.com", record)
    for ip in sorted(set(ALL_IPS + (passing or []) + ["192.0.2.132", "192.0.2.144", "192.0.2.127"])):
        assert result(ip) == ("pass" if passing is None or ip in passing else "fail"), ip


def test_appendix_a1_ptr_rogue_and_foreign_names():
    publish("example.com", "v=spf1 ptr -all")
    assert result("192.0.2.65") == "pass"  # amy.example.com, and amy's A is .65
    assert result("192.0.2.140") == "fail"  # valid, but mail-c.example.org
    assert result("10.0.0.4") == "fail"  # claims bob.example.com, whose A is .66


def test_appendix_a2_include_and_redirect():
    publish("example.com", "v=spf1 mx -all")
    publish("example.org", "v=spf1 include:example.com include:example.net -all")
    for domain in ("example.org", "la.example.org", "ny.example.org", "sf.example.org"):
        assert result("192.0.2.129", domain) == "pass"  # by example.com
        assert result("192.0.2.140", domain) == "pass"  # by example.net
        assert result("192.0.2.65", domain) == "fail"
    res = spf("192.0.2.65", "la.example.org")
    assert res.domain == "la.example.org" and res.reason == "192.0.2.65 is not permitted by la.example.org"


A3 = [("1.2.3.4", "mary", "pass"), ("1.2.3.4", "fred", "pass"), ("1.2.3.4", "fred+wildcard", "pass"),
      ("1.2.3.4", "joel", "fail"), ("1.2.3.4", "other", "fail"), ("192.168.15.15", "joel", "pass"),
      ("192.168.15.16", "joel", "pass"), ("192.168.15.17", "joel", "fail"),
      ("192.168.15.17", "other", "fail"), ("192.0.2.129", "anyone", "pass")]


@pytest.mark.parametrize("ip,local,expected", A3)
def test_appendix_a3_dnsbl_style(ip, local, expected):
    publish("example.com", "v=spf1 mx include:mobile-users._spf.%{d} include:remote-users._spf.%{d} -all")
    assert result(ip, sender=f"{local}@example.com") == expected


@pytest.mark.parametrize("ip,expected", [("192.0.2.65", "pass"), ("192.0.2.10", "pass"),
                                         ("192.0.2.140", "fail"), ("10.0.0.4", "fail"),
                                         ("192.0.2.200", "fail")])
def test_appendix_a4_multiple_requirements(ip, expected):
    publish("example.com", "v=spf1 -include:ip4._spf.%{d} -include:ptr._spf.%{d} +all")
    assert result(ip) == expected


# --- results, qualifiers, record selection -----------------------------------

@pytest.mark.parametrize("record,expected,reason", [
    ("v=spf1 -all", "fail", "192.0.2.1 is not permitted by {d}"),
    ("v=spf1 ~all", "softfail", "192.0.2.1 is probably not permitted by {d}"),
    ("v=spf1 ?all", "neutral", "{d} neither permits nor denies 192.0.2.1"),
    ("v=spf1 +all", "pass", "192.0.2.1 is permitted by {d}"),
    ("v=spf1", "neutral", "{d} neither permits nor denies 192.0.2.1"),
    ("v=spf1 ip4:192.0.2.2", "neutral", "{d} neither permits nor denies 192.0.2.1"),
    ("v=spf1 -ip4:192.0.2.1 +all", "fail", "192.0.2.1 is not permitted by {d}"),
    ("V=SPF1 IP4:192.0.2.1 -ALL", "pass", "192.0.2.1 is permitted by {d}"),
    ("v=spf1  ip4:192.0.2.1   -all  ", "pass", "192.0.2.1 is permitted by {d}"),
    ("v=spf1 -all ip4:192.0.2.1", "fail", "192.0.2.1 is not permitted by {d}"),
    ("v=spf1 ip4:192.0.2.1 foo=%{d} -all", "pass", "192.0.2.1 is permitted by {d}"),
    ("v=spf1 a:HOST.LIM.TEST/28 -all", "fail", "192.0.2.1 is not permitted by {d}"),
    ("v=spf1 a:HOST.LIM.TEST/16 -all", "pass", "192.0.2.1 is permitted by {d}"),
])
def test_results_and_qualifiers(record, expected, reason):
    name = fresh(record)
    res = spf("192.0.2.1", name)
    assert (res.result, res.reason, res.identity, res.domain) == (expected, reason.format(d=name), "mailfrom", name)
    assert res.explanation is None


def test_record_selection():
    assert spf("192.0.2.1", "nospf.test") == SpfResult("none", "mailfrom", "nospf.test", "no SPF record")
    assert result("192.0.2.1", "absent.lim.test") == "none"  # NXDOMAIN
    assert result("192.0.2.1", "host.lim.test") == "none"  # NODATA
    assert result("192.0.2.1", fresh("v=spf10 -all", "v=spf1-all")) == "none"
    assert result("192.0.2.1", fresh("v=spf1 -all", "spf2.0/pra +all", "hello")) == "fail"
    two = spf("192.0.2.1", fresh("v=spf1 -all", "v=spf1 +all"))
    assert two.result == "permerror" and "2 SPF records" in two.reason
    assert result("192.0.2.1", "Nospf.TEST.") == "none"
    assert spf("192.0.2.1", "localhost").reason == "not a valid domain name"
    assert result("192.0.2.1", "1.2.3.4") == "none"
    assert result("192.0.2.1", "a..b.test") == "none"
    assert result("not an ip", "nospf.test") == "none"


@pytest.mark.parametrize("record", [
    "v=spf1 foo -all", "v=spf1 a/33 -all", "v=spf1 mx//129", "v=spf1 ip4:192.0.2.1/33",
    "v=spf1 ip4:192.0.2.01", "v=spf1 ip6:2001:db8::/129", "v=spf1 ip6:2001:db8::zz",
    "v=spf1 a:%{x}.example.com", "v=spf1 a:%{d", "v=spf1 include:", "v=spf1 exists",
    "v=spf1 redirect=a.example redirect=b.example", "v=spf1 exp=a.example exp=b.example",
    "v=spf1 -all foo", "v=spf1 a:192.0.2.1", "v=spf1 include:%{c}.example.com", "v=spf1 =x",
    "v=spf1 all:x", "v=spf1 unknown=%{", "v=spf1 a:ex\u00e4mple.com", "v=spf1 ip4:192.0.2.1 -all\tmx",
])
def test_syntax_errors_are_permerror(record):
    res = spf("192.0.2.1", fresh(record))
    assert res.result == "permerror" and "syntax error" in res.reason


# --- limits -----------------------------------------------------------------

def test_lookup_limit_ten_and_eleven():
    ten = fresh("v=spf1 " + "a:host.lim.test " * 10 + "-all")
    assert result("192.0.2.1", ten) == "fail"
    eleven = spf("192.0.2.1", fresh("v=spf1 " + "a:host.lim.test " * 11 + "-all"))
    assert (eleven.result, eleven.reason) == ("permerror", "too many DNS lookups (limit 10)")
    # the terms that ask nothing do not count; include and redirect do, across records
    assert result("192.0.2.1", fresh("v=spf1 " + "ip4:10.0.0.1 " * 30 + "-all")) == "fail"
    inner = fresh("v=spf1 " + "a:host.lim.test " * 5 + "-all")
    res = spf("192.0.2.1", fresh(f"v=spf1 a:host.lim.test mx:host.lim.test a:host.lim.test include:{inner} "
                                 f"ptr redirect={inner}"))  # 1 + 1 + 1 + (1 + 5) + 1, and redirect the 11th
    assert (res.result, res.reason) == ("permerror", "too many DNS lookups (limit 10)")
    assert result("192.0.2.1", ten, lookup_limit=9) == "permerror"


def test_include_loop_is_permerror():
    publish("loop.lim.test", "v=spf1 include:loop.lim.test -all")
    res = spf("192.0.2.1", "loop.lim.test")
    assert (res.result, res.reason) == ("permerror", "too many DNS lookups (limit 10)")


def test_void_lookups_two_and_three():
    two = fresh("v=spf1 exists:v1.none.test a:v2.none.test -all")
    assert result("192.0.2.1", two) == "fail"
    three = spf("192.0.2.1", fresh("v=spf1 exists:v1.none.test a:v2.none.test mx:v3.none.test -all"))
    assert (three.result, three.reason) == ("permerror", "too many void DNS lookups (limit 2)")
    # a match before the third void ends the check first
    assert result("192.0.2.1", fresh("v=spf1 exists:a.none.test exists:b.none.test ip4:192.0.2.1 "
                                     "exists:c.none.test -all")) == "pass"
    nodata = fresh("v=spf1 a:host.lim.test mx:host.lim.test a:v6.test -all")  # MX nodata: one void
    assert result("2001:db8::5", nodata) == "fail"
    assert result("192.0.2.1", nodata) == "fail"
    assert result("192.0.2.1", nodata, void_limit=0) == "permerror"


def test_mx_with_more_than_ten_names():
    mx = [("MX", f"{i} mx{i}.many.lim.test") for i in range(1, 12)]
    SRV.add("many.lim.test", mx + [("TXT", "v=spf1 mx -all")])
    SRV.add("ten.lim.test", mx[:10] + [("TXT", "v=spf1 mx -all")])
    for i in range(1, 12):
        SRV.add(f"mx{i}.many.lim.test", [("A", f"192.0.2.{200 + i}")])
    res = spf("192.0.2.201", "many.lim.test")
    assert res.result == "permerror" and "more than 10 MX names" in res.reason
    assert result("192.0.2.210", "ten.lim.test") == "pass"
    assert result("192.0.2.211", "ten.lim.test") == "fail"


def test_ptr_names_past_ten_are_ignored():
    names = [f"p{i}.ptr.lim.test" for i in range(1, 12)]
    SRV.add("7.100.51.198.in-addr.arpa", [("PTR", f"{n}.") for n in names])
    for n in names:
        SRV.add(n, [("A", "198.51.100.7")])
    assert result("198.51.100.7", fresh("v=spf1 ptr:ptr.lim.test -all")) == "pass"
    # eleven names, no error: ten of them are looked up, the eleventh is not
    SRV.add("8.100.51.198.in-addr.arpa", [("PTR", f"x{i}.ptr.lim.test.") for i in range(11)])
    name = fresh("v=spf1 ptr:ptr.lim.test ~all")
    SRV.reset_counts()
    assert result("198.51.100.8", name) == "softfail"
    assert len([q for q in SRV.queries if q[0].startswith("x") and q[1] == "A"]) == 10


def test_mx_null_and_cname():
    SRV.add("nullmx.lim.test", [("MX", "0 ."), ("TXT", "v=spf1 mx -all")])
    assert result("192.0.2.1", "nullmx.lim.test") == "fail"
    assert result("192.0.2.10", fresh("v=spf1 a:www.example.com -all")) == "pass"


# --- include, redirect, errors -----------------------------------------------

def test_include_result_mapping():
    passing, failing = fresh("v=spf1 +all"), fresh("v=spf1 -all")
    soft, neutral = fresh("v=spf1 ~all"), fresh("v=spf1 ?all")
    assert result("192.0.2.1", fresh(f"v=spf1 include:{passing} -all")) == "pass"
    assert result("192.0.2.1", fresh(f"v=spf1 -include:{passing} +all")) == "fail"
    for other in (failing, soft, neutral):
        assert result("192.0.2.1", fresh(f"v=spf1 include:{other} ?all")) == "neutral"
    none = spf("192.0.2.1", fresh("v=spf1 include:nospf.test -all"))
    assert (none.result, none.reason) == ("permerror", "include:nospf.test has no SPF record")
    assert result("192.0.2.1", fresh("v=spf1 include:absent.lim.test -all")) == "permerror"
    bad = fresh("v=spf1 mx:")
    res = spf("192.0.2.1", fresh(f"v=spf1 include:{bad} +all"))
    assert res.result == "permerror" and bad in res.reason
    temp = spf("192.0.2.1", fresh("v=spf1 include:broken.test +all"))
    assert (temp.result, temp.reason) == ("temperror", "DNS lookup failed for broken.test TXT")


def test_redirect():
    target = fresh("v=spf1 ip4:192.0.2.1 -all")
    assert result("192.0.2.1", fresh(f"v=spf1 redirect={target}")) == "pass"
    assert result("192.0.2.2", fresh(f"v=spf1 redirect={target}")) == "fail"
    assert result("192.0.2.2", fresh(f"v=spf1 redirect={target} ?all")) == "neutral"  # all wins
    assert result("192.0.2.2", fresh(f"v=spf1 redirect={target} +ip4:192.0.2.2")) == "pass"
    none = spf("192.0.2.1", fresh("v=spf1 redirect=nospf.test"))
    assert (none.result, none.reason) == ("permerror", "redirect=nospf.test has no SPF record")
    assert result("192.0.2.1", fresh("v=spf1 redirect=absent.lim.test")) == "permerror"
    assert result("192.0.2.1", fresh("v=spf1 redirect=broken.test")) == "temperror"
    assert result("192.0.2.1", fresh("v=spf1 redirect=%{d1}.x")) == "permerror"  # test.x: no record


def test_dns_failures_are_temperror():
    servfail = spf("192.0.2.1", "broken.test")
    assert (servfail.result, servfail.reason) == ("temperror", "DNS lookup failed for broken.test TXT")
    timeout = spf("192.0.2.1", "slow.test")
    assert (timeout.result, timeout.reason) == ("temperror", "DNS lookup failed for slow.test TXT")
    for term in ("a:broken.test", "mx:broken.test", "exists:broken.test"):
        assert result("192.0.2.1", fresh(f"v=spf1 {term} -all")) == "temperror", term
    # a PTR lookup that fails makes ptr not match (section 5.5)
    SRV.behave("9.51.100.198.in-addr.arpa", "servfail")
    assert result("198.51.100.9", fresh("v=spf1 ptr ~all")) == "softfail"
    SRV.add("mxbad.lim.test", [("MX", "10 broken.test"), ("MX", "20 host.lim.test"),
                               ("TXT", "v=spf1 mx -all")])
    assert result("192.0.2.99", "mxbad.lim.test") == "pass"  # another MX host matched
    assert result("192.0.2.1", "mxbad.lim.test") == "temperror"


# --- exp= --------------------------------------------------------------------

def test_explanation_for_fail():
    name = fresh("v=spf1 ip4:192.0.2.1 -all exp=explain.test")
    res = spf("192.0.2.7", name, sender="Joe.Doe@example.com")
    assert res.result == "fail"
    assert res.explanation == (f"192.0.2.7 is not one of {name}'s designated mail servers "
                               f"(192.0.2.7 mx.receiver.test Joe.Doe).")
    assert spf("192.0.2.1", name).explanation is None  # pass
    soft = fresh("v=spf1 ~all exp=explain.test")
    assert spf("192.0.2.7", soft).explanation is None
    for exp in ("noexp.test", "absent.lim.test", "broken.test", "host.lim.test", "%{p}.x.test"):
        res = spf("192.0.2.7", fresh(f"v=spf1 -all exp={exp}"))
        assert (res.result, res.explanation) == ("fail", None), exp
    SRV.add("badmacro.lim.test", [("TXT", "bad %{z} macro")])
    assert spf("192.0.2.7", fresh("v=spf1 -all exp=badmacro.lim.test")).explanation is None
    SRV.add("t.lim.test", [("TXT", "at %{t}")])
    assert spf("192.0.2.7", fresh("v=spf1 -all exp=t.lim.test")).explanation.split()[1].isdigit()


def test_explanation_comes_from_the_deciding_record():
    child = fresh("v=spf1 -all exp=noexp.test")
    SRV.add("other.lim.test", [("TXT", "from %{d}")])
    # redirect: the target's exp=, never the original's
    res = spf("192.0.2.7", fresh(f"v=spf1 exp=explain.test redirect={child}"))
    assert (res.result, res.explanation) == ("fail", None)
    target = fresh("v=spf1 -all exp=other.lim.test")
    assert spf("192.0.2.7", fresh(f"v=spf1 exp=explain.test redirect={target}")).explanation == f"from {target}"
    # include: the including record's exp=, for its own fail
    incl = fresh("v=spf1 +all exp=explain.test")
    outer = fresh(f"v=spf1 -include:{incl} exp=other.lim.test")
    assert spf("192.0.2.7", outer).explanation == f"from {outer}"


# --- IPv6 --------------------------------------------------------------------

def test_ipv6_mechanisms():
    name = fresh("v=spf1 ip6:2001:db8::/32 -all")
    assert result("2001:db8::1", name) == "pass"
    assert result("2001:db9::1", name) == "fail"
    assert result("192.0.2.1", name) == "fail"
    assert result("2001:db8:1::1", fresh("v=spf1 a:v6.test -all")) == "pass"
    assert result("2001:db8:1::2", fresh("v=spf1 a:v6.test -all")) == "fail"
    assert result("2001:db8:1::2", fresh("v=spf1 a:v6.test//64 -all")) == "pass"
    assert result("192.0.2.51", fresh("v=spf1 a:v6.test//64 -all")) == "fail"
    assert result("192.0.2.51", fresh("v=spf1 a:v6.test/24//64 -all")) == "pass"
    assert result("2001:db8:2::25", fresh("v=spf1 mx:v6.test -all")) == "pass"
    assert result("2001:db8:2::26", fresh("v=spf1 mx:v6.test//120 -all")) == "pass"
    assert result("2001:DB8:0000::1", fresh("v=spf1 ip6:2001:db8::1 -all")) == "pass"
    SRV.add(ipaddress.IPv6Address("2001:db8:1::1").reverse_pointer, [("PTR", "v6.test.")])
    assert result("2001:db8:1::1", fresh("v=spf1 ptr:v6.test -all")) == "pass"


def test_ipv4_mapped_addresses_are_ipv4():
    publish("example.com", "v=spf1 a ip4:198.51.100.0/24 -all")
    assert result("::ffff:192.0.2.10") == "pass"
    assert result("::ffff:198.51.100.3") == "pass"
    assert result("::ffff:192.0.2.12") == "fail"
    res = spf("::ffff:192.0.2.12")
    assert res.reason == "192.0.2.12 is not permitted by example.com"
    assert result("::ffff:192.0.2.1", fresh("v=spf1 ip6:::ffff:0:0/96 -all")) == "fail"


# --- check(): the identities --------------------------------------------------

def run_check(ip: str, sender: str, helo: str, **kw) -> SpfResult:
    kw.setdefault("hostname", "mx.receiver.test")
    return asyncio.run(check(resolver(), ip, sender, helo, **kw))


def test_check_identities():
    publish("helo.lim.test", "v=spf1 ip4:192.0.2.33 -all")
    publish("mail.lim.test", "v=spf1 ip4:192.0.2.44 -all")
    assert run_check("192.0.2.44", "user@mail.lim.test", "helo.lim.test") == SpfResult(
        "pass", "mailfrom", "mail.lim.test", "192.0.2.44 is permitted by mail.lim.test")
    assert run_check("192.0.2.33", "", "helo.lim.test") == SpfResult(
        "pass", "helo", "helo.lim.test", "192.0.2.33 is permitted by helo.lim.test")
    assert run_check("192.0.2.44", "", "helo.lim.test").result == "fail"
    assert run_check("192.0.2.33", "<>", "helo.lim.test").identity == "helo"
    nohost = run_check("192.0.2.33", "postmaster", "helo.lim.test")
    assert (nohost.result, nohost.identity, nohost.domain) == ("pass", "mailfrom", "helo.lim.test")
    assert run_check("192.0.2.44", "<User@MAIL.lim.test.>", "x").domain == "mail.lim.test"
    assert run_check("192.0.2.44", "@a.example,@b.example:user@mail.lim.test", "x").result == "pass"
    # postmaster for an empty local part, seen by %{l}
    SRV.add("postmaster.pm.lim.test", [("A", "127.0.0.2")])
    publish("pm.lim.test", "v=spf1 exists:%{l}.%{d} -all")
    assert run_check("192.0.2.1", "@pm.lim.test", "x").result == "pass"
    assert run_check("192.0.2.1", "", "pm.lim.test").result == "pass"


@pytest.mark.parametrize("sender,helo,domain", [
    ("user@localhost", "helo.lim.test", "localhost"), ("", "[192.0.2.1]", "[192.0.2.1]"),
    ("", "", ""), ("", "192.0.2.1", "192.0.2.1"), ("user@[192.0.2.1]", "x", "[192.0.2.1]"),
    ("user@-", "x", "-"), ("user@a" + ".b" * 200, "x", "a" + ".b" * 200)])
def test_check_invalid_domains_are_none(sender, helo, domain):
    assert run_check("192.0.2.1", sender, helo) == SpfResult("none", "helo" if not sender else "mailfrom",
                                                             domain, "not a valid domain name")


def test_check_idn_domain():
    publish("xn--bcher-kva.lim.test", "v=spf1 +all")
    assert run_check("192.0.2.1", "user@b\u00fccher.lim.test", "x").domain == "xn--bcher-kva.lim.test"
    assert run_check("192.0.2.1", "user@b\u00fccher.lim.test", "x").result == "pass"


def test_check_timeout_is_temperror():
    res = run_check("192.0.2.1", "user@slow.test", "x", timeout=0.2)
    assert (res.result, res.domain, res.reason) == ("temperror", "slow.test", "SPF check timed out after 0.2s")


@pytest.mark.parametrize("ip,sender,helo", [
    ("", "", ""), ("garbage", "a@b.test", "c"), ("192.0.2.1", "\x00@\x00", "\x00"),
    ("192.0.2.1", "a@" + "x" * 300, "y"), ("::1", "user@b\udcff.test", "z"), (None, None, None)])
def test_check_never_raises(ip, sender, helo):
    assert run_check(ip, sender, helo).result in RESULTS


# --- property: any record, any client ------------------------------------------

GOOD_TERMS = st.sampled_from([
    "all", "-all", "~all", "?all", "+all", "a", "mx", "ptr", "a/24", "mx//64", "a:example.com",
    "mx:example.org/30", "ptr:example.com", "include:example.com", "include:loop.lim.test",
    "include:nospf.test", "redirect=la.example.org", "redirect=nowhere.lim.test", "exp=explain.test",
    "exists:%{i}.x.lim.test", "exists:%{l1r+}.mobile-users._spf.example.com", "a:%{p}.example.com",
    "ip4:192.0.2.0/24", "ip6:2001:db8::/32", "ip4:10.0.0.4", "include:%{d2}", "foo=%{s}",
    "-include:ip4._spf.example.com", "mx:%{o}", "exists:%{H}.lim.test", "a:broken.test",
    "-ip4:0.0.0.0/1", "~ip6:::/1", "include:mobile-users._spf.example.com", "?a:host.lim.test/8",
])
BAD_TERMS = st.one_of(st.sampled_from(["%{", "a:", "ip4:300.1.1.1", "mx/33", "include:%{c}.x"]),
                      st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12))
RECORDS = st.one_of(
    st.lists(GOOD_TERMS, max_size=6).map(lambda terms: "v=spf1 " + " ".join(terms)),
    st.lists(st.one_of(GOOD_TERMS, BAD_TERMS), max_size=6).map(lambda terms: "v=spf1 " + " ".join(terms)),
    st.text(max_size=80).map(lambda t: "v=spf1 " + t),
    st.text(max_size=80).filter(lambda t: not t.startswith('"')),
)
ADDRESSES = st.one_of(st.ip_addresses().map(str), st.sampled_from(ALL_IPS + ["::ffff:192.0.2.10"]))


@settings(max_examples=200, deadline=None)
@given(RECORDS, ADDRESSES, st.text(max_size=20))
def test_property_any_record_gives_one_of_seven_results(record, ip, local):
    publish("example.com", "v=spf1 mx -all")
    name = fresh(record)
    res = spf(ip, name, sender=f"{local}@{name}")
    assert res.result in RESULTS and isinstance(res.reason, str) and res.domain == name
    assert res.explanation is None or res.result == "fail"
