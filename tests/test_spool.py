"""The spool through its Python API: asyncio completions, restart, spill with
bounded memory, power-loss emulation (synced.log), the shard lock, faults."""

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from mta import _native as native
from mta._native import Spool, SpoolError, SpoolReader

# Not resolve(): in a dev checkout the .so is a symlink into target/.
PY_PATH = os.path.dirname(os.path.dirname(os.path.abspath(native.__file__)))


def content(i: int, size: int = 200) -> bytes:
    head = f"Received: from x\r\nSubject: message {i}\r\n\r\n".encode()
    return head + bytes(97 + (k + i) % 26 for k in range(size))


def fill(spool: Spool, data: bytes, chunk: int = 4096):
    msg = spool.new_message()
    for k in range(0, len(data), chunk):
        msg.push(data[k : k + chunk])
    return msg


def submit(spool: Spool, token: int, data: bytes, **kw) -> str:
    qid = spool.new_queue_id()
    kw.setdefault("sender", "a@example.test")
    kw.setdefault("recipients", [("b@example.test", None, None)])
    spool.submit(token, qid, fill(spool, data), **kw)
    return qid


async def completions(spool: Spool, n: int, timeout: float = 20) -> dict[int, str | None]:
    """Wait for n completions the way the server does: add_reader on notify_fd."""
    loop = asyncio.get_running_loop()
    done: dict[int, str | None] = {}
    finished = loop.create_future()
    wakeups = 0

    def ready():
        nonlocal wakeups
        wakeups += 1
        done.update(spool.completions())
        if len(done) >= n and not finished.done():
            finished.set_result(None)

    loop.add_reader(spool.notify_fd, ready)
    try:
        ready()
        await asyncio.wait_for(finished, timeout)
    finally:
        loop.remove_reader(spool.notify_fd)
    return done


def wait(spool: Spool, n: int) -> dict[int, str | None]:
    return asyncio.run(completions(spool, n))


def test_submit_through_event_loop_group_commits(tmp_path):
    spool = Spool(str(tmp_path))
    n = 500

    async def main():
        ids = {i: submit(spool, i, content(i)) for i in range(n)}
        return ids, await completions(spool, n)

    ids, done = asyncio.run(main())
    assert done == {i: None for i in range(n)}
    st = spool.stats()
    assert st["messages"] == n and st["failed_batches"] == 0
    assert st["batches"] < n, st  # group commit: many messages per sync
    assert st["syncs"] == st["batches"]
    listed = [e.queue_id for e in spool.list()]
    assert sorted(listed) == sorted(ids.values())
    spool.close()


def test_envelope_fields_and_restart_byte_identical(tmp_path):
    spool = Spool(str(tmp_path), 3)
    msg = spool.new_message()
    hdr = native.received_header(
        helo="c.test", reverse_name=None, ip="192.0.2.9", hostname="mx.test",
        protocol="ESMTP", queue_id="Q1", recipient=None, timestamp=1_795_870_669,
    )
    body = content(1, 5000)
    msg.push(body)
    spool.prepend(msg, hdr)
    assert msg.bytes() == hdr + body and msg.size == len(body)
    assert msg.received_count == 1
    qid = spool.new_queue_id()
    spool.submit(
        7, qid, msg, sender="", smtputf8=True, body="8BITMIME", ret="HDRS", envid="e1",
        helo="c.test", client_ip="2001:db8::5", arrival=1_795_870_669.25,
        recipients=[("x@y.test", ("SUCCESS", "DELAY"), "rfc822;x@y.test"), ("Postmaster", ("NEVER",), None)],
    )
    with pytest.raises(SpoolError):
        msg.size  # consumed by submit
    assert wait(spool, 1) == {7: None}
    spool.close()

    for view in (Spool(str(tmp_path), 3), SpoolReader(str(tmp_path))):
        (e,) = view.list()
        assert (e.queue_id, e.arrival, e.sender, e.smtputf8, e.body, e.ret, e.envid) == (
            qid, 1_795_870_669.25, "", True, "8BITMIME", "HDRS", "e1")
        assert (e.helo, e.client_ip, e.shard, e.size) == ("c.test", "2001:db8::5", 3, len(hdr + body))
        r = e.recipients
        assert [(x.address, x.state, x.notify, x.orcpt) for x in r] == [
            ("x@y.test", "queued", ("SUCCESS", "DELAY"), "rfc822;x@y.test"),
            ("Postmaster", "queued", ("NEVER",), None),
        ]
        assert [(x.attempts, x.next_attempt, x.last_reply) for x in r] == [(0, None, None)] * 2
        assert e.held is False
        if isinstance(view, Spool):
            assert "recovered 1 message(s)" in view.recovery_report[0]
            view.close()
    reader = SpoolReader(str(tmp_path))
    assert reader.message_bytes(qid) == hdr + body
    assert reader.get(qid).queue_id == qid
    assert reader.get("nothere") is None and reader.message_bytes("nothere") is None
    assert native.STATES == ("queued", "delivered", "deferred", "bounced")


