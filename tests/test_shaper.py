"""The worker's side of shaping (mta.delivery.shaping.shaper) over a real process throttle:
site names (MX host sets, site globs), admit/done and the site's share of the window,
suspensions, the reply rules' effects, and the agent's suspended answer as `Throttled`."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from mta.config.shaping import Egress, Pool, ReplyRule, Shape, ShapeRule, Shaping, Source
from mta.delivery import OutMessage, OutRcpt, RcptResult
from mta.delivery.shaping.shaper import Shaper, site_name
from mta.delivery.shaping.signals import SUSPENDED, Throttled, flag_key, suspended_results, suspended_until
from mta.delivery.shaping.throttle import ProcessThrottle

SHAPE = Shape(20, None, None, 100)


def shaper(on_reply=(), rules=(), max_active=10, share=0.5, throttle=None, egress=None, clock=None):
    th = throttle if throttle is not None else ProcessThrottle()
    now = time.time()  # the shaper's clock, fixed per test (flags are read against the wall clock)
    return Shaper(Shaping(SHAPE, tuple(rules), tuple(on_reply)), egress or Egress({}, {}), th,
                  max_active, share, clock=clock or (lambda: now))


def result(code, enhanced, text, addr="u@dest.test"):
    return RcptResult(addr, code, enhanced, text, "mx.dest.test", "192.0.2.1", "none")


def msg(*addrs):
    return OutMessage("Q1", "s@sender.test", tuple(OutRcpt(a, index=i) for i, a in enumerate(addrs)), b"x")


# -- site names --

@pytest.mark.parametrize("hosts, globs, site", [
    (["mx1.a.test"], (), "mx1.a.test"),
    (["MX2.b.test.", "mx1.a.test"], (), "mx1.a.test,mx2.b.test"),  # sorted, lower case, no root dot
    (["mx1.a.test", "mx1.a.test"], (), "mx1.a.test"),
    (["x.mail.protection.outlook.test"], ("*.mail.protection.outlook.test",), "*.mail.protection.outlook.test"),
    (["mx1.a.test", "x.yahoodns.test"], ("*.yahoodns.test",), "*.yahoodns.test"),  # any host matching
    (["x.yahoodns.test"], ("*.outlook.test", "*.yahoodns.test", "x.*"), "*.yahoodns.test"),  # the first glob
    (["mx.other.test"], ("*.yahoodns.test",), "mx.other.test"),
])
def test_site_names(hosts, globs, site):
    assert site_name(hosts, globs) == site


def test_domains_with_one_mx_set_share_a_site_and_rules_give_the_globs():
    s = shaper(rules=[ShapeRule(None, "*.hosting.test", (("connection_limit", 1),)),
                      ShapeRule("a.test", None, (("connection_limit", 3),))])
    assert s.site_globs == ("*.hosting.test",)
    assert s.site(["mx2.x.test", "mx1.x.test"]) == s.site(["mx1.x.test", "mx2.x.test"])
    assert s.site(["a1.hosting.test"]) == s.site(["b7.hosting.test"]) == "*.hosting.test"


# -- admit, done, the share of the window --

def test_admit_counts_until_done_and_caps_a_slow_site_at_its_share_of_a_full_window():
    now = [1000.0]
    s = shaper(max_active=10, share=0.3, clock=lambda: now[0])  # 3 per site once the window is full (9)
    assert s.cap == 3 and s.pressed == 9
    assert [s.admit("a") for _ in range(9)] == [None] * 9  # alone, a site may use the window
    assert s.admit("a") is None  # its pace is not known yet: not held
    now[0] += 1.0  # a second without one of them ending: slow
    no = s.admit("a")
    assert isinstance(no, Throttled) and "share" in no.reason and "a" in no.reason
    assert now[0] + 5.0 <= no.until <= now[0] + 6.25  # no pace at all: 5 s (spread)
    assert s.admit("b") is None  # another site always finds room
    assert s.total == 11 and s.admit("b") is None  # and may use the rest (b is under its share)
    for _ in range(8):
        s.done("a")
    assert s.inflight["a"] == 2 and s.admit("a") is None  # under its share again
    for _ in range(5):
        s.done("b")  # more done than admitted: never negative
    assert "b" not in s.inflight and s.inflight["a"] == 3 and s.total == 3
    assert s.stats["over_share"] == 1


def test_a_fast_site_is_not_held_to_its_share():
    now = [1000.0]
    s = shaper(max_active=10, share=0.3, clock=lambda: now[0])
    for _ in range(9):
        s.admit("a")
    s.admit("a")  # the pace's first measurement
    for _ in range(50):  # it ends 50 in the next half second: 100 per second, 10 in flight is 0.1 s
        s.done("a")
        s.admit("a")
    now[0] += 0.5
    assert s.admit("a") is None and s.stats["over_share"] == 0


def test_the_share_is_at_least_one():
    now = [1000.0]
    s = shaper(max_active=1, share=0.5, clock=lambda: now[0])
    assert s.cap == 1 and s.admit("a") is None and s.admit("a") is None  # pace unknown yet
    now[0] += 1.0
    assert s.admit("a") is not None


def test_a_suspended_site_or_domain_is_throttled_until_the_flag_ends():
    th = ProcessThrottle()
    s = shaper(throttle=th)
    now = s.clock()
    th.set_until_now(flag_key("suspend", "mx.a.test"), now + 30)
    th.set_until_now(flag_key("suspend", "@b.test"), now + 60)
    a = s.admit("mx.a.test", "a.test")
    assert a == Throttled(now + 30, a.reason) and a.reason.startswith(SUSPENDED)
    b = s.admit("mx.other.test", "b.test")
    assert b is not None and b.until == now + 60 and "@b.test" in b.reason
    assert s.admit("mx.other.test", "c.test") is None
    assert s.inflight == {"mx.other.test": 1}  # a refused admit holds nothing
    assert s.stats["suspended"] == 2


# -- reply rules --

RULES = (
    ReplyRule(re.compile("TSS04"), None, None, "suspend", 300.0),
    ReplyRule(re.compile("BOUNCEME"), None, None, "bounce", 0.0),
    ReplyRule(None, "rate_limited", "*.slow.test", "slow", 60.0),
)


def run_outcome(s, site, results):
    async def main():
        out = s.outcome(site, results)
        await asyncio.sleep(0.01)  # the flag is set by a task
        return out
    return asyncio.run(main())


def test_a_suspend_rule_sets_the_site_flag():
    th = ProcessThrottle()
    s = shaper(RULES, throttle=th)
    res = [result(421, "4.7.0", "[TSS04] try again later")]
    out = run_outcome(s, "mx.y.test", res)
    assert out is res  # a suspension does not change the outcome: this one was a real attempt
    assert th.flags() == {flag_key("suspend", "mx.y.test"): s.clock() + 300}
    assert s.stats["rule_suspend"] == 1
    run_outcome(s, "mx.y.test", res)  # set already: not again
    assert s.stats["rule_suspend"] == 1


def test_a_slow_rule_by_class_only_for_its_sites():
    th = ProcessThrottle()
    s = shaper(RULES, throttle=th)
    res = [result(450, "4.2.1", "The user you are trying to contact is receiving mail too quickly")]
    run_outcome(s, "mx.other.test", res)
    assert th.flags() == {}  # the rule names other sites
    run_outcome(s, "mx1.slow.test", res)
    assert th.flags() == {flag_key("slow", "mx1.slow.test"): s.clock() + 60}
    assert s.stats["rule_slow"] == 1


def test_a_bounce_rule_turns_a_4xx_into_a_5xx_and_leaves_the_rest():
    s = shaper(RULES)
    res = [result(451, "4.7.1", "BOUNCEME not today", "a@d.test"),
           result(250, "2.1.5", "BOUNCEME ok", "b@d.test"),
           result(550, "5.7.1", "BOUNCEME no", "c@d.test"),
           result(451, None, "BOUNCEME", "d@d.test"),
           result(451, "4.3.0", "something else", "e@d.test")]
    out = run_outcome(s, "mx.d.test", res)
    assert out is not res and res[0].code == 451  # a new list: the agent's rows are not touched
    assert (out[0].code, out[0].enhanced) == (550, "5.7.1")
    assert out[0].text == "BOUNCEME not today (bounced by a shaping rule)"
    assert out[0].status == "bounced" and out[0].address == "a@d.test"
    assert out[1] == res[1] and out[2] == res[2] and out[4] == res[4]
    assert (out[3].code, out[3].enhanced) == (550, "5.0.0")
    assert s.stats["rule_bounce"] == 2


def test_no_rule_matching_or_no_rules_leaves_the_results_as_they_are():
    res = [result(451, "4.3.0", "later")]
    assert run_outcome(shaper(RULES), "x", res) is res
    assert run_outcome(shaper(), "x", res) is res
    assert run_outcome(shaper(RULES), "x", []) == []


def test_the_agents_suspended_answer_becomes_throttled():
    until = time.time() + 42.4
    rows = suspended_results(msg("a@d.test", "b@d.test"), "default|mx.d.test", until)
    assert [r.code for r in rows] == [451, 451] and rows[0].text.startswith(SUSPENDED)
    assert suspended_until(rows) == pytest.approx(until, abs=0.5)
    out = run_outcome(shaper(RULES), "mx.d.test", rows)
    assert isinstance(out, Throttled) and out.until == suspended_until(rows) and out.reason == rows[0].text
    # a real reply that merely looks like it is not one
    assert suspended_until([result(451, "4.7.0", "shaping: site suspended until soon: x")]) == 0.0
    assert suspended_until([result(451, "4.7.0", "site suspended until 123: x")]) == 0.0


def test_the_source_comes_from_the_pool_in_weighted_turns():
    ip2, ip3 = Source("ip2", "127.0.0.2", "out2.test"), Source("ip3", "127.0.0.3", "out3.test")
    pool = Pool("bulk", ((ip2, 3), (ip3, 1)))
    s = shaper(egress=Egress({"ip2": ip2, "ip3": ip3}, {"bulk": pool}, sender_pools={"bulk.test": "bulk"}))
    picks = [s.source("a@x.bulk.test", None) for _ in range(8)]
    assert picks.count(ip2) == 6 and picks.count(ip3) == 2
    assert s.source("a@other.test", None) is None  # the default source
    assert s.source("a@other.test", "bulk") in (ip2, ip3)
    assert not s.spooled_ok(None) and s.spooled_ok("bulk")


def test_a_held_message_waits_about_as_long_as_its_site_takes_to_drain_its_excess():
    now = [1000.0]
    s = shaper(max_active=10, share=0.3, clock=lambda: now[0])
    for _ in range(9):
        s.admit("a")
    assert s.admit("a") is None  # no pace yet
    s.done("a")  # 1 ended in the next second: 1 per second, 9 in flight take 9 s
    now[0] += 1.0
    held = s.admit("a")
    excess = s.inflight["a"] - s.cap + 1  # 7 over the share at 1 per second
    assert now[0] + excess <= held.until <= now[0] + excess * 1.25
