"""LMTP client (RFC 2033): the SMTP client with LHLO and one reply per accepted recipient
after the data. Targets are TCP or a unix socket (`unix_target`: the path as host, "unix"
as ip); no HELO fallback, no TLS over a unix socket."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from mta.delivery import OutMessage, RcptResult, Target
from mta.delivery.smtp.client import SmtpDelivery, SmtpOptions

__all__ = ["LmtpDelivery", "SmtpOptions", "unix_target"]


def unix_target(path: str) -> Target:
    """The Target for an LMTP server on a unix socket."""
    return Target(path, "unix", 0)


class LmtpDelivery(SmtpDelivery):
    """`SmtpDelivery` that always speaks LMTP, whatever opts.lmtp says."""

    async def deliver(self, key: str, targets: Sequence[Target], opts: SmtpOptions,
                      msg: OutMessage) -> list[RcptResult]:
        if not opts.lmtp:
            opts = dataclasses.replace(opts, lmtp=True)
        return await super().deliver(key, targets, opts, msg)
