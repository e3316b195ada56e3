"""A private Postfix instance on loopback, for delivery tests.

Its config_directory, queue_directory and mail log live under one directory
(normally tmp_path). What Postfix's unprivileged processes reach by absolute
path as the postfix user (data_directory and the virtual Maildirs) lives in a
private directory under /tmp instead (`self.outside`, mode 0711, removed by
stop()): pytest keeps /tmp/pytest-of-<user> at mode 0700 and resets it when
any other pytest run starts, which would make virtual(8) fail with EACCES. It listens on one free 127.0.0.1 port (master.cf), accepts mail for
`domain` from loopback and delivers it with virtual(8) into
`<outside>/vmail/<user>/` (Maildir). No chroot, no system files touched; it is
started with `postfix -c DIR start` and stopped with `postfix -c DIR stop`
(then `abort`, then SIGKILL of its master, each wait bounded).

    with PostfixPeer(tmp_path / "pf", domain="dest.test", users=["user"]) as pf:
        pf.port                       # its SMTP port on 127.0.0.1
        pf.wait_messages("user", 1)   # [Path, ...] of files in new/ (bounded wait)
        pf.log()                      # its mail log (postlogd), for failure messages

`start()` raises PostfixError (with Postfix's own output and log) when the
instance cannot be started: tests must fail with the reason, not skip.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
DAEMON_DIR = "/usr/lib/postfix/sbin"


class PostfixError(RuntimeError):
    pass


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(5)
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


def _master_cf(port: int) -> str:
    # service type private unpriv chroot wakeup maxproc command
    rows = [
        f"127.0.0.1:{port} inet n - n - - smtpd",
        "pickup    unix n - n 60 1 pickup",
        "cleanup   unix n - n - 0 cleanup",
        "qmgr      unix n - n 300 1 qmgr",
        "tlsmgr    unix - - n 1000? 1 tlsmgr",
        "rewrite   unix - - n - - trivial-rewrite",
        "bounce    unix - - n - 0 bounce",
        "defer     unix - - n - 0 bounce",
        "trace     unix - - n - 0 bounce",
        "verify    unix - - n - 1 verify",
        "flush     unix n - n 1000? 0 flush",
        "proxymap  unix - - n - - proxymap",
        "proxywrite unix - - n - 1 proxymap",
        "smtp      unix - - n - - smtp",
        "relay     unix - - n - - smtp",
        "showq     unix n - n - - showq",
        "error     unix - - n - - error",
        "retry     unix - - n - - error",
        "discard   unix - - n - - discard",
        "local     unix - n n - - local",
        "virtual   unix - n n - - virtual",
        "lmtp      unix - - n - - lmtp",
        "anvil     unix - - n - 1 anvil",
        "scache    unix - - n - 1 scache",
        "postlog   unix-dgram n - n - 1 postlogd",
    ]
    return "\n".join(rows) + "\n"


class PostfixPeer:
    def __init__(self, base: Path, *, domain: str = "dest.test", users=("user",),
                 port: int | None = None, owner: str = "postfix", extra: dict[str, str] | None = None):
        self.base = Path(base)
        self.extra = dict(extra or {})  # main.cf settings over the defaults below
        self.domain = domain
        self.users = list(users)
        self.port = port or _free_port()
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "queue"
        self.outside = Path(tempfile.mkdtemp(prefix="mta-postfix-", dir="/tmp"))
        os.chmod(self.outside, 0o711)
        self.data_dir = self.outside / "data"
        self.vmail = self.outside / "vmail"
        self.log_file = self.base / "maillog"
        self.owner = owner
        self.started = False

    # -- configuration -------------------------------------------------------

    def _main_cf(self) -> str:
        pw = pwd.getpwnam(self.owner)
        mailbox_map = ", ".join(f"{u}@{self.domain}={u}/" for u in self.users)
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "daemon_directory": DAEMON_DIR,
            "command_directory": "/usr/sbin",
            "meta_directory": "/etc/postfix",
            "shlib_directory": "/usr/lib/postfix",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"postfix.{self.domain}",
            "mydomain": self.domain,
            "myorigin": f"postfix.{self.domain}",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            # Mail from loopback is not "local": no header rewriting, no added headers.
            "local_header_rewrite_clients": "",
            "always_add_missing_headers": "no",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": str(self.vmail),
            "virtual_mailbox_maps": "inline:{ " + mailbox_map + " }",
            "virtual_uid_maps": f"static:{pw.pw_uid}",
            "virtual_gid_maps": f"static:{pw.pw_gid}",
            "virtual_minimum_uid": "1",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.base),
            "smtputf8_enable": "yes",
            "biff": "no",
            "smtpd_banner": "$myhostname ESMTP",
            "message_size_limit": "52428800",
            "virtual_mailbox_limit": "0",
            "mailbox_size_limit": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "daemon_timeout": "60s",
            "ipc_timeout": "60s",
            "import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C",
        }
        settings.update(self.extra)
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def configure(self) -> None:
        for d in (self.config_dir, self.data_dir, self.vmail):
            d.mkdir(parents=True, exist_ok=True)
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        # Postfix insists on root-owned config and queue roots; data is the mail owner's.
        pw = pwd.getpwnam("postfix")
        os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        owner = pwd.getpwnam(self.owner)
        os.chown(self.vmail, owner.pw_uid, owner.pw_gid)
        (self.config_dir / "main.cf").write_text(self._main_cf())
        (self.config_dir / "master.cf").write_text(_master_cf(self.port))
        for name in ("dynamicmaps.cf",):
            src = Path("/etc/postfix") / name
            if src.exists():
                shutil.copy(src, self.config_dir / name)
        if Path("/etc/postfix/dynamicmaps.cf.d").is_dir():
            shutil.copytree("/etc/postfix/dynamicmaps.cf.d", self.config_dir / "dynamicmaps.cf.d",
                            dirs_exist_ok=True)

    # -- life cycle ------------------------------------------------------------

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, "-c", str(self.config_dir), *args], capture_output=True,
                              text=True, timeout=timeout)

    def start(self, timeout: float = 30) -> "PostfixPeer":
        if not os.path.exists(POSTFIX):
            raise PostfixError(f"{POSTFIX} is not installed (scripts/test installs the postfix package)")
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix instance needs root (postfix start runs as root)")
        self.configure()
        check = self._postfix("check")
        if check.returncode != 0:
            raise PostfixError(f"postfix check failed ({check.returncode}):\n{check.stdout}{check.stderr}"
                               f"\nlog:\n{self.log()}")
        out = self._postfix("start")
        if out.returncode != 0:
            raise PostfixError(f"postfix start failed ({out.returncode}):\n{out.stdout}{out.stderr}\n"
                               f"log:\n{self.log()}")
        self.started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _port_open("127.0.0.1", self.port):
                return self
            time.sleep(0.1)
        log = self.log()
        self._stop(10)
        raise PostfixError(f"postfix did not listen on 127.0.0.1:{self.port} within {timeout}s:\n{log}")

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 15) -> None:
        try:
            self._stop(timeout)
        finally:
            shutil.rmtree(self.outside, ignore_errors=True)

    def _stop(self, timeout: float) -> None:
        if not self.started:
            return
        self.started = False
        pid = self._master_pid()
        try:
            self._postfix("stop", timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        if pid is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            self._postfix("abort", timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "PostfixPeer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- inspection ------------------------------------------------------------

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return "(no Postfix log)"

    def maildir(self, user: str) -> Path:
        return self.vmail / user

    def messages(self, user: str) -> list[Path]:
        new = self.maildir(user) / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def wait_messages(self, user: str, n: int, timeout: float = 30) -> list[Path]:
        """The files in user's new/ once there are at least n (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.messages(user)
            if len(found) >= n:
                return found
            time.sleep(0.1)
        raise AssertionError(f"{len(self.messages(user))} of {n} messages in {self.maildir(user)} "
                             f"after {timeout}s; Postfix log:\n{self.log()[-4000:]}")
