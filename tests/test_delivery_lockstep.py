"""The coroutine path (SmtpDelivery._transaction) driving the Rust ClientTransaction with a
peer that answers one command at a time (no PIPELINING): what it writes, and what it decides.
The ClientTransaction's lock-step mode through its binding, too."""

from __future__ import annotations

import asyncio

import pytest

from mta import _native
from mta.delivery.smtp.client import SmtpOptions
from mta.delivery.smtp.lane import DONE, SEND_DATA, STALE, UNEXPECTED, WAIT
from smtpkit import client, message, run, target

OPTS = SmtpOptions(helo="client.test", connect_timeout=5.0)


class LockStep(asyncio.Protocol):
    """Answers each command line as it comes, from `script`: "MAIL", "DATA", "RSET" -> a
    reply; "RCPT" -> one reply per RCPT in order; "END" -> the end-of-data replies (one, or
    one per accepted recipient for LMTP). `ext` are the EHLO/LHLO keywords besides 8BITMIME."""

    def __init__(self, log: list, script: dict, ext: list[bytes]) -> None:
        self.log, self.script, self.ext = log, script, ext
        self.buf, self.rcpts, self.data_left = b"", 0, None  # data_left: in DATA (-1) or BDAT (n)

    def connection_made(self, t) -> None:
        self.t = t
        t.write(b"220 lockstep ESMTP\r\n")

    def _end(self) -> None:
        self.t.write(b"".join(r + b"\r\n" for r in self.script.get("END", [b"250 2.0.0 queued"])))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            if self.data_left == -1:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.log.append(b"<data>")
                self.buf, self.data_left = self.buf[end + 5:], None
                self._end()
                continue
            if self.data_left is not None:
                if len(self.buf) < self.data_left:
                    return
                self.log.append(b"<data>")
                self.buf, self.data_left = self.buf[self.data_left:], None
                self._end()
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                return
            line, self.buf = self.buf[:i], self.buf[i + 2:]
            verb = line[:4].upper()
            self.log.append(line.split(b":")[0].split(b" ")[0] if verb != b"BDAT" else line)
            if verb in (b"EHLO", b"LHLO"):
                self.t.write(b"250-lockstep\r\n" + b"".join(b"250-" + e + b"\r\n" for e in self.ext)
                             + b"250 8BITMIME\r\n")
            elif verb == b"RCPT":
                self.t.write(self.script["RCPT"][self.rcpts] + b"\r\n")
                self.rcpts += 1
            elif verb in (b"MAIL", b"RSET"):
                if verb == b"MAIL":
                    self.rcpts = 0
                self.t.write(self.script.get(verb.decode(), b"250 2.1.0 Ok") + b"\r\n")
            elif verb == b"DATA":
                r = self.script.get("DATA", b"354 go on")
                self.t.write(r + b"\r\n")
                if r.startswith(b"354"):
                    self.data_left = -1
            elif verb == b"BDAT":
                self.data_left = int(line.split()[1])
            elif verb == b"QUIT":
                self.t.write(b"221 bye\r\n")
                self.t.close()
                return
            else:
                self.t.write(b"502 5.5.1 what\r\n")


async def _deliver(script: dict, rcpts: list[str], ext: list[bytes] = (), opts=OPTS, times: int = 1,
                   data=None):
    log: list[bytes] = []
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: LockStep(log, script, list(ext)), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    d = client(3.0)
    results = []
    for _ in range(times):
        msg = message(*rcpts) if data is None else message(*rcpts, data=data)
        results.append(await d.deliver("k", [target(port)], opts, msg))
    await d.close()
    srv.close()
    return results, [c for c in log if c not in (b"EHLO", b"LHLO", b"QUIT")], d


def _rows(res) -> list[tuple]:
    return [(r.code, r.enhanced, r.text) for r in res]


def test_a_refused_mail_ends_it_with_no_rcpt_written():
    [res], log, _ = run(_deliver({"MAIL": b"553 5.1.8 bad sender"}, ["a@dst.test", "b@dst.test"]))
    assert _rows(res) == [(553, "5.1.8", "bad sender")] * 2
    assert log == [b"MAIL"]


@pytest.mark.parametrize("ext", [[], [b"CHUNKING"]])
def test_every_rcpt_refused_writes_no_data(ext):
    script = {"RCPT": [b"550 5.1.1 no such user", b"450 4.2.1 busy"]}
    [res], log, _ = run(_deliver(script, ["a@dst.test", "b@dst.test"], ext))
    assert _rows(res) == [(550, "5.1.1", "no such user"), (450, "4.2.1", "busy")]
    assert log == [b"MAIL", b"RCPT", b"RCPT"]


@pytest.mark.parametrize("ext", [[], [b"CHUNKING"]])
def test_the_end_of_data_reply_goes_to_the_accepted_only(ext):
    script = {"RCPT": [b"550 5.1.1 no such user", b"250 2.1.5 Ok"], "END": [b"250 2.0.0 queued as X"]}
    [res], log, _ = run(_deliver(script, ["a@dst.test", "b@dst.test"], ext))
    assert _rows(res) == [(550, "5.1.1", "no such user"), (250, "2.0.0", "queued as X")]
    data = [b"BDAT"] if ext else [b"DATA"]
    assert [c[:4] for c in log] == [b"MAIL", b"RCPT", b"RCPT", *data, b"<dat"]


