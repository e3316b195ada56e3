"""A worker's event webhooks (mta.queue.webhook_sender has the sender of each): the events the
store records for the kinds some webhook wants, and the senders' start, stop and counters. With
no [[webhook]] nothing is made, and aiohttp (~85 ms to import) is not loaded."""

from __future__ import annotations

import asyncio

from mta.queue.events import EventRecorder
from mta.queue.store import SpoolService


class Webhooks:
    """The worker's senders, and the recording switched on in its store for the kinds some
    webhook wants. With no [[webhook]] nothing is made and nothing changes."""

    def __init__(self, specs, store: SpoolService) -> None:
        self.senders = []
        if specs:
            from mta.queue.webhook_sender import WebhookSender

            self.senders = [WebhookSender(s, store) for s in specs]
        # The spool keeps events only for the configured names (a removed webhook's go).
        store.set_event_names([s.name for s in self.senders])
        # Set whole each time, so a new Webhooks (a reload, after the old one's stop) replaces
        # the old one's recording rather than adding to it.
        store.__dict__.pop("submit", None)
        store.events = EventRecorder(k for s in specs for k in s.events) if self.senders else None
        store.on_events = self._wake if self.senders else None
        if store.events is not None and store.events.accepted_wanted:
            store.submit = store.submit_with_events

    def _wake(self) -> None:
        for s in self.senders:
            s.wake()

    def start(self) -> None:
        for s in self.senders:
            s.start()

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(s.stop(grace) for s in self.senders))

    def metrics_series(self) -> list[list]:
        """For /metrics (mta.app.metrics), at its once-a-second tick: each sender's counters
        and the events its webhook has still to receive."""
        out = []
        for s in self.senders:
            out.append(["mta_webhook_events", {"webhook": s.name, "result": "sent"}, s.sent])
            out.append(["mta_webhook_events", {"webhook": s.name, "result": "dropped"}, s.dropped])
            out.append(["mta_webhook_failures", {"webhook": s.name}, s.failures])
            out.append(["mta_webhook_backlog", {"webhook": s.name}, s.store.event_backlog(s.name)[0]])
        return out
