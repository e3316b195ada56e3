"""Postfix's smtp-sink as a bench peer: the ceiling of accept-only workloads. It accepts and
discards (no queue, no disk, no relay), so it takes no part in end-to-end workloads, and it
cannot do TLS (it offers no STARTTLS here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mta.bench.peers.base import Peer, PeerRun, run_quiet
from mta.bench.peers.postfix import PEER as POSTFIX

SMTP_SINK = "/usr/sbin/smtp-sink"


class SmtpSinkPeer(Peer):
    name = "smtp-sink"
    relays = False
    offers_starttls = False
    durability = "none: discards every message (accept-only ceiling)"
    notes = "accept-only: no queue, no relay, no STARTTLS"

    def missing(self, home: Path) -> str | None:
        if not os.path.exists(SMTP_SINK):
            return "not installed: run `mta bench peers setup smtp-sink` (it comes with postfix)"
        return None

    def setup(self, home: Path, say) -> None:
        POSTFIX.setup(home, say)

    def version(self, home: Path) -> str:
        return f"smtp-sink ({POSTFIX.version(home)})"

    def command(self, run: PeerRun) -> list[str]:
        argv = [SMTP_SINK]
        if os.geteuid() == 0:  # smtp-sink refuses to keep root: drop to an unprivileged user
            argv += ["-u", "nobody" if shutil.which("id") and run_quiet(["id", "nobody"]).returncode == 0 else "postfix"]
        return argv + [f"127.0.0.1:{run.port}", "1024"]

    def config_text(self, run: PeerRun) -> str:
        return " ".join(self.command(run))


PEER = SmtpSinkPeer()
