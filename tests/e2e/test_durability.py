"""Durability end to end: "250 queued" means on disk (DESIGN.md, Invariants 1 and 5).

Real server on loopback, real SMTP clients under load. We kill it (SIGKILL,
emulated power loss from MTA_TEST_SYNC_LOG, SIGTERM), inject write/sync
faults (MTA_TEST_FAULT_FILE), run out of space (min_free_space, a real 4 MiB
tmpfs), then restart on the same spool and check that every acknowledged
message is listed with its envelope, byte-identical, and never duplicated.
Every load is bounded in message count and time; nothing asserts speed.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import random
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import (  # noqa: E402
    Load, Msg, Record, Result, connect, descendants, make_message, port_is_free,
    send, send_once, simulate_power_loss, survivors, verify_spool,
)

ROOT = Path(__file__).resolve().parents[2]


def restart(server_factory, old, **kw):
    """A new server on the old one's spool and port."""
    return server_factory(spool=old.spool, port=old.port, **kw)


def is_tempfail(r: Result, *pairs: tuple[int, str]) -> bool:
    return r.stage != "IO" and any(r.code == c and r.enhanced() == e for c, e in pairs)


def check_new_mail(srv, seed: int) -> None:
    """The (restarted) server accepts a new message and lists it."""
    msg = make_message(random.Random(seed), 900 + seed, 1, size=2000, dots=True)
    r = send_once(srv.addr, msg)
    assert r.acked, f"server does not accept new mail: {r}\n{srv.log()[-3000:]}"
    verify_spool(srv, [Record(msg, r)], [], cli_sample_size=1, dup_check=False)


def kill_under_load(srv, load: Load, *, acks: int) -> list:
    """Run load until `acks` acks (or ~1 s with some acks), SIGKILL the server mid-load."""
    load.start()
    try:
        load.wait_acks(acks, min_seconds=1.0, max_seconds=15.0)
        mid_load = not load.finished()
        kids = descendants(srv.proc.pid)
        srv.proc.kill()
        srv.proc.wait(10)
    finally:
        load.stop()
    assert mid_load, "the load had already stopped when the server was killed"
    assert not load.errors, load.errors[:5]
    assert load.acked, ("server acknowledged nothing under load; results: "
                        f"{[str(r.result) for r in load.attempted[:5]]}\n{srv.log()[-3000:]}")
    return kids


# ---------------------------------------------------------------------------
# 1. SIGKILL under load
# ---------------------------------------------------------------------------

def test_sigkill_under_load_loses_no_acknowledged_message(server_factory):
    srv = server_factory()
    load = Load(srv.addr, clients=20, max_messages=1500, max_seconds=15.0, seed=1)
    kids = kill_under_load(srv, load, acks=250)

    alive = survivors(kids)
    if alive:
        for p in alive:  # descendants of the server we started: do not leave them running
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    assert not alive, f"processes of the server survived its SIGKILL: {alive}"
    assert port_is_free(srv.host, srv.port), f"port {srv.port} still bound after SIGKILL"

    srv2 = restart(server_factory, srv)
    summary = verify_spool(srv2, load.acked, load.attempted)
    print("sigkill:", summary)
    check_new_mail(srv2, 1)


# ---------------------------------------------------------------------------
# 2. Power loss: SIGKILL, then cut segments back to what was fdatasync'ed
# ---------------------------------------------------------------------------

# Small segments: rotation under load. "exact": cut at the synced lengths, with
# a low spill threshold (big messages streamed through tmp/). "torn": the newest
# segment also keeps part of its unsynced tail (a torn write), with big
# messages appended by the writer itself so that a tail is likely in flight.
POWER_LOSS_CONFIG = {
    "exact": '[spool]\nsegment_size = "2MiB"\nspill_threshold = "64KiB"\n',
    "torn": '[spool]\nsegment_size = "2MiB"\n',
}


