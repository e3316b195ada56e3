"""Outbound delivery's vocabulary: a transport takes an `OutMessage` and gives one
`RcptResult` per recipient, whose `Outcome` (delivered/deferred/bounced) follows from
the reply code by one rule (`status_of`); failures that are no reply get synthetic ones."""

from __future__ import annotations

from typing import NamedTuple

DELIVERED, DEFERRED, BOUNCED = "delivered", "deferred", "bounced"
FINAL = (DELIVERED, BOUNCED)  # no further attempt follows


def status_of(code: int) -> str:
    """The one rule: 2xx delivered, 4xx deferred, anything else bounced. Failures that
    are not SMTP replies (connection refused, timeout, DNS) come as synthetic 4xx
    replies with RFC 3463 codes, so this covers them too."""
    if 200 <= code < 300:
        return DELIVERED
    if 400 <= code < 500:
        return DEFERRED
    return BOUNCED


# Value types are NamedTuples: immutable like frozen dataclasses, and several are
# made per message on both sides of the agent's socket, where a frozen dataclass
# costs five times as much to construct.


class OutRcpt(NamedTuple):
    address: str
    notify: tuple[str, ...] | None = None  # DSN NOTIFY as received
    orcpt: str | None = None  # DSN ORCPT as received ("rfc822;addr")
    index: int = 0  # position in the spooled envelope (for state records)


class OutMessage(NamedTuple):
    queue_id: str
    sender: str  # "" for the null sender
    recipients: tuple[OutRcpt, ...]
    # The stored message (our Received header, then the client's bytes): bytes, or for a
    # big one where it is stored (_native.StoredMessage, read a block at a time).
    data: bytes
    body: str | None = None  # "7BIT" | "8BITMIME" | None
    smtputf8: bool = False
    ret: str | None = None  # DSN RET: "FULL" | "HDRS"
    envid: str | None = None
    arrival: float = 0.0


class RcptResult(NamedTuple):
    address: str
    code: int
    enhanced: str | None
    text: str
    remote_host: str | None = None
    remote_ip: str | None = None
    # TLS-RPT-style facts about the session (None where no SMTP session was tried):
    tls: str | None = None  # "none" | "opportunistic" | "verified" | "failed"
    policy: str | None = None  # "mta-sts-enforce" | "mta-sts-testing" | "none" (mx deliveries)
    tls_failure: str | None = None  # a TLS-RPT result type, e.g. "starttls-not-supported";
    # with policy "mta-sts-testing" and a delivered status: what would have failed under enforce

    @property
    def status(self) -> str:
        """DELIVERED | DEFERRED | BOUNCED (`status_of` the code)."""
        return status_of(self.code)

    @property
    def outcome(self) -> Outcome:
        return Outcome(status_of(self.code), self.code, self.enhanced, self.text)

    def reply(self) -> str:
        """The reply as one line, the way logs and DSNs quote it."""
        return _reply_line(self.code, self.enhanced, self.text)


class Outcome(NamedTuple):
    """What became of one recipient in one attempt: the status and the reply that decided it."""

    status: str  # DELIVERED | DEFERRED | BOUNCED
    code: int
    enhanced: str | None
    text: str

    @classmethod
    def of(cls, code: int, enhanced: str | None, text: str) -> Outcome:
        return cls(status_of(code), code, enhanced, text)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def reply(self) -> str:
        return _reply_line(self.code, self.enhanced, self.text)


def _reply_line(code: int, enhanced: str | None, text: str) -> str:
    enh = f" {enhanced}" if enhanced else ""
    return f"{code}{enh} {text}"


class Target(NamedTuple):
    """One address to try for a destination, in order."""

    host: str  # the name (MX host or configured host), for TLS checks and logs
    ip: str
    port: int


def results_for(msg: OutMessage, code: int, enhanced: str, text: str,
                host: str | None = None, ip: str | None = None, *, tls: str | None = None,
                policy: str | None = None, tls_failure: str | None = None) -> list[RcptResult]:
    """The same result for every recipient (connection-level outcomes)."""
    return [RcptResult(r.address, code, enhanced, text, host, ip, tls, policy, tls_failure)
            for r in msg.recipients]
