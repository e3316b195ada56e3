"""What every bench peer provides: set itself up in its private directory, start as a relay
on a port into the sink, report readiness, drain and stop. Started under `reaper`, so the CPU
and memory of every process it forks, daemonized or orphaned, are charged to one tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class SetupError(RuntimeError):
    """A peer cannot be set up or started here; the message says exactly why."""


def peers_home() -> Path:
    """Where peers keep their private installs and instances: $MTA_BENCH_HOME, else
    /var/lib/mta-bench for root (Postfix and OpenSMTPD want root-owned parents), else
    ~/.cache/mta-bench."""
    env = os.environ.get("MTA_BENCH_HOME")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/mta-bench")
    return Path.home() / ".cache" / "mta-bench"


@dataclass
class PeerRun:
    """One start of a peer: where and how. `work` is a fresh directory for this start
    (spool, logs, generated config) unless the peer's compile-time paths forbid it; `home`
    is the peer's persistent directory (its unpacked packages)."""

    home: Path
    work: Path
    port: int
    sink_port: int
    cert: str  # PEM certificate and key: STARTTLS is always offered inbound and tried outbound
    key: str
    hostname: str = "relay.bench.test"
    python: str = ""  # the interpreter running mta (for peers written in Python)


class Peer:
    """A peer. Subclasses set the class attributes and implement the methods below.

    start(run) launches the peer in the foreground of the calling process (the reaper) or
    daemonized (it is re-parented to the reaper): it returns the argv to exec, or None when
    `launch(run)` already started it. Readiness is a 220 greeting on run.port."""

    name: str = ""
    relays: bool = True  # False: takes part in accept-only workloads only (smtp-sink)
    offers_starttls: bool = True  # False: left out of STARTTLS workloads (`notes` say why)
    durability: str = ""  # one line, e.g. "fsync of the queue file before the 250"
    notes: str = ""  # what a reader of the report must know (e.g. "no queue")

    def missing(self, home: Path) -> str | None:
        """None when ready to start, else why not (e.g. "not set up: run `mta bench peers
        setup exim`", or "needs root")."""
        raise NotImplementedError

    def setup(self, home: Path, say) -> None:
        """Install what the peer needs (idempotent). `say(line)` tells the user what is being
        installed. SetupError with the reason when it cannot be done here."""
        raise NotImplementedError

    def version(self, home: Path) -> str:
        raise NotImplementedError

    def prepare(self, run: PeerRun) -> None:
        """Write the config and empty spool for this start (before `command`)."""

    def command(self, run: PeerRun) -> list[str]:
        """The argv that starts the peer (it may stay in the foreground or daemonize)."""
        raise NotImplementedError

    def stop(self, run: PeerRun) -> None:
        """Stop a peer that daemonized (the reaper then sees its tree end). Default: nothing
        (the reaper signals what it started)."""

    def drained(self, run: PeerRun) -> bool:
        """True when nothing is left queued (end-to-end trials wait for it)."""
        return True

    def config_text(self, run: PeerRun) -> str:
        """The configuration as the peer was started with it, for the report."""
        return ""

    def cleanup(self, run: PeerRun) -> None:
        """After the stop: remove what a next start must not find (queue files, sockets)."""


def run_quiet(argv: list[str], timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    """Run a helper command; its output is returned, never printed."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def apt_install(packages: list[str], say) -> None:
    """apt-get install packages that are missing (dpkg -s), saying which."""
    need = [p for p in packages if run_quiet(["dpkg", "-s", p]).returncode != 0]
    if not need:
        return
    if os.geteuid() != 0:
        raise SetupError(f"needs root to apt-get install {' '.join(need)}")
    say(f"apt-get install {' '.join(need)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = run_quiet(["apt-get", "install", "-y", "-qq", *need], timeout=600, env=env)
    if r.returncode != 0:
        run_quiet(["apt-get", "update", "-qq"], timeout=600, env=env)
        r = run_quiet(["apt-get", "install", "-y", "-qq", *need], timeout=600, env=env)
    if r.returncode != 0:
        raise SetupError(f"apt-get install {' '.join(need)} failed: {r.stderr.strip()[-400:]}")


def apt_unpack(packages: list[str], dest: Path, say) -> None:
    """Fetch Debian packages with `apt-get download` and unpack them into dest (dpkg -x):
    for MTAs that conflict with the installed one. Nothing is installed system-wide."""
    if shutil.which("apt-get") is None:
        raise SetupError("apt-get not found (a Debian-based system is needed to fetch the package)")
    debs = dest / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    say(f"apt-get download {' '.join(packages)} (unpacked into {dest}, not installed)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    r = run_quiet(["apt-get", "download", *packages], timeout=600, cwd=debs, env=env)
    if r.returncode != 0:
        run_quiet(["apt-get", "update", "-qq"], timeout=600, env=env)
        r = run_quiet(["apt-get", "download", *packages], timeout=600, cwd=debs, env=env)
    if r.returncode != 0:
        raise SetupError(f"apt-get download {' '.join(packages)} failed: {r.stderr.strip()[-400:]}")
    root = dest / "root"
    root.mkdir(exist_ok=True)
    for deb in sorted(debs.glob("*.deb")):
        r = run_quiet(["dpkg", "-x", str(deb), str(root)])
        if r.returncode != 0:
            raise SetupError(f"dpkg -x {deb.name} failed: {r.stderr.strip()[-400:]}")
