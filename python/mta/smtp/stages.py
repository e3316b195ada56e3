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

    # A stage runs as `v = self.hooks.run(calls, args)`; then, when `v` is not None,
    # `self._later(v, then, arg)` (True: a hook is waiting, `then(arg, verdict)` comes once it
    # answered), else `then(arg, v)` at once. Spelled out at each stage: a helper call per
    # stage was a measurable part of a plugin's cost.
    def _later(self, r, then, arg) -> bool:
        if not isinstance(r, asyncio.Future):
            return False
        self._waiting = True
        if self._out:
            self._flush()  # the replies before this command go out while the hook works
        self._pending_then = (then, arg)
        r.add_done_callback(self._answered)
        return True

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
            fastlog.info(f"disconnect by policy [{self.peer_ip}]: {v.code} {v.enhanced} {v.text}")
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
        v = self.hooks.run(self.hooks.on_data, (tx, HeaderBlock(tx.message)))
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
        view = tx.view = InflightMessage(tx)
        v = self.hooks.run(self.hooks.on_message, (tx, view))
        if v is None or not self._later(v, self._message_judged, tx):
            self._message_judged(tx, v)
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
        for field in view.trace:  # above the edited block: Authentication-Results, DKIM-Signature
            self.store.prepend(tx.message, field)
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


class HeaderBlock:
    """The read-only header view handed to on_data (a `_native.Headers`), made from the
    message's header block on first use: a hook that does not look costs no copy."""

    __slots__ = ("_m", "_h")

    def __init__(self, message) -> None:
        self._m = message
        self._h = None

    def _view(self):
        if self._h is None:
            try:
                block = self._m.header_block()
            except Exception:  # noqa: BLE001 - a spill error: the end of data reports it
                block = b""
            self._h = _native.Headers(block, readonly=True)
        return self._h

    def __getattr__(self, name: str):
        return getattr(self._view(), name)

    def __len__(self) -> int:
        return len(self._view())

    def __contains__(self, name: str) -> bool:
        return name in self._view()

    def __repr__(self) -> str:
        return repr(self._view())


class InflightMessage(Message):
    """The message at on_message, before it is stored: headers (editable) and body read from
    the in-flight message only when a hook asks; `trace`: whole header fields the built-in
    checks and signer put on top of the message, above every edit, in the order added."""

    __slots__ = ("_m", "trace")

    def __init__(self, tx) -> None:
        self.queue_id = None
        self.sender = tx.sender
        self.recipients = tx.recipients
        self.notes = tx.notes
        self._m = tx.message
        self._headers = None
        self._readonly = False
        self.trace: list[bytes] = []

    def signing_input(self) -> tuple[bytes, object]:
        """(the client's header block as it will be stored, edits included; the in-flight
        `_native.Message`, whose body follows its own header block): what DKIM covers."""
        if self._headers is not None and self._headers.changed:
            return self._headers.block(), self._m
        self._m.finish_headers()
        return self._m.header_block(), self._m

    def add_trace(self, field: bytes) -> None:
        """Put a whole header field (ending in CRLF) on top of the message as stored; the
        later one goes above (a signature over what came before it)."""
        self.trace.append(field)

    @property
    def size(self) -> int:
        return self._m.stored_size

    @property
    def headers(self):
        if self._headers is None:
            m = self._m
            m.finish_headers()  # a message of header fields only: its block ends at its end
            self._headers = _native.Headers(m.header_block())
        return self._headers

    async def body_chunks(self):
        m, offset = self._m, 0
        while block := m.read_at(offset, BODY_BLOCK):
            offset += len(block)
            yield block
