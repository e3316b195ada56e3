"""What plugins see on the queue side: a queued message (its envelope, headers and body read
from the store only when a hook asks) and a delivery event. Nothing here decides anything."""

from __future__ import annotations

import json

from mta import _native
from mta.delivery import RcptResult
from mta.plugin import DeliveryEvent, Message, Reply
from mta.queue.store import SpoolService


class QueuedMessage(Message):
    """A queued message as route hooks see it: the envelope read from the store on first
    use (most hooks look at the address and the notes only), headers and body on demand."""

    __slots__ = ("_store", "_env", "_notes")

    def __init__(self, queue_id: str, notes: dict | None, store: SpoolService, env=None) -> None:
        """`notes`: the transaction's notes when known (from the session), None: read them."""
        self.queue_id = queue_id
        self._notes = notes
        self._store = store
        self._env = env
        self._headers = None
        self._readonly = True

    def _envelope(self):
        if self._env is None:
            self._env = self._store.get(self.queue_id)
            if self._env is None:
                raise LookupError(f"{self.queue_id} is no longer queued")
        return self._env

    @property
    def notes(self) -> dict:
        if self._notes is None:
            self._notes = notes_of(self._envelope())
        return self._notes

    @property
    def size(self) -> int:
        return self._envelope().size

    @property
    def sender(self) -> str:
        return self._envelope().sender

    @property
    def recipients(self) -> list[str]:
        return [r.address for r in self._envelope().recipients]

    @property
    def headers(self):
        if self._headers is None:
            self._headers = _native.Headers(self._store.header_block(self.queue_id, self.size), readonly=True)
        return self._headers

    def body_chunks(self):
        return self._store.chunks(self.queue_id, self.size)


def notes_of(env) -> dict:
    """The transaction's notes stored with the message ({} for none)."""
    text = env.notes
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:  # cannot happen for notes we stored; never fail a delivery for it
        return {}


def event(qid: str, address: str, res: RcptResult, attempt: int, next_attempt: float | None,
           notes: dict) -> DeliveryEvent:
    return DeliveryEvent(qid, address, Reply(res.code, res.enhanced, res.text), attempt, res.remote_host,
                         res.remote_ip, next_attempt, notes)
