"""The [egress], [shaping] and [throttle] keys: every limit at its bound and one past it,
every error message, the alias precedence, rate parsing, and the pools' smooth weighted
round robin (any window of sum(weights) picks holds each source exactly weight times)."""

from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mta.config import load
from mta.config.shaping import (
    DEFAULT_SOURCE, REPLY_CLASSES, Pool, Rate, Shape, Source, egress_of, parse_rate, shaping_of,
)
from mta.errors import ConfigError


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    return str(path)


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    return info.value.errors


def one_error(tmp_path: Path, text: str) -> str:
    errs = errors_of(tmp_path, text)
    assert len(errs) == 1, errs
    return errs[0]


SOURCES = """
[[egress.source]]
name = "ip2"
address = "127.0.0.2"
ehlo = "out2.example.com"

[[egress.source]]
name = "ip3"
address = "127.0.0.3"
"""


# --- defaults -----------------------------------------------------------------

def test_defaults():
    cfg = load(None)
    s = shaping_of(cfg)
    assert s.default == Shape(20, None, None, 100)
    assert s.binding is False
    assert s.shape("example.com", "mx.example.com") == s.default
    assert s.reply_rule("mx.example.com", "421 try later", "transient") is None
    e = egress_of(cfg)
    assert e.sources == {} and e.pools == {} and e.pool_header == ""
    assert e.pool_for("a@example.com", None) is None
    t = cfg.throttle
    assert (t.backend, t.redis_url, t.expected_nodes, t.lease_ttl) == ("local", "redis://127.0.0.1:6379/0", 1, 30.0)
    assert DEFAULT_SOURCE == Source("default", None, None)


# --- rates --------------------------------------------------------------------

@pytest.mark.parametrize("text,count,per", [
    ("100/s", 100, 1.0), ("60/min", 60, 60.0), ("3600/h", 3600, 3600.0), ("0.5/s", 0.5, 1.0),
    ("1.25/min", 1.25, 60.0), (" 10 / s ", 10, 1.0), ("1/h", 1, 3600.0),
])
def test_rates(text, count, per):
    assert parse_rate(text) == Rate(count, per)


@pytest.mark.parametrize("text", ["10/fortnight", "0/s", "0.0/min", "-1/s", "10", "/s", "10/m", "10/sec",
                                  "1e3/s", "ten/s", "10/s/s", ".5/s", "１０/s"])
def test_rates_refused(text, tmp_path):
    with pytest.raises(ValueError):
        parse_rate(text)
    err = one_error(tmp_path, f'[shaping.default]\nmax_message_rate = "{text}"\n')
    assert err == (f"shaping.default.max_message_rate: expected a rate \"N/s\", \"N/min\" or \"N/h\" (N a positive "
                   f"number, decimals allowed), or \"\" for unlimited, got {text!r}")


def test_rate_of_the_wrong_type(tmp_path):
    err = one_error(tmp_path, "[shaping.default]\nmax_connection_rate = 10\n")
    assert err.startswith("shaping.default.max_connection_rate: expected a rate") and err.endswith("got 10")


def test_empty_rate_is_unlimited():
    assert parse_rate("") is None


@given(st.text(max_size=20))
def test_rate_parser_never_crashes(text):
    try:
        rate = parse_rate(text)
    except ValueError:
        return
    assert rate is None or (rate.count > 0 and rate.per in (1.0, 60.0, 3600.0))


@pytest.mark.parametrize("rate,interval,burst", [
    (Rate(100, 1.0), 0.01, 50), (Rate(60, 60.0), 1.0, 1), (Rate(3, 1.0), 1 / 3, 1), (Rate(4, 1.0), 0.25, 2),
    (Rate(0.5, 1.0), 2.0, 1), (Rate(7200, 3600.0), 0.5, 1), (Rate(1000, 1.0), 0.001, 500),
])
def test_rate_interval_and_burst(rate, interval, burst):
    assert rate.interval == pytest.approx(interval)
    assert rate.burst == burst


