"""`python -m mta.bench.peers.opensmtpd_ns --root DIR [--backlog N] -- ARGV`: a private mount namespace
with private copies over OpenSMTPD's compile-time paths and a hosts-only resolv.conf, then exec ARGV (a
helper raises its listen backlog to N). Invariant: no mount is made before the namespace is private."""

from __future__ import annotations

import ctypes
import os
import resource
import select
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_CLONE_NEWNS = 0x00020000
_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (the unified syscall table)


@dataclass
class Shadow:
    """A private copy of the host directory `parent`, kept in `copy`: every entry of the parent
    appears in it (directories and files bind-mounted, symlinks copied) except the names in
    `own`, which are real directories of the copy (on run.work's disk)."""

    parent: str
    copy: str
    own: dict[str, int] = field(default_factory=dict)  # relative path -> mode


def shadows(root: Path) -> list[Shadow]:
    """The compile-time paths of Debian's smtpd 6.8 and where their private copies live.
    /var/run may be a symlink to /run: the socket goes wherever it really points."""
    run = os.path.realpath("/var/run")
    return [
        # the queue (and the queue process's chroot): a real directory under run.work
        Shadow("/var/spool", str(root / "var-spool"), {"smtpd": 0o711}),
        # the control socket (smtpd.sock): a second instance must not find the first one's
        Shadow(run, str(root / "run"), {}),
        # PATH_CHROOT: the empty directory the unprivileged processes chroot into
        Shadow("/var/lib", str(root / "var-lib"), {"opensmtpd": 0o755, "opensmtpd/empty": 0o755}),
    ]


# smtpd resolves every client's address (PTR, then the name's A/AAAA) through its bundled
# libasr, which asks the nameserver before /etc/hosts. Under a burst of connections this
# machine's nameserver leaves some of those queries unanswered, and each lost one holds a
# session's greeting for libasr's 5 s retry (at 50 sessions, clients time out). A relay into
# the sink at an IP address needs no DNS: the hosts file alone answers for loopback.
RESOLV_CONF = """\
# smtpd's resolver (libasr), private to the bench peer's mount namespace: hosts file only
lookup file
"""


def queue_dir(root: Path) -> Path:
    """Where /var/spool/smtpd is on disk (as seen from outside the namespace)."""
    return root / "var-spool" / "smtpd"


