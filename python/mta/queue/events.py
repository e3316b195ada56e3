"""Webhook events as JSON texts: an outcome's event is its delivery-log record with "event"
first; "accepted" has the message's envelope. The id is added when sent (mta.queue.webhooks)."""

from __future__ import annotations

import json
import time

from mta import _native
from mta.delivery.deliverylog import DeliveryLog

KINDS = ("delivered", "deferred", "bounced", "accepted")


class EventRecorder:
    """What the queue and the store ask when some webhook wants events: which kinds, and
    the JSON of one. Made only when a webhook is configured (no webhook: no recorder)."""

    def __init__(self, kinds) -> None:
        self.kinds = frozenset(kinds)
        self.delivered = "delivered" in self.kinds
        self.deferred = "deferred" in self.kinds
        self.bounced = "bounced" in self.kinds
        self.accepted_wanted = "accepted" in self.kinds

    def wants(self, kind: str) -> bool:
        return kind in self.kinds

    @staticmethod
    def outcome(kind: str, **record) -> str:
        """The event of an outcome: DeliveryLog.format(**record) with "event" first."""
        line = DeliveryLog.format(**record).rstrip("\n")
        return f'{{"event":"{kind}",{line[1:]}'

    @staticmethod
    def accepted(queue_id: str, sender: str, recipients: list[str], size: int, client_ip: str,
                 arrival: float | None) -> str:
        t = time.time() if arrival is None else arrival
        return json.dumps({"event": "accepted", "time": _native.rfc3339(t), "queue_id": queue_id,
                           "sender": sender, "recipients": recipients, "size": size, "client_ip": client_ip},
                          separators=(",", ":"), ensure_ascii=False)


def kind_of(event_json: str) -> str:
    """The kind of an event this module made ('{"event":"KIND",...')."""
    return event_json[10:event_json.find('"', 10)]