@given(st.decimals(min_value="0.01", max_value="100000", places=2), st.sampled_from(["s", "min", "h"]))
def test_rate_round_trip(count, unit):
    rate = parse_rate(f"{count}/{unit}")
    assert rate.count == pytest.approx(float(count))
    assert rate.per == {"s": 1.0, "min": 60.0, "h": 3600.0}[unit]
    # A burst is at most half a second's worth, unless that is less than one token.
    assert rate.burst == 1 or rate.burst * rate.interval <= 0.5 + 1e-9
    assert parse_rate(str(rate)) == rate


# --- bounds -------------------------------------------------------------------

@pytest.mark.parametrize("key", ["connection_limit", "max_deliveries_per_connection"])
def test_shape_counts_bound(tmp_path, key):
    cfg = load(write(tmp_path, f"[shaping.default]\n{key} = 1\n"))
    assert getattr(shaping_of(cfg).default, key) == 1
    assert one_error(tmp_path, f"[shaping.default]\n{key} = 0\n") == \
        f"shaping.default.{key}: expected a positive integer, got 0"
    rule = f'[[shaping.rule]]\ndomain = "a.test"\n{key} = 0\n'
    assert one_error(tmp_path, rule) == f"shaping.rule[0].{key}: expected a positive integer, got 0"
    assert getattr(shaping_of(load(write(tmp_path, rule.replace("= 0", "= 1")))).shape("a.test", ""), key) == 1


def test_throttle_bounds(tmp_path):
    cfg = load(write(tmp_path, '[throttle]\nbackend = "redis"\nredis_url = "unix:///run/redis.sock"\n'
                               'expected_nodes = 1\nlease_ttl = "1ms"\n'))
    assert (cfg.throttle.backend, cfg.throttle.expected_nodes, cfg.throttle.lease_ttl) == ("redis", 1, 0.001)
    assert cfg.throttle.redis_url == "unix:///run/redis.sock"
    assert load(write(tmp_path, '[throttle]\nredis_url = "rediss://h:6380/1"\n')).throttle.redis_url == "rediss://h:6380/1"
    assert one_error(tmp_path, "[throttle]\nexpected_nodes = 0\n") == \
        "throttle.expected_nodes: expected a positive integer (nodes), got 0"
    assert one_error(tmp_path, "[throttle]\nlease_ttl = 0\n") == \
        "throttle.lease_ttl: expected a positive duration (seconds), got 0"
    assert one_error(tmp_path, '[throttle]\nbackend = "redsi"\n') == \
        "throttle.backend: expected one of 'local', 'redis' (did you mean 'redis'?), got 'redsi'"
    assert one_error(tmp_path, '[throttle]\nredis_url = "http://x"\n') == \
        ("throttle.redis_url: expected a URL such as \"redis://127.0.0.1:6379/0\" (redis://, rediss:// or "
         "unix://), got 'http://x'")


def test_weights_bound(tmp_path):
    cfg = load(write(tmp_path, SOURCES + '[[egress.pool]]\nname = "p"\nsources = { ip2 = 1 }\n'))
    assert [(s.name, w) for s, w in egress_of(cfg).pools["p"].sources] == [("ip2", 1)]
    for bad in ("0", "-1", "true", "1.5", '"2"'):
        err = one_error(tmp_path, SOURCES + f'[[egress.pool]]\nname = "p"\nsources = {{ ip2 = {bad} }}\n')
        assert err.startswith("egress.pool[0].sources.ip2: expected a weight: an integer >= 1, got "), err
    assert one_error(tmp_path, SOURCES + '[[egress.pool]]\nname = "p"\nsources = {}\n') == \
        "egress.pool[0].sources: expected a non-empty table of source name = weight (an integer >= 1), got {}"
    assert one_error(tmp_path, SOURCES + '[[egress.pool]]\nname = "p"\n') == \
        "egress.pool[0].sources: missing (a table of source name = weight)"