@pytest.mark.parametrize("tail", ["exact", "torn"])
def test_power_loss_loses_no_acknowledged_message(server_factory, tail):
    config = POWER_LOSS_CONFIG[tail]
    srv = server_factory(env={"MTA_TEST_SYNC_LOG": "1"}, config=config)
    load = Load(srv.addr, clients=20, max_messages=1500, max_seconds=15.0, seed=2)
    kill_under_load(srv, load, acks=250)

    sync_log = srv.spool / "0" / "synced.log"
    assert sync_log.exists(), f"MTA_TEST_SYNC_LOG=1 wrote no {sync_log}"
    actions = simulate_power_loss(srv.spool, torn_tail=random.Random(7) if tail == "torn" else None)
    print("power loss:", *actions, sep="\n  ")

    srv2 = restart(server_factory, srv, config=config)
    summary = verify_spool(srv2, load.acked, load.attempted)
    print(f"power loss ({tail}):", summary)
    check_new_mail(srv2, 2)


# ---------------------------------------------------------------------------
# 3. Injected write (ENOSPC) and sync (EIO) faults
# ---------------------------------------------------------------------------

class Sender:
    """Sequential sends on one kept session (reconnecting after I/O errors)."""

    def __init__(self, addr, worker: int):
        self.addr, self.worker, self.seq = addr, worker, 0
        self.rng = random.Random(worker)
        self.smtp: smtplib.SMTP | None = None

    def new(self, **kw) -> Msg:
        self.seq += 1
        return make_message(self.rng, self.worker, self.seq, **kw)

    def send(self, msg: Msg) -> Result:
        try:
            if self.smtp is None:
                self.smtp = connect(self.addr)
            return send(self.smtp, msg)
        except (OSError, smtplib.SMTPException) as e:
            self.close()
            return Result("IO", None, repr(e).encode())

    def until(self, pred, *, max_msgs: int = 60, max_seconds: float = 8.0, **kw):
        """Send new messages until pred(result); bounded. Returns [(msg, result)]."""
        out, end = [], time.monotonic() + max_seconds
        while len(out) < max_msgs and time.monotonic() < end:
            msg = self.new(**kw)
            r = self.send(msg)
            out.append((msg, r))
            if pred(r):
                break
            time.sleep(0.05)
        return out

    def close(self):
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
        self.smtp = None


def _batch(addr, msgs: list[Msg]) -> list[tuple[Msg, Result]]:
    with concurrent.futures.ThreadPoolExecutor(len(msgs)) as ex:
        return list(zip(msgs, ex.map(lambda m: send_once(addr, m), msgs)))


