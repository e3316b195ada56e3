"""The standard workloads, sweep and rate parsing, their expansion into trial points, and
how `mta bench compare` builds its plan from --peers / --workloads / --config (no servers)."""

from __future__ import annotations

import pytest

from mta.bench.comparerun import CompareError, build_plan
from mta.bench.workloads import STANDARD, expand, parse_ms, parse_rates, parse_sweep, standard


def test_the_standard_set_has_the_issue_names_and_shapes():
    assert list(STANDARD) == ["accept-1k", "e2e-1k", "e2e-1k-keep", "e2e-64k", "e2e-1m", "e2e-1k-tls",
                              "e2e-1k-keep-tls"]
    w = STANDARD
    assert w["accept-1k"].kind == "accept-only" and all(w[n].kind == "end-to-end" for n in list(w)[1:])
    assert (w["e2e-64k"].size, w["e2e-1m"].size) == (65536, 1048576)
    assert w["e2e-1k-keep"].per_connection > 1 and w["e2e-1k"].per_connection == 1
    assert w["e2e-1k-tls"].starttls and not w["e2e-1k"].starttls
    keep, keep_tls = w["e2e-1k-keep"], w["e2e-1k-keep-tls"]
    assert keep_tls.starttls and (keep_tls.per_connection, keep_tls.messages) == (keep.per_connection, keep.messages)
    assert not any(x.tls_resume for x in w.values())  # resumption is asked for, never implied
    assert all(x.sessions == 50 for x in w.values())


def test_standard_returns_copies_and_names_the_known_ones():
    a = standard(["e2e-1k"])
    a[0].messages = 5
    assert STANDARD["e2e-1k"].messages != 5
    with pytest.raises(ValueError, match="e2e-2k.*known: accept-1k"):
        standard(["e2e-2k"])


@pytest.mark.parametrize("spec,want", [
    ("sessions=1,10,50,200,500", ("sessions", [1, 10, 50, 200, 500])),
    ("size=1k,64k,1m", ("size", [1024, 65536, 1048576])),
    ("per-connection=1,10", ("per_connection", [1, 10])),
    ("sessions = 3", ("sessions", [3])),
])
def test_parse_sweep(spec, want):
    assert parse_sweep(spec) == want


@pytest.mark.parametrize("spec,msg", [("sessions", "PARAM=V1"), ("threads=1,2", "one of sessions"),
                                      ("sessions=1,x", "'x' is not a whole number"), ("size=0", "at least 1")])
def test_parse_sweep_errors_name_the_problem(spec, msg):
    with pytest.raises(ValueError, match=msg):
        parse_sweep(spec)


def test_rates_and_durations():
    assert parse_rates("500,1000, 2000") == [500.0, 1000.0, 2000.0]
    for bad in ("", "0", "a,b", "-5"):
        with pytest.raises(ValueError, match="--rate"):
            parse_rates(bad)
    assert parse_ms("50ms") == 50.0 and parse_ms("0.05s") == 50.0 and parse_ms("7") == 7.0
    with pytest.raises(ValueError, match="50 parsecs"):
        parse_ms("50 parsecs")


def test_expand_crosses_workloads_sweep_points_and_rates_in_order():
    pts = expand(standard(["accept-1k", "e2e-1k"]), ("sessions", [1, 10]), [100.0, 200.0])
    assert [(p.name, p.sessions, p.rate) for p in pts] == [
        ("accept-1k", 1, 100.0), ("accept-1k", 1, 200.0), ("accept-1k", 10, 100.0), ("accept-1k", 10, 200.0),
        ("e2e-1k", 1, 100.0), ("e2e-1k", 1, 200.0), ("e2e-1k", 10, 100.0), ("e2e-1k", 10, 200.0)]
    assert pts[0].sweep == {"param": "sessions", "value": 1}
    plain = expand(standard(["e2e-1k"]), None, None)
    assert len(plain) == 1 and plain[0].sweep is None and plain[0].rate is None


def _plan(**kw):
    base = dict(peers=[], workloads=[], config_file=None, messages=None, repeats=None, sweep=None, rates=None, only=[])
    base.update(kw)
    return build_plan(**base)


def test_build_plan_from_peers():
    plan = _plan(peers=["mta", "postfix", "smtp-sink"], messages=100)
    assert [s.name for s in plan.systems] == ["mta", "postfix", "smtp-sink"]
    assert [s.relays for s in plan.systems] == [True, True, False]
    assert [w.name for w in plan.workloads] == list(STANDARD) and {w.messages for w in plan.workloads} == {100}
    assert plan.repeats == 3 and plan.sink_port != 2626
    swept = _plan(peers=["mta"], sweep="sessions=1,10", repeats=2)
    assert [(w.name, w.sessions) for w in swept.workloads] == [("e2e-1k", 1), ("e2e-1k", 10)] and swept.repeats == 2


@pytest.mark.parametrize("kw,msg", [
    ({}, "--peers"),
    ({"peers": ["qmail"]}, "no peer named 'qmail'"),
    ({"peers": ["mta"], "workloads": ["e2e-9k"]}, "no workload named e2e-9k"),
    ({"peers": ["mta"], "sweep": "cores=1"}, "--sweep"),
    ({"peers": ["mta"], "only": ["exim"]}, "--only: no system named exim"),
])
def test_build_plan_errors_name_the_option(kw, msg):
    with pytest.raises(CompareError, match=msg):
        _plan(**kw)


def test_a_plan_file_can_name_peers(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[compare]\nrepeats = 2\n[[workload]]\nname = "w"\nmessages = 10\n'
                 '[[system]]\npeer = "postfix"\n[[system]]\nname = "pf2"\npeer = "postfix"\n')
    plan = _plan(config_file=str(f), peers=["mta"])
    assert [(s.name, s.peer, s.relays) for s in plan.systems] == [
        ("postfix", "postfix", True), ("pf2", "postfix", True), ("mta", "mta", True)]
    f.write_text('[[system]]\npeer = "nope"\n')
    with pytest.raises(CompareError, match=r"\[\[system\]\] #1: peer: no peer named 'nope'"):
        _plan(config_file=str(f))
    f.write_text('[[system]]\nname = "x"\n')
    with pytest.raises(CompareError, match="needs peer = NAME, or name, start and port"):
        _plan(config_file=str(f))


def test_a_plan_file_workload_can_ask_for_tls_resumption(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[[workload]]\nname = "keep-tls-resume"\nkind = "end-to-end"\nper_connection = 10\n'
                 'starttls = true\ntls_resume = true\n[[workload]]\nname = "plain"\n'
                 '[[system]]\npeer = "postfix"\n')
    plan = _plan(config_file=str(f), sweep="sessions=1,5")
    assert [(w.name, w.sessions, w.starttls, w.tls_resume) for w in plan.workloads] == [
        ("keep-tls-resume", 1, True, True), ("keep-tls-resume", 5, True, True),
        ("plain", 1, False, False), ("plain", 5, False, False)]
    f.write_text('[[workload]]\nname = "w"\ntls_resumption = true\n[[system]]\npeer = "postfix"\n')
    with pytest.raises(CompareError, match="tls_resumption.*known:.*tls_resume"):
        _plan(config_file=str(f))


def test_the_keep_tls_workload_plans_by_name():
    plan = _plan(peers=["mta", "smtp-sink"], workloads=["e2e-1k-keep-tls"], messages=50)
    assert [(w.name, w.per_connection, w.starttls, w.messages) for w in plan.workloads] == [
        ("e2e-1k-keep-tls", 100, True, 50)]
