"""The end of a message in the server session (a mixin of `Session`): the checks at end of
data, the hand-over to the store, and the reply from its completion. Invariant: "250 queued"
goes out only after the store made the message durable; until then no further command runs."""

from __future__ import annotations

import logging
import time
from typing import Callable

from mta import _native
from mta import log as fastlog
from mta.policy.chain import FAILED
from mta.smtp.counts import BYTES
from mta.smtp.replies import (
    R_BARE_LF, R_HEADER_TOO_BIG, R_HOPS, R_SHUTDOWN, R_STORE_FAILED, R_TOO_BIG, bdat_chunk, queued,
)
from mta.smtp.state import CLOSED, READY

log = logging.getLogger("mta.session")


class AcceptMixin:
    """Uses Session's slots (`tx`, `store`, `settings`, `guard`, `_waiting`, `_eof`, ...)."""

    __slots__ = ()

    def _begin_message(self) -> None:
        tx = self.tx
        store = self.store
        tx.queue_id = store.new_queue_id()
        tx.message = store.new_message()
        received = _native.received_header(
            helo=self.helo,
            reverse_name=self.rname,
            ip=self.peer_ip,
            hostname=self.settings.hostname,
            protocol=self._protocol(tx.mail.smtputf8),
            queue_id=tx.queue_id,
            recipient=tx.rcpts[0].address if len(tx.rcpts) == 1 else None,
            timestamp=time.time(),
            tls=str(self.tls_info) if self.tls_info is not None else None,
        )
        if self.user is not None and self.profile == "submission":
            tx.received = received  # prepended at the end, above the fix-up
        else:
            store.prepend(tx.message, received)
        self._watching = bool(self.hooks.on_data)

    def _bdat_end(self, last: bool, status: str) -> None:
        if self._bdat_refusal is not None:
            refusal, self._bdat_refusal = self._bdat_refusal, None
            self._reply(refusal)
            return
        if last:
            self._message_end(status)
        else:
            if self._watching:
                self._watch_headers()
            self._out.append(bdat_chunk(self._bdat_size))

    def _message_end(self, status: str) -> None:
        tx = self.tx
        msg = tx.message
        verdict = None
        if status == "bare_lf":
            verdict = R_BARE_LF
        elif status == "too_big":
            verdict = R_TOO_BIG
        elif msg.header_too_big:
            verdict = R_HEADER_TOO_BIG
        elif msg.received_count > self.settings.max_hops:
            verdict = R_HOPS
        if verdict is not None:
            self._finish_transaction()
            self._reply(verdict)
            return
        if self.guard.timer is not None:
            self.guard.data_stopped()
        if tx.received and not self._fix_up(tx):
            return
        if self._hooked_end and not self._message_hooks(tx):
            return  # refused, or a hook is at work (it calls _store)
        self._store(tx)

    def _store(self, tx) -> None:
        """Hand a complete, accepted message to the store; its 250 comes from the completion."""
        msg = tx.message
        if tx.received:
            self.store.prepend(msg, tx.received)  # submission: above the fix-up and any hook's edit
        m = tx.mail
        tx.size = msg.size
        notes = None
        if tx.notes:
            try:
                notes = self._notes(tx)
            except (TypeError, ValueError) as e:  # not JSON, or too big: the plugins' fault
                log.error("transaction notes of %s cannot be stored: %s", tx.queue_id, e)
                self._finish_transaction()
                self._reply(FAILED.reply)  # as a failing hook: the plugins' fault
                return
        # While a message is being made durable the session runs no further command
        # (the replies keep their order, memory stays bounded); its 250 is written from
        # the store's completion, after fdatasync. Pipelined replies go out in one
        # write per read.
        self._waiting = True
        if self._out:
            self._flush()
        # Reading pauses only if the client sends more before the 250 (see
        # data_received): most clients wait, and two epoll_ctl calls per
        # message are a measurable part of the accept path.
        self.store.submit(
            tx.queue_id,
            msg,
            self._stored_callback(tx),
            sender=m.address,
            recipients=tx.final,
            body=m.body,
            smtputf8=m.smtputf8,
            ret=m.ret,
            envid=m.envid,
            helo=self.helo,
            client_ip=self.peer_ip,
            arrival=tx.started,
            notes=notes,
            held=tx.hold,
        )

    def _fix_up(self, tx) -> bool:
        """Submission: the Message-ID and Date a message lacks, put at the top of its own
        header block, so hooks see them and a DKIM signature covers them. False: refused."""
        msg = tx.message
        fixup = self._submission_fixup(msg)
        if not fixup:
            return True
        try:
            msg.finish_headers()
            msg.replace_header_block(fixup + msg.header_block())
        except Exception as e:  # noqa: BLE001 - a spill error: as a failed store
            log.error("cannot add Message-ID/Date to %s: %s", tx.queue_id, e)
            self._finish_transaction()
            self._reply(R_STORE_FAILED)
            return False
        return True

    def _stored_callback(self, tx) -> Callable[[str | None], None]:
        def stored(error: str | None) -> None:
            if error is None:
                self.messages += 1
                fastlog.info(
                    f"queued {tx.queue_id} from=<{tx.mail.address}> nrcpt={len(tx.rcpts)}"
                    f" size={tx.size} client={self.rname or 'unknown'}[{self.peer_ip}]"
                )
                reply = queued(tx.queue_id)
            else:
                log.error("spool write failed for %s: %s", tx.queue_id, error)
                reply = R_STORE_FAILED
            self._waiting = False
            try:
                if self.state is not CLOSED:
                    self._stored_reply(reply)
            finally:
                if error is None and not tx.hold:  # a held message waits for `mta queue release`
                    self.counts[BYTES] += tx.size  # as mta_messages_accepted counts it: at on_durable
                    # After the 250 is written: the client does not wait for its own
                    # message's first delivery step (in a group commit, it still waits
                    # for those of the messages completed before it).
                    self.on_durable(tx.queue_id, tx.final, tx.notes)

        return stored

    def _stored_reply(self, reply: bytes) -> None:
        self._reset()
        self.state = READY
        self._out.append(reply)
        if self._shutdown:
            self._out.append(R_SHUTDOWN)
            self._close()
            return
        if self._eof:
            self._run(())  # what came before the EOF, then goodbye
            if not self._waiting:  # (or after the next message it held)
                self._close()
            return
        self.transport.resume_reading()
        if self._queue:
            self._run(())  # commands that came behind the message
        else:
            self._flush()

