"""Outbound delivery: the shared vocabulary of every transport.

A transport takes one `OutMessage` (envelope + stored bytes) and returns one
`RcptResult` per recipient; the queue manager turns results into spool state
records, retries and bounces. Reply codes decide: 2xx delivered, 4xx
deferred, 5xx bounced. Failures that are not SMTP replies (connection
refused, timeout, DNS) are expressed as synthetic replies with enhanced
codes (RFC 3463), so one rule covers them all.
"""

from __future__ import annotations

from typing import NamedTuple

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
        """"delivered" | "deferred" | "bounced", from the reply class."""
        if 200 <= self.code < 300:
            return "delivered"
        if 400 <= self.code < 500:
            return "deferred"
        return "bounced"

    def reply(self) -> str:
        """The reply as one line, the way logs and DSNs quote it."""
        enh = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{enh} {self.text}"


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