def test_a_refused_data_goes_to_the_accepted():
    script = {"RCPT": [b"250 2.1.5 Ok", b"250 2.1.5 Ok"], "DATA": b"554 5.5.1 no valid recipients"}
    [res], log, _ = run(_deliver(script, ["a@dst.test", "b@dst.test"]))
    assert _rows(res) == [(554, "5.5.1", "no valid recipients")] * 2
    assert log == [b"MAIL", b"RCPT", b"RCPT", b"DATA"]


def test_lmtp_one_reply_per_accepted_recipient():
    script = {"RCPT": [b"250 2.1.5 Ok", b"550 5.1.1 unknown", b"250 2.1.5 Ok"],
              "END": [b"250 2.0.0 a done", b"452 4.2.2 c over quota"]}
    opts = SmtpOptions(helo="client.test", connect_timeout=5.0, lmtp=True, tls="none")
    [res], log, _ = run(_deliver(script, ["a@dst.test", "b@dst.test", "c@dst.test"], opts=opts))
    assert _rows(res) == [(250, "2.0.0", "a done"), (550, "5.1.1", "unknown"), (452, "4.2.2", "c over quota")]
    assert log == [b"MAIL", b"RCPT", b"RCPT", b"RCPT", b"DATA", b"<data>"]


def test_a_refused_rset_takes_a_new_connection():
    script = {"RCPT": [b"250 2.1.5 Ok"], "RSET": b"421 4.4.2 idle too long"}
    results, log, d = run(_deliver(script, ["a@dst.test"], times=2))
    assert [_rows(r) for r in results] == [[(250, "2.0.0", "queued")]] * 2
    assert log == [b"MAIL", b"RCPT", b"DATA", b"<data>", b"RSET", b"MAIL", b"RCPT", b"DATA", b"<data>"]
    assert d.connections_opened == 2


class _Unreadable:
    """A stored message (as `_native.StoredMessage`) whose blocks cannot be read."""

    def __len__(self) -> int:
        return 100

    def wire_length(self, dot_stuff: bool) -> int:
        return 100

    def open(self, wire: bool):
        return self

    def read(self, n: int) -> bytes:
        raise _native.SpoolError("damaged record")


@pytest.mark.parametrize("ext", [[], [b"CHUNKING"]])
def test_a_spool_read_error_defers_the_accepted_only_and_sends_no_end(ext):
    script = {"RCPT": [b"550 5.1.1 no such user", b"250 2.1.5 Ok"]}
    [res], log, d = run(_deliver(script, ["a@dst.test", "b@dst.test"], ext, data=_Unreadable(), times=1))
    assert _rows(res) == [(550, "5.1.1", "no such user"), (451, "4.3.0", "cannot read the message from the spool")]
    # (the BDAT line is written before the first read: whether the peer gets it before the abort varies)
    assert [c[:4] for c in log if c[:4] != b"BDAT"] == [b"MAIL", b"RCPT", b"RCPT", *([] if ext else [b"DATA"])]
    assert not d._idle  # the connection was aborted, not pooled


# --- the binding in lock-step --------------------------------------------------------


def _reply(code: int, *lines: str) -> tuple[int, list[str]]:
    return code, list(lines)


def test_binding_lockstep_names_each_command_to_write():
    tx = _native.ClientTransaction(2, reset=True, chunking=False, lmtp=False, pipelining=False)
    seen = []
    for r in [_reply(250, "2.0.0 Ok"), _reply(250, "2.1.0 Ok"), _reply(550, "5.1.1 no"), _reply(250, "2.1.5 Ok"),
              _reply(354, "go"), _reply(250, "2.0.0 queued")]:
        seen.append((tx.command, tx.waiting_for, tx.on_reply(r)))
    assert seen == [(0, "RSET", WAIT), (1, "MAIL FROM", WAIT), (2, "RCPT TO", WAIT), (3, "RCPT TO", WAIT),
                    (4, "DATA", SEND_DATA), (None, "the end of data", DONE)]
    assert tx.on_reply(_reply(250, "Ok")) == UNEXPECTED
    assert [row[1:4] for row in tx.rows([("a@x",), ("b@x",)], None, None, None)] == [
        (550, "5.1.1", "no"), (250, "2.0.0", "queued")]


def test_binding_lockstep_stops_after_a_refused_mail_or_rcpt():
    tx = _native.ClientTransaction(2, reset=False, chunking=False, lmtp=False, pipelining=False)
    assert tx.on_reply(_reply(553, "5.1.8 bad sender")) == DONE
    assert tx.done and tx.command is None
    tx = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False, pipelining=False)
    assert tx.on_reply(_reply(250, "Ok")) == WAIT
    assert tx.on_reply(_reply(550, "5.1.1 no")) == DONE  # no DATA for nobody
    # pipelined, the DATA was written: its reply is owed
    tx = _native.ClientTransaction(1, reset=False, chunking=False, lmtp=False)
    assert tx.command is None
    assert tx.on_reply(_reply(250, "Ok")) == WAIT
    assert tx.on_reply(_reply(550, "5.1.1 no")) == WAIT
    tx = _native.ClientTransaction(1, reset=True, chunking=False, lmtp=False, pipelining=False)
    assert tx.on_reply(_reply(421, "4.4.2 bye")) == STALE


def test_binding_fail_with_another_code():
    tx = _native.ClientTransaction(1, reset=False, chunking=True, lmtp=False, pipelining=False)
    assert tx.on_reply(_reply(250, "Ok")) == WAIT
    assert tx.on_reply(_reply(250, "Ok")) == SEND_DATA
    tx.fail("cannot read the message from the spool", enhanced="4.3.0")
    assert tx.rows([("a@x",)], "h", "i", "none") == [
        ("a@x", 451, "4.3.0", "cannot read the message from the spool", "h", "i", "none", None, None)]
