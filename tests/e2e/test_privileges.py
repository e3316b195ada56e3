"""Started as root with [privileges] user set, the server binds, gives the
spool to the user (0700) and runs as that user before serving: checked in
/proc/<pid>/status while the port still answers and mail still queues."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
import time
from pathlib import Path

import pytest

from conftest import start_server
from helpers import connect, simple_message

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid"):
            out[key] = [int(x) for x in rest.split()]
        if key == "Groups":
            out[key] = [int(x) for x in rest.split()]
    return out


def children(pid: int) -> list[int]:
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        out += [int(x) for x in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    return out


@pytest.fixture
def open_dir():
    # pytest's tmp_path lives under a root-only directory; the dropped server
    # must reach its spool, so use a traversable one.
    d = tempfile.mkdtemp(prefix="mta-priv-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def check_dropped(pid: int, user: pwd.struct_passwd) -> None:
    got = ids(pid)
    assert got["Uid"] == [user.pw_uid] * 4, got
    assert got["Gid"] == [user.pw_gid] * 4, got
    assert got["Groups"] == [], got


def send_one(srv) -> None:
    with connect(srv) as c:
        c.start()
        c.send_message("s@example.test", ["r@example.test"], simple_message())
        c.quit()


def test_drops_to_nobody_after_binding(tmp_path, open_dir):
    nobody = pwd.getpwnam("nobody")
    spool = open_dir / "spool"
    srv = start_server(tmp_path, spool=spool, config='[privileges]\nuser = "nobody"\n')
    try:
        check_dropped(srv.proc.pid, nobody)
        send_one(srv)  # the port answers and the spool takes mail as nobody
        st = spool.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, 0o700)
        for p in spool.rglob("*"):
            assert p.lstat().st_uid == nobody.pw_uid, p
        assert "running as user nobody" in srv.log()
        assert "Traceback" not in srv.log(), srv.log()
    finally:
        assert srv.stop() == 0, srv.log()
    assert len(srv.queue()) == 1


def test_each_worker_drops(tmp_path, open_dir):
    nobody = pwd.getpwnam("nobody")
    srv = start_server(tmp_path, spool=open_dir / "spool", args=("--workers", "2"),
                       config='[privileges]\nuser = "nobody"\ngroup = "nogroup"\n'
                       if _has_group("nogroup") else '[privileges]\nuser = "nobody"\n')
    try:
        deadline = time.monotonic() + 10
        while len(children(srv.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = children(srv.proc.pid)
        assert len(workers) == 2
        time.sleep(0.5)
        for pid in workers:
            got = ids(pid)
            assert got["Uid"] == [nobody.pw_uid] * 4, got
            assert got["Groups"] == [], got
        for _ in range(4):
            send_one(srv)
    finally:
        srv.stop()


def _has_group(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def test_unknown_user_refuses_to_start(tmp_path, open_dir):
    srv = start_server(tmp_path, spool=open_dir / "spool", wait=False,
                       config='[privileges]\nuser = "no-such-user-mta"\n')
    assert srv.proc.wait(20) != 0
    assert "no such user" in srv.log()


def test_user_file_becomes_the_users_own(tmp_path, open_dir):
    """The AUTH user file stays readable by the dropped server, and by nobody else."""
    import subprocess
    import sys

    nobody = pwd.getpwnam("nobody")
    users = open_dir / "users"
    subprocess.run([sys.executable, "-m", "mta", "user", "add", "alice", "--users-file", str(users),
                    "--password-stdin"], input=b"s3cret\n", check=True, timeout=60)
    srv = start_server(tmp_path, spool=open_dir / "spool",
                       config=f'[privileges]\nuser = "nobody"\n[auth]\nusers_file = "{users}"\n')
    try:
        check_dropped(srv.proc.pid, nobody)
        st = users.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, 0o600)
    finally:
        assert srv.stop() == 0, srv.log()


def test_mail_is_delivered_after_the_drop(tmp_path, open_dir, peer_factory):
    """Relaying with [privileges] user = nobody and delivery.log_file in a directory only
    root may enter (opened before the drop). The delivery agent is started after the
    drop, as nobody: where nobody cannot run this interpreter (a Python under a 0700
    home, as on this machine) the worker says so at start and delivers itself instead of
    deferring every message. Either way each message reaches the peer and gets its
    record in the delivery log, none on stderr."""
    import json

    logs = open_dir / "logs"
    logs.mkdir(mode=0o700)  # root's: nobody could not open the file by name
    path = logs / "delivery.log"
    peer = peer_factory(name="hub.test")
    srv = start_server(tmp_path, spool=open_dir / "spool", deliver=True,
                       args=("--relay-to", f"127.0.0.1:{peer.port}"),
                       config=f'[privileges]\nuser = "nobody"\n[smtp]\nreverse_dns = false\n'
                              f'[delivery]\ntls = "none"\nlog_file = "{path}"\n')
    try:
        check_dropped(srv.proc.pid, pwd.getpwnam("nobody"))
        for i in range(3):  # one at a time: the second and third find the connection pooled
            send_one(srv)
            deadline = time.monotonic() + 20
            while (path.read_text().count('"delivered"') if path.exists() else 0) < i + 1:
                assert time.monotonic() < deadline, (path.read_text() if path.exists() else "", srv.log()[-3000:])
                time.sleep(0.05)
        assert len(peer.wait_txns(3)) == 3
        recs = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["status"] for r in recs] == ["delivered"] * 3, recs
        log = srv.log()
        assert "Traceback" not in log and '"status":"delivered"' not in log, log[-3000:]
        if "the delivery agent could not start as user nobody" in log:
            assert "delivering in the worker instead" in log
        else:
            assert "delivery agent started" in log, log[-3000:]
    finally:
        assert srv.stop() == 0, srv.log()


def test_a_big_message_is_read_from_the_spool_after_the_drop(tmp_path, open_dir, peer_factory):
    """A message past _native.INLINE_MAX goes to the delivery agent as its spool location:
    the agent (or the worker, where nobody cannot run the agent) opens the segment as
    nobody and sends it byte for byte."""
    peer = peer_factory(name="hub.test")
    srv = start_server(tmp_path, spool=open_dir / "spool", deliver=True,
                       args=("--relay-to", f"127.0.0.1:{peer.port}"),
                       config='[privileges]\nuser = "nobody"\n[smtp]\nreverse_dns = false\n'
                              '[delivery]\ntls = "none"\n')
    try:
        body = b"".join(b"line %d of a big message\r\n" % i for i in range(30_000))  # about 800 KiB
        with connect(srv) as c:
            c.start()
            c.send_message("s@example.test", ["r@example.test"], simple_message(body=body))
            c.quit()
        [txn] = peer.wait_txns(1, timeout=60)
        assert txn.data.endswith(body), srv.log()[-3000:]
        assert "Traceback" not in srv.log()
    finally:
        assert srv.stop() == 0, srv.log()