def test_pool_header(tmp_path):
    assert load(write(tmp_path, '[egress]\npool_header = "X-Pool"\n')).egress.pool_header == "X-Pool"
    for bad in ("X Pool", "X-Pool:", "Ü"):
        assert one_error(tmp_path, f'[egress]\npool_header = "{bad}"\n') == \
            (f"egress.pool_header: expected a header field name such as \"X-Pool\" (printable ASCII, no \":\" "
             f"or space), or \"\", got {bad!r}")


# --- sources and pools ----------------------------------------------------------

def test_sources_and_pools(tmp_path):
    cfg = load(write(tmp_path, 'hostname = "mx.example.com"\n' + SOURCES + """
[[egress.source]]
name = "v6"
address = "2001:DB8:0::7"

[[egress.pool]]
name = "bulk"
sources = { ip2 = 3, ip3 = 1 }

[egress]
default_pool = "bulk"
pool_header = "X-Pool"
sender_pools = { "news.example.com" = "bulk" }
"""))
    e = egress_of(cfg)
    assert e.sources["ip2"] == Source("ip2", "127.0.0.2", "out2.example.com")
    assert e.sources["ip3"] == Source("ip3", "127.0.0.3", "mx.example.com")  # ehlo: the hostname
    assert e.sources["v6"].address == "2001:db8::7"
    assert [(s.name, w) for s, w in e.pools["bulk"].sources] == [("ip2", 3), ("ip3", 1)]
    assert e.pool_header == "X-Pool"


def test_source_errors(tmp_path):
    assert one_error(tmp_path, '[[egress.source]]\nname = "a"\naddress = "10.0.0.300"\n') == \
        ("egress.source[0].address: expected an IPv4 or IPv6 address such as \"192.0.2.7\" or \"2001:db8::7\", "
         "got '10.0.0.300'")
    assert one_error(tmp_path, '[[egress.source]]\nname = "a"\naddress = 167772161\n').startswith(
        "egress.source[0].address: expected an IPv4 or IPv6 address")
    assert one_error(tmp_path, '[[egress.source]]\nname = "a"\n') == \
        "egress.source[0].address: missing (an IPv4 or IPv6 address to send from)"
    assert one_error(tmp_path, '[[egress.source]]\naddress = "10.0.0.1"\n') == \
        "egress.source[0].name: missing (a name of letters, digits, '_', '.' and '-')"
    assert one_error(tmp_path, '[[egress.source]]\nname = "a|b"\naddress = "10.0.0.1"\n') == \
        "egress.source[0].name: expected a name of letters, digits, '_', '.' and '-', got 'a|b'"
    assert one_error(tmp_path, '[[egress.source]]\nname = "default"\naddress = "10.0.0.1"\n') == \
        "egress.source[0].name: expected a name other than \"default\" (reserved for the default source), got 'default'"
    assert one_error(tmp_path, '[[egress.source]]\nname = "a"\naddress = "10.0.0.1"\nehlo = "bad name"\n') == \
        "egress.source[0].ehlo: expected a host name for EHLO, got 'bad name'"
    assert one_error(tmp_path, '[[egress.source]]\nname = "a"\naddress = "10.0.0.1"\nehl = "x.test"\n') == \
        "egress.source[0].ehl: unknown key (did you mean 'egress.source[0].ehlo'?)"
    assert one_error(tmp_path, '[egress]\nsource = "x"\n') == \
        "egress.source: expected an array of tables ([[egress.source]]), got 'x'"
    twice = '[[egress.source]]\nname = "a"\naddress = "10.0.0.1"\n' * 2
    assert one_error(tmp_path, twice) == "egress.source: expected each name once, got 'a'"


