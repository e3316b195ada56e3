"""Load and measuring kit for the queue-at-scale tests (issue 25): a pipelined asyncio sender
that keeps every `queued as ID` reply, 1 KiB messages with unique Message-IDs, process RSS from
/proc, and CLI runs with their own peak RSS. Loopback only; every wait is bounded in time."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from helpers import children
from mta.bench.procs import vm_hwm

SENDER = "load@sender.example.test"
SIZE = 1024
MSGID_RE = re.compile(rb"^Message-ID: <([^>]+)>\r\n", re.MULTILINE | re.IGNORECASE)
_QUEUED = re.compile(rb"queued as ([A-Za-z0-9]+)\s*$")


def _body(length: int) -> bytes:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-scale"
    out = (line + b"\r\n") * (length // (len(line) + 2) + 1)
    out = out[:length - 2] + b"\r\n"
    assert not out.startswith(b".") and b"\n." not in out  # no dot-stuffing on the wire
    return out


class Messages:
    """Message i of a run: exactly SIZE bytes, `Message-ID: <scale-RUN-i@...>`, and the bench
    sink's X-Bench-Checksum over a body shared by all (so a sink can check integrity)."""

    def __init__(self, run: str, size: int = SIZE):
        self.run = run
        head = self._head(0)
        ck_len = len(b"X-Bench-Checksum: crc32=00000000; len=0000000000\r\n\r\n")
        self.body = _body(size - len(head) - ck_len)
        self.check = b"X-Bench-Checksum: crc32=%08x; len=%010d\r\n\r\n" % (zlib.crc32(self.body), len(self.body))
        assert len(self.data(0)) == size

    def message_id(self, i: int) -> str:
        return f"scale-{self.run}-{i:08d}@sender.example.test"  # fixed width: fixed size

    def _head(self, i: int) -> bytes:
        return (f"From: <{SENDER}>\r\nTo: <u{i % 1000}@dest.example.test>\r\n"
                f"Subject: queue scale {i:08d}\r\nMessage-ID: <{self.message_id(i)}>\r\n").encode()

    def data(self, i: int) -> bytes:
        return self._head(i) + self.check + self.body

    def envelope(self, i: int) -> bytes:
        """MAIL, RCPT and DATA in one write (PIPELINING)."""
        return (f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<u{i % 1000}@dest{i % 5}.example.test>\r\nDATA\r\n").encode()


@dataclass
class Sent:
    """What the server acknowledged: index -> queue id, and the failures (reply lines)."""

    ids: dict[int, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One complete reply (multi-line aware): its last line."""
    for _ in range(1000):
        line = await reader.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        if line[3:4] != b"-":
            return line
    raise AssertionError("a reply of more than 1000 lines")


async def _session(addr, msgs: Messages, todo: list[int], sent: Sent, stop_at: float) -> None:
    reader, writer = await asyncio.open_connection(*addr, limit=1 << 16)
    try:
        if not (await _reply(reader)).startswith(b"220"):
            raise AssertionError("no 220 greeting")
        writer.write(b"EHLO load.sender.example.test\r\n")
        if not (await _reply(reader)).startswith(b"250"):
            raise AssertionError("EHLO refused")
        while todo and time.monotonic() < stop_at:
            i = todo.pop()
            writer.write(msgs.envelope(i))
            got = [await _reply(reader) for _ in range(3)]
            if not (got[0].startswith(b"250") and got[1].startswith(b"250") and got[2].startswith(b"354")):
                sent.errors.append(repr(got))
                if got[2].startswith(b"354"):  # a refused recipient: the data still has to end
                    writer.write(b".\r\n")
                    await _reply(reader)
                writer.write(b"RSET\r\n")
                await _reply(reader)
                continue
            writer.write(msgs.data(i) + b".\r\n")
            end = await _reply(reader)
            m = _QUEUED.search(end)
            if end.startswith(b"250") and m:
                sent.ids[i] = m.group(1).decode()
            else:
                sent.errors.append(end.decode(errors="replace").rstrip())
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()


async def _send(addr, msgs: Messages, indexes: range, sessions: int, timeout: float) -> Sent:
    sent = Sent()
    todo = list(reversed(indexes))  # sessions pop from the end: in order, each index once
    stop_at = time.monotonic() + timeout
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(_session(addr, msgs, todo, sent, stop_at)) for _ in range(sessions)]
    done, pending = await asyncio.wait(tasks, timeout=timeout + 10)
    for t in pending:
        t.cancel()
        sent.errors.append("a session did not finish in time")
    for t in done:
        if t.exception() is not None:
            sent.errors.append(f"session failed: {t.exception()!r}")
    sent.seconds = time.monotonic() - t0
    return sent


def send(addr, msgs: Messages, indexes: range, *, sessions: int = 32, timeout: float = 120) -> Sent:
    """Send msgs[i] for every i of `indexes` over `sessions` kept connections; stops by itself
    after `timeout` seconds. The caller checks `errors` and `ids`."""
    try:
        import uvloop
        return uvloop.run(_send(addr, msgs, indexes, sessions, timeout))
    except ImportError:
        return asyncio.run(_send(addr, msgs, indexes, sessions, timeout))


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

def worker_pid(main_pid: int, spool: Path, timeout: float = 10) -> int:
    """The process serving shard 0: the first of `mta run`'s tree (itself with one worker,
    which serves in the main process; else a child) that has the shard's lock file open."""
    lock = os.path.realpath(spool / "0" / "lock")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        todo, seen = [main_pid], 0
        while todo and seen < 1000:
            pid = todo.pop(0)
            seen += 1
            if lock in _open_files(pid):
                return pid
            todo += children(pid)
        time.sleep(0.05)
    raise AssertionError(f"no process under pid {main_pid} holds {lock}")


def _open_files(pid: int) -> set[str]:
    out = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def settled_rss(pid: int, *, stable: float = 2.0, timeout: float = 12.0, slack: int = 1 << 20) -> int:
    """The RSS once it has stayed within `slack` for `stable` seconds (at most `timeout`): the
    worker's once-a-second metrics scan walks the queue, and what it allocates stays."""
    deadline = time.monotonic() + timeout
    last, since = rss_bytes(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_bytes(pid)
        if abs(now - last) > slack:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= stable:
            return now
    return rss_bytes(pid)


def wait_gone(pids: list[int], timeout: float = 10) -> None:
    """Until none of `pids` exists (a killed main takes its worker along: PDEATHSIG)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and _alive(p) for p in pids):
            return
        time.sleep(0.02)
    raise AssertionError(f"processes {pids} still alive {timeout}s after the stop")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Run:
    returncode: int
    stdout: bytes
    stderr: bytes
    max_rss: int  # bytes: the peak RSS of the command's own process
    seconds: float


def run_cli(tmp: Path, *args: str, timeout: float = 120) -> Run:
    """`python -m mta ARGS`, its output through files (a 50,000-message list is megabytes),
    its peak RSS: its VmHWM while it runs. Not wait4's ru_maxrss: Linux starts that from the
    peak of the fork it was exec'ed from (the test process's size), not the command's own."""
    out_path, err_path = tmp / "cli.out", tmp / "cli.err"
    t0 = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "mta", *args], stdout=out, stderr=err, cwd=tmp)
    deadline = t0 + timeout
    hwm = 0  # its own VmHWM, read while it runs (see the docstring)
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        hwm = max(hwm, vm_hwm(proc.pid))
        if time.monotonic() > deadline:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise AssertionError(f"mta {' '.join(args)} ran over {timeout}s")
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(proc.returncode, out_path.read_bytes(), err_path.read_bytes(), hwm or usage.ru_maxrss * 1024,
               time.monotonic() - t0)
