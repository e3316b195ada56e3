"""`python -m mta.bench.peers.opensmtpd_ns --root DIR -- ARGV`: enters a private mount namespace
(as `unshare -m --propagation private`), lays private copies over the parents of OpenSMTPD's
compile-time paths, then execs ARGV. Invariant: no mount is made before the namespace is private."""

from __future__ import annotations

import ctypes
import os
import resource
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18
_CLONE_NEWNS = 0x00020000


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


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] != "--root" or argv[2] != "--":
        print("usage: python -m mta.bench.peers.opensmtpd_ns --root DIR -- ARGV", file=sys.stderr)
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
    os.execv(cmd[0], cmd)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
