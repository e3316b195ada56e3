"""MX resolution against a real authoritative DNS server on loopback
(tests/dnsserver.py): order, implicit and null MX, failures, literals, the
TTL cache and shared in-flight queries."""

from __future__ import annotations

import asyncio
import time

import pytest
from dnsserver import DNSServer

from mta.delivery import Target
from mta.delivery.mx import MxResolver, Resolution


@pytest.fixture
def dns_server():
    with DNSServer() as srv:
        yield srv


def resolver(srv: DNSServer, **kw) -> MxResolver:
    kw.setdefault("timeout", 2.0)
    return MxResolver(nameservers=srv.nameservers, port=srv.port, **kw)


def run(coro):
    return asyncio.run(coro)


def test_preference_order_and_addresses(dns_server):
    dns_server.add("example.com", [("MX", "20 mx2.example.com"), ("MX", "10 mx1.example.com"),
                                   ("MX", "30 mx3.example.com")])
    dns_server.add("mx1.example.com", [("A", "192.0.2.1"), ("AAAA", "2001:db8::1")])
    dns_server.add("mx2.example.com", [("A", "192.0.2.2"), ("A", "192.0.2.3")])
    dns_server.add("mx3.example.com", [("AAAA", "2001:db8::3")])
    res = run(resolver(dns_server).resolve("Example.COM.", 2525))
    assert res.kind == "ok" and res.ok and res.code is None
    assert res.targets[0] == Target("mx1.example.com", "192.0.2.1", 2525)
    assert res.targets[1] == Target("mx1.example.com", "2001:db8::1", 2525)
    assert {t.ip for t in res.targets[2:4]} == {"192.0.2.2", "192.0.2.3"}
    assert all(t.host == "mx2.example.com" for t in res.targets[2:4])
    assert res.targets[4] == Target("mx3.example.com", "2001:db8::3", 2525)
    assert len(res.targets) == 5


def test_prefer_ipv6(dns_server):
    dns_server.add("six.example", [("MX", "10 mx.six.example")])
    dns_server.add("mx.six.example", [("A", "192.0.2.9"), ("AAAA", "2001:db8::9")])
    res = run(resolver(dns_server, prefer_ipv6=True).resolve("six.example"))
    assert [t.ip for t in res.targets] == ["2001:db8::9", "192.0.2.9"]


def test_random_order_among_equal_preferences(dns_server):
    dns_server.add("eq.example", [("MX", "10 a.eq.example"), ("MX", "10 b.eq.example"),
                                  ("MX", "5 first.eq.example")])
    for h, ip in (("a", "192.0.2.10"), ("b", "192.0.2.11"), ("first", "192.0.2.5")):
        dns_server.add(f"{h}.eq.example", [("A", ip)])

    async def main():
        r = resolver(dns_server)
        seen = set()
        for _ in range(200):  # P(one order 200 times) = 2**-199
            res = await r.resolve("eq.example")
            assert res.targets[0].host == "first.eq.example"
            seen.add(tuple(t.host for t in res.targets[1:]))
            if len(seen) == 2:
                break
        return seen

    assert run(main()) == {("a.eq.example", "b.eq.example"), ("b.eq.example", "a.eq.example")}
    assert dns_server.count("eq.example", "MX") == 1  # the rest came from the cache


def test_implicit_mx(dns_server):
    dns_server.add("nomx.example", [("A", "192.0.2.20"), ("AAAA", "2001:db8::20")])
    res = run(resolver(dns_server).resolve("nomx.example"))
    assert res.kind == "ok"
    assert res.targets == (Target("nomx.example", "192.0.2.20", 25),
                           Target("nomx.example", "2001:db8::20", 25))


def test_no_mx_and_no_address(dns_server):
    dns_server.add("bare.example", [("TXT", '"v=spf1 -all"')])
    res = run(resolver(dns_server).resolve("bare.example"))
    assert (res.kind, res.code, res.enhanced, res.targets) == ("no_hosts", 550, "5.4.4", ())


def test_null_mx(dns_server):
    dns_server.add("null.example", [("MX", "0 ."), ("A", "192.0.2.30")])
    res = run(resolver(dns_server).resolve("null.example"))
    assert (res.kind, res.code, res.enhanced) == ("null_mx", 556, "5.1.10")
    assert res.text == "Recipient address has null MX" and res.targets == ()


def test_nxdomain(dns_server):
    res = run(resolver(dns_server).resolve("nowhere.example"))
    assert (res.kind, res.code, res.enhanced, res.text) == ("nxdomain", 550, "5.1.2", "domain not found")