def test_pool_errors(tmp_path):
    assert one_error(tmp_path, SOURCES + '[[egress.pool]]\nname = "p"\nsources = { ip2 = 1, ip9 = 2 }\n') == \
        "egress.pool[0].sources.ip9: expected the name of an [[egress.source]], got 'ip9'"
    twice = SOURCES + '[[egress.pool]]\nname = "p"\nsources = { ip2 = 1 }\n' * 2
    assert one_error(tmp_path, twice) == "egress.pool: expected each name once, got 'p'"
    assert one_error(tmp_path, SOURCES + '[[egress.pool]]\nname = "p"\nsources = { ip2 = 1 }\nsource = 1\n') == \
        "egress.pool[0].source: unknown key (did you mean 'egress.pool[0].sources'?)"
    assert one_error(tmp_path, '[egress]\ndefault_pool = "nope"\n') == \
        "egress.default_pool: expected the name of an [[egress.pool]], or \"\", got 'nope'"
    assert one_error(tmp_path, '[egress]\ndefault_pool = "no pe"\n') == \
        ("egress.default_pool: expected a name of letters, digits, '_', '.' and '-' (an [[egress.pool]]), "
         "or \"\", got 'no pe'")
    assert one_error(tmp_path, '[egress.sender_pools]\n"example.com" = "nope"\n') == \
        "egress.sender_pools.example.com: expected the name of an [[egress.pool]], got 'nope'"
    assert one_error(tmp_path, '[egress.sender_pools]\n"exa mple" = "p"\n') == \
        "egress.sender_pools.exa mple: expected a sender domain name as the key, got 'exa mple'"
    assert one_error(tmp_path, '[egress.sender_pools]\n"example.com" = 1\n') == \
        "egress.sender_pools.example.com: expected the name of an [[egress.pool]] " \
        "(a name of letters, digits, '_', '.' and '-'), got 1"
    assert one_error(tmp_path, '[egress]\nsender_pool = {}\n') == \
        "egress.sender_pool: unknown key (did you mean 'egress.sender_pools'?)"


def test_pool_for(tmp_path, caplog):
    cfg = load(write(tmp_path, SOURCES + """
[[egress.pool]]
name = "bulk"
sources = { ip2 = 1 }

[[egress.pool]]
name = "news"
sources = { ip3 = 1 }

[[egress.pool]]
name = "main"
sources = { ip2 = 1, ip3 = 1 }

[egress]
default_pool = "main"
sender_pools = { "example.com" = "bulk", "news.example.com" = "news" }
"""))
    e = egress_of(cfg)
    assert e.pool_for("a@example.com", None).name == "bulk"
    assert e.pool_for("a@sub.EXAMPLE.com", {}).name == "bulk"  # a parent covers its subdomains
    assert e.pool_for("a@x.news.example.com", None).name == "news"  # the longest match
    assert e.pool_for("a@example.org", None).name == "main"
    assert e.pool_for("", None).name == "main"  # the null sender
    assert e.pool_for("a@example.org", {"pool": "news"}).name == "news"  # a plugin's choice wins
    with caplog.at_level(logging.WARNING, logger="mta.config"):
        assert e.pool_for("a@example.com", {"pool": "gone"}) is None
        assert e.pool_for("a@example.com", {"pool": "gone"}) is None
        assert e.pool_for("a@example.com", {"pool": "lost"}) is None
        assert e.pool_for("a@example.com", {"pool": ["bulk"]}) is None  # a plugin's bad type
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and "'gone'" in warnings[0] and "'lost'" in warnings[1] and "['bulk']" in warnings[2]
    no_default = egress_of(load(write(tmp_path, SOURCES)))
    assert no_default.pool_for("a@example.com", None) is None


# --- the weighted round robin ---------------------------------------------------

def _pool(weights: list[int]) -> Pool:
    return Pool("p", tuple((Source(f"s{i}", f"127.0.0.{i + 2}", None), w) for i, w in enumerate(weights)))


def test_round_robin_interleaves():
    pool = _pool([5, 1, 1])
    picks = [pool.next().name for _ in range(7)]
    assert picks == ["s0", "s0", "s1", "s0", "s2", "s0", "s0"]  # nginx's example: spread, not "aaaaabc"
    single = _pool([1])
    assert [single.next().name for _ in range(3)] == ["s0"] * 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=6))
def test_round_robin_windows(weights):
    pool = _pool(weights)
    total = sum(weights)
    picks = [pool.next().name for _ in range(3 * total)]
    expected = {f"s{i}": w for i, w in enumerate(weights)}
    for start in range(len(picks) - total + 1):
        assert Counter(picks[start:start + total]) == expected


