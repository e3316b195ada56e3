"""The session's hook stages (a mixin of `Session`): each asks the chain (mta.policy.chain) and
goes on with its verdict, at once when every hook answered at once, else once they have; while
a stage waits the session runs no further command, as while a message is being stored."""

from __future__ import annotations

import asyncio
import json
import logging

from mta import _native
from mta import log as fastlog
from mta.plugin import Disconnect, Message
from mta.policy.chain import FAILED
from mta.smtp.state import CLOSED

log = logging.getLogger("mta.plugin")
NOTES_MAX = 64 * 1024  # the spool's cap on a transaction's notes
BODY_BLOCK = 256 * 1024


class StagesMixin:
    """Uses Session's slots: `hooks` (the chain), `conn`, `tx`, `_waiting`, `_pending_then`."""

    __slots__ = ()

    def _ask(self, calls: tuple, args: tuple, then, arg) -> None:
        """Run a stage; `then(arg, verdict)` (verdict None: go on) now, or once the hooks answered."""
        r = self.hooks.run(calls, args)
        if not isinstance(r, asyncio.Future):
            then(arg, r)
            return
        self._waiting = True
        if self._out:
            self._flush()  # the replies before this command go out while the hook works
        self._pending_then = (then, arg)
        r.add_done_callback(self._answered)

    def _answered(self, fut: asyncio.Future) -> None:
        then, arg = self._pending_then
        self._pending_then = None
        self._waiting = False
        if self._closing or self.state is CLOSED:
            return
        v = FAILED if fut.cancelled() or fut.exception() is not None else fut.result()
        then(arg, v)
        self._go_on()

    def _go_on(self) -> None:
        """After a wait: what the client sent meanwhile, then reading again."""
        if self._closing or self._waiting:
            if self._out:
                self._flush()
            return
        if self._eof:
            self._run(())
            if not self._waiting:
                self._close()
            return
        if not self._held:
            self.transport.resume_reading()
        self._run(())
        if self._out:
            self._flush()

    def _refuse(self, v) -> None:
        """A hook's refusal as the reply to this command (Disconnect: then close)."""
        if type(v) is Disconnect:
            fastlog_refusal(self, v)
            self._limit_close(v.reply)
        else:
            self._reply(v.reply)

    # --- on_data: the header block, as soon as it is complete ----------------------------

    def _watch_headers(self) -> None:
        """Called as message bytes arrive: fire on_data once the header block is complete."""
        tx = self.tx
        msg = tx.message
        if msg.header_done or msg.header_too_big:
            self._on_data(tx)

    def _on_data(self, tx) -> None:
        self._watching = False
        try:
            block = tx.message.header_block()
        except Exception:  # noqa: BLE001 - a spill error: the end of data reports it
            block = b""
        v = self.hooks.run(self.hooks.on_data, (tx, _native.Headers(block, readonly=True)))
        tx.data_verdict = v
        if isinstance(v, asyncio.Future):
            v.add_done_callback(lambda fut, tx=tx: self._data_answered(tx, fut))
        elif v is not None:
            tx.message.discard()  # refused: the rest of the body is not kept

    def _data_answered(self, tx, fut: asyncio.Future) -> None:
        v = FAILED if fut.cancelled() or fut.exception() is not None else fut.result()
        tx.data_verdict = v
        if v is not None and tx.message is not None:
            tx.message.discard()
        if self._data_wait is tx:  # the end of data came first and waits for this
            self._data_wait = None
            self._waiting = False
            if self._closing or self.state is CLOSED:
                return
            self._message_end_hooked(tx)
            self._go_on()

    # --- on_message: the whole message, before the 250 -------------------------------------

    def _message_hooks(self, tx) -> bool:
        """Run on_data's verdict and on_message for a complete message; True when the message
        goes on to the store now (else it was refused or waits for a hook)."""
        if self._watching:
            self._on_data(tx)
        v = tx.data_verdict
        if isinstance(v, asyncio.Future):
            self._waiting = True
            self._data_wait = tx
            return False
        if v is not None:
            self._message_refused(v)
            return False
        if not self.hooks.on_message:
            return True
        view = Message(None, tx.message.stored_size, tx.sender, tx.recipients, tx.notes, tx.message.header_block,
                       lambda m=tx.message: _chunks(m), readonly=False)
        tx.view = view
        self._ask(self.hooks.on_message, (tx, view), self._message_judged, tx)
        return False

    def _message_judged(self, tx, v) -> None:
        if v is not None:
            self._message_refused(v)
            return
        view = tx.view
        tx.view = None
        if view.edited:
            try:
                tx.message.replace_header_block(view.headers.block())
            except Exception as e:  # noqa: BLE001 - as a failed hook: nothing stored
                log.error("header edits of the on_message hooks cannot be applied to %s: %s", tx.queue_id, e)
                self._message_refused(FAILED)
                return
        self._store(tx)

    def _message_end_hooked(self, tx) -> None:
        if self._message_hooks(tx):
            self._store(tx)

    def _message_refused(self, v) -> None:
        self._finish_transaction()
        self._refuse(v)

    def _notes(self, tx) -> str | None:
        """The transaction's notes as stored (JSON), None for none; raises ValueError."""
        if not tx.notes:
            return None
        text = json.dumps(tx.notes, separators=(",", ":"), allow_nan=False)
        if len(text.encode()) > NOTES_MAX:
            raise ValueError(f"transaction notes exceed {NOTES_MAX} bytes")
        return text


async def _chunks(message):
    """The in-flight message's bytes (our Received header first), a block at a time."""
    offset = 0
    while True:
        block = message.read_at(offset, BODY_BLOCK)
        if not block:
            return
        offset += len(block)
        yield block


def fastlog_refusal(session, v) -> None:
    fastlog.info(f"disconnect by policy [{session.peer_ip}]: {v.code} {v.enhanced} {v.text}")