@pytest.mark.parametrize("behaviour", ["servfail", "refused"])
def test_servfail_and_refused_are_tempfail(dns_server, behaviour):
    dns_server.add("broken.example", behaviour)
    res = run(resolver(dns_server).resolve("broken.example"))
    assert (res.kind, res.code, res.enhanced) == ("tempfail", 451, "4.4.3")
    assert behaviour.upper() in res.text
    assert Resolution("tempfail", (), 451, "4.4.3", res.text) == res


def test_timeout_is_tempfail_within_the_timeout(dns_server):
    dns_server.add("slow.example", "timeout")
    t0 = time.monotonic()
    res = run(resolver(dns_server, timeout=0.8).resolve("slow.example"))
    elapsed = time.monotonic() - t0
    assert (res.kind, res.code, res.enhanced) == ("tempfail", 451, "4.4.3")
    assert "timed out" in res.text
    assert 0.7 < elapsed < 2.0  # 0.8 s and some slack for a busy machine


def test_tempfail_is_not_cached(dns_server):
    dns_server.add("flaky.example", "servfail")

    async def main():
        r = resolver(dns_server)
        first = await r.resolve("flaky.example")
        dns_server.behave("flaky.example", None)
        dns_server.add("flaky.example", [("MX", "10 mx.flaky.example")])
        dns_server.add("mx.flaky.example", [("A", "192.0.2.40")])
        return first, await r.resolve("flaky.example")

    first, second = run(main())
    assert first.kind == "tempfail" and second.kind == "ok"


def test_mx_hosts_without_addresses(dns_server):
    # every MX host answers authoritatively "no address" (NXDOMAIN or NODATA): permanent
    dns_server.add("dead.example", [("MX", "10 gone.dead.example"), ("MX", "20 empty.dead.example")])
    dns_server.add("empty.dead.example", [("TXT", '"nothing"')])
    res = run(resolver(dns_server).resolve("dead.example"))
    assert (res.kind, res.code, res.enhanced, res.targets) == ("no_hosts", 550, "5.4.4", ())


def test_mx_host_lookup_failing_is_tempfail(dns_server):
    dns_server.add("half.example", [("MX", "10 gone.half.example"), ("MX", "20 sick.half.example")])
    dns_server.add("sick.half.example", "servfail")
    res = run(resolver(dns_server).resolve("half.example"))
    assert (res.kind, res.code, res.enhanced) == ("tempfail", 451, "4.4.3")
    assert "sick.half.example" in res.text


def test_mx_host_without_address_is_skipped(dns_server):
    dns_server.add("skip.example", [("MX", "10 gone.skip.example"), ("MX", "20 ok.skip.example")])
    dns_server.add("ok.skip.example", [("A", "192.0.2.50")])
    res = run(resolver(dns_server).resolve("skip.example"))
    assert res.targets == (Target("ok.skip.example", "192.0.2.50", 25),)


def test_ipv6_only_mx(dns_server):
    dns_server.add("v6.example", [("MX", "10 mx.v6.example")])
    dns_server.add("mx.v6.example", [("AAAA", "2001:db8::60"), ("AAAA", "::1")])
    res = run(resolver(dns_server).resolve("v6.example"))
    assert sorted(t.ip for t in res.targets) == ["2001:db8::60", "::1"]  # servers shuffle RRsets
    assert {t.host for t in res.targets} == {"mx.v6.example"}


def test_cname_mx_host(dns_server):
    dns_server.add("cn.example", [("MX", "10 mail.cn.example")])
    dns_server.add("mail.cn.example", [("CNAME", "real.cn.example")])
    dns_server.add("real.cn.example", [("A", "192.0.2.70")])
    res = run(resolver(dns_server).resolve("cn.example"))
    assert res.targets == (Target("mail.cn.example", "192.0.2.70", 25),)


def test_address_literals_skip_dns(dns_server):
    r = resolver(dns_server)
    assert run(r.resolve("[192.0.2.80]", 587)).targets == (Target("192.0.2.80", "192.0.2.80", 587),)
    assert run(r.resolve("[IPv6:2001:db8::80]")).targets == (Target("2001:db8::80", "2001:db8::80", 25),)
    assert run(r.resolve("[ipv6:::1]")).targets == (Target("::1", "::1", 25),)
    for bad in ("[999.1.1.1]", "[IPv6:zz::1]", "[192.0.2.1", "[2001:db8::1]"):
        res = run(r.resolve(bad))
        assert (res.kind, res.code, res.enhanced) == ("nxdomain", 550, "5.1.2"), bad
    res = run(r.resolve("192.0.2.80"))  # an IP without brackets is not a domain
    assert (res.kind, res.enhanced) == ("nxdomain", "5.1.2")
    assert dns_server.queries == []


