"""Exim 4.96 (Debian's exim4-daemon-light, unpacked privately, never installed) as a relay peer. It
runs entirely as its compiled-in user Debian-exim (a -C config outside /etc's trusted list drops root
anyway), in a private mount namespace that shows run.work to that user; nothing system-wide changes."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
from pathlib import Path

from mta.bench.peers.base import Peer, PeerRun, SetupError, apt_install, apt_unpack, run_quiet

# Why the exim user rather than root in a namespace with a trusted-config list bind-mounted in:
# - Exim keeps root with -C only for a file named in TRUSTED_CONFIG_LIST (/etc/exim4/trusted_configs),
#   and /etc/exim4 does not exist here: a bind mount needs an existing mount point, so keeping root
#   would mean an overlay over all of /etc. As its own user Exim accepts any -C file, drops nothing
#   it needs (a relay's smtp transport runs as the exim user anyway), and with
#   deliver_drop_privilege the reception process forks the delivery instead of re-executing Exim to
#   regain root: strace shows one fork and no exec per message. Measured here (2 shared cores):
#   2000 messages over 500 concurrent one-message sessions, 2000 more under STARTTLS both ways, and
#   5000 over 50 sessions of 200 messages: none refused, queued for later or lost.
# - The reception processes run as that user whichever way Exim starts, so they must reach the spool
#   and log: run.work usually sits under directories only root may enter (pytest's, mkdtemp's), hence
#   the namespace, whose bind mount shows run.work/exim at a fixed path in the peer's home.
# - The private copy of the binary has its setuid bit removed: it never runs as root, and no
#   setuid-root program is left lying in the peer's home.
PACKAGE = "exim4-daemon-light"  # exim4-base and exim4-config are not needed: the daemon, our config
EXIM_USER = "Debian-exim"  # compiled in (EXIM_USER=ref:Debian-exim): Exim exits at start without it
QUEUE_RUN = "15s"  # a deferred message (a sink that refused for a moment) is retried after this
QUEUE_INTERVAL = "1s"  # the daemon starts a queue runner this often: with queue_only, deliveries wait up to this

CONFIG = """\
# {version} as a `mta bench` relay peer, written per start. Paths under {root} are this
# start's run.work/exim, bind-mounted there in the peer's private mount namespace.
# Tuned as an admin of a dedicated high-throughput relay would: every non-default line says why.
keep_environment =
exim_path = {binary}
primary_hostname = {hostname}
qualify_domain = bench.test
spool_directory = {root}/spool
log_file_path = {root}/log/%slog
pid_file_path = {root}/exim.pid
local_interfaces = 127.0.0.1
daemon_smtp_ports = {port}

# Exim runs as its own user throughout: a delivery is forked without re-executing Exim to regain
# root, one exec less a message.
deliver_drop_privilege = true
# Deliveries by a few queue runners, not one delivery process forked per received message (Exim's
# default). Measured here (2 cores, 50 sessions): a delivery per message means up to 50 delivery
# processes, each with its transport child, hints-database locks, a new connection to the sink and a
# journal fsync, all runnable beside the reception processes; the 250 waits its turn behind them:
# p99 0.8-1.5 s (1.3-2.9 s with 100 messages a connection); a spool on tmpfs (no fsync) gave
# 0.03-0.1 s but still 1 s with 100 a connection: the competing processes, more than the disk.
# Without deliveries (queue_only, no runner) p99 is 14-19 ms. With queue_only (the reception still fsyncs
# before the 250), the daemon starting a queue runner every {queue_interval} and at most
# queue_run_max = 2 of them (one a core), each delivering one message after another, p99 falls to
# 0.02-0.4 s (0.08-0.3 s with 100 a connection): low while a burst outruns the runners, higher once
# they run beside it. (A two-pass -qq run, to send many messages down one connection, measured worse.)
queue_only = true
queue_run_max = 2
# No per-message log file (msglog/ID): the main log has the same lines, and it is one file less.
message_logs = false

# No DNS and no callbacks: no reverse lookup or ident query of clients, no HELO lookup, and no
# sender or recipient verification (the ACL below verifies nothing).
host_lookup =
helo_lookup_domains =
rfc1413_hosts =
rfc1413_query_timeout = 0s

# Room for 50-500 concurrent sessions. The defaults (20 connections, a listen backlog of 20, 10
# non-mail commands) would refuse a load generator. Load-based throttles (queue_only_load,
# smtp_load_reserve, deliver_queue_load_max) stay unset: their load average lags a burst and counts
# the other processes on the machine. (smtp_accept_queue*: moot, every message is queued.)
smtp_accept_max = 1000
smtp_accept_reserve = 0
smtp_accept_max_per_connection = 0
smtp_accept_max_nonmail_hosts =
smtp_connect_backlog = 1024