def test_injected_write_and_sync_faults(server_factory, tmp_path):
    fault = tmp_path / "faults"
    env = {"MTA_TEST_FAULT_FILE": str(fault)}
    srv = server_factory(env=env)
    s = Sender(srv.addr, 30)
    acked: list[Record] = []
    refused: set[str] = set()

    def take(pairs):
        for m, r in pairs:
            if r.acked:
                acked.append(Record(m, r))

    for _ in range(5):
        m = s.new()
        r = s.send(m)
        assert r.acked, f"baseline message refused: {r}"
        acked.append(Record(m, r))

    for content, clear in (("write 28", "empty"), ("sync 5", "unlink")):
        fault.write_text(content)
        hist = s.until(lambda r: not r.acked)
        take(hist)
        m, r = hist[-1]
        assert not r.acked, f"fault {content!r}: mail still accepted 8 s later\n{srv.log()[-3000:]}"
        assert is_tempfail(r, (451, "4.3.0")), f"fault {content!r}: expected 451 4.3.0, got {r}"
        round_refused = [m]

        # A concurrent batch while the fault holds: every message refused, none acknowledged.
        batch = _batch(srv.addr, [s.new() for _ in range(6)])
        take(batch)
        wrong = [str(r) for _, r in batch if not is_tempfail(r, (451, "4.3.0"))]
        assert not wrong, f"fault {content!r}: concurrent messages not refused with 451 4.3.0: {wrong}"
        round_refused += [m for m, _ in batch]
        assert srv.proc.poll() is None, f"server died on fault {content!r}\n{srv.log()[-3000:]}"
        # The same session goes on after a 451.
        m = s.new(size=500)
        r = s.send(m)
        assert is_tempfail(r, (451, "4.3.0")), f"fault {content!r}, same session: {r}"
        round_refused.append(m)

        if clear == "empty":
            fault.write_text("")
        else:
            fault.unlink()
        hist = s.until(lambda r: r.acked)
        take(hist)
        assert hist[-1][1].acked, f"after clearing {content!r} mail is still refused: {hist[-1][1]}"
        before = [r for _, r in hist[:-1]]
        assert all(is_tempfail(r, (451, "4.3.0")) for r in before), [str(r) for r in before]
        round_refused += [m for m, _ in hist[:-1]]

        batch = _batch(srv.addr, [s.new() for _ in range(6)])
        take(batch)
        assert all(r.acked for _, r in batch), \
            f"after clearing {content!r}: {[str(r) for _, r in batch if not r.acked]}"
        # Clients retry what was refused: accepted now, and must be stored once only.
        retried = _batch(srv.addr, round_refused[:8])
        for m in round_refused[8:]:
            retried.append((m, send_once(srv.addr, m)))
        take(retried)
        assert all(r.acked for _, r in retried), [str(r) for _, r in retried if not r.acked]
        refused |= {m.token for m in round_refused}
    s.close()

    rc = srv.stop(signal.SIGTERM)
    assert rc == 0, f"SIGTERM: exit code {rc}\n{srv.log()[-3000:]}"
    srv2 = restart(server_factory, srv, env=env)
    summary = verify_spool(srv2, acked, acked, refused_tokens=refused)
    print("faults:", summary, "refused then retried:", len(refused))


# ---------------------------------------------------------------------------
# 4. min_free_space
# ---------------------------------------------------------------------------

def test_min_free_space_refuses_mail_with_452(server_factory, tmp_path):
    st = os.statvfs(tmp_path)
    free = max(st.f_bavail, st.f_bfree) * st.f_frsize
    high = server_factory(config=f"[spool]\nmin_free_space = {free + 2**30}\n",
                          spool=tmp_path / "spool-high")
    smtp = connect(high.addr)
    try:
        code, text = smtp.mail("sender@loadgen.example.test")
        assert (code, text.split()[:1]) == (452, [b"4.3.1"]), \
            f"min_free_space above free space: MAIL got {code} {text!r}, expected 452 4.3.1"
        assert smtp.noop()[0] == 250, "session unusable after 452"
    finally:
        smtp.close()
    msg = make_message(random.Random(4), 40, 1, size=1000)
    r = send_once(high.addr, msg)
    assert r.stage == "MAIL" and r.code == 452 and r.enhanced() == "4.3.1", str(r)
    assert high.proc.poll() is None
    assert high.queue() == [], "a message was queued although MAIL got 452"

    low = server_factory(config="[spool]\nmin_free_space = 1048576\n", spool=tmp_path / "spool-low")
    msg = make_message(random.Random(5), 41, 1, size=1000)
    r = send_once(low.addr, msg)
    assert r.acked, f"min_free_space = 1 MiB: mail refused: {r}"
    verify_spool(low, [Record(msg, r)], [], cli_sample_size=1)


# ---------------------------------------------------------------------------
# 5. A real full filesystem (4 MiB tmpfs)
# ---------------------------------------------------------------------------

