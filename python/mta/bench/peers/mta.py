"""mta itself as a bench peer: the installed package's server with the benchmark tuning
(reverse DNS off, as Postfix's peer has it), STARTTLS offered and tried outbound, relaying
every message to the sink. Its durability is the default: fdatasync before the 250."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mta.bench.peers.base import Peer, PeerRun

CONFIG = """\
# mta as a `mta bench` peer: the defaults, except what the Postfix peer also turns off
# (reverse DNS of clients) and the tuning of a host dedicated to the relay.
cpu_affinity = "auto"
[smtp]
reverse_dns = false

[delivery]
tls = "opportunistic"

[tls]
cert = "{cert}"
key = "{key}"
"""


class MtaPeer(Peer):
    name = "mta"
    durability = "fdatasync of the spool before the 250 (group commit across sessions; the default)"

    def missing(self, home: Path) -> str | None:
        return None

    def setup(self, home: Path, say) -> None:
        say("mta: nothing to install (this package)")

    def version(self, home: Path) -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"mta {version('mta')}"
        except PackageNotFoundError:
            import mta

            return f"mta {getattr(mta, '__version__', '?')} (source tree)"

    def config_text(self, run: PeerRun) -> str:
        return CONFIG.format(cert=run.cert, key=run.key)

    def prepare(self, run: PeerRun) -> None:
        (run.work / "mta.toml").write_text(self.config_text(run))

    def command(self, run: PeerRun) -> list[str]:
        return [run.python or sys.executable, "-m", "mta", "run", "--config", str(run.work / "mta.toml"),
                "--listen", f"127.0.0.1:{run.port}", "--spool", str(run.work / "spool"),
                "--hostname", run.hostname, "--relay-to", f"127.0.0.1:{run.sink_port}"]

    def drained(self, run: PeerRun) -> bool:
        r = subprocess.run([run.python or sys.executable, "-m", "mta", "queue", "list", "--spool",
                            str(run.work / "spool"), "--json"], capture_output=True, text=True, timeout=60)
        return r.returncode == 0 and r.stdout.strip() == "[]"


PEER = MtaPeer()
