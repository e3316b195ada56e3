"""aiosmtpd as a bench peer: the PyPI package on uvloop, with a handler relaying each message
to the sink before its 250 (`aiosmtpd_relay`). Nothing is queued or stored, so it is always
drained; its setup is a pip install into the interpreter that runs mta."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

from mta.bench.peers.base import Peer, PeerRun, SetupError, run_quiet

RELAY_MODULE = "mta.bench.peers.aiosmtpd_relay"


class AiosmtpdPeer(Peer):
    name = "aiosmtpd"
    durability = "none: no queue, no fsync: a message is relayed before the 250; nothing is stored"
    notes = ("no queue: a message is relayed before the 250; nothing is stored (aiosmtpd on uvloop, "
             "one kept sink connection per inbound session, a sink refusal is the client's reply)")

    def missing(self, home: Path) -> str | None:
        importlib.invalidate_caches()  # a pip install in this process must be seen
        if importlib.util.find_spec("aiosmtpd") is None:
            return "not installed: run `mta bench peers setup aiosmtpd` (pip install aiosmtpd)"
        return None

    def setup(self, home: Path, say) -> None:
        if self.missing(home) is None:
            say(f"aiosmtpd: installed ({self.version(home)})")
            return
        say(f"{sys.executable} -m pip install aiosmtpd")
        try:
            r = run_quiet([sys.executable, "-m", "pip", "install", "--quiet", "aiosmtpd"], timeout=600)
        except subprocess.TimeoutExpired:
            raise SetupError("pip install aiosmtpd did not finish within 600 s") from None
        if r.returncode != 0:
            raise SetupError(f"pip install aiosmtpd failed: {(r.stderr or r.stdout).strip()[-400:]}")
        why = self.missing(home)
        if why:
            raise SetupError(f"pip install aiosmtpd succeeded but it is still {why}")

    def version(self, home: Path) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"aiosmtpd {version('aiosmtpd')}"
        except PackageNotFoundError:
            return "aiosmtpd (not installed)"

    def command(self, run: PeerRun) -> list[str]:
        return [run.python or sys.executable, "-m", RELAY_MODULE, "--listen", f"127.0.0.1:{run.port}",
                "--relay", f"127.0.0.1:{run.sink_port}", "--cert", run.cert, "--key", run.key,
                "--hostname", run.hostname]

    def drained(self, run: PeerRun) -> bool:
        return True  # nothing is ever queued: a message is relayed before its 250

    def config_text(self, run: PeerRun) -> str:
        return " ".join(self.command(run))


PEER = AiosmtpdPeer()