def _mount(libc, src: str, dst: str, flags: int) -> None:
    if libc.mount(src.encode(), dst.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount --bind {src} {dst}: {os.strerror(err)}")


def _copy(libc, sh: Shadow) -> None:
    """Build the private copy of one parent, then lay it (with its bind mounts) over the parent."""
    st = os.stat(sh.parent)
    copy = Path(sh.copy)
    copy.mkdir(parents=True, exist_ok=True)
    os.chown(copy, st.st_uid, st.st_gid)
    os.chmod(copy, stat.S_IMODE(st.st_mode))
    tops = {rel.split("/")[0] for rel in sh.own}
    for entry in os.scandir(sh.parent):
        if entry.name in tops:
            continue
        target = copy / entry.name
        if entry.is_symlink():
            if not target.is_symlink():
                os.symlink(os.readlink(entry.path), target)
        elif entry.is_dir():
            target.mkdir(exist_ok=True)
            _mount(libc, entry.path, str(target), _MS_BIND | _MS_REC)
        else:  # files, sockets, fifos: a bind needs a non-directory inode to cover
            target.touch(exist_ok=True)
            _mount(libc, entry.path, str(target), _MS_BIND)
    for rel, mode in sorted(sh.own.items()):
        d = copy / rel
        d.mkdir(exist_ok=True)
        os.chown(d, 0, 0)
        os.chmod(d, mode)
    # MS_REC: the binds made inside the copy come along with it
    _mount(libc, str(copy), sh.parent, _MS_BIND | _MS_REC)


def enter(root: Path) -> None:
    """Leave the host's mount namespace for a private one (what `unshare -m --propagation
    private` does), then lay the private copies over the host paths."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)} (root is needed)")
    # private: none of the mounts below may propagate back to the host's namespace
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount --make-rprivate /: {os.strerror(err)}")
    for sh in shadows(root):
        _copy(libc, sh)
    resolv = root / "resolv.conf"
    resolv.write_text(RESOLV_CONF)
    # after the shadows: if /etc/resolv.conf links into /run, the bind lands in the copy. Without
    # one, libasr asks 127.0.0.1, which refuses at once: nothing to lay over.
    if os.path.exists("/etc/resolv.conf"):
        _mount(libc, str(resolv), os.path.realpath("/etc/resolv.conf"), _MS_BIND)


def listening_sockets(pid: int) -> list[tuple[int, int]]:
    """(pid, fd) of every listening TCP socket held by `pid` or one of its descendants."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        inodes.update(f[9] for f in (r.split() for r in rows) if len(f) > 9 and f[3] == "0A")
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # the command name may hold spaces and parentheses: the ppid follows the last ')'
            parents[int(entry)] = int(stat_line.rsplit(")", 1)[1].split()[1])
    found = []
    for p in parents:
        q = p
        while q not in (pid, 0, 1) and q in parents:
            q = parents[q]
        if q != pid:
            continue
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{p}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                found.append((p, int(fd)))
    return found


def relisten(pid: int, fd: int, backlog: int) -> None:
    """listen() again on another process's listening socket: Linux then takes the new backlog."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        mine = libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if mine < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
    finally:
        os.close(pidfd)
    with socket.socket(fileno=mine) as sock:  # a duplicate: closing it leaves smtpd's open
        sock.listen(backlog)


def raise_backlog(pid: int, backlog: int, wait: float = 60.0) -> int:
    """Wait for `pid`'s tree to listen, then give its listeners `backlog`; gives up when the
    process ends first (`smtpd -n`) or after `wait` seconds. Returns how many it raised.
    Why: smtpd listens with a compile-time backlog of 5 (SMTPD_BACKLOG); a burst of connects
    overflows it, and a client whose handshake the kernel then completes by SYN cookie but
    drops from the full accept queue waits for a greeting that never comes."""
    pidfd = os.pidfd_open(pid)
    try:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            found = listening_sockets(pid)
            if found:
                for p, fd in found:
                    relisten(p, fd, backlog)
                return len(found)
            if select.select([pidfd], [], [], 0.02)[0]:  # readable: the process has ended
                return 0
        return 0
    finally:
        os.close(pidfd)


def _spawn_backlog_helper(pid: int, backlog: int) -> None:
    """A grandchild that raises the backlog once smtpd (about to be exec'd as `pid`) listens.
    Orphaned at once, it is reaped by the subreaper above us, never by smtpd."""
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    try:
        if os.fork() == 0:
            try:
                raise_backlog(pid, backlog)
            except OSError as e:
                print(f"opensmtpd_ns: listen backlog left at smtpd's 5: {e}", file=sys.stderr)
            os._exit(0)
    finally:
        os._exit(0)


def main(argv: list[str]) -> int:
    backlog = 0
    if len(argv) >= 2 and argv[2:3] == ["--backlog"] and len(argv) > 3 and argv[3].isdigit():
        backlog = int(argv[3])
        argv = argv[:2] + argv[4:]
    if len(argv) < 4 or argv[0] != "--root" or argv[2] != "--":
        print("usage: python -m mta.bench.peers.opensmtpd_ns --root DIR [--backlog N] -- ARGV", file=sys.stderr)
        return 2
    root, cmd = Path(argv[1]), argv[3:]
    try:
        enter(root)
    except OSError as e:
        print(f"opensmtpd_ns: {e}", file=sys.stderr)
        return 1
    # smtpd sizes its session table from the descriptor limit: give it all it may have
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if backlog:
        _spawn_backlog_helper(os.getpid(), backlog)
    os.execv(cmd[0], cmd)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
