"""Maildir delivery on the real file system: content, names, durability
steps, error mapping (ENOTDIR through a regular file, ENOSPC on a tiny tmpfs)."""

import asyncio
import os
import re
import stat
import subprocess
import tempfile
import threading

import pytest

from mta.delivery import OutMessage, OutRcpt
from mta.delivery import maildir as md
from mta.delivery.maildir import deliver_maildir, deliver_maildir_async

DATA = b"Received: from x\r\nSubject: hi\r\n\r\nline 1\r\nline 2\r\n"
NAME = re.compile(r"^\d+\.M\d+P\d+Q\d+\.[A-Za-z0-9.\\-]+$")


def msg(data: bytes = DATA, sender: str = "s@a.test") -> OutMessage:
    return OutMessage("Q1", sender, (OutRcpt("r@b.test"),), data)


def files(root, sub):
    return sorted(os.listdir(os.path.join(root, sub)))


def test_delivers_into_new_with_headers_and_lf(tmp_path):
    root = str(tmp_path / "Maildir")
    r = deliver_maildir(root, msg(), OutRcpt("r@b.test"), "mx.b.test")
    assert (r.code, r.enhanced, r.status) == (250, "2.0.0", "delivered")
    assert r.address == "r@b.test"
    for sub in ("tmp", "new", "cur"):
        st = os.stat(os.path.join(root, sub))
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    new = files(root, "new")
    assert len(new) == 1 and files(root, "tmp") == [] and files(root, "cur") == []
    assert NAME.match(new[0]) and new[0].endswith(".mx.b.test")
    assert f"P{os.getpid()}Q" in new[0]
    assert new[0] in r.text
    body = open(os.path.join(root, "new", new[0]), "rb").read()
    assert body == (b"Return-Path: <s@a.test>\nDelivered-To: r@b.test\n"
                    b"Received: from x\nSubject: hi\n\nline 1\nline 2\n")
    assert stat.S_IMODE(os.stat(os.path.join(root, "new", new[0])).st_mode) == 0o600


def test_null_sender_and_header_injection(tmp_path):
    root = str(tmp_path / "m")
    deliver_maildir(root, msg(sender=""), OutRcpt("r@b.test\r\nX-Evil: 1"), "h")
    (name,) = files(root, "new")
    body = open(os.path.join(root, "new", name), "rb").read()
    assert body.startswith(b"Return-Path: <>\nDelivered-To: r@b.testX-Evil: 1\nReceived:")


def test_existing_maildir_and_host_escapes(tmp_path):
    root = tmp_path / "m"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    r = deliver_maildir(str(root), msg(), OutRcpt("r@b.test"), "we/ird:host")
    assert r.code == 250
    (name,) = files(str(root), "new")
    assert name.endswith(".we\\057ird\\072host")


def test_many_deliveries_unique_names_threads(tmp_path):
    root = str(tmp_path / "m")
    results = []

    def worker(k):
        for i in range(50):
            m = msg(DATA + f"{k}-{i}\r\n".encode())
            results.append(deliver_maildir(root, m, OutRcpt("r@b.test"), "h"))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(r.code == 250 for r in results) and len(results) == 200
    new = files(root, "new")
    assert len(new) == 200 and len(set(new)) == 200 and files(root, "tmp") == []
    bodies = {open(os.path.join(root, "new", n), "rb").read().rsplit(b"\n", 2)[-2] for n in new}
    assert bodies == {f"{k}-{i}".encode() for k in range(4) for i in range(50)}


def test_name_clash_is_retried_not_overwritten(tmp_path, monkeypatch):
    root = str(tmp_path / "m")
    names = iter(["same", "same", "other"])
    monkeypatch.setattr(md, "_unique_name", lambda host: next(names))
    assert deliver_maildir(root, msg(b"A\r\n\r\nfirst\r\n"), OutRcpt("r@b.test"), "h").code == 250
    assert deliver_maildir(root, msg(b"A\r\n\r\nsecond\r\n"), OutRcpt("r@b.test"), "h").code == 250
    assert files(root, "new") == ["other", "same"]
    assert open(os.path.join(root, "new", "same"), "rb").read().endswith(b"first\n")
    assert files(root, "tmp") == []


