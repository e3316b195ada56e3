"""Small, strict helpers for the end-to-end SMTP tests.

A raw-socket SMTP client (every read bounded by a deadline, replies parsed
with their enhanced status codes, multi-line aware), spool inspection
through `mta queue list/show`, the Received-header splitter, swaks, and the
server's memory footprint from /proc. Nothing here talks to anything but
loopback.
"""

from __future__ import annotations

import email.utils
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field

import pytest

HOSTNAME = "mx.example.test"
DEFAULT_MAX_SIZE = 52_428_800
MiB = 1024 * 1024



ANY = object()  # "don't check" marker

_ENH_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_QID_RE = re.compile(r"^[A-Za-z0-9]+$")


# ---------------------------------------------------------------------------
# replies
# ---------------------------------------------------------------------------

@dataclass
class Reply:
    code: int
    lines: list[str]  # text after "NNN-" / "NNN " on each line
    raw: bytes

    @property
    def enhanced(self) -> str | None:
        m = _ENH_RE.match(self.lines[0]) if self.lines else None
        return ".".join(m.groups()) if m else None

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return self.raw.decode("utf-8", "replace").rstrip()


def check(reply: Reply, code: int, enhanced: str | None = None) -> Reply:
    """Assert the reply's code and (when given) its enhanced status code."""
    assert reply.code == code, f"expected {code} {enhanced or ''}, got: {reply}"
    if enhanced is not None:
        assert reply.enhanced == enhanced, f"expected {code} {enhanced}, got: {reply}"
    return reply


def check_enhanced_class(reply: Reply, code: int) -> Reply:
    """Code exact; an enhanced code present whose class matches the code's."""
    assert reply.code == code, f"expected {code}, got: {reply}"
    assert reply.enhanced is not None, f"no enhanced status code in: {reply}"
    assert reply.enhanced[0] == str(code)[0], f"enhanced class mismatch: {reply}"
    return reply


def queued_id(reply: Reply) -> str:
    """`250 2.0.0 Ok: queued as <ID>` -> ID (the last token)."""
    check(reply, 250, "2.0.0")
    token = reply.lines[-1].split()[-1]
    assert _QID_RE.match(token), f"queue id {token!r} is not [A-Za-z0-9]+ in: {reply}"
    assert "queued as" in reply.lines[-1], f"no 'queued as' in: {reply}"
    return token


class ConnectionClosed(AssertionError):
    pass


class Client:
    """A raw SMTP client. All reads have deadlines; all loops are bounded."""

    def __init__(self, addr: tuple[str, int], *, timeout: float = 15.0,
                 nodelay: bool = True, connect: bool = True):
        self.addr = addr
        self.timeout = timeout
        self.buf = b""
        self.sock: socket.socket | None = None
        self.nodelay = nodelay
        if connect:
            self.connect()

    # -- connection ---------------------------------------------------------
    def connect(self) -> "Client":
        self.sock = socket.create_connection(self.addr, timeout=self.timeout)
        if self.nodelay:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- I/O ----------------------------------------------------------------
    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        assert self.sock is not None
        self.sock.sendall(data)

    def send_slowly(self, data: bytes, *, step: int = 1, pause: float = 0.02) -> None:
        """Separate sends of `step` bytes with small sleeps (bounded by len(data))."""
        assert len(data) <= 4096, "send_slowly is for short byte strings"
        for i in range(0, len(data), step):
            self.send(data[i:i + step])
            time.sleep(pause)

    def _recv_some(self, deadline: float) -> bytes:
        assert self.sock is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"timed out waiting for the server; have {self.buf!r}")
        self.sock.settimeout(remaining)
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError(f"timed out waiting for the server; have {self.buf!r}")
        except ConnectionResetError:
            return b""

    def _line(self, deadline: float) -> bytes:
        for _ in range(100_000):
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                assert line.endswith(b"\r\n"), f"reply line not CRLF-terminated: {line!r}"
                return line
            assert len(self.buf) < 64 * 1024, f"unterminated reply line: {self.buf[:200]!r}"
            chunk = self._recv_some(deadline)
            if not chunk:
                raise ConnectionClosed(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        raise AssertionError("too many reads for one line")

    def reply(self, timeout: float | None = None) -> Reply:
        """Read one complete (possibly multi-line) reply."""
        deadline = time.monotonic() + (timeout or self.timeout)
        lines: list[str] = []
        raw = b""
        code = None
        for _ in range(10_000):
            line = self._line(deadline)
            raw += line
            m = re.match(rb"^(\d{3})([ -])?(.*)\r\n$", line, re.S)
            assert m, f"malformed reply line: {line!r}"
            c = int(m.group(1))
            assert code is None or c == code, f"code changes inside a multi-line reply: {raw!r}"
            code = c
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) != b"-":
                return Reply(code, lines, raw)
        raise AssertionError("reply with more than 10000 lines")

    def replies(self, n: int, timeout: float | None = None) -> list[Reply]:
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line: str | bytes, timeout: float | None = None) -> Reply:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def expect(self, line: str | bytes, code: int, enhanced: str | None = None) -> Reply:
        return check(self.cmd(line), code, enhanced)

    def read_to_close(self, timeout: float = 15.0) -> bytes:
        """Everything the server still sends until it closes; fail if it does not."""
        deadline = time.monotonic() + timeout
        data, self.buf = self.buf, b""
        for _ in range(100_000):
            chunk = self._recv_some(deadline)
            if not chunk:
                return data
            data += chunk
            assert len(data) < 1024 * 1024, "server keeps talking"
        raise AssertionError("too many reads")

    def assert_closed(self, timeout: float = 15.0) -> None:
        rest = self.read_to_close(timeout)
        assert rest == b"", f"unexpected bytes before close: {rest!r}"

    # -- SMTP shortcuts -----------------------------------------------------
    def greeting(self, timeout: float | None = None) -> Reply:
        r = self.reply(timeout)
        check(r, 220)
        assert r.lines[0].startswith(HOSTNAME + " ") or r.lines[0] == HOSTNAME, r
        return r

    def ehlo(self, name: str = "client.example.test") -> Reply:
        return check(self.cmd(f"EHLO {name}"), 250)

    def start(self, name: str = "client.example.test") -> "Client":
        self.greeting()
        self.ehlo(name)
        return self

    def mail_rcpt(self, sender: str, rcpts: list[str], mail_params: str = "") -> None:
        p = f" {mail_params}" if mail_params else ""
        self.expect(f"MAIL FROM:<{sender}>{p}", 250, "2.1.0")
        for r in rcpts:
            self.expect(f"RCPT TO:<{r}>", 250, "2.1.5")

    def data(self, content: bytes) -> Reply:
        """DATA, the dot-stuffed content (must end with CRLF), the terminator."""
        self.expect("DATA", 354)
        self.send(dot_stuff(content) + b".\r\n")
        return self.reply(timeout=120)

    def send_message(self, sender: str, rcpts: list[str], content: bytes,
                     mail_params: str = "") -> str:
        self.mail_rcpt(sender, rcpts, mail_params)
        return queued_id(self.data(content))

    def quit(self) -> None:
        self.expect("QUIT", 221, "2.0.0")
        self.assert_closed()