# --- shaping rules and precedence ----------------------------------------------

def test_aliases(tmp_path):
    cfg = load(write(tmp_path, "[delivery]\nmax_connections = 5\nmessages_per_connection = 7\n"))
    assert shaping_of(cfg).default == Shape(5, None, None, 7)
    cfg = load(write(tmp_path, "[shaping.default]\nconnection_limit = 4\nmax_deliveries_per_connection = 9\n"))
    assert shaping_of(cfg).default == Shape(4, None, None, 9)
    assert (cfg.delivery.max_connections, cfg.delivery.messages_per_connection) == (4, 9)
    same = load(write(tmp_path, "[delivery]\nmax_connections = 3\n[shaping.default]\nconnection_limit = 3\n"))
    assert shaping_of(same).default.connection_limit == 3
    errs = errors_of(tmp_path, "[delivery]\nmax_connections = 3\nmessages_per_connection = 10\n"
                               "[shaping.default]\nconnection_limit = 4\nmax_deliveries_per_connection = 11\n")
    assert errs == [
        "shaping.default.connection_limit = 4 and delivery.max_connections = 3: the same limit "
        "(delivery.max_connections is an alias); set one, or both to the same value",
        "shaping.default.max_deliveries_per_connection = 11 and delivery.messages_per_connection = 10: the same "
        "limit (delivery.messages_per_connection is an alias); set one, or both to the same value",
    ]
    over = load(write(tmp_path, "[shaping.default]\nconnection_limit = 6\n"), {"delivery.relay_to": None})
    assert over.delivery.max_connections == 6


RULES = """
[shaping.default]
connection_limit = 10
max_message_rate = "100/s"

[[shaping.rule]]
domain = "example.test"
connection_limit = 2
max_message_rate = "20/s"

[[shaping.rule]]
domain = "*.sub.example.test"
max_message_rate = ""

[[shaping.rule]]
site = "*.mail.protection.outlook.com"
max_connection_rate = "10/min"
max_deliveries_per_connection = 5
"""


def test_shape_precedence(tmp_path):
    s = shaping_of(load(write(tmp_path, RULES)))
    assert s.binding
    assert s.default == Shape(10, None, Rate(100, 1.0), 100)
    assert s.shape("other.test", "mx.other.test") == s.default
    # A transport's connections=/per_connection= override the default for its routes ...
    assert s.shape("other.test", "relay.test", connections=4, per_connection=50) == Shape(4, None, Rate(100, 1), 50)
    # ... and a matching rule overrides those, key by key.
    assert s.shape("example.test", "mx.example.test", connections=4, per_connection=50) == \
        Shape(2, None, Rate(20, 1.0), 50)
    assert s.shape("a.example.test", "x") == Shape(2, None, Rate(20, 1.0), 100)  # a parent covers subdomains
    assert s.shape("EXAMPLE.test.", "x") == Shape(2, None, Rate(20, 1.0), 100)
    assert s.shape("notexample.test", "x") == s.default
    # "*.x" matches subdomains only; a later rule wins ("" is unlimited, not inherited).
    assert s.shape("sub.example.test", "x").max_message_rate == Rate(20, 1.0)
    assert s.shape("a.sub.example.test", "x") == Shape(2, None, None, 100)
    site = "contoso-com.mail.protection.outlook.com"
    assert s.shape("contoso.com", site) == Shape(10, Rate(10, 60.0), Rate(100, 1.0), 5)
    assert s.shape("contoso.com", f"mx1.other.test,{site}").max_deliveries_per_connection == 5
    assert s.shape("contoso.com", "mail.protection.outlook.com") == s.default
    # The cache is bounded and never changes an answer.
    for i in range(10000):
        assert s.shape(f"d{i}.test", "x").connection_limit == 10
    assert s.shape("example.test", "mx.example.test", connections=4) == Shape(2, None, Rate(20, 1.0), 100)


