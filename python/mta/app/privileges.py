"""Dropping root after binding: the spool goes to the configured user (0700), then the
process becomes that user and group. After `drop()` returns, root cannot be regained
(real, effective and saved ids all change); a failure to drop is fatal."""

from __future__ import annotations

import grp
import importlib
import logging
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass

from mta.config.schema import PrivilegesConfig
from mta.errors import MtaError

log = logging.getLogger("mta")


class PrivilegeError(MtaError):
    pass


# Modules other code imports lazily, on first use. After the drop the
# interpreter's own files may be unreadable (a Python under a 0700 home), so
# they are imported while still root. DNS answers map record types to
# modules on demand; so does the IDNA codec.
_PRELOAD = (
    "encodings.idna",
    "dns._asyncio_backend",
    "dns.rdtypes.IN.A",
    "dns.rdtypes.IN.AAAA",
    "dns.rdtypes.ANY.MX",
    "dns.rdtypes.ANY.PTR",
    "dns.rdtypes.ANY.TXT",
    "dns.rdtypes.ANY.CNAME",
    "dns.rdtypes.ANY.SOA",
    "dns.rdtypes.ANY.NS",
)


def _preload() -> None:
    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            log.debug("preload: no module %s", name)


@dataclass(frozen=True)
class Target:
    user: str
    uid: int
    gid: int


def resolve(cfg: PrivilegesConfig) -> Target | None:
    """The user and group to become, or None when there is nothing to do."""
    if not cfg.user:
        return None
    try:
        pw = pwd.getpwnam(cfg.user)
    except KeyError:
        raise PrivilegeError(f"privileges.user: no such user {cfg.user!r}") from None
    gid = pw.pw_gid
    if cfg.group:
        try:
            gid = grp.getgrnam(cfg.group).gr_gid
        except KeyError:
            raise PrivilegeError(f"privileges.group: no such group {cfg.group!r}") from None
    return Target(cfg.user, pw.pw_uid, gid)


def _chown_tree(root: str, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def drop(cfg: PrivilegesConfig, spool_dir: str, private_files: tuple[str, ...] = ()) -> None:
    """Become `cfg.user` if running as root; call once the listeners are bound.
    `private_files` (the AUTH user file) are made the user's own, mode 0600, so
    the server can still read them and nobody else can."""
    target = resolve(cfg)
    if target is None:
        return
    if os.geteuid() != 0:
        if os.geteuid() != target.uid:
            log.warning("privileges.user = %r, but not started as root: staying uid %d",
                        target.user, os.geteuid())
        return
    _preload()
    try:
        os.makedirs(spool_dir, mode=0o700, exist_ok=True)
        _chown_tree(spool_dir, target.uid, target.gid)
        os.chmod(spool_dir, 0o700)
        for path in private_files:
            if path and os.path.exists(path):
                os.chown(path, target.uid, target.gid)
                os.chmod(path, 0o600)
        os.setgroups([])
        os.setgid(target.gid)
        os.setuid(target.uid)
    except OSError as e:
        raise PrivilegeError(f"cannot drop privileges to {target.user!r}: {e}") from e
    if os.getuid() != target.uid or os.geteuid() != target.uid or os.getegid() != target.gid:
        raise PrivilegeError(f"dropping privileges to {target.user!r} did not take effect")
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:
        raise PrivilegeError("root could be regained after dropping privileges")
    log.info("running as user %s (uid %d, gid %d)", target.user, target.uid, target.gid)


def helper_blocked(cfg: PrivilegesConfig, module: str, env: dict[str, str]) -> str | None:
    """Before the drop: why `python -m module`'s imports would fail when started as the
    user to become (a helper process the worker starts after the drop, such as the
    delivery agent: the interpreter or the package may be under a 0700 home), or None
    when they work or there is no user to become. Runs the interpreter once as that user."""
    target = resolve(cfg)
    if target is None or os.geteuid() != 0:
        return None
    try:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], user=target.uid, group=target.gid,
                           extra_groups=[], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{sys.executable}: {e}"
    if r.returncode == 0:
        return None
    lines = r.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"{sys.executable} exited with status {r.returncode}"