def dot_stuff(content: bytes) -> bytes:
    assert content == b"" or content.endswith(b"\r\n"), "content must end with CRLF"
    return re.sub(rb"(^|\r\n)\.", rb"\1..", content)


def connect(srv, **kw) -> Client:
    return Client(srv.addr, **kw)


def simple_message(subject: str = "test", body: bytes = b"hello\r\n") -> bytes:
    return (b"From: a@example.test\r\nTo: b@example.test\r\nSubject: "
            + subject.encode() + b"\r\n\r\n" + body)


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def config(smtp: dict | None = None, **top) -> str:
    """TOML text: top-level keys, then an [smtp] table."""
    out = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    if smtp:
        out.append("")
        out.append("[smtp]")
        out += [f"{k} = {_toml_value(v)}" for k, v in smtp.items()]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# spool
# ---------------------------------------------------------------------------

def split_show(output: bytes) -> tuple[bytes, bytes]:
    """`mta queue show` output -> (envelope text, stored message bytes)."""
    # Mail from outside mynetworks carries our Authentication-Results above our Received.
    m = re.search(rb"\r?\n\r?\n(?=Received:|Authentication-Results: )", output)
    assert m, f"no blank line followed by our Received header in: {output[:2000]!r}"
    return output[:m.start()], output[m.end():]


def stored_message(srv, qid: str) -> bytes:
    p = srv.show(qid)
    assert p.returncode == 0, f"queue show {qid} failed ({p.returncode}): {p.stderr!r}"
    return split_show(p.stdout)[1]


def strip_received(message: bytes) -> tuple[bytes, bytes]:
    """Split off the first header field (ours) incl. continuation lines."""
    assert message.startswith(b"Received:"), f"message does not start with Received: {message[:200]!r}"
    return first_field(message)


def first_field(message: bytes) -> tuple[bytes, bytes]:
    """(the first header field incl. continuation lines, the rest)."""
    pos = 0
    for i in range(1000):
        end = message.find(b"\r\n", pos)
        assert end >= 0, f"unterminated header field: {message[:2000]!r}"
        line = message[pos:end]
        assert b"\n" not in line and b"\r" not in line, f"bare CR/LF in a header field: {message[:2000]!r}"
        pos = end + 2
        if message[pos:pos + 1] not in (b"\t", b" "):
            return message[:pos], message[pos:]
    raise AssertionError("a header field with more than 1000 lines")


