"""Postfix (Debian's package) as a bench peer: a separate instance whose main.cf is written
from empty as in ../shared/BENCHMARKING.md, config and queue under the peer's home, the smtp
inet line moved to a loopback port; the system's Postfix instance is never touched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mta.bench.peers.base import Peer, PeerRun, SetupError, apt_install, run_quiet

POSTFIX = "/usr/sbin/postfix"
_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


def _settings(run: PeerRun, queue: Path, data: Path) -> list[str]:
    return [
        "compatibility_level=3.6", f"myhostname={run.hostname}", "mydomain=bench.test", "myorigin=$myhostname",
        "inet_interfaces=loopback-only", "inet_protocols=ipv4", "mydestination=", "relay_domains=example.test",
        f"relayhost=[127.0.0.1]:{run.sink_port}", "mynetworks=127.0.0.0/8",
        "smtpd_relay_restrictions=permit_mynetworks,reject_unauth_destination",
        "smtp_dns_support_level=disabled", "smtp_host_lookup=native", "lmtp_host_lookup=native",
        "smtpd_peername_lookup=no", "default_process_limit=200", "smtpd_client_connection_count_limit=0",
        "smtpd_client_connection_rate_limit=0", "smtpd_client_message_rate_limit=0",
        "alias_maps=", "alias_database=", "local_recipient_maps=", "biff=no", "append_dot_mydomain=no",
        "maillog_file=/dev/stdout",  # with start-fg: into the trial's log (Postfix allows /var and /dev/stdout)
        f"smtpd_tls_cert_file={run.cert}", f"smtpd_tls_key_file={run.key}", "smtpd_tls_security_level=may",
        "smtp_tls_security_level=may",
        f"queue_directory={queue}", f"data_directory={data}",
    ]


class PostfixPeer(Peer):
    name = "postfix"
    durability = "fsync of the queue file before the 250 (Postfix's default)"

    def _dirs(self, home: Path) -> tuple[Path, Path, Path]:
        base = home / "postfix"
        return base / "etc", base / "queue", base / "data"

    def missing(self, home: Path) -> str | None:
        if not (os.path.exists(POSTFIX) and shutil.which("postconf")):
            return "not installed: run `mta bench peers setup postfix` (apt-get install postfix)"
        if os.geteuid() != 0:
            return "needs root (Postfix's master runs as root)"
        return None

    def setup(self, home: Path, say) -> None:
        if os.path.exists(POSTFIX):
            say(f"postfix: installed ({self.version(home)})")
            return
        # "No configuration": the package installs without turning the system into a mail server
        run_quiet(["sh", "-c", "echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections"])
        apt_install(["postfix"], say)

    def version(self, home: Path) -> str:
        r = run_quiet(["postconf", "-d", "-h", "mail_version"])
        return f"Postfix {r.stdout.strip()}" if r.returncode == 0 else "Postfix (version unknown)"

    def prepare(self, run: PeerRun) -> None:
        conf, queue, data = self._dirs(run.home)
        for d in (conf, queue, data):
            d.mkdir(parents=True, exist_ok=True)
        for d in (run.home, run.home / "postfix", queue):
            os.chmod(d, 0o755)  # Postfix refuses a queue under a group- or world-writable parent
        (conf / "main.cf").write_text("")
        r = run_quiet(["postconf", "-c", str(conf), "-e", *_settings(run, queue, data)])
        if r.returncode != 0:
            raise SetupError(f"postconf failed: {r.stderr.strip()}")
        proto = Path("/usr/share/postfix/master.cf.dist")
        if not proto.exists():
            proto = Path("/etc/postfix/master.cf.proto")
        lines = []
        for line in proto.read_text().splitlines():
            if line.startswith("smtp ") and " inet " in f" {line} ":
                line = f"127.0.0.1:{run.port} inet n - y - - smtpd"
            lines.append(line)
        (conf / "master.cf").write_text("\n".join(lines) + "\n")
        run_quiet([POSTFIX, "-c", str(conf), "set-permissions"], timeout=120)
        run_quiet([POSTFIX, "-c", str(conf), "check"], timeout=120)
        self.cleanup(run)

    def command(self, run: PeerRun) -> list[str]:
        conf, _, _ = self._dirs(run.home)
        return [POSTFIX, "-c", str(conf), "start-fg"]

    def stop(self, run: PeerRun) -> None:
        conf, _, _ = self._dirs(run.home)
        run_quiet([POSTFIX, "-c", str(conf), "stop"], timeout=60)

    def drained(self, run: PeerRun) -> bool:
        _, queue, _ = self._dirs(run.home)
        return not any(files for q in _QUEUES[:4] for _, _, files in os.walk(queue / q))

    def cleanup(self, run: PeerRun) -> None:
        conf, _, _ = self._dirs(run.home)
        run_quiet(["postsuper", "-c", str(conf), "-d", "ALL"], timeout=120)

    def config_text(self, run: PeerRun) -> str:
        conf, queue, data = self._dirs(run.home)
        return ("# main.cf (written from empty with postconf -e)\n" + "\n".join(_settings(run, queue, data))
                + f"\n# master.cf: the Debian master.cf with its smtp line replaced by\n"
                  f"127.0.0.1:{run.port} inet n - y - - smtpd\n")


PEER = PostfixPeer()
