"""Load generator and spool checker for the durability end-to-end tests.

Client threads (smtplib over loopback) send distinct messages, each carrying
a unique token, and record exactly which ones the server acknowledged with
`250 ... queued as ID`. Every loop is bounded by a message count AND a
deadline, so a load stops by itself even if nobody calls stop().
The checkers compare what the spool holds after a restart with what was
acknowledged: present, same envelope, byte-identical, never duplicated.
"""

from __future__ import annotations

import base64
import concurrent.futures
import os
import random
import re
import secrets
import smtplib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

QUEUED_RE = re.compile(rb"queued as ([A-Za-z0-9]+)\s*$")
TOKEN_RE = re.compile(rb"LGTOKEN-[0-9a-f]+-[0-9]+-[0-9]+-[0-9a-f]+")
RUN_ID = secrets.token_hex(3)
CRLF = b"\r\n"

# Lines a client must dot-stuff; after unstuffing the server must store them as is.
DOT_LINES = [b".", b"..", b"...", b".leading dot", b"..two leading dots", b". space after dot"]


# ---------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------

@dataclass
class Msg:
    token: str
    sender: str
    recipients: list[str]
    data: bytes  # the message exactly as the server must store it (after our Received)
    kinds: frozenset  # {"big", "huge", "dots", ...}


