"""Routing: transport lookup order, alias/virtual expansion, unknown local users."""

from __future__ import annotations

import asyncio

import pytest

from mta.config import schema as config
from mta.config.routes import TransportSpec, parse_transport
from mta.delivery.router import Router
from mta.policy.chain import Chain, Entry, RouteError


def router(tmp_path, text: str, hook=None) -> Router:
    """A router; `hook`: a route function, as a one-hook plugin."""
    p = tmp_path / "c.toml"
    p.write_text(text)
    return Router(config.load(str(p)), Chain([Entry("test", {"route": hook})] if hook else []))


BASE = """
local_domains = ["example.com"]
local_recipients = ["alice", "bob@example.com"]
[aliases]
root = "alice@example.com"
team = ["alice@example.com", "bob@example.com", "carol@example.net"]
loop1 = "loop2@example.com"
loop2 = "loop1@example.com"
self = ["self@example.com", "alice@example.com"]
[virtual]
"sales@example.org" = ["team@example.com"]
[transport]
"example.net" = "smarthost [192.0.2.1]:2525"
"sub.example.org" = "discard"
"*" = "mx"
"""


def test_lookup_order(tmp_path):
    r = router(tmp_path, BASE)
    assert r.lookup("example.net").text() == "smarthost 192.0.2.1:2525"
    assert r.lookup("deep.sub.example.org").kind == "discard"  # parent domain
    assert r.lookup("example.com").kind == "maildir"  # local domain → local_transport
    assert r.lookup("elsewhere.test").kind == "mx"


def test_relay_to_is_the_default_for_other_domains(tmp_path):
    r = router(tmp_path, '[delivery]\nrelay_to = "127.0.0.1:2526"\n')
    spec = r.lookup("anywhere.test")
    assert (spec.kind, spec.host, spec.port) == ("smarthost", "127.0.0.1", 2526)


def test_expansion(tmp_path):
    r = router(tmp_path, BASE)
    assert r.expand("alice@example.com") == (None, ["alice@example.com"])
    assert r.expand("root@example.com") == (None, ["alice@example.com"])
    refusal, final = r.expand("team@example.com")
    assert refusal is None and final == ["alice@example.com", "bob@example.com", "carol@example.net"]
    # virtual → alias → addresses
    assert r.expand("sales@example.org")[1] == ["alice@example.com", "bob@example.com", "carol@example.net"]
    # an alias that includes itself keeps a copy
    assert r.expand("self@example.com")[1] == ["self@example.com", "alice@example.com"]
    # non-local addresses pass through untouched
    assert r.expand("x@remote.test") == (None, ["x@remote.test"])


def test_unknown_local_user_refused_with_550_511(tmp_path):
    r = router(tmp_path, BASE)
    refusal, final = r.expand("mallory@example.com")
    assert (refusal.code, refusal.enhanced) == (550, "5.1.1") and final == []
    # postmaster always exists
    assert r.expand("postmaster@example.com")[0] is None
    assert r.expand("Postmaster") == (None, ["postmaster@example.com"])


def test_alias_loop_terminates(tmp_path):
    r = router(tmp_path, BASE)
    refusal, final = r.expand("loop1@example.com")
    assert refusal is None or refusal.code == 550
    assert len(final) <= 2


def test_empty_local_recipients_accepts_every_local_part(tmp_path):
    r = router(tmp_path, 'local_domains = ["example.com"]\n')
    assert r.expand("anyone@example.com") == (None, ["anyone@example.com"])


def test_route_hook_first_non_none_wins(tmp_path):
    calls = []

    async def hook(address, ctx):
        calls.append(address)
        return "discard" if address.startswith("drop") else None

    r = router(tmp_path, BASE, hook)
    assert asyncio.run(r.route("drop@elsewhere.test")).kind == "discard"
    assert asyncio.run(r.route("keep@example.net")).kind == "smarthost"
    assert calls == ["drop@elsewhere.test", "keep@example.net"]


def test_route_hook_bad_return_is_an_error(tmp_path):
    r = router(tmp_path, BASE, lambda a, c: 42)
    with pytest.raises(RouteError, match="returned 42"):
        asyncio.run(r.route("x@y.test"))


