"""The user file: `user:hash` per line, # comments, mode 0600; read by the server,
edited by `mta user`. Invariants: a password or hash never reaches a log line; edits
are atomic (rename) and serialized (flock); an unknown user costs a full scrypt."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import stat
import tempfile
from typing import Iterable

from mta.auth.passwords import DUMMY_HASH, parse_hash, verify_password

log = logging.getLogger("mta.auth")

_USER_RE = re.compile(r"[^\s:#\x00-\x1f\x7f][^\s:\x00-\x1f\x7f]{0,254}")


def valid_user_name(user: str) -> bool:
    """1..255 characters, no whitespace, control characters or ':'; not starting with '#'.
    User names are case-sensitive (an address as a user name is fine)."""
    return isinstance(user, str) and _USER_RE.fullmatch(user) is not None


def read_user_lines(path: str) -> list[str]:
    """The file's lines without line ends; [] when it does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        return []


def _parse_users(lines: Iterable[str], path: str) -> dict[str, str]:
    users: dict[str, str] = {}
    for no, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not valid_user_name(user) or parse_hash(encoded) is None:
            log.warning("%s:%d: ignored: not user:$scrypt$... (see mta user add)", path, no)
            continue
        if user in users:
            log.warning("%s:%d: user %r listed again; the later line wins", path, no, user)
        users[user] = encoded
    return users


class WatchedFile:
    """A private file (users, HTTP tokens) re-read when its mtime, size or inode changes: one
    stat per look. `what` names it in log lines; `missing` says what a missing file means."""

    def __init__(self, path: str, what: str, missing: str) -> None:
        self.path, self.what, self.missing = path, what, missing
        self.ok = False  # the last read found the file and read it
        self._sig: tuple | None = None

    def changed(self) -> list[str] | None:
        """The file's lines if it changed since the last look ([] once it went missing or
        became unreadable, with one log line), None if not."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            if self._sig == ("missing",):
                return None
            log.error("%s: cannot read the %s: %s; %s", self.path, self.what, e.strerror, self.missing)
            self._sig, self.ok = ("missing",), False
            return []
        sig = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        if sig == self._sig:
            return None
        self._sig = sig
        try:
            lines = read_user_lines(self.path)
        except (OSError, UnicodeDecodeError) as e:
            log.error("%s: cannot read the %s: %s", self.path, self.what, e)
            self.ok = False
            return []
        if st.st_mode & 0o077:
            log.warning("%s: mode %03o: the %s should be readable by its owner only (chmod 600)",
                        self.path, stat.S_IMODE(st.st_mode), self.what)
        self.ok = True
        return lines


class UserDB:
    """The user file, re-read whenever it changes (checked at each lookup: one stat). A
    missing or unreadable file means no users."""

    def __init__(self, path: str, executor=None) -> None:
        self.path = path
        self._executor = executor  # None: the loop's default thread pool
        self._file = WatchedFile(path, "user file", "nobody can authenticate")
        self._users: dict[str, str] = {}

    def _refresh(self) -> None:
        lines = self._file.changed()
        if lines is None:
            return
        self._users = _parse_users(lines, self.path)
        if self._file.ok:
            log.info("%s: %d user(s) loaded", self.path, len(self._users))

    def users(self) -> list[str]:
        self._refresh()
        return sorted(self._users)

    def __contains__(self, user: str) -> bool:
        self._refresh()
        return user in self._users

    def verify_sync(self, user: str, password: str) -> bool:
        """Blocking check (scrypt); for threads and tests."""
        self._refresh()
        encoded = self._users.get(user)
        ok = verify_password(password, encoded or DUMMY_HASH)
        return ok and encoded is not None

    async def verify(self, user: str, password: str) -> bool:
        """True when `user` exists and `password` matches. The file check (a stat) is
        done here; scrypt runs in the executor so the event loop never blocks on it."""
        self._refresh()
        encoded = self._users.get(user)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._executor, verify_password, password, encoded or DUMMY_HASH)
        return ok and encoded is not None


@contextlib.contextmanager
def _locked(path: str):
    """Serialize concurrent `mta user` edits: flock on the file's directory (it
    survives the rename that replaces the file, and leaves no lock file behind)."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomic(path: str, lines: list[str]) -> None:
    """tmp file (0600) in the same directory, fsync, rename over, fsync the directory.
    An existing file's owner and group are kept (root editing the file of the mta user)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(prefix=".mta-users.", dir=directory)  # mkstemp creates 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), old.st_uid, old.st_gid)
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _name_of(line: str) -> str | None:
    s = line.strip()
    if not s or s.startswith("#") or ":" not in s:
        return None
    return s.partition(":")[0]


def set_user(path: str, user: str, encoded: str) -> bool:
    """Add or replace `user` (comments and order kept). True if it was new."""
    if not valid_user_name(user):
        raise ValueError(f"invalid user name {user!r}: no whitespace, ':' or control characters")
    if parse_hash(encoded) is None:
        raise ValueError("not a $scrypt$ hash")
    return put_line(path, user, f"{user}:{encoded}")


def delete_user(path: str, user: str) -> bool:
    """Remove `user`; False if it was not there (the file is left untouched)."""
    return drop_line(path, user)


def put_line(path: str, name: str, line: str) -> bool:
    """Replace `name`'s line (the first field, before ':') with `line`, in place, or append
    it; comments and order are kept. True if the name was new. Serialized, atomic."""
    with _locked(path):
        out, found = [], False
        for old in read_user_lines(path):
            if _name_of(old) == name:
                if not found:
                    out.append(line)
                found = True
            else:
                out.append(old)
        if not found:
            out.append(line)
        _write_atomic(path, out)
    return not found


def drop_line(path: str, name: str) -> bool:
    """Remove `name`'s line; False if it was not there (the file is left untouched)."""
    with _locked(path):
        lines = read_user_lines(path)
        out = [line for line in lines if _name_of(line) != name]
        if len(out) == len(lines):
            return False
        _write_atomic(path, out)
    return True


def printable(text: str, limit: int = 64) -> str:
    """A user name as it may appear in a log line or a reply: no control characters, bounded."""
    return "".join(c if c.isprintable() else "?" for c in text[:limit])