def test_binding(tmp_path):
    assert not shaping_of(load(write(tmp_path, "[shaping.default]\nconnection_limit = 1\n"))).binding
    assert shaping_of(load(write(tmp_path, '[shaping.default]\nmax_connection_rate = "1/s"\n'))).binding
    assert shaping_of(load(write(tmp_path, '[[shaping.rule]]\ndomain = "a.test"\n'))).binding
    assert shaping_of(load(write(tmp_path, '[[shaping.on_reply]]\nclass = "spam"\naction = "bounce"\n'))).binding


def test_rule_errors(tmp_path):
    assert one_error(tmp_path, '[[shaping.rule]]\ndomain = "a.test"\nsite = "*.b.test"\n') == \
        "shaping.rule[0]: expected exactly one of domain and site"
    assert one_error(tmp_path, "[[shaping.rule]]\nconnection_limit = 1\n") == \
        "shaping.rule[0]: expected exactly one of domain and site"
    assert one_error(tmp_path, '[[shaping.rule]]\ndomain = "a..test"\n') == \
        "shaping.rule[0].domain: expected a recipient domain such as \"example.test\" or \"*.example.test\", got 'a..test'"
    assert one_error(tmp_path, '[[shaping.rule]]\ndomain = "*.*.test"\n').startswith("shaping.rule[0].domain: ")
    assert one_error(tmp_path, '[[shaping.rule]]\nsite = "a b"\n') == \
        "shaping.rule[0].site: expected a glob on MX host names such as \"*.mail.protection.outlook.com\", got 'a b'"
    assert one_error(tmp_path, '[[shaping.rule]]\ndomain = "a.test"\nmax_message_rate = "1/fortnight"\n') \
        .startswith("shaping.rule[0].max_message_rate: expected a rate")
    assert one_error(tmp_path, '[[shaping.rule]]\ndomain = "a.test"\nconection_limit = 1\n') == \
        "shaping.rule[0].conection_limit: unknown key (did you mean 'shaping.rule[0].connection_limit'?)"
    assert one_error(tmp_path, '[shaping]\nrule = 1\n') == \
        "shaping.rule: expected an array of tables ([[shaping.rule]]), got 1"
    assert one_error(tmp_path, "[shaping.defaults]\nconnection_limit = 1\n") == \
        "shaping.defaults: unknown key (did you mean 'shaping.default'?)"


# --- reply rules ------------------------------------------------------------------

REPLIES = """
[[shaping.on_reply]]
match = "^421 .*(TSS04|rate limited)"
site = "*.yahoodns.net"
action = "suspend"
duration = "30m"

[[shaping.on_reply]]
match = "too many"
class = "rate_limited"
action = "slow"
duration = 600

[[shaping.on_reply]]
class = "invalid_recipient"
action = "bounce"
"""


def test_reply_rules(tmp_path):
    s = shaping_of(load(write(tmp_path, REPLIES)))
    yahoo = "mta5.am0.yahoodns.net"
    rule = s.reply_rule(yahoo, "421 4.7.0 [TSS04] Messages temporarily deferred", "rate_limited")
    assert (rule.action, rule.duration, rule.site, rule.cls) == ("suspend", 1800.0, "*.yahoodns.net", None)
    assert rule.match.pattern == "^421 .*(TSS04|rate limited)"
    # The site limits the first rule; match and class must both hold in the second.
    assert s.reply_rule("mx.other.test", "421 4.7.0 [TSS04] deferred", "rate_limited") is None
    assert s.reply_rule("mx.other.test", "421 too many connections", "rate_limited").action == "slow"
    assert s.reply_rule("mx.other.test", "421 too many connections", "transient") is None
    bounce = s.reply_rule("mx.other.test", "550 5.1.1 no such user", "invalid_recipient")
    assert (bounce.action, bounce.duration, bounce.match) == ("bounce", 0.0, None)