def test_bad_arguments_leave_message_usable(tmp_path):
    spool = Spool(str(tmp_path))
    msg = fill(spool, b"Subject: x\r\n\r\n")
    with pytest.raises(ValueError):
        spool.submit(1, "bad id!", msg, sender="", recipients=[])
    with pytest.raises(ValueError):
        spool.submit(1, spool.new_queue_id(), msg, sender="", recipients=[("a@b", ("SOMETIMES",), None)])
    with pytest.raises(ValueError):
        spool.inject_fault("disk")
    spool.submit(1, spool.new_queue_id(), msg, sender="", recipients=[("a@b", None, None)])
    assert wait(spool, 1) == {1: None}
    spool.close()
    with pytest.raises(SpoolError):
        submit(spool, 2, b"x")


RSS_SCRIPT = """
import os, sys, select
from mta._native import Spool
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
spool = Spool(sys.argv[1])
chunk = bytes(range(256)) * 256  # 64 KiB
msg = spool.new_message()
msg.push(b"Subject: big\\r\\n\\r\\n")
msg.push(chunk)
before = hwm()
for _ in range(50 * 16 - 1):
    msg.push(chunk)
assert msg.spilled and msg.size == 50 * 1024 * 1024 + 16
qid = spool.new_queue_id()
spool.submit(1, qid, msg, sender="", recipients=[("a@b", None, None)])
done = []
while not done:
    select.select([spool.notify_fd], [], [], 30)
    done += spool.completions()
assert done == [(1, None)], done
spool.close()
print(qid, hwm() - before)
"""


def test_spill_keeps_memory_bounded(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(tmp_path)], env={**os.environ, "PYTHONPATH": PY_PATH},
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    qid, growth = out.stdout.split()
    assert int(growth) < 8 * 1024 * 1024, f"peak RSS grew {int(growth) >> 20} MiB for a 50 MiB message"
    assert not os.listdir(tmp_path / "0" / "tmp")
    e = SpoolReader(str(tmp_path)).get(qid)
    assert e.size == 50 * 1024 * 1024 + 16


CRASH_SCRIPT = """
import os, sys, select
from mta._native import Spool
spool = Spool(sys.argv[1], sync_log=True, segment_size=256 * 1024)
def body(i):
    return b"Subject: %d\\r\\n\\r\\n" % i + bytes([97 + i % 26]) * (500 + 37 * (i % 50))
token = 0
ids = {}
acked = 0
while acked < 400:
    for _ in range(20):
        m = spool.new_message(); m.push(body(token))
        ids[token] = spool.new_queue_id()
        spool.submit(token, ids[token], m, sender="", recipients=[("a@b", None, None)])
        token += 1
    select.select([spool.notify_fd], [], [], 10)
    for t, err in spool.completions():
        assert err is None
        print(t, ids[t], flush=True)   # acknowledged: "250 queued"
        acked += 1
os.kill(os.getpid(), 9)  # with submissions still in flight
"""


