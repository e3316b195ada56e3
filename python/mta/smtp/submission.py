"""SMTP AUTH (RFC 4954) for the server session: a mixin of `Session`, the socket side
of mta.auth. Invariants: AUTH only on submission listeners, over TLS, with a user file;
a password never reaches a log line; failures are tarpitted and end in 421 4.7.0."""

from __future__ import annotations

import asyncio

from mta import log as fastlog
from mta.auth.headers import add_missing_headers
from mta.smtp.replies import (
    R_AUTH_BLOCKED, R_AUTH_FAILED, R_AUTH_IN_TX, R_AUTH_NEED_TLS, R_AUTH_OK, R_AUTH_TWICE,
    R_HELO_FIRST, R_NOT_IMPL,
)
from mta.smtp.sasl import SaslExchange, SaslStep


class SubmissionMixin:
    """AUTH for Session: `user` (the authenticated login or None), `sasl` (the
    exchange in progress), `auth_ok` (AUTH may be offered right now), `auth_required`
    (MAIL needs AUTH first: a submission listener with a user file); their slots are
    Session's, as are the collaborators used here: `users`, `auth_guard`, `hooks`
    and `settings` (the sender-login map is a built-in entry of the hook chain)."""

    __slots__ = ()

    # The parser pauses after each AUTH command (set_auth_pause), so the SASL
    # responses are read as raw lines, never as commands.
    def _auth_setup(self) -> None:
        """At connect (implicit TLS) and after each STARTTLS handshake: forget any
        login, decide whether AUTH is offered, and tell the (new) parser."""
        self.user = None
        self.sasl = None
        self.auth_ok = self.auth_required and self.tls_info is not None
        if self.auth_ok:  # (a new parser does not pause)
            self.parser.set_auth_pause(True)

    # --- the AUTH command ---------------------------------------------------

    def _auth(self, arg: str) -> None:
        if not self.auth_ok:
            # The parser did not pause: AUTH is an ordinary command here.
            self._reply(R_AUTH_NEED_TLS if self.auth_required else R_NOT_IMPL)
            return
        if self.state.name == "FRESH":
            refusal = R_HELO_FIRST
        elif self.user is not None:
            refusal = R_AUTH_TWICE
        elif self.tx is not None:
            refusal = R_AUTH_IN_TX
        else:
            refusal = None
        if refusal is None and self.auth_guard.blocked(self.peer_ip):
            fastlog.info(f"AUTH refused from [{self.peer_ip}]: too many failures")
            self._limit_close(R_AUTH_BLOCKED)
            return
        if refusal is not None:
            self._reply(refusal)
            self._queue.extend(self.parser.resume())
            return
        self.sasl = SaslExchange()
        self._sasl_step(self.sasl.start(arg))

    def _sasl_line(self, line: bytes) -> None:
        """A ("line", raw) event: the client's answer to our 334."""
        if self.sasl is None:  # cannot happen: lines come only after take_line()
            self._queue.extend(self.parser.resume())
            return
        self._sasl_step(self.sasl.feed(line))

    def _sasl_error(self) -> None:
        """An ("error", ...) event during the exchange (a line too long): the
        parser left line mode; the exchange is over."""
        self.sasl = None

    def _sasl_step(self, step: SaslStep) -> None:
        if step.kind == "challenge":
            self._out.append(step.reply)
            self._queue.extend(self.parser.take_line())
            return
        mechanism, self.sasl = self.sasl.mechanism, None
        if step.kind == "reply" and not step.failure:
            self._reply(step.reply)  # 501 / 504: no credentials were tried
            self._queue.extend(self.parser.resume())
            return
        # Credentials to check (scrypt, in a thread) or a failure to tarpit:
        # read nothing more until the answer is out.
        self._waiting = True
        self._flush()
        self.transport.pause_reading()
        asyncio.ensure_future(self._finish_auth(step, mechanism))

    async def _finish_auth(self, step: SaslStep, mechanism: str) -> None:
        guard = self.auth_guard
        ok = False
        if step.kind == "verify":
            try:
                ok = await self.users.verify(step.user, step.password)
            except Exception as e:  # noqa: BLE001 - an executor failure fails this login only
                fastlog.info(f"AUTH check failed for [{self.peer_ip}]: {type(e).__name__}")
        if self._gone():
            return
        if ok:
            guard.succeeded(self.peer_ip, step.user)
            verdict = None
            if self.hooks.on_auth:
                self.conn.auth_user = step.user
                verdict = self.hooks.run(self.hooks.on_auth, (self.conn, step.user))
                if isinstance(verdict, asyncio.Future):
                    verdict = await verdict
                if self._gone():
                    return
            self._waiting = False
            if verdict is None:
                self.user = self.conn.auth_user = step.user
                self._out.append(R_AUTH_OK)
            else:  # a plugin refuses this login: as if it had not happened
                self.conn.auth_user = None
                self._refuse(verdict)
                if self._closing:
                    return
        else:
            guard.failed(self.peer_ip, step.user or None, mechanism)
            delay = guard.delay(self.peer_ip, step.user or None)
            if delay > 0:
                await asyncio.sleep(delay)
                if self._gone():
                    return
            self._waiting = False
            if guard.blocked(self.peer_ip):
                self._limit_close(R_AUTH_BLOCKED)
                return
            self._reply(R_AUTH_FAILED)
            if self._closing:
                return
        events = self.parser.resume()
        if not self._held:
            self.transport.resume_reading()
        self._run(events)

    def _gone(self) -> bool:
        return self._closing or self.state.name == "CLOSED"

    # --- what AUTH changes ----------------------------------------------------

    def _protocol(self, smtputf8: bool) -> str:
        """The Received header's "with": RFC 3848 and RFC 6531 names."""
        if not self.esmtp:
            return "SMTP"
        proto = "UTF8SMTP" if smtputf8 else "ESMTP"
        if self.tls_info is not None:
            proto += "S"
        if self.user is not None:
            proto += "A"
        return proto

    def _submission_fixup(self, msg) -> bytes:
        """Message-ID and Date for authenticated submission, when missing."""
        if self.user is None or self.profile != "submission":
            return b""
        return add_missing_headers(msg.header_block(), hostname=self.settings.hostname)
