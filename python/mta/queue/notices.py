"""Spooling the DSNs the queue makes: a bounce for failed recipients, a delay notice for those
still deferred. Invariant: a bounce is durable before its bounced record, a delay notice in one
step with its message's flag: a crash may repeat a bounce, never a delay notice."""

from __future__ import annotations

import logging

from mta.delivery import OutMessage
from mta.delivery.deliverylog import DeliveryLog
from mta.queue import bounce, delay
from mta.queue.store import SpoolService

log = logging.getLogger("mta.queue")


async def send_bounce(store: SpoolService, msg: OutMessage, failures, *, hostname: str,
                      max_returned: int) -> str | None:
    """The DSN for `failures`, spooled; its queue id, or None when there is none to send."""
    dsn = bounce.make_dsn(msg, failures, reporting_mta=hostname, max_returned=max_returned)
    if dsn is None:
        if not msg.sender:
            log.info("dropped bounce for %s: the sender is <> (never bounce a bounce)", msg.queue_id)
        return None
    qid = await store.inject(dsn, sender="", recipient=msg.sender)
    log.info("bounce %s for %s to <%s> nrcpt=%d", qid, msg.queue_id, msg.sender, len(failures))
    return qid


async def send_delay_notice(store: SpoolService, dlog: DeliveryLog, env, spooled: list, msg: OutMessage,
                            changes: list, results: dict, now: float, *, hostname: str,
                            retry_until: float) -> str | None:
    """The message's one delay notice, checked when a deferral is recorded (no timer: a
    message deferred that long is retried several times); its queue id, or None. Notice and
    flag are one durable step (`inject`'s delay_notice_for). Nobody to tell: nothing is
    recorded (the check is cheap, the message is not read)."""
    states = {i: r.state for i, r in enumerate(spooled)}
    states.update({c[0]: c[1] for c in changes})
    attempts = {c[0]: c[2] for c in changes}
    todo = delay.waiting(spooled, states, results)
    dsn = delay.notice(msg, todo, reporting_mta=hostname, now=now, retry_until=retry_until)
    if dsn is None:
        return None
    try:
        qid = await store.inject(dsn, sender="", recipient=msg.sender, delay_notice_for=msg.queue_id)
    except Exception as e:  # noqa: BLE001 - the deferral is recorded; the next one tries again
        log.error("delay notice for %s not spooled: %s", msg.queue_id, e)
        return None
    log.info("delay notice %s for %s to <%s> nrcpt=%d", qid, msg.queue_id, msg.sender, len(todo))
    for rc, res in todo:
        dlog.record(queue_id=msg.queue_id, recipient=rc.address, status="delay_notice", result=res,
                    attempt=attempts.get(rc.index, spooled[rc.index].attempts), arrival=env.arrival, now=now)
    return qid