def test_power_loss_emulation_loses_nothing_acknowledged(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(tmp_path)], env={**os.environ, "PYTHONPATH": PY_PATH},
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == -signal.SIGKILL, out.stderr
    acked = [line.split() for line in out.stdout.splitlines()]
    assert len(acked) >= 400
    # Power loss: only what was fdatasync'ed survives.
    shard = tmp_path / "0"
    synced: dict[str, int] = {}
    for line in (shard / "synced.log").read_text().splitlines():
        path, length = line.rsplit(" ", 1)
        synced[path] = int(length)
    for seg in (shard / "segments").iterdir():
        os.truncate(seg, synced.get(f"segments/{seg.name}", 0))
    spool = Spool(str(tmp_path))
    reader = SpoolReader(str(tmp_path))
    for token, qid in acked[::37]:  # a sample: each message_bytes() rescans the shard
        i = int(token)
        assert reader.message_bytes(qid) == b"Subject: %d\r\n\r\n" % i + bytes([97 + i % 26]) * (500 + 37 * (i % 50))
    listed = {e.queue_id for e in spool.list()}
    assert {qid for _, qid in acked} <= listed, spool.recovery_report
    assert not os.listdir(shard / "corrupt"), spool.recovery_report
    spool.close()


LOCK_SCRIPT = """
import sys
from mta._native import Spool
s = Spool(sys.argv[1], 2)
print("locked", flush=True)
sys.stdin.read()
"""


def test_shard_lock_held_by_another_process(tmp_path):
    p = subprocess.Popen(
        [sys.executable, "-c", LOCK_SCRIPT, str(tmp_path)], env={**os.environ, "PYTHONPATH": PY_PATH},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert p.stdout.readline() == "locked\n"
        with pytest.raises(SpoolError, match="spool shard 2 is locked by another process"):
            Spool(str(tmp_path), 2)
        Spool(str(tmp_path), 1).close()  # other shards are free
    finally:
        p.stdin.close()
        p.wait(10)
    Spool(str(tmp_path), 2).close()  # released when the owner exits
    assert oct((tmp_path / "2").stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("kind", ["write", "sync"])
def test_fault_fails_batch_then_recovers(tmp_path, kind):
    spool = Spool(str(tmp_path), sync_log=True)
    first = submit(spool, 1, content(1))
    assert wait(spool, 1) == {1: None}
    spool.inject_fault(kind, 5)
    failed = [submit(spool, t, content(t)) for t in range(10, 20)]
    done = wait(spool, 10)
    assert set(done) == set(range(10, 20))
    assert all(err and "Input/output error" in err for err in done.values()), done
    spool.inject_fault(None)
    last = submit(spool, 30, content(30))
    assert wait(spool, 1) == {30: None}
    assert spool.stats()["failed_batches"] >= 1
    spool.close()
    spool = Spool(str(tmp_path))
    assert [e.queue_id for e in spool.list()] == [first, last]
    assert not set(failed) & {e.queue_id for e in spool.list()}
    spool.close()


def test_torn_tail_is_truncated_and_reported(tmp_path):
    spool = Spool(str(tmp_path))
    qid = submit(spool, 1, content(1))
    wait(spool, 1)
    spool.close()
    (seg,) = (tmp_path / "0" / "segments").iterdir()
    size = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(b"MTAr\x01\x00\x00\x00\xff")  # a record cut short by a crash
    spool = Spool(str(tmp_path))
    assert any("torn tail truncated" in line for line in spool.recovery_report), spool.recovery_report
    assert seg.stat().st_size == size
    assert [e.queue_id for e in spool.list()] == [qid]
    spool.close()


def test_queue_ids_unique_sortable(tmp_path):
    a, b = Spool(str(tmp_path), 0), Spool(str(tmp_path), 1)
    ids = [s.new_queue_id() for _ in range(2000) for s in (a, b)]
    assert len(set(ids)) == len(ids)
    assert all(q.isalnum() and q.isascii() for q in ids)
    a_ids = ids[::2]
    assert a_ids == sorted(a_ids)
    a.close()
    b.close()
