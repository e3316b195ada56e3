"""Webhook events as JSON texts: an outcome's event is its delivery-log record with "event"
first; "accepted" has the message's envelope. The id is added when sent (Spool.events_body)."""

from __future__ import annotations

import time
from json.encoder import encode_basestring as _quote  # the C escaper: '"' + text + '"'

from mta import _native
from mta.delivery.deliverylog import DeliveryLog

KINDS = ("delivered", "deferred", "bounced", "accepted")


def _clean(value):
    """A string with its lone surrogates (a peer's undecodable reply bytes) as \\udcXX escapes:
    the spool stores UTF-8, and inside a JSON string the escape is valid JSON."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


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
        try:
            line = DeliveryLog.format(**record)
        except UnicodeEncodeError:  # a lone surrogate in a reply: never lose the outcome for it
            res = record.get("result")
            if res is not None:
                record["result"] = res._make(_clean(v) for v in res)
            line = DeliveryLog.format(**{k: _clean(v) for k, v in record.items()})
        return f'{{"event":"{kind}",{line[1:-2]}}}'

    @staticmethod
    def accepted(queue_id: str, sender: str, recipients: list[str], size: int, client_ip: str,
                 arrival: float | None) -> str:
        """The "accepted" event's JSON. The store has the spool make it at submit
        (rust/src/spool/events.rs, `accepted_json`); this is its reference (tests compare them)."""
        # Made by hand: json.dumps with separators was 4x the time.
        t = time.time() if arrival is None else arrival
        text = '{"event":"accepted","time":"%s","queue_id":%s,"sender":%s,"recipients":[%s],"size":%d,' \
               '"client_ip":%s}' % (_native.rfc3339(t), _quote(queue_id), _quote(sender),
                                    ",".join(map(_quote, recipients)), size, _quote(client_ip))
        return text if text.isascii() else _clean(text)


def kind_of(event_json: str) -> str:
    """The kind of an event this module made ('{"event":"KIND",...')."""
    return event_json[10:event_json.find('"', 10)]
