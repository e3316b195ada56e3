"""The server's handle on its spool shard (the only user of `_native.Spool`): records with
completion callbacks or futures, one event-loop wake-up per group-commit batch, reads, and
the free-space guard. Python never opens spool files; the Rust spool does."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from mta import _native
from mta.errors import SpoolError

log = logging.getLogger("mta.spool")

Completion = Callable[[str | None], None]
INLINE_MAX = _native.INLINE_MAX  # bigger messages are read a block at a time (agent/frames.rs)


class SpoolService:
    """Owns one `_native.Spool` shard for the lifetime of the server."""

    def __init__(self, cfg, max_header_size: int, shard: int = 0, hostname: str = "localhost"):
        self.cfg = cfg
        self.hostname = hostname
        self.root = cfg.dir
        try:
            self.spool = _native.Spool(
                cfg.dir,
                shard,
                segment_size=cfg.segment_size,
                spill_threshold=cfg.spill_threshold,
                max_header_size=max_header_size,
                sync=cfg.sync,
                commit_delay=cfg.commit_delay,
                active_limit=cfg.active_limit,
                sync_log=os.environ.get("MTA_TEST_SYNC_LOG") == "1",
            )
        except _native.SpoolError as e:
            raise SpoolError(str(e)) from e
        self._pending: dict[int, Completion] = {}
        self._next_token = 1
        self._free_checked = 0.0
        self._free_ok = True
        self._loop: asyncio.AbstractEventLoop | None = None
        # Per message, straight to the native spool (no Python frame each):
        # new_queue_id() -> str, new_message() -> Message, prepend(message, data).
        self.new_queue_id = self.spool.new_queue_id
        self.new_message = self.spool.new_message
        self.prepend = self.spool.prepend
        # Reads, straight to the native spool as well (the queue asks them per message).
        self.get = self.spool.get  # queue id -> its envelope, or None
        self.message_bytes = self.spool.message_bytes  # queue id -> the stored message, or None
        self.due = self.spool.due  # (now, limit) -> queue ids with a recipient due
        self.next_due = self.spool.next_due  # -> the earliest time one is due, or None
        self.list = self.spool.list  # -> every envelope
        self.gauges = self.spool.gauges  # -> (messages, held ones, the oldest arrival): no envelope read
        # The delivery agent's job encoder (fresh messages' jobs made in Rust from the entry).
        self.encode_jobs = self.spool.encode_jobs
        self._fault_file = os.environ.get("MTA_TEST_FAULT_FILE")
        self._fault_seen: str | None = None
        # Webhook events (mta.queue.events.EventRecorder): None, the default, records none and
        # costs nothing. Set by mta.queue.webhooks.Webhooks, which also swaps `submit` for
        # one that records the "accepted" event with the message when that kind is wanted.
        self.events = None
        self.on_events: Callable[[], None] | None = None  # told when recorded events became durable

    @property
    def recovery_report(self) -> list[str]:
        return list(self.spool.recovery_report)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.spool.notify_fd, self._on_ready)
        if self._fault_file:
            loop.call_soon(self._poll_fault_file)

    def _on_ready(self) -> None:
        for token, error in self.spool.completions():
            done = self._pending.pop(token, None)
            if done is not None:
                try:
                    done(error)
                except Exception:  # a session's bug must not stop the pump
                    log.exception("completion callback failed")

    def keep_fresh(self, on: bool) -> None:
        """Keep new messages' bytes in memory for `encode_jobs` (the agent's fresh jobs)."""
        self.spool.keep_fresh(on)

    def stats(self) -> dict:
        return self.spool.stats()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, queue_id: str, message, done: Completion, *, sender: str, recipients: list,
               body: str | None = None, smtputf8: bool = False, ret: str | None = None,
               envid: str | None = None, helo: str = "", client_ip: str = "",
               arrival: float | None = None, notes: str | None = None, held: bool = False) -> None:
        # Spelled out, not **envelope: once per message, and two dicts of ten items
        # (here and in _then) were a measurable part of it.
        token = self._next_token
        self._next_token += 1
        self._pending[token] = done
        try:
            self.spool.submit(token, queue_id, message, sender=sender, recipients=recipients, body=body,
                              smtputf8=smtputf8, ret=ret, envid=envid, helo=helo, client_ip=client_ip,
                              arrival=arrival, notes=notes, held=held)
        except Exception as e:  # refused before reaching the writer
            self._pending.pop(token, None)
            done(str(e))

    def _then(self, method, done: Completion, *args, **kw) -> None:
        """`method(token, *args, **kw)` with `done(error)` as its completion."""
        token = self._next_token
        self._next_token += 1
        self._pending[token] = done
        try:
            method(token, *args, **kw)
        except Exception as e:  # refused before reaching the writer
            self._pending.pop(token, None)
            done(str(e))

    # --- awaitable forms, for the queue manager ---------------------------

    def _future(self) -> tuple[int, asyncio.Future]:
        fut = self._loop.create_future()
        token = self._next_token
        self._next_token += 1

        def done(error: str | None) -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(None)
            else:
                fut.set_exception(SpoolError(error))

        self._pending[token] = done
        return token, fut

    def _call(self, method, *args) -> asyncio.Future:
        """Submit one record through `method(token, *args)`; the future completes once it is durable."""
        token, fut = self._future()
        try:
            method(token, *args)
        except Exception as e:
            self._pending.pop(token, None)
            fut.set_exception(e)
        return fut

    def update(self, queue_id: str, changes: list, events: list[str] | None = None) -> asyncio.Future:
        """Record recipient states durably: [(index, state, attempts, next_attempt, reply)], or
        6-tuples with the recipient's next route last (a transport string; None clears it).
        `events`: webhook events (JSON texts) made durable in the same batch."""
        if events:
            return self._with_events(self._call(self.spool.update, queue_id, changes, events))
        return self._call(self.spool.update, queue_id, changes)

    def hold(self, queue_id: str, on: bool) -> asyncio.Future:
        """Hold (never due) or release a message durably: a STATE record with the hold flag."""
        return self._call(self.spool.hold, queue_id, on)

    def delay_warned(self, queue_id: str) -> asyncio.Future:
        """Mark the message's delay notice as sent, durably (a STATE record; never cleared):
        `env.delay_warned` from then on, also after a restart."""
        return self._call(self.spool.delay_warned, queue_id)

    def delete(self, queue_id: str, events: list[str] | None = None) -> asyncio.Future:
        if events:
            fut = self._loop.create_future()
            self.delete_then(queue_id, lambda error: fut.done() or (
                fut.set_result(None) if error is None else fut.set_exception(SpoolError(error))), events)
            return fut
        return self._call(self.spool.delete, queue_id)

    def delete_then(self, queue_id: str, done: Completion, events: list[str] | None = None) -> None:
        """`delete` with a completion callback instead of a future (the queue's callback lane)."""
        if events:
            self.delete_many_then([queue_id], lambda _ids, error: done(error), events)
            return
        self._then(self.spool.delete, done, queue_id)

    def delete_many_then(self, queue_ids: list[str], done: Callable[[list[str], str | None], None],
                         events: list[str] | None = None, delivered_log: str | None = None) -> None:
        """`delete` of several messages made durable by one sync, with one completion:
        `done(ids, error)` for the known ones once their DELETE records are synced (error
        None) or failed, and, at once, for any unknown ones with their error. `events`: webhook
        events recorded with them; `delivered_log`: delivery-log lines (the delivery agent's)
        whose "delivered" events the spool makes and records with them."""
        token = self._next_token
        self._next_token += 1
        try:
            if delivered_log:
                unknown = self.spool.delete_many(token, queue_ids, events, delivered_log=delivered_log)
            elif events:
                unknown = self.spool.delete_many(token, queue_ids, events)
            else:
                unknown = self.spool.delete_many(token, queue_ids)
        except Exception as e:  # refused before reaching the writer (a closed spool)
            done(queue_ids, str(e))
            return
        known = queue_ids
        if unknown:
            gone = set(unknown)
            known = [q for q in queue_ids if q not in gone]
            done(unknown, "unknown queue id")
        if known:
            if events or delivered_log:
                self._pending[token] = lambda error: (done(known, error), error is None and self._events_durable())
            else:
                self._pending[token] = lambda error: done(known, error)

    # --- webhook events (mta.queue.webhooks) ---------------------------------

    def _with_events(self, fut: asyncio.Future) -> asyncio.Future:
        fut.add_done_callback(lambda f: f.cancelled() or f.exception() or self._events_durable())
        return fut

    def _events_durable(self) -> None:
        if self.on_events is not None:
            self.on_events()

    def submit_with_events(self, queue_id: str, message, done: Completion, **envelope) -> None:
        """`submit` that records the "accepted" event with the message (swapped in for `submit`
        by mta.queue.webhooks when a webhook wants that kind); the spool makes its JSON."""
        token = self._next_token
        self._next_token += 1
        self._pending[token] = lambda error: (done(error), error is None and self._events_durable())
        try:
            self.spool.submit(token, queue_id, message, accepted_event=True, **envelope)
        except Exception as e:  # refused before reaching the writer
            self._pending.pop(token, None)
            done(str(e))

    def record_events(self, events: list[str]) -> asyncio.Future:
        """Events on their own, durable once the future completes."""
        token, fut = self._future()
        try:
            if not self.spool.record_events(token, events):
                self._pending.pop(token, None)
                fut.set_result(None)
        except Exception as e:
            self._pending.pop(token, None)
            fut.set_exception(e)
        return self._with_events(fut)

    def ack_events(self, name: str, upto: int) -> asyncio.Future:
        """Webhook `name` has every event up to seq `upto`: durable once the future completes."""
        return self._call(self.spool.ack_events, name, upto)

    def events_after(self, name: str, limit: int) -> list[tuple[int, str, float, str]]:
        return self.spool.events_after(name, limit)

    def events_body(self, name: str, limit: int, kinds: list[str] | None = None) -> tuple[bytes, int, int, int, int]:
        """The next POST of webhook `name`: (body, first seq, last seq, events taken, records in
        the body), only `kinds` in the body (None: all); made in Rust, no tuple per event."""
        return self.spool.events_body(name, limit, kinds)

    def event_backlog(self, name: str, nth: int = 0) -> tuple[int, int | None]:
        return self.spool.event_backlog(name, nth)

    def set_event_names(self, names: list[str]) -> None:
        self.spool.set_event_names(names)

    async def inject(self, data: bytes, *, sender: str, recipient: str,
                     delay_notice_for: str | None = None) -> str:
        """Spool a message we made ourselves (a DSN); its queue id once durable.
        `delay_notice_for`: it is the delay notice about that queue id, which is marked
        delay_warned by the same sync (the flag first: a crash never keeps the notice
        without it)."""
        qid = self.spool.new_queue_id()
        message = self.spool.new_message()
        message.push(data)
        token, fut = self._future()
        body = "8BITMIME" if any(b > 127 for b in data) else None
        try:
            self.spool.submit(token, qid, message, sender=sender, recipients=[(recipient, None, None)],
                              body=body, helo=self.hostname, client_ip="127.0.0.1",
                              delay_notice_for=delay_notice_for)
        except Exception as e:
            self._pending.pop(token, None)
            raise SpoolError(str(e)) from e
        await fut
        return qid

    def message_data(self, queue_id: str, size: int):
        """The message for a delivery attempt: its bytes when small, else where it is
        stored (`_native.StoredMessage`, read a block at a time by whoever sends it, the
        delivery agent included), so no attempt holds a big message whole. None: gone."""
        if size <= INLINE_MAX:
            return self.spool.message_bytes(queue_id)
        return self.spool.locate(queue_id)

    def header_block(self, queue_id: str, size: int, limit: int = 1024 * 1024) -> bytes:
        """The stored message's header block (our Received first; up to, not including, the
        empty line), read a block at a time from a big one; b"" when it is gone."""
        data = b""
        if size <= INLINE_MAX:
            data = self.spool.message_bytes(queue_id) or b""
        else:
            where = self.spool.locate(queue_id)
            if where is not None:
                reader = where.open()
                while len(data) <= limit and b"\n\r\n" not in data and b"\n\n" not in data:
                    block = reader.read(65536)
                    if not block:
                        break
                    data += block
        return header_part(data)

    async def chunks(self, queue_id: str, size: int, block: int = INLINE_MAX):
        """The stored message a block at a time (an async iterator; never a whole copy of a big one)."""
        if size <= INLINE_MAX:
            data = self.spool.message_bytes(queue_id)
            if data:
                yield data
            return
        where = self.spool.locate(queue_id)
        if where is None:
            return
        reader = where.open()
        while chunk := reader.read(block):
            yield chunk

    def has_room(self) -> bool:
        """False when free space is below spool.min_free_space (checked at most once a second)."""
        minimum = self.cfg.min_free_space
        if not minimum:
            return True
        now = time.monotonic()
        if now - self._free_checked > 1.0:
            self._free_checked = now
            try:
                st = os.statvfs(self.root)
                self._free_ok = st.f_bavail * st.f_frsize >= minimum
            except OSError:
                self._free_ok = False
        return self._free_ok

    def _poll_fault_file(self) -> None:
        # Test hook (MTA_TEST_FAULT_FILE): "write 28" / "sync 5" / empty.
        try:
            with open(self._fault_file) as f:
                spec = f.read().strip()
        except OSError:
            spec = ""
        if spec != self._fault_seen:
            self._fault_seen = spec
            if spec:
                kind, _, err = spec.partition(" ")
                self.spool.inject_fault(kind, int(err or 28))
            else:
                self.spool.inject_fault(None)
            log.warning("test fault injection: %r", spec or "cleared")
        if self._loop is not None:
            self._loop.call_later(0.2, self._poll_fault_file)

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.spool.notify_fd)
            except Exception:
                pass
        self.spool.close()
        self._on_ready_final()

    def _on_ready_final(self) -> None:
        # close() completed everything; deliver the last completions.
        try:
            self._on_ready()
        except Exception:
            pass


def header_part(data: bytes) -> bytes:
    """Up to, not including, the empty line that ends the header block (the lines before it)."""
    if data.startswith((b"\r\n", b"\n")):
        return b""
    ends = [(i + keep) for sep, keep in ((b"\n\r\n", 1), (b"\n\n", 1)) if (i := data.find(sep)) >= 0]
    return data[:min(ends)] if ends else data