def test_addresses_for_smarthosts(dns_server):
    dns_server.add("relay.example", [("A", "192.0.2.90"), ("AAAA", "2001:db8::90"),
                                     ("MX", "10 elsewhere.example")])
    r = resolver(dns_server)
    assert run(r.addresses("relay.example", 587)) == [Target("relay.example", "192.0.2.90", 587),
                                                       Target("relay.example", "2001:db8::90", 587)]
    assert run(r.addresses("[relay.example]", 25))[0].ip == "192.0.2.90"
    assert run(r.addresses("192.0.2.91", 25)) == [Target("192.0.2.91", "192.0.2.91", 25)]
    # literals are answered from a cache the second time (the same, port kept apart)
    assert run(r.addresses("192.0.2.91", 25)) == [Target("192.0.2.91", "192.0.2.91", 25)]
    assert run(r.addresses("192.0.2.91", 2525)) == [Target("192.0.2.91", "192.0.2.91", 2525)]
    assert run(r.addresses("[192.0.2.92]", 25)) == run(r.addresses("[192.0.2.92]", 25)) == [
        Target("192.0.2.92", "192.0.2.92", 25)]
    assert run(r.addresses("[IPv6:::1]", 25)) == [Target("::1", "::1", 25)]
    assert run(r.addresses("missing.example", 25)) == []
    assert dns_server.count("relay.example", "MX") == 0
    res = run(r.resolve_host("missing.example", 25))
    assert (res.kind, res.code) == ("nxdomain", 550)


def test_cached_host_answers_without_a_coroutine_only_what_resolve_host_would(dns_server):
    """The queue's callback lane asks cached_host: an address or [address] at once, a
    name only while its A and AAAA answers are cached and fresh, as resolve_host gives."""
    dns_server.add("relay.example", [("A", "192.0.2.90", 1), ("AAAA", "2001:db8::90", 300)])
    dns_server.add("v6.example", [("AAAA", "2001:db8::91")])
    dns_server.add("none.example", [("MX", "10 x.example")])
    r = resolver(dns_server)
    assert r.cached_host("192.0.2.91", 25).targets == (Target("192.0.2.91", "192.0.2.91", 25),)
    assert r.cached_host("[IPv6:::1]", 25).targets == (Target("::1", "::1", 25),)
    assert r.cached_host("relay.example", 587) is None  # not looked up yet
    looked_up = run(r.resolve_host("relay.example", 587))
    for spelling in ("relay.example", "Relay.Example.", "[relay.example]"):
        assert r.cached_host(spelling, 587) == looked_up, spelling
    queries = dns_server.count("relay.example")
    time.sleep(1.1)  # the A answer expires, the AAAA one does not
    assert r.cached_host("relay.example", 587) is None
    assert dns_server.count("relay.example") == queries  # cached_host never asks
    run(r.resolve_host("v6.example", 25))
    assert r.cached_host("v6.example", 25).targets == (Target("v6.example", "2001:db8::91", 25),)
    run(r.resolve_host("none.example", 25))  # NODATA for both: no address to give
    assert r.cached_host("none.example", 25) is None


def test_cache_hit_and_ttl_expiry(dns_server):
    dns_server.add("ttl.example", [("MX", "10 mx.ttl.example", 1)])
    dns_server.add("mx.ttl.example", [("A", "192.0.2.100", 1), ("AAAA", "2001:db8::100", 300)])

    async def main():
        r = resolver(dns_server)
        first = await r.resolve("ttl.example")
        second = await r.resolve("ttl.example")
        assert first == second
        assert dns_server.count("ttl.example", "MX") == 1
        assert dns_server.count("mx.ttl.example") == 2  # A + AAAA, once each
        await asyncio.sleep(1.1)
        await r.resolve("ttl.example")
        assert dns_server.count("ttl.example", "MX") == 2
        assert dns_server.count("mx.ttl.example", "A") == 2
        assert dns_server.count("mx.ttl.example", "AAAA") == 1  # still fresh

    run(main())


def test_negative_answers_are_cached(dns_server):
    dns_server.negative_ttl = 1
    dns_server.add("nomx2.example", [("A", "192.0.2.110")])

    async def main():
        r = resolver(dns_server)
        for _ in range(3):
            assert (await r.resolve("gone.example")).kind == "nxdomain"
            assert (await r.resolve("nomx2.example")).kind == "ok"
        assert dns_server.count("gone.example", "MX") == 1
        assert dns_server.count("nomx2.example", "MX") == 1
        assert dns_server.count("nomx2.example", "AAAA") == 1  # NODATA, cached too
        await asyncio.sleep(1.1)
        await r.resolve("gone.example")
        assert dns_server.count("gone.example", "MX") == 2

    run(main())