def check_received(field: bytes, *, helo: str, qid: str, rcpt,
                   ip: str = "127.0.0.1") -> None:
    lines = field.split(b"\r\n")
    assert lines[-1] == b""
    for cont in lines[1:-1]:
        assert cont.startswith(b"\t"), f"continuation line does not start with TAB: {field!r}"
    for ln in lines:
        assert len(ln) <= 998, f"Received line too long: {field!r}"
    text = b" ".join(ln.strip() for ln in lines[:-1]).decode("utf-8")
    assert text.startswith(f"Received: from {helo} ("), text
    assert f"[{ip}]" in text, text
    assert f"by {HOSTNAME}" in text, text
    assert re.search(rf"\bid {re.escape(qid)}\b", text), text
    if rcpt is None:
        assert "for <" not in text, text
    elif rcpt is not ANY:
        assert f"for <{rcpt}>" in text, text
    assert ";" in text, text
    date = email.utils.parsedate_to_datetime(text.rsplit(";", 1)[1].strip())
    assert date.tzinfo is not None, text


def body_of(srv, qid: str, *, helo: str | None = "client.example.test", rcpt=ANY,
            ip: str = "127.0.0.1") -> bytes:
    """Stored message minus our Received header, which is checked when helo
    is given (rcpt=ANY: its `for <..>` clause is not checked)."""
    msg = stored_message(srv, qid)
    if msg.startswith(f"Authentication-Results: {HOSTNAME};".encode()):
        msg = first_field(msg)[1]  # the checks of mail from outside mynetworks
    rec, rest = strip_received(msg)
    if helo is not None:
        check_received(rec, helo=helo, qid=qid, rcpt=rcpt, ip=ip)
    return rest


def only_entry(srv) -> dict:
    """The one message in the queue (of a shared server, the one this test queued)."""
    q = srv.queue()
    assert len(q) == 1, q
    return q[0]


def assert_queue_empty(srv) -> None:
    assert srv.queue() == []


def queue_by_id(srv) -> dict[str, dict]:
    q = srv.queue()
    assert isinstance(q, list), q
    out = {}
    for e in q:
        assert e["id"] not in out, f"duplicate id in queue list: {e['id']}"
        out[e["id"]] = e
    return out


def check_entry(entry: dict, *, sender: str, rcpts: list[str]) -> None:
    from datetime import datetime, timezone, timedelta
    assert entry["sender"] == sender, entry
    assert [r["address"] for r in entry["recipients"]] == rcpts, entry
    assert all(r["state"] == "queued" for r in entry["recipients"]), entry
    arrival = datetime.fromisoformat(entry["arrival"])
    assert arrival.tzinfo is not None, entry
    assert abs(arrival - datetime.now(timezone.utc)) < timedelta(hours=1), entry
    assert isinstance(entry["size"], int) and entry["size"] > 0, entry


# ---------------------------------------------------------------------------
# swaks
# ---------------------------------------------------------------------------

def swaks_path() -> str:
    p = shutil.which("swaks") or ("/usr/bin/swaks" if os.path.exists("/usr/bin/swaks") else None)
    if p is None:
        pytest.fail("swaks not found: install the Debian package 'swaks' (the CI script does)")
    return p


def swaks(srv, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [swaks_path(), "--server", f"{srv.host}:{srv.port}", "--ehlo", "client.example.test",
           "--timeout", "20", *args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def swaks_sent_data(stdout: bytes) -> bytes:
    """The message swaks sent (from its ` -> ` transcript), dot-unstuffed."""
    lines = stdout.split(b"\n")
    start = next((i for i, ln in enumerate(lines) if ln.startswith(b"<-  354")), None)
    assert start is not None, f"no 354 in swaks output: {stdout[-2000:]!r}"
    out = []
    for ln in lines[start + 1:]:
        if ln == b" -> .":
            return re.sub(rb"(^|\r\n)\.", rb"\1", b"".join(out))
        if ln.startswith(b" -> "):
            assert ln.endswith(b"\r"), ln
            out.append(ln[4:] + b"\n")
    raise AssertionError(f"no end of data in swaks output: {stdout[-2000:]!r}")


# ---------------------------------------------------------------------------
# memory of the server's process tree
# ---------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    """The pids of `pid`'s children (every thread's)."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def process_tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    for _ in range(10_000):
        if not todo:
            break
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += children(p)
    return seen


def _status_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


@dataclass
class MemSnapshot:
    per_pid: dict[int, tuple[int, int]] = field(default_factory=dict)


def mem_snapshot(pid: int) -> MemSnapshot:
    return MemSnapshot({p: _status_kb(p) for p in process_tree(pid)})


def mem_growth(before: MemSnapshot, after: MemSnapshot) -> int:
    """Bytes the tree grew by: per process max(peak growth, RSS growth)."""
    total = 0
    for p, (rss, hwm) in after.per_pid.items():
        rss0, hwm0 = before.per_pid.get(p, (0, 0))
        total += max(hwm - hwm0, rss - rss0, 0)
    return total * 1024
