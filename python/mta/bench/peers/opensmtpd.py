"""OpenSMTPD (Debian's package, unpacked, never installed: it conflicts with postfix) as a bench
peer: smtpd runs in its own mount namespace with private directories laid over its compile-time
paths (opensmtpd_ns), so the host's /var/spool/smtpd, /run and /var/lib are never written."""

from __future__ import annotations

import grp
import os
import pwd
import resource
import shutil
import sys
from pathlib import Path

from mta.bench.peers import opensmtpd_ns
from mta.bench.peers.base import Peer, PeerRun, SetupError, apt_install, apt_unpack, run_quiet

PACKAGE = "opensmtpd"
SMTPD = "usr/sbin/smtpd"
# Debian's postinst: the daemon's and the queue's users, each with its own group
USERS = ("opensmtpd", "opensmtpq")
# smtpd's shared libraries (ldd of the unpacked binary; none conflicts with postfix)
LIBRARIES = ["libevent-2.1-7", "libdb5.3", "libssl3", "libcrypt1", "libpam0g", "zlib1g"]
# smtpd listens with a compile-time backlog of 5 (SMTPD_BACKLOG), which a burst of connects
# overflows; the wrapper raises it to what the bench sink asks for (the kernel caps it at somaxconn)
BACKLOG = 4096

CONFIG = """\
# OpenSMTPD as a `mta bench` peer: a relay of everything from loopback into the sink.

# generous per-session limits (defaults: 100 messages a session); sessions themselves are
# bounded only by the descriptor limit, raised to its hard value ({nofile}) by the wrapper
smtp limit max-mails 100000 max-rcpt 1000
# outbound: as many connections to the sink as Postfix's default destination concurrency (20),
# opened as soon as there is work (the defaults wait 5 s between connections on one route and
# 2 s on one relay, which left one connection draining the queue), each kept for 1000 messages
mta limit max-conn-per-host 20 max-conn-per-route 20 max-conn-per-relay 20 max-conn-per-domain 20
mta limit conn-delay-route 0 conn-delay-relay 0 reconn-delay-route 0 session-mail-max 1000
mta limit task-hiwat 1000 task-lowat 800 task-release 100

# no `tls` (STARTTLS offered inbound): Debian's 6.8.0p2 built against OpenSSL 3 fails every
# server-side handshake, RSA or EC key alike ("missing private key" in its privsep signer,
# OpenSMTPD issues #1171 and #1239, fixed upstream after 6.8 by PR #1208)
listen on 127.0.0.1 port {port} hostname {host}

# smtp:// is opportunistic STARTTLS (used when the sink offers it, plain otherwise); `tls
# no-verify` would make TLS mandatory, which the clear workloads' sink does not offer
action "relay" relay host "smtp://127.0.0.1:{sink_port}" helo {host}
match from src 127.0.0.0/8 for any action "relay"
"""