# STARTTLS offered to every client.
tls_advertise_hosts = *
tls_certificate = {root}/tls/cert.pem
tls_privatekey = {root}/tls/key.pem

hostlist relay_from_hosts = 127.0.0.0/8
acl_smtp_rcpt = acl_check_rcpt

begin acl

acl_check_rcpt:
  accept hosts = +relay_from_hosts
  deny   message = relay not permitted

begin routers

# Every domain goes to the sink. It listens on one of our own addresses, hence self = send.
sink:
  driver = manualroute
  route_list = * 127.0.0.1
  self = send
  transport = to_sink

begin transports

# STARTTLS whenever the sink offers it (Exim's default: hosts_avoid_tls unset), plain when not;
# never verified, so no CA bundle is loaded by each delivery.
to_sink:
  driver = smtp
  port = {sink_port}
  allow_localhost = true
  tls_verify_certificates =
  tls_try_verify_hosts = :

begin retry

* * F,1h,{queue_run}
"""


def _base(home: Path) -> Path:
    return home / "exim"


def _binary(home: Path) -> Path:
    return _base(home) / "root" / "usr" / "sbin" / "exim4"


def _mount_point(home: Path) -> Path:
    """Where the peer's mount namespace shows this start's run.work/exim (empty outside it)."""
    return _base(home) / "run"


def _instance(run: PeerRun) -> Path:
    """What the exim user owns for this start: its config, certificate, spool and log."""
    return run.work / "exim"


def _exim_ids() -> tuple[int, int] | None:
    try:
        pw = pwd.getpwnam(EXIM_USER)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _missing_libraries(binary: Path) -> list[str]:
    r = run_quiet(["ldd", str(binary)])
    return [line.split()[0] for line in r.stdout.splitlines() if "not found" in line]


def lib_packages(depends: str) -> list[str]:
    """The library packages a Debian Depends field names: of each alternative the first, without
    its version (`libidn12 (>= 1.13)` -> `libidn12`), lib* only, in order, once each."""
    out: list[str] = []
    for item in depends.replace("\n", " ").split(","):
        name = item.split("|")[0].split("(")[0].split(":")[0].strip()
        if name.startswith("lib") and name not in out:
            out.append(name)
    return out


def exim_version(bv_output: str) -> str | None:
    """The version `exim -bV` reports on its `Exim version 4.96 #2 built ...` line, if any."""
    for line in bv_output.splitlines():
        words = line.split()
        if words[:2] == ["Exim", "version"] and len(words) > 2:
            return words[2]
    return None


def _deb_field(base: Path, field: str) -> str:
    for deb in sorted((base / "debs").glob(f"{PACKAGE}_*.deb")):
        return run_quiet(["dpkg-deb", "-f", str(deb), field]).stdout.strip()
    return ""


def _traversable(path: Path) -> bool:
    """Whether a user other than the owners can reach `path` (o+x on it and every parent)."""
    for p in [path, *path.parents]:
        try:
            if not os.stat(p).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


def _as_exim(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid", EXIM_USER, "--regid", EXIM_USER, "--clear-groups", "--", *argv]


class EximPeer(Peer):
    name = "exim"
    durability = ("fsync of the data file (-D), then of the header file (-H, written aside and "
                  "renamed) and of the spool directory, before the 250 (Exim's default)")
    notes = ("runs as the exim user (deliver_drop_privilege); queue_only with a queue runner every second, at "
             "most 2 at once, rather than a delivery process per message. Exim 4.96 holds its 221 to QUIT, and "
             "a 250 the QUIT was pipelined behind, up to 200 ms waiting for the client to close first")

    def missing(self, home: Path) -> str | None:
        binary = _binary(home)
        if not binary.exists():
            return f"not set up: run `mta bench peers setup exim` (apt-get download {PACKAGE}, unpacked privately)"
        if os.geteuid() != 0:
            return "needs root (to run Exim as its user Debian-exim in a private mount namespace)"
        if binary.stat().st_mode & stat.S_ISUID or not _mount_point(home).is_dir():
            return "not set up: run `mta bench peers setup exim`"
        if _exim_ids() is None:
            return f"the user {EXIM_USER} that Exim was compiled for does not exist: run `mta bench peers setup exim`"
        for tool in ("unshare", "setpriv", "mount", "ldd"):
            if shutil.which(tool) is None:
                return f"needs util-linux's {tool}"
        libs = _missing_libraries(binary)
        if libs:
            return f"libraries missing ({', '.join(libs)}): run `mta bench peers setup exim`"
        if not _traversable(_mount_point(home)):
            return f"{EXIM_USER} cannot reach {_mount_point(home)} (a parent lacks o+x)"
        return None

    def setup(self, home: Path, say) -> None:
        base, binary = _base(home), _binary(home)
        if not binary.exists():
            apt_unpack([PACKAGE], base, say)
            if not binary.exists():
                raise SetupError(f"{PACKAGE} unpacked, but {binary} is not in it")
        binary.chmod(0o755)  # not setuid: this copy never runs as root
        if _missing_libraries(binary):
            apt_install(lib_packages(_deb_field(base, "Depends")), say)
            still = _missing_libraries(binary)
            if still:
                raise SetupError(f"Exim still lacks libraries after apt-get install: {', '.join(still)}")
        if _exim_ids() is None:
            if os.geteuid() != 0:
                raise SetupError(f"needs root to create the system user {EXIM_USER}")
            say(f"useradd --system {EXIM_USER} (the user Exim was compiled to run as; no home, no login)")
            r = run_quiet(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                           "--shell", "/usr/sbin/nologin", EXIM_USER])
            if r.returncode != 0:
                raise SetupError(f"useradd {EXIM_USER} failed: {r.stderr.strip()[-400:]}")
        _mount_point(home).mkdir(parents=True, exist_ok=True)
        for d in (base, _mount_point(home)):
            d.chmod(0o755)
        say(f"exim: set up ({self.version(home)})")

    def version(self, home: Path) -> str:
        # As the exim user: run as root, Exim creates its compile-time spool (/var/spool/exim4) at start.
        r = run_quiet(_as_exim([str(_binary(home)), "-C", "/dev/null", "-bV"]))
        version, debian = exim_version(r.stdout), _deb_field(_base(home), "Version")
        package = f" (Debian {PACKAGE} {debian})" if debian else ""
        return f"Exim {version}{package}" if version else f"Exim (version unknown){package}"

    def config_text(self, run: PeerRun) -> str:
        return CONFIG.format(version=self.version(run.home),
                             root=_mount_point(run.home), binary=_binary(run.home), hostname=run.hostname,
                             port=run.port, sink_port=run.sink_port, queue_run=QUEUE_RUN,
                             queue_interval=QUEUE_INTERVAL)

    def prepare(self, run: PeerRun) -> None:
        ids = _exim_ids()
        if ids is None:
            raise SetupError(f"the user {EXIM_USER} does not exist: run `mta bench peers setup exim`")
        inst = _instance(run)
        for d in (inst, inst / "spool", inst / "log", inst / "tls"):
            d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run.cert, inst / "tls" / "cert.pem")
        shutil.copyfile(run.key, inst / "tls" / "key.pem")
        (inst / "tls" / "key.pem").chmod(0o600)
        # Exim refuses a config that others may write; root-owned and 0644 it reads as its own user.
        (inst / "exim.conf").write_text(self.config_text(run))
        (inst / "exim.conf").chmod(0o644)
        for folder, dirs, files in os.walk(inst):
            for name in [".", *dirs, *files]:
                p = Path(folder, name)
                if p != inst / "exim.conf":
                    os.chown(p, *ids)
        inst.chmod(0o755)

    def command(self, run: PeerRun) -> list[str]:
        mnt = _mount_point(run.home)
        # unshare execs sh, which execs setpriv, which execs Exim: one pid, the reaper's child.
        # unshare makes the new namespace's mounts private, so the bind mount never shows outside.
        exim = [str(_binary(run.home)), "-C", str(mnt / "exim.conf"), "-bdf", f"-q{QUEUE_INTERVAL}"]
        return ["unshare", "--mount", "--", "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"',
                "exim-peer", str(_instance(run)), str(mnt), *_as_exim(exim)]

    def drained(self, run: PeerRun) -> bool:
        # A message is queued while its data file (-D) exists: written first, removed last.
        for _, _, files in os.walk(_instance(run) / "spool" / "input"):
            if any(f.endswith(("-D", "-H")) for f in files):
                return False
        return True

    def cleanup(self, run: PeerRun) -> None:
        # The spool (messages, retry and connection hints) goes; the log stays for the report.
        shutil.rmtree(_instance(run) / "spool", ignore_errors=True)


PEER = EximPeer()