@pytest.fixture
def tmpfs_dir(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        reason = f"cannot mount a tmpfs here (sandbox?): {(p.stderr or p.stdout).strip()}"
        print(reason)
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def _fill(path: Path, leave: int) -> None:
    """Append zeros to path until the filesystem has about `leave` bytes free (or is full)."""
    chunk = b"\0" * 65536
    with open(path, "ab") as f:
        while True:
            st = os.statvfs(path)
            room = st.f_bavail * st.f_frsize - leave
            if room <= 0:
                break
            try:
                f.write(chunk[:min(room, len(chunk))])
                f.flush()
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break


NO_SPACE = ((451, "4.3.0"), (452, "4.3.1"))


def test_full_tmpfs_refuses_with_4xx_and_recovers(tmpfs_dir, server_factory):
    # tmpfs_dir is requested first so that it is unmounted after the servers stop.
    srv = server_factory(spool=tmpfs_dir / "spool", config="[spool]\nmin_free_space = 1024\n")
    s = Sender(srv.addr, 50)
    acked: list[Record] = []
    for _ in range(3):
        m = s.new(size=3000)
        r = s.send(m)
        assert r.acked, f"baseline on tmpfs refused: {r}\n{srv.log()[-3000:]}"
        acked.append(Record(m, r))

    filler = tmpfs_dir / "filler"
    _fill(filler, leave=600 * 1024)
    hist = s.until(lambda r: not r.acked, max_msgs=40, max_seconds=20, size=120 * 1024, dots=False)
    acked += [Record(m, r) for m, r in hist if r.acked]
    refused = [m for m, r in hist if not r.acked]
    last = hist[-1][1]
    assert not last.acked, f"{len(hist)} messages of 120 KiB accepted on a 4 MiB filesystem?"
    assert is_tempfail(last, *NO_SPACE), f"filesystem full: expected 451 4.3.0 or 452 4.3.1, got {last}"

    _fill(filler, leave=0)  # completely full now
    for _ in range(3):
        m = s.new(size=20 * 1024)
        r = s.send(m)
        assert is_tempfail(r, *NO_SPACE), f"filesystem completely full: got {r}"
        refused.append(m)
    assert srv.proc.poll() is None, f"server died on a full filesystem\n{srv.log()[-3000:]}"

    filler.unlink()
    hist = s.until(lambda r: r.acked, max_msgs=40, max_seconds=10, size=2000)
    acked += [Record(m, r) for m, r in hist if r.acked]
    assert hist[-1][1].acked, f"space freed but mail still refused: {hist[-1][1]}"
    refused += [m for m, r in hist if not r.acked]
    for m in refused:  # clients retry
        r = s.send(m)
        assert r.acked, f"retry after freeing space refused: {r}"
        acked.append(Record(m, r))
    s.close()

    rc = srv.stop(signal.SIGTERM)
    assert rc == 0, f"SIGTERM: exit code {rc}\n{srv.log()[-3000:]}"
    srv2 = restart(server_factory, srv, config="[spool]\nmin_free_space = 1024\n")
    summary = verify_spool(srv2, acked, acked, refused_tokens={m.token for m in refused})
    print("tmpfs:", summary, "refused then retried:", len(refused))


# ---------------------------------------------------------------------------
# 6. SIGTERM under light load
# ---------------------------------------------------------------------------

def test_sigterm_under_light_load_exits_0_and_keeps_acknowledged(server_factory):
    srv = server_factory()
    load = Load(srv.addr, clients=3, max_messages=300, max_seconds=10.0, pause=0.02, seed=6)
    load.start()
    try:
        load.wait_acks(60, min_seconds=1.0, max_seconds=10.0)
        srv.proc.send_signal(signal.SIGTERM)
        try:
            rc = srv.proc.wait(15)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait(5)
            pytest.fail(f"server did not exit within 15 s of SIGTERM\n{srv.log()[-3000:]}")
    finally:
        load.stop()
    assert rc == 0, f"SIGTERM: exit code {rc}\n{srv.log()[-3000:]}"
    assert not load.errors, load.errors[:5]
    assert load.acked, "nothing acknowledged before SIGTERM"

    srv2 = restart(server_factory, srv)
    summary = verify_spool(srv2, load.acked, load.attempted)
    print("sigterm:", summary)
    check_new_mail(srv2, 6)