def test_fsyncs_file_and_new_dir(tmp_path, monkeypatch):
    root = str(tmp_path / "m")
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    deliver_maildir(root, msg(), OutRcpt("r@b.test"), "h")
    synced.clear()
    deliver_maildir(root, msg(), OutRcpt("r@b.test"), "h")
    # Second delivery (dirs exist): the tmp file, then new/ after the link.
    assert len(synced) == 2
    assert os.path.dirname(synced[0]) == os.path.join(root, "tmp")
    assert synced[1] == os.path.join(root, "new")


def test_maildir_removed_between_deliveries_is_recreated(tmp_path):
    root = tmp_path / "m"
    assert deliver_maildir(str(root), msg(), OutRcpt("r@b.test"), "h").code == 250
    subprocess.run(["rm", "-rf", str(root)], check=True)
    assert deliver_maildir(str(root), msg(), OutRcpt("r@b.test"), "h").code == 250
    assert len(files(str(root), "new")) == 1


def test_not_a_directory_defers_as_configuration_error(tmp_path):
    f = tmp_path / "file"
    f.write_bytes(b"x")
    r = deliver_maildir(str(f / "Maildir"), msg(), OutRcpt("r@b.test"), "h")
    assert (r.code, r.enhanced, r.status) == (451, "4.3.5", "deferred")
    assert str(tmp_path) not in r.text  # local paths stay in our log
    # The maildir itself is a regular file; its new/ is a regular file: same mapping.
    assert deliver_maildir(str(f), msg(), OutRcpt("r@b.test"), "h").enhanced == "4.3.5"
    root = tmp_path / "m"
    (root / "tmp").mkdir(parents=True)
    (root / "cur").mkdir()
    (root / "new").write_bytes(b"")
    r = deliver_maildir(str(root), msg(), OutRcpt("r@b.test"), "h")
    assert (r.code, r.enhanced) == (451, "4.3.5")


def test_other_oserror_is_451_430(tmp_path, monkeypatch):
    def boom(*a):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(md, "_fsync_dir", boom)
    r = deliver_maildir(str(tmp_path / "m"), msg(), OutRcpt("r@b.test"), "h")
    assert (r.code, r.enhanced, r.status) == (451, "4.3.0", "deferred")
    assert "Input/output error" in r.text


@pytest.fixture
def tiny_tmpfs():
    d = tempfile.mkdtemp()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d],
                       capture_output=True)
    if p.returncode != 0:
        os.rmdir(d)
        pytest.skip(f"cannot mount a tmpfs (needs root): {p.stderr.decode().strip()}")
    yield d
    subprocess.run(["umount", d], check=True)
    os.rmdir(d)


def test_enospc_is_452_422_and_leaves_no_tmp(tiny_tmpfs):
    root = os.path.join(tiny_tmpfs, "m")
    big = b"Subject: big\r\n\r\n" + b"x" * 200_000 + b"\r\n"
    r = deliver_maildir(root, msg(big), OutRcpt("r@b.test"), "h")
    assert (r.code, r.enhanced, r.status) == (452, "4.2.2", "deferred")
    assert files(root, "tmp") == [] and files(root, "new") == []
    # Space is left for a small one afterwards: nothing half-written remains.
    assert deliver_maildir(root, msg(), OutRcpt("r@b.test"), "h").code == 250


def test_async_wrapper(tmp_path):
    root = str(tmp_path / "m")

    async def main():
        return await asyncio.gather(*(deliver_maildir_async(root, msg(), OutRcpt(f"r{i}@b.test"), "h")
                                      for i in range(10)))

    rs = asyncio.run(main())
    assert [r.code for r in rs] == [250] * 10
    assert [r.address for r in rs] == [f"r{i}@b.test" for i in range(10)]
    assert len(files(root, "new")) == 10