def _text_lines(rng: random.Random, nbytes: int) -> list[bytes]:
    raw = base64.b64encode(rng.randbytes(max(1, nbytes * 3 // 4)))
    return [raw[i:i + 76] for i in range(0, len(raw), 76)]


def make_message(rng: random.Random, worker: int, seq: int, *, size: int | None = None,
                 dots: bool | None = None) -> Msg:
    """A distinct message with a unique token; varied size; some dot-stuffing lines."""
    token = f"LGTOKEN-{RUN_ID}-{worker}-{seq}-{secrets.token_hex(6)}"
    kinds = set()
    if size is None:
        r = rng.random()
        if r < 0.01:
            size, kind = rng.randint(1_100_000, 1_400_000), "huge"  # past the 1 MiB spill threshold
        elif r < 0.08:
            size, kind = rng.randint(100 * 1024, 300 * 1024), "big"
        elif r < 0.30:
            size, kind = rng.randint(4 * 1024, 64 * 1024), "medium"
        else:
            size, kind = rng.randint(150, 4 * 1024), "small"
        kinds.add(kind)
    if dots is None:
        dots = rng.random() < 0.25
    sender = f"sender{worker}@loadgen.example.test"
    recipients = [f"rcpt{worker}.{seq}.{i}@example.test" for i in range(rng.randint(1, 3))]
    headers = [
        b"From: <" + sender.encode() + b">",
        b"To: " + b", ".join(b"<" + r.encode() + b">" for r in recipients),
        b"Subject: durability " + token.encode(),
        b"Message-ID: <" + token.encode() + b"@loadgen.example.test>",
        b"X-Token: " + token.encode(),
    ]
    body = [b"token " + token.encode()]
    body += _text_lines(rng, size)
    if dots:
        kinds.add("dots")
        for line in DOT_LINES:
            body.insert(rng.randint(1, len(body)), line)
        body.append(b".")  # a lone dot as the very last line, just before the terminator
    body.append(b"end " + token.encode())
    if dots:
        body.append(b".")
    data = CRLF.join(headers) + CRLF + CRLF + CRLF.join(body) + CRLF
    return Msg(token, sender, recipients, data, frozenset(kinds))


# ---------------------------------------------------------------------------
# One SMTP transaction
# ---------------------------------------------------------------------------

@dataclass
class Result:
    stage: str  # "MAIL" | "RCPT" | "DATA" | "END" | "IO" (connection failed mid-way)
    code: int | None
    text: bytes
    queue_id: str | None = None

    @property
    def acked(self) -> bool:
        return self.stage == "END" and self.code == 250 and self.queue_id is not None

    def enhanced(self) -> str:
        return self.text.split(None, 1)[0].decode(errors="replace") if self.text else ""

    def __str__(self) -> str:
        return f"{self.stage}: {self.code} {self.text[:200]!r}"


def connect(addr, timeout: float = 10.0) -> smtplib.SMTP:
    smtp = smtplib.SMTP(timeout=timeout)
    smtp.connect(addr[0], addr[1])
    code, text = smtp.ehlo("loadgen.example.test")
    if code != 250:
        smtp.close()
        raise smtplib.SMTPHeloError(code, text)
    return smtp


def send(smtp: smtplib.SMTP, msg: Msg) -> Result:
    """One transaction on an open session. Raises OSError/SMTPException on I/O failure."""
    code, text = smtp.mail(msg.sender)
    if code != 250:
        smtp.rset()
        return Result("MAIL", code, text)
    for r in msg.recipients:
        code, text = smtp.rcpt(r)
        if code not in (250, 251):
            smtp.rset()
            return Result("RCPT", code, text)
    try:
        code, text = smtp.data(msg.data)  # smtplib dot-stuffs and adds CRLF.CRLF
    except smtplib.SMTPDataError as e:  # DATA itself refused (no 354)
        try:
            smtp.rset()
        except (OSError, smtplib.SMTPException):
            pass
        return Result("DATA", e.smtp_code, e.smtp_error)
    qid = None
    if code == 250:
        m = QUEUED_RE.search(text)
        qid = m.group(1).decode() if m else None
    return Result("END", code, text, qid)


def send_once(addr, msg: Msg, timeout: float = 10.0) -> Result:
    """Connect, send one message, QUIT."""
    try:
        smtp = connect(addr, timeout)
    except (OSError, smtplib.SMTPException) as e:
        return Result("IO", None, repr(e).encode())
    try:
        res = send(smtp, msg)
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass
        return res
    except (OSError, smtplib.SMTPException) as e:
        return Result("IO", None, repr(e).encode())
    finally:
        smtp.close()


# ---------------------------------------------------------------------------
# Concurrent load
# ---------------------------------------------------------------------------

@dataclass
class Record:
    msg: Msg
    result: Result


@dataclass
class Load:
    """N client threads; bounded by max_messages total and max_seconds."""

    addr: tuple
    clients: int = 20
    max_messages: int = 1500
    max_seconds: float = 15.0
    pause: float = 0.0  # seconds between messages per client (light load)
    per_connection: int = 10  # messages per SMTP session before reconnecting
    seed: int = 0
    records: list[Record] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started = 0
        self._threads: list[threading.Thread] = []
        self._acks = 0
        self.t0 = 0.0

    # -- control --
    def start(self) -> "Load":
        self.t0 = time.monotonic()
        self._deadline = self.t0 + self.max_seconds
        for w in range(self.clients):
            t = threading.Thread(target=self._run, args=(w,), daemon=True, name=f"loadgen-{w}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self, join_timeout: float = 20.0) -> None:
        self._stop.set()
        end = time.monotonic() + join_timeout
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load generator threads did not stop: {alive}"

    def wait_acks(self, n: int, min_seconds: float = 0.0, max_seconds: float = 15.0) -> int:
        """Wait until n acks (or min_seconds passed with at least one ack), bounded by max_seconds."""
        end = time.monotonic() + max_seconds
        start = time.monotonic()
        while time.monotonic() < end and not self.finished():
            acks = self.acks
            if acks >= n or (acks > 0 and time.monotonic() - start >= min_seconds):
                break
            time.sleep(0.02)
        return self.acks

    def finished(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    @property
    def acks(self) -> int:
        with self._lock:
            return self._acks

    @property
    def acked(self) -> list[Record]:
        with self._lock:
            return [r for r in self.records if r.result.acked]

    @property
    def attempted(self) -> list[Record]:
        with self._lock:
            return list(self.records)

    # -- worker --
    def _take(self) -> int | None:
        with self._lock:
            if self._started >= self.max_messages:
                return None
            self._started += 1
            return self._started

    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _record(self, msg: Msg, res: Result) -> None:
        with self._lock:
            self.records.append(Record(msg, res))
            if res.acked:
                self._acks += 1
            elif res.stage == "END" and res.code == 250:
                self.errors.append(f"250 without a parsable queue id: {res.text!r}")

    def _run(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + worker)
        seq = 0
        smtp = None
        sent_on_conn = 0
        try:
            while self._running():
                if smtp is None:
                    try:
                        smtp = connect(self.addr)
                        sent_on_conn = 0
                    except (OSError, smtplib.SMTPException):
                        smtp = None
                        time.sleep(0.05)
                        continue
                if self._take() is None:
                    break
                seq += 1
                msg = make_message(rng, worker, seq)
                try:
                    res = send(smtp, msg)
                except (OSError, smtplib.SMTPException) as e:
                    res = Result("IO", None, repr(e).encode())
                    try:
                        smtp.close()
                    except OSError:
                        pass
                    smtp = None
                self._record(msg, res)
                sent_on_conn += 1
                if smtp is not None and sent_on_conn >= self.per_connection:
                    try:
                        smtp.quit()
                    except (OSError, smtplib.SMTPException):
                        pass
                    smtp.close()
                    smtp = None
                if self.pause:
                    time.sleep(self.pause)
        finally:
            if smtp is not None:
                try:
                    smtp.close()
                except OSError:
                    pass


# ---------------------------------------------------------------------------
# Reading the spool back
# ---------------------------------------------------------------------------

def split_received(stored: bytes) -> tuple[bytes, bytes]:
    """Split stored bytes into (our Received field, the client's message)."""
    if not stored.startswith(b"Received:"):
        raise AssertionError(f"stored message does not start with our Received field: {stored[:120]!r}")
    i = stored.find(CRLF)
    if i < 0:
        raise AssertionError(f"unterminated Received field: {stored[:200]!r}")
    i += 2
    while stored[i:i + 1] in (b"\t", b" "):  # continuation lines
        j = stored.find(CRLF, i)
        if j < 0:
            raise AssertionError(f"unterminated Received continuation: {stored[:300]!r}")
        i = j + 2
    return stored[:i], stored[i:]


def split_show(out: bytes) -> tuple[bytes, bytes]:
    """`queue show` output → (envelope text, stored message bytes)."""
    cands = [(out.find(sep), sep) for sep in (b"\n\n", b"\r\n\r\n") if out.find(sep) >= 0]
    if not cands:
        raise AssertionError(f"queue show output has no blank line after the envelope: {out[:300]!r}")
    pos, sep = min(cands)
    return out[:pos], out[pos + len(sep):]


def cli_show(srv, qid: str) -> bytes:
    p = srv.show(qid)
    if p.returncode != 0:
        raise AssertionError(f"queue show {qid} exited {p.returncode}: {p.stderr[-2000:]!r}")
    return split_show(p.stdout)[1]


def native_reader(spool: Path):
    """mta._native.SpoolReader if importable (the code `queue show` uses), else None."""
    try:
        from mta._native import SpoolReader  # type: ignore
    except Exception:  # noqa: BLE001 - any import problem: fall back to the CLI
        return None
    return SpoolReader(str(spool))


def stored_messages(srv, ids: list[str], *, cli_sample: list[str]) -> dict[str, bytes]:
    """Stored bytes of every id. Uses SpoolReader in-process when available
    (fast) and `queue show` for cli_sample, checking that both agree; falls
    back to `queue show` for all ids otherwise."""
    reader = native_reader(srv.spool)
    out: dict[str, bytes] = {}
    if reader is not None:
        def read(qid):
            b = reader.message_bytes(qid)
            if b is None:
                raise AssertionError(f"SpoolReader.message_bytes({qid}) is None but queue list has it")
            return bytes(b)
        with concurrent.futures.ThreadPoolExecutor(4) as ex:
            out.update(zip(ids, ex.map(read, ids)))
        show_ids = cli_sample
    else:
        show_ids = ids
    with concurrent.futures.ThreadPoolExecutor(6) as ex:
        shown = dict(zip(show_ids, ex.map(lambda q: cli_show(srv, q), show_ids)))
    for qid, b in shown.items():
        if qid in out and out[qid] != b:
            raise AssertionError(f"queue show {qid} differs from SpoolReader.message_bytes "
                                 f"({len(b)} vs {len(out[qid])} bytes)")
        out[qid] = b
    return out


def verify_spool(srv, acked: list[Record], attempted: list[Record], *,
                 cli_sample_size: int = 16, refused_tokens: set[str] = frozenset(),
                 dup_check: bool = True) -> dict:
    """Every acked message is listed (sender, recipients) and byte-identical;
    no token appears twice. refused_tokens: messages that got a 4xx at some
    point (and may have been retried): if one is stored twice, the refused
    copy was kept. Returns a summary dict."""
    listing = srv.queue()
    assert isinstance(listing, list), f"queue list --json is not an array: {listing!r}"
    by_id = {}
    for e in listing:
        assert {"id", "arrival", "size", "sender", "recipients"} <= set(e), f"bad entry {e!r}"
        assert e["id"] not in by_id, f"queue id {e['id']} listed twice"
        by_id[e["id"]] = e

    ack_ids = [r.result.queue_id for r in acked]
    dup_ack_ids = {q for q in ack_ids if ack_ids.count(q) > 1}
    assert not dup_ack_ids, f"server gave the same queue id to different messages: {dup_ack_ids}"

    missing = [(r.result.queue_id, r.msg.token) for r in acked if r.result.queue_id not in by_id]
    assert not missing, (f"{len(missing)} of {len(acked)} acknowledged messages are not listed "
                         f"after restart, e.g. {missing[:5]}")

    for r in acked:
        e = by_id[r.result.queue_id]
        assert e["sender"] == r.msg.sender, f"{e['id']}: sender {e['sender']!r} != {r.msg.sender!r}"
        got = sorted(x["address"] for x in e["recipients"])
        assert got == sorted(r.msg.recipients), f"{e['id']}: recipients {got} != {r.msg.recipients}"

    # CLI sample: every special kind first, then random others.
    rng = random.Random(len(acked))
    special = [r.result.queue_id for r in acked if r.msg.kinds & {"big", "huge", "dots"}]
    rng.shuffle(special)
    special_set = set(special)
    others = [r.result.queue_id for r in acked if r.result.queue_id not in special_set]
    rng.shuffle(others)
    sample = (special[: cli_sample_size * 2 // 3] + others)[:cli_sample_size]
    ids = list(by_id) if dup_check else [r.result.queue_id for r in acked]
    stored = stored_messages(srv, ids, cli_sample=sample)

    for r in acked:
        qid = r.result.queue_id
        rec, client = split_received(stored[qid])
        if client != r.msg.data:
            raise AssertionError(
                f"{qid} ({r.msg.token}, kinds {sorted(r.msg.kinds)}): stored message differs: "
                f"{len(client)} bytes stored vs {len(r.msg.data)} sent; first difference at "
                f"{_first_diff(client, r.msg.data)}")
        size = by_id[qid]["size"]
        assert size in (len(stored[qid]), len(client)), \
            f"{qid}: listed size {size} is neither {len(stored[qid])} (stored) nor {len(client)} (client)"

    # No token twice; forbidden tokens nowhere.
    where: dict[str, list[str]] = {}
    for qid, b in stored.items():
        for tok in set(TOKEN_RE.findall(b)):
            where.setdefault(tok.decode(), []).append(qid)
    dups = {t: q for t, q in where.items() if len(q) > 1}
    refused_dups = {t: q for t, q in dups.items() if t in refused_tokens}
    assert not refused_dups, (
        f"{len(refused_dups)} messages refused with 4xx and then retried are stored twice: the "
        f"refused copy was kept (client retry duplicates mail), e.g. {list(refused_dups.items())[:5]}")
    assert not dups, f"{len(dups)} messages are stored more than once, e.g. {list(dups.items())[:5]}"
    acked_tokens = {r.msg.token for r in acked}
    return {"listed": len(by_id), "acked": len(acked), "attempted": len(attempted),
            "unacked_present": sum(1 for t in where if t not in acked_tokens),
            "cli_checked": len(sample)}


def _first_diff(a: bytes, b: bytes) -> str:
    n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return f"offset {n}: stored {a[max(0, n - 20):n + 40]!r} vs sent {b[max(0, n - 20):n + 40]!r}"


# ---------------------------------------------------------------------------
# Processes and power loss
# ---------------------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid → (ppid, state, starttime)."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rindex(")") + 2:].split()
        table[int(d)] = (int(rest[1]), rest[0], rest[19])
    return table


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, starttime) of every live descendant of pid."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for p, (pp, _state, _st) in table.items():
        kids.setdefault(pp, []).append(p)
    out, todo = [], list(kids.get(pid, []))
    while todo:
        p = todo.pop()
        out.append((p, table[p][2]))
        todo += kids.get(p, [])
    return out


def survivors(procs: list[tuple[int, str]], wait: float = 5.0) -> list[int]:
    """Which of procs are still alive (not gone, not zombie) after up to `wait` s."""
    end = time.monotonic() + wait
    while True:
        table = _proc_table()
        alive = [p for p, st in procs if p in table and table[p][2] == st and table[p][1] != "Z"]
        if not alive or time.monotonic() >= end:
            return alive
        time.sleep(0.05)


def port_is_free(host: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1)
        return True
    except OSError:
        return False
    finally:
        s.close()


def simulate_power_loss(spool: Path, *, torn_tail: random.Random | None = None) -> list[str]:
    """After a SIGKILL: cut every segment back to the last length synced.log
    recorded for it; a segment never logged goes to 0 bytes. With torn_tail,
    the newest segment keeps a random part of its unsynced tail (a torn
    write; if nothing was in flight, random bytes are appended instead).
    Returns a description of what was done."""
    actions = []
    shards = [d for d in spool.iterdir() if d.is_dir() and d.name.isdigit()]
    assert shards, f"no shard directory under {spool}: {list(spool.iterdir())}"
    for shard in shards:
        log = shard / "synced.log"
        last: dict[str, int] = {}
        order: list[str] = []
        if log.exists():
            for line in log.read_text().splitlines():
                if not line.strip():
                    continue
                rel, length = line.rsplit(None, 1)
                last[rel] = int(length)
                if rel in order:
                    order.remove(rel)
                order.append(rel)
        # Files shaped like a logged segment (same directory, same suffix) that were never logged.
        shapes = {((shard / rel).parent, Path(rel).suffix) for rel in last}
        unlogged = []
        for parent, suffix in shapes:
            if not parent.is_dir():
                continue
            for f in parent.iterdir():
                rel = str(f.relative_to(shard))
                if f.is_file() and f.suffix == suffix and rel not in last and f.name != "synced.log":
                    unlogged.append(f)
        for f in unlogged:
            actions.append(f"{f.relative_to(spool)}: never synced, {f.stat().st_size} -> 0")
            os.truncate(f, 0)
        for rel, length in last.items():
            f = shard / rel
            if not f.exists():
                actions.append(f"{shard.name}/{rel}: logged but gone (compacted)")
                continue
            size = f.stat().st_size
            keep = min(size, length)
            garbage = b""
            if torn_tail is not None and rel == order[-1] and not unlogged:
                if size > length + 1:  # part of the unsynced write made it to disk
                    keep = length + torn_tail.randint(1, size - length - 1)
                else:  # nothing in flight: the start of a next write that did not complete
                    garbage = torn_tail.randbytes(torn_tail.randint(1, 8191))
            actions.append(f"{shard.name}/{rel}: synced {length}, size {size} -> {keep}"
                           + (f" + {len(garbage)} bytes of garbage" if garbage else ""))
            os.truncate(f, keep)
            if garbage:
                with open(f, "ab") as fh:
                    fh.write(garbage)
    return actions
