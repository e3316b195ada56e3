"""mta.affinity's CPU sets, for any set of allowed CPUs (the e2e test in
tests/e2e/test_workers.py checks what the processes really get)."""

from __future__ import annotations

import os

import pytest
from mta import procs
from mta.procs import Affinity


@pytest.mark.parametrize("allowed, shard, loop, helpers", [
    ({0, 1}, 0, {0}, {1}),
    ({0, 1}, 1, {1}, {0}),
    ({0, 1}, 2, {0}, {1}),  # more workers than CPUs: round robin
    ({2, 5, 7}, 1, {5}, {2, 7}),  # a cpuset: the n-th allowed CPU, not CPU n
])
def test_auto_gives_the_loop_its_own_cpu(monkeypatch, allowed, shard, loop, helpers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed))
    a = Affinity("auto", shard)
    assert a and a.loop == loop and a.helpers == helpers
    assert a.describe().startswith(f"cpu affinity: event loop on CPU {min(loop)};")


@pytest.mark.parametrize("mode, allowed", [("auto", {3}), ("none", {0, 1, 2, 3})])
def test_one_cpu_or_none_leaves_scheduling_alone(monkeypatch, mode, allowed):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(allowed))
    a = Affinity(mode, 0)
    assert not a and a.loop == frozenset() and a.helpers == frozenset()


def test_pin_refused_is_logged_not_raised(monkeypatch, caplog):
    def refuse(pid, cpus):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    procs.pin(frozenset({999}), "event loop")
    assert "cannot pin the event loop to CPU 999" in caplog.text
    procs.pin(frozenset(), "event loop")  # empty: nothing asked, nothing logged twice
    assert caplog.text.count("cannot pin") == 1


def test_parse_round_trips_the_agents_argument():
    assert procs.parse("") == frozenset()
    assert procs.parse("1,3") == frozenset({1, 3})