def test_reply_rule_errors(tmp_path):
    err = one_error(tmp_path, '[[shaping.on_reply]]\nmatch = "^421 (TSS04"\naction = "bounce"\n')
    assert re.fullmatch(r"shaping\.on_reply\[0\]\.match: expected a valid regular expression "
                        r"\(missing \), unterminated subpattern at position 5\), got '\^421 \(TSS04'", err), err
    assert one_error(tmp_path, '[[shaping.on_reply]]\naction = "bounce"\n') == \
        "shaping.on_reply[0]: expected match, class or both"
    err = one_error(tmp_path, '[[shaping.on_reply]]\nclass = "rate_limit"\naction = "bounce"\n')
    assert err == ("shaping.on_reply[0].class: expected a bounce class: one of " + ", ".join(REPLY_CLASSES)
                   + " (did you mean 'rate_limited'?), got 'rate_limit'")
    assert one_error(tmp_path, '[[shaping.on_reply]]\nclass = "spam"\n') == \
        "shaping.on_reply[0].action: missing (suspend, slow or bounce)"
    assert one_error(tmp_path, '[[shaping.on_reply]]\nclass = "spam"\naction = "pause"\n') == \
        "shaping.on_reply[0].action: expected one of 'suspend', 'slow', 'bounce', got 'pause'"
    assert one_error(tmp_path, '[[shaping.on_reply]]\nclass = "spam"\naction = "slow"\n') == \
        "shaping.on_reply[0].duration: missing (how long to slow, such as \"30m\")"
    assert one_error(tmp_path, '[[shaping.on_reply]]\nclass = "spam"\naction = "suspend"\nduration = "0s"\n') == \
        "shaping.on_reply[0].duration: expected a positive duration (seconds), got '0s'"
    assert one_error(tmp_path, '[[shaping.on_reply]]\nclass = "spam"\naction = "bounce"\nduration = "1m"\n') == \
        "shaping.on_reply[0].duration: expected no duration with action = \"bounce\", got '1m'"
    assert one_error(tmp_path, '[[shaping.on_reply]]\nmatch = 4\naction = "bounce"\n') == \
        "shaping.on_reply[0].match: expected a regular expression (a string), got 4"
    assert one_error(tmp_path, '[[shaping.on_reply]]\nclass = "spam"\naction = "bounce"\nsite = ""\n').startswith(
        "shaping.on_reply[0].site: expected a glob")
    assert one_error(tmp_path, '[[shaping.on_reply]]\nclass = "spam"\naction = "bounce"\nclas = "x"\n') == \
        "shaping.on_reply[0].clas: unknown key (did you mean 'shaping.on_reply[0].class'?)"


def test_every_class_accepted(tmp_path):
    text = "".join(f'[[shaping.on_reply]]\nclass = "{c}"\naction = "bounce"\n' for c in REPLY_CLASSES)
    assert [r.cls for r in shaping_of(load(write(tmp_path, text))).on_reply] == list(REPLY_CLASSES)


def test_errors_are_all_reported_together(tmp_path):
    errs = errors_of(tmp_path, """
[[egress.source]]
name = "a"
address = "nope"

[[egress.pool]]
name = "p"
sources = { a = 0 }

[shaping.default]
max_message_rate = "5/week"

[throttle]
expected_nodes = -1
""")
    assert [e.split(":", 1)[0] for e in errs] == [
        "egress.source[0].address", "egress.pool[0].sources.a", "shaping.default.max_message_rate",
        "throttle.expected_nodes"]


def test_documented_example_resolves(tmp_path):
    from test_config import doc_example
    cfg = load(write(tmp_path, doc_example()))
    e, s = egress_of(cfg), shaping_of(cfg)
    assert [(src.name, w) for src, w in e.pools["bulk"].sources] == [("ip2", 3), ("ip3", 1)]
    assert e.pool_for("a@news.example.com", None).name == "bulk" and e.pool_for("a@x.test", None) is None
    assert s.shape("example.test", "mx.example.test") == Shape(2, Rate(60, 60.0), Rate(20, 1.0), 100)
    assert [r.action for r in s.on_reply] == ["suspend", "slow"]
