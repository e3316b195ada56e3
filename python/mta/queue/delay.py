"""Delay notices (RFC 3464 `Action: delayed`): whether a message is due one, and which still-
deferred recipients it lists with their last reply. Invariant: at most one per message; none
when off (0), to the null sender, or about recipients whose NOTIFY leaves DELAY out."""

from __future__ import annotations

import re

from mta.delivery import DEFERRED, OutMessage, OutRcpt, RcptResult
from mta.queue import bounce

__all__ = ["due", "notice", "stored_result", "waiting"]

# A stored last reply, as RcptResult.reply() wrote it: code, optional enhanced code, text.
_REPLY = re.compile(r"([2-5]\d\d)(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: (.*))?", re.DOTALL)


def due(delay_warning: float, warned: bool, arrival: float, now: float) -> bool:
    """Whether a message that arrived at `arrival` with recipients still deferred at `now`
    gets its delay notice now: on (`delay_warning` > 0), none sent yet, waited long enough."""
    return delay_warning > 0 and not warned and now - arrival >= delay_warning


def stored_result(address: str, last_reply: str | None) -> RcptResult:
    """A recipient's last reply as the spool keeps it ("451 4.7.1 text", one line) back as
    a result; a reply that does not read as one is quoted whole under 451 4.0.0."""
    m = _REPLY.fullmatch(last_reply or "")
    if m is None:
        return RcptResult(address, 451, "4.0.0", last_reply or "deferred")
    return RcptResult(address, int(m[1]), m[2], m[3] or "")


def waiting(spooled: list, states: dict[int, str],
            results: dict[int, RcptResult]) -> list[tuple[OutRcpt, RcptResult]]:
    """The recipients a delay notice is about: those deferred now (`states`, index -> state
    after this attempt's changes), each with this attempt's result when it had one, else the
    stored last reply; only those whose NOTIFY asks for delays (or who gave none)."""
    out = []
    for i, st in sorted(states.items()):
        if st != DEFERRED:
            continue
        r = spooled[i]
        rc = OutRcpt(r.address, r.notify, r.orcpt, i)
        if not bounce.wants_dsn(rc, "delayed"):
            continue
        res = results.get(i)
        out.append((rc, res if res is not None else stored_result(r.address, r.last_reply)))
    return out


def notice(msg: OutMessage, todo: list[tuple[OutRcpt, RcptResult]], *, reporting_mta: str,
           now: float, retry_until: float) -> bytes | None:
    """The delay DSN to msg.sender listing `todo` (from `waiting`), with Will-Retry-Until;
    None when there is nobody to tell (the null sender, or no recipient listed)."""
    if not msg.sender or not todo:
        return None
    return bounce.make_dsn(msg, todo, reporting_mta=reporting_mta, action="delayed", now=now,
                           retry_until=retry_until)