@pytest.mark.parametrize("text", ["mx", "discard", "smarthost h.example:25", "lmtp unix:/run/x", "maildir /m/{user}"])
def test_transport_text_round_trips(text):
    assert parse_transport(text).text() == text


def test_fixed_route_is_routes_answer_without_a_hook(tmp_path):
    r = router(tmp_path, BASE)
    for addr in ("x@example.net", "x@deep.sub.example.org", "alice@example.com", "x@elsewhere.test"):
        assert r.fixed(addr) == asyncio.run(r.route(addr))
    hooked = router(tmp_path, BASE, lambda address, ctx: None)
    assert hooked.fixed("x@example.net") is None  # a hook may change it: ask route()


def test_fixed_is_lookup_of_the_domain_for_every_spelling_and_stays_bounded(tmp_path):
    """fixed() keeps its answer per domain as written: every spelling (case, a trailing
    dot, several "@", none) gets what lookup() gives for its domain, the second time from
    the cache, and many domains do not grow the cache without end."""
    r = router(tmp_path, BASE)
    addresses = ["a@example.net", "b@EXAMPLE.NET", "c@example.net.", "d@x.sub.example.org", "e@example.com",
                 '"odd@local"@example.net', "postmaster", "f@elsewhere.test", "g@Sub.Example.Org"]
    for _ in range(2):
        for a in addresses:
            assert r.fixed(a) == r.lookup(a.rpartition("@")[2]), a
    assert r.fixed("b@EXAMPLE.NET") is r.fixed("b@EXAMPLE.NET")
    for i in range(10050):
        r.fixed(f"u@d{i}.test")
    assert len(r._routes) <= 10001
    assert r.fixed("a@example.net").text() == "smarthost 192.0.2.1:2525"
    assert router(tmp_path, BASE, hook=lambda a, c: None).fixed("a@example.net") is None


def test_route_now_decides_without_a_coroutine_when_it_can(tmp_path):
    """Per message: no hook, or a hook that answers at once (None included: the tables
    decide), gives the spec itself; a hook that is a coroutine gives an awaitable; what a
    hook raises is raised to the caller (the queue defers that recipient)."""
    plain = router(tmp_path, BASE)
    assert plain.route_now("x@example.net") is plain.fixed("x@example.net")
    none = router(tmp_path, BASE, lambda a, c: None)
    assert none.route_now("x@example.net") == plain.fixed("x@example.net")
    assert none.route_now("x@elsewhere.test") == plain.lookup("elsewhere.test")
    seen = []
    at_once = router(tmp_path, BASE, lambda a, c: seen.append((a, c)) or "discard")
    assert at_once.route_now("x@example.net", "ctx").kind == "discard" and seen == [("x@example.net", "ctx")]
    spec = parse_transport("lmtp unix:/run/lmtp")
    assert router(tmp_path, BASE, lambda a, c: spec).route_now("x@y.test") is spec

    async def at_once_async(a, c):  # an async hook that never waits answers at once too
        return "discard"
    assert router(tmp_path, BASE, at_once_async).route_now("x@y.test").kind == "discard"

    async def later(a, c):
        await asyncio.sleep(0)
        return None if a.startswith("keep") else "smarthost 192.0.2.9:25"
    hooked = router(tmp_path, BASE, later)
    keep, other = hooked.route_now("keep@example.net"), hooked.route_now("o@example.net")
    assert not isinstance(keep, TransportSpec) and not isinstance(other, TransportSpec)

    async def both():
        return await keep, await other
    got = asyncio.run(both())
    assert got == (plain.fixed("keep@example.net"), parse_transport("smarthost 192.0.2.9:25"))

    def broken(a, c):
        raise RuntimeError("hook bug")
    with pytest.raises(RouteError, match="RuntimeError: hook bug"):
        router(tmp_path, BASE, broken).route_now("x@y.test")
    with pytest.raises(RouteError):
        router(tmp_path, BASE, lambda a, c: 42).route_now("x@y.test")