class OpenSmtpdPeer(Peer):
    name = "opensmtpd"
    durability = ("none before the 250: message and envelope are written and renamed into the queue "
                  "without fsync (queue_fs.c; strace shows no fsync in a relay; only retry updates sync)")
    # Outbound STARTTLS to the sink works; inbound it cannot (see CONFIG): TLS workloads skip it.
    offers_starttls = False
    notes = ("no inbound STARTTLS: Debian's 6.8.0p2 with OpenSSL 3 fails every server-side TLS "
             "handshake (OpenSMTPD #1171/#1239); outbound STARTTLS to the sink when offered. Runs in "
             "a private mount namespace; its queue is a directory under the run's work directory "
             "(the same disk as the other peers' spools, not a tmpfs). Tuned for load: hosts-only "
             "resolver for its per-client DNS, listen backlog 4096 (smtpd's compile-time 5), no outbound "
             "connection delays")

    def _root(self, home: Path) -> Path:
        return home / "opensmtpd" / "root"

    def _smtpd(self, home: Path) -> Path:
        return self._root(home) / SMTPD

    def missing(self, home: Path) -> str | None:
        if os.geteuid() != 0:
            return "needs root (a private mount namespace and smtpd's privilege separation)"
        if not self._smtpd(home).exists():
            return (f"not set up: run `mta bench peers setup opensmtpd` (unpacks Debian's {PACKAGE} "
                    f"into {home / 'opensmtpd'})")
        for user in USERS:
            try:
                pwd.getpwnam(user)
                grp.getgrnam(user)
            except KeyError:
                return f"user or group {user} missing: run `mta bench peers setup opensmtpd`"
        for sh in opensmtpd_ns.shadows(Path("/")):
            if not os.path.isdir(sh.parent):
                return f"{sh.parent} does not exist here (a private copy of it is laid over it)"
        r = run_quiet([str(self._smtpd(home)), "-h"])
        if "version" not in r.stdout + r.stderr:
            return f"the unpacked smtpd does not run: {(r.stderr or r.stdout).strip()[-300:]}"
        return None

    def setup(self, home: Path, say) -> None:
        if os.geteuid() != 0:
            raise SetupError("needs root (users to create, a private mount namespace to run in)")
        if not self._smtpd(home).exists():
            apt_unpack([PACKAGE], home / "opensmtpd", say)
        apt_install(LIBRARIES, say)
        r = run_quiet(["ldd", str(self._smtpd(home))])
        if "not found" in r.stdout:
            raise SetupError(f"smtpd still lacks libraries: {r.stdout.strip()}")
        for user in USERS:
            self._ensure_user(user, say)
        say(f"opensmtpd: ready ({self.version(home)})")

    def _ensure_user(self, user: str, say) -> None:
        try:
            grp.getgrnam(user)
        except KeyError:
            say(f"groupadd --system {user} (as Debian's opensmtpd postinst does)")
            r = run_quiet(["groupadd", "--system", user])
            if r.returncode != 0:
                raise SetupError(f"groupadd {user} failed: {r.stderr.strip()}")
        try:
            pwd.getpwnam(user)
        except KeyError:
            say(f"useradd --system {user} (home /var/lib/opensmtpd/empty, not created; no login)")
            r = run_quiet(["useradd", "--system", "--gid", user, "--no-create-home", "--home-dir",
                           "/var/lib/opensmtpd/empty", "--shell", "/usr/sbin/nologin",
                           "--comment", "OpenSMTPD (mta bench peer)", user])
            if r.returncode != 0:
                raise SetupError(f"useradd {user} failed: {r.stderr.strip()}")

    def version(self, home: Path) -> str:
        r = run_quiet([str(self._smtpd(home)), "-h"])
        out = (r.stdout + r.stderr).split("\n")
        name = next((line.split(":", 1)[1].strip() for line in out if line.startswith("version:")), "OpenSMTPD")
        debs = sorted((home / "opensmtpd" / "debs").glob(f"{PACKAGE}_*.deb"))
        if debs:
            return f"{name} (Debian {debs[-1].name.split('_')[1]})"
        return name

    def _ns(self, run: PeerRun) -> Path:
        return run.work / "ns"

    def config_text(self, run: PeerRun) -> str:
        return CONFIG.format(host=run.hostname, port=run.port, sink_port=run.sink_port,
                             nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[1])

    def prepare(self, run: PeerRun) -> None:
        self._ns(run).mkdir(parents=True, exist_ok=True)
        (run.work / "smtpd.conf").write_text(self.config_text(run))
        r = run_quiet(self.command(run)[:-1] + ["-n"], timeout=60)
        if r.returncode != 0:
            raise SetupError(f"smtpd -n rejects the configuration: {(r.stderr or r.stdout).strip()[-600:]}")

    def command(self, run: PeerRun) -> list[str]:
        # -d: foreground, logging to stderr (the trial's log). The wrapper unshares its mount
        # namespace and execs smtpd, so the reaper's SIGTERM reaches smtpd itself.
        return [run.python or sys.executable, "-m", "mta.bench.peers.opensmtpd_ns", "--root", str(self._ns(run)),
                "--backlog", str(BACKLOG), "--", str(self._smtpd(run.home)), "-f", str(run.work / "smtpd.conf"), "-d"]

    def queue_dir(self, run: PeerRun) -> Path:
        """The start's queue on disk (smtpd sees it as /var/spool/smtpd)."""
        return opensmtpd_ns.queue_dir(self._ns(run))

    def drained(self, run: PeerRun) -> bool:
        queue = self.queue_dir(run)
        return not any(files for sub in ("incoming", "queue") for _, _, files in os.walk(queue / sub))

    def cleanup(self, run: PeerRun) -> None:
        # the namespace is gone with smtpd: what is left is plain directories (the mount points
        # are empty from out here) and the queue, which a next start must not find
        shutil.rmtree(self._ns(run), ignore_errors=True)


PEER = OpenSmtpdPeer()