def test_concurrent_resolves_share_one_query(dns_server):
    # TTL 0: nothing is cached, so only in-flight sharing can explain one query
    dns_server.add("busy.example", [("MX", "10 mx.busy.example", 0)])
    dns_server.add("mx.busy.example", [("A", "192.0.2.120", 0)])
    dns_server.delay("busy.example", 0.2)

    async def main():
        r = resolver(dns_server)
        results = await asyncio.gather(*(r.resolve("busy.example") for _ in range(50)))
        assert len(set(results)) == 1 and results[0].kind == "ok"
        assert dns_server.count("busy.example", "MX") == 1
        assert dns_server.count("mx.busy.example", "A") == 1
        await r.resolve("busy.example")
        assert dns_server.count("busy.example", "MX") == 2  # TTL 0: asked again

    run(main())


def test_cancelled_caller_does_not_cancel_shared_query(dns_server):
    dns_server.add("shared.example", [("A", "192.0.2.130")])
    dns_server.delay("shared.example", 0.2)

    async def main():
        r = resolver(dns_server)
        a = asyncio.ensure_future(r.resolve("shared.example"))
        b = asyncio.ensure_future(r.resolve("shared.example"))
        await asyncio.sleep(0.05)
        a.cancel()
        return await b

    assert run(main()).targets == (Target("shared.example", "192.0.2.130", 25),)


def test_large_answer_falls_back_to_tcp(dns_server):
    dns_server.add("big.example", [("MX", f"10 mx{i:02d}.a-rather-long-mail-host-name.big.example")
                                   for i in range(40)])
    dns_server.add("mx07.a-rather-long-mail-host-name.big.example", [("A", "192.0.2.140")])
    res = run(resolver(dns_server).resolve("big.example"))
    assert res.targets == (Target("mx07.a-rather-long-mail-host-name.big.example", "192.0.2.140", 25),)


def test_no_nameserver_reachable_is_tempfail():
    with DNSServer() as srv:
        port = srv.port
    res = run(MxResolver(nameservers=["127.0.0.1"], port=port, timeout=0.5).resolve("example.com"))
    assert (res.kind, res.code, res.enhanced) == ("tempfail", 451, "4.4.3")


def test_works_under_uvloop(dns_server):
    uvloop = pytest.importorskip("uvloop")
    dns_server.add("uv.example", [("MX", "10 mx.uv.example")])
    dns_server.add("mx.uv.example", [("A", "192.0.2.150")])
    res = uvloop.run(resolver(dns_server).resolve("uv.example"))
    assert res.targets == (Target("mx.uv.example", "192.0.2.150", 25),)


def test_query_gives_each_record_type_through_the_cache(dns_server):
    """MxResolver.query: the lookups the message-authentication checks make (SPF, DKIM keys,
    DMARC), through the same servers and cache as MX resolution."""
    import asyncio

    from mta.delivery.mx import MxResolver

    dns_server.add("q.example", [("TXT", "v=spf1 -all"), ("MX", "10 mx.q.example"), ("A", "127.0.0.9")])
    dns_server.add("9.0.0.127.in-addr.arpa", [("PTR", "mx.q.example")])
    r = MxResolver(dns_server.nameservers, port=dns_server.port, timeout=2)

    async def run():
        return [await r.query(n, t) for n, t in (
            ("q.example", "TXT"), ("Q.example.", "MX"), ("q.example", "A"), ("q.example", "AAAA"),
            ("missing.q.example", "TXT"), ("9.0.0.127.in-addr.arpa", "PTR"), ("q.example", "txt"))]

    got = asyncio.run(run())
    assert got == [("ok", ["v=spf1 -all"]), ("ok", [(10, "mx.q.example")]), ("ok", ["127.0.0.9"]),
                   ("nodata", []), ("nxdomain", []), ("ok", ["mx.q.example"]), ("ok", ["v=spf1 -all"])]
    assert dns_server.count("q.example", "TXT") == 1  # the last one came from the cache


def test_lookups_and_cache_hits_are_counted(dns_server):
    dns_server.add("counted.example", [("MX", "10 mx.counted.example")])
    dns_server.add("mx.counted.example", [("A", "192.0.2.7")])
    r = resolver(dns_server)

    async def twice():
        await r.resolve("counted.example")
        await r.resolve("counted.example")  # every answer from the cache now
        await r.query("nothing.counted.example", "TXT")

    run(twice())
    assert r.lookups == {("MX", "ok"): 1, ("A", "ok"): 1, ("AAAA", "nodata"): 1, ("TXT", "nxdomain"): 1}
    assert r.cache_hits == 3  # MX, A and AAAA the second time
