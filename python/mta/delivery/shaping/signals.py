"""What shaping tells the queue: a site suspended (by a reply rule or an administrator)
answers its jobs with one recognisable 451, which the worker turns into a wait until the
suspension ends (no attempt counted, no delivery-log record) rather than a deferral."""

from __future__ import annotations

from typing import NamedTuple

from mta.delivery import OutMessage, RcptResult, results_for

# The text every such answer starts with (the agent makes it, the worker recognises it).
SUSPENDED = "shaping: site suspended"


def site_of(shape_key: str) -> str:
    """The destination site of a throttle key "<source>|<site>"."""
    return shape_key.partition("|")[2]


def flag_key(kind: str, site: str) -> str:
    """The throttle flag of a site: kind "suspend" or "slow" (per site, every source)."""
    return f"{kind}|{site}"


def suspended_results(msg: OutMessage, shape_key: str, until: float) -> list[RcptResult]:
    return results_for(msg, 451, "4.7.0", f"{SUSPENDED} until {until:.0f}: {site_of(shape_key)}")


def suspended_until(results) -> float:
    """The end of the suspension these results report (0.0: they are real outcomes)."""
    if not results:
        return 0.0
    text = results[0].text
    if not text.startswith(SUSPENDED):
        return 0.0
    try:
        return float(text[len(SUSPENDED) + 7:].split(":", 1)[0])
    except ValueError:
        return 0.0


class Throttled(NamedTuple):
    """An attempt that did not go because of shaping (its site suspended, or holding its
    share of a full active window): the queue records it due at `until`, without counting
    an attempt, which also moves it behind other destinations' due mail."""

    until: float
    reason: str
