"""The aiosmtpd peer relays a burst into the bench sink in clear and under STARTTLS (using the
sink's STARTTLS when offered), keeps one sink connection per session, and hands the sink's
refusals (or a 451 4.4.1 when the sink is gone) to its client instead of a 250."""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import free_port, ready_peer, relay_burst

from mta.bench import peers
from mta.bench.payload import build_message, unstuff
from mta.bench.peers.aiosmtpd_relay import ReplyError, client_reply, dot_stuff, parse_reply_line
from mta.bench.peers.runner import PeerProcess
from mta.bench.procs import wait_greeting, wait_port_free
from mta.bench.tlsutil import throwaway_certificate


def test_relays_a_burst_in_clear_and_under_starttls_using_the_sinks_starttls(tmp_path):
    for sub, tls in (("clear", False), ("tls", True)):
        (tmp_path / sub).mkdir()
        relay_burst("aiosmtpd", tmp_path / sub, starttls=tls)
        lines = [ln for ln in (tmp_path / sub / "aiosmtpd.log").read_text().splitlines() if "sink connection" in ln]
        assert lines and all(ln.endswith("tls=yes" if tls else "tls=no") for ln in lines), lines


def test_reports_itself_as_a_queueless_relay():
    peer = ready_peer("aiosmtpd")
    assert peer.relays and peer.version(peers.peers_home()).startswith("aiosmtpd 1.")
    assert "no queue: a message is relayed before the 250; nothing is stored" in peer.notes
    assert "no fsync" in peer.durability


def _sink(tmp: Path, port: int, name: str, fail_rate: str | None = None) -> tuple[subprocess.Popen, Path]:
    out = tmp / f"{name}.json"
    cmd = [sys.executable, "-m", "mta", "bench", "sink", "--listen", f"127.0.0.1:{port}", "--json", str(out),
           "--quiet", "--workers", "1", "--no-starttls"]
    if fail_rate:
        cmd += ["--fail-rate", fail_rate]
    wait_port_free(port, time.monotonic() + 10)
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_greeting(port, time.monotonic() + 30), "the bench sink did not start"
    return p, out


def _stop(sink: tuple[subprocess.Popen, Path]) -> dict:
    """The sink's report, its readiness probe's connection not counted."""
    p, out = sink
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    got = json.loads(out.read_text())
    got["connections"] -= 1
    return got


def _refusal(client: smtplib.SMTP, seed: int) -> tuple[int, str]:
    msg = build_message(1024, "from@example.test", "to@example.test", seed)
    with pytest.raises(smtplib.SMTPDataError) as e:
        client.sendmail("from@example.test", ["to@example.test"], msg)
    return e.value.smtp_code, e.value.smtp_error.decode()


def _accepted(client: smtplib.SMTP, seed: int) -> None:
    msg = build_message(1024, "from@example.test", "to@example.test", seed)
    assert client.sendmail("from@example.test", ["to@example.test"], msg) == {}


def test_sink_refusals_and_failures_reach_the_client_and_a_broken_connection_is_reopened(tmp_path):
    peer = ready_peer("aiosmtpd")
    cert, key = throwaway_certificate("relay.bench.test")
    sink_port = free_port()
    run = peers.PeerRun(home=peers.peers_home(), work=Path(tempfile.mkdtemp(dir=tmp_path)), port=free_port(),
                        sink_port=sink_port, cert=cert, key=key, python=sys.executable)
    sink = _sink(tmp_path, sink_port, "refuse5", "5xx:1")
    with open(tmp_path / "peer.log", "wb") as log:
        proc = PeerProcess(peer, run, log)
        try:
            with smtplib.SMTP("127.0.0.1", run.port, timeout=30) as c:  # one session, one sink connection
                for seed in range(3):
                    assert _refusal(c, seed) == (554, "5.3.0 Error: injected failure")
            got = _stop(sink)
            assert got["rejected"] == {"554": 3} and got["messages"] == 0 and got["connections"] == 1, got

            sink = _sink(tmp_path, sink_port, "refuse4", "4xx:1")
            with smtplib.SMTP("127.0.0.1", run.port, timeout=30) as c:
                assert _refusal(c, 10) == (451, "4.3.0 Error: injected failure")
                _stop(sink)  # the kept connection breaks; the next message reopens it
                sink = _sink(tmp_path, sink_port, "accept")
                _accepted(c, 11)
                _accepted(c, 12)
            got = _stop(sink)
            assert got["messages"] == 2 and got["integrity_errors"] == 0 and got["connections"] == 1, got

            with smtplib.SMTP("127.0.0.1", run.port, timeout=30) as c:  # no sink at all
                code, text = _refusal(c, 20)
                assert code == 451 and text.startswith("4.4.1 "), text
        finally:
            proc.stop()
            if sink[0].poll() is None:
                _stop(sink)
    opened = [ln for ln in (tmp_path / "peer.log").read_text().splitlines() if ln.startswith("sink connection")]
    assert len(opened) == 3, opened  # one per session, and the reopened one


# -- the helpers -------------------------------------------------------------------------------

@pytest.mark.parametrize("line,want", [
    (b"250 2.0.0 Ok\r\n", (250, True, "2.0.0 Ok")),
    (b"250-PIPELINING\r\n", (250, False, "PIPELINING")),
    (b"354 End data with <CR><LF>.<CR><LF>\r\n", (354, True, "End data with <CR><LF>.<CR><LF>")),
    (b"250\r\n", (250, True, "")),
    (b"250-\r\n", (250, False, "")),
    (b"554 5.3.0 x\n", (554, True, "5.3.0 x")),
    (b"250 caf\xc3\xa9\r\n", (250, True, "caf??")),
])
def test_parse_reply_line(line, want):
    assert parse_reply_line(line) == want


@pytest.mark.parametrize("line", [b"", b"\r\n", b"25\r\n", b"2500 x\r\n", b"199 x\r\n", b"260 x\r\n",
                                  b"25a x\r\n", b"abc\r\n", b"250_x\r\n", b"650 x\r\n"])
def test_parse_reply_line_refuses_what_is_not_a_reply(line):
    with pytest.raises(ReplyError):
        parse_reply_line(line)


@pytest.mark.parametrize("data,want", [
    (b"", b".\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\r\n.b\r\n..\r\n", b"a\r\n..b\r\n...\r\n.\r\n"),
    (b"no final crlf", b"no final crlf\r\n.\r\n"),
    (b"a\n.b\r\n", b"a\n.b\r\n.\r\n"),  # a bare LF is no line end on the wire
])
def test_dot_stuff(data, want):
    assert dot_stuff(data) == want


@pytest.mark.parametrize("code,lines,want", [
    (554, ["5.3.0 Error: injected failure"], "554 5.3.0 Error: injected failure"),
    (451, ["4.3.0 Error: injected failure"], "451 4.3.0 Error: injected failure"),
    (452, ["4.3.1 full"], "452 4.3.1 full"),
    (550, ["5.1.1 no", "such user"], "550-5.1.1 no\r\n550 such user"),
    (503, [], "503"),
    (421, ["4.4.2 closing"], "451 4.4.1 relay to the sink failed: 421 4.4.2 closing"),
    (354, ["go ahead"], "451 4.4.1 relay to the sink failed: 354 go ahead"),
])
def test_client_reply(code, lines, want):
    assert client_reply(code, lines) == want


_line = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@given(st.lists(_line, max_size=12))
def test_dot_stuff_round_trips_and_never_ends_data_early(lines):
    data = b"".join(ln + b"\r\n" for ln in lines)
    wire = dot_stuff(data)
    body = wire[:-3]
    assert wire.endswith(b".\r\n") and b"\r\n.\r\n" not in b"\r\n" + body
    assert unstuff(body) == data


@given(st.integers(200, 559).filter(lambda c: c // 10 % 10 <= 5), st.sampled_from([" ", "-"]),
       st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_parse_reply_line_reads_what_a_server_writes(code, sep, text):
    assert parse_reply_line(f"{code}{sep}{text}\r\n".encode()) == (code, sep == " ", text)


@given(st.binary(max_size=30))
def test_parse_reply_line_on_any_bytes_is_a_reply_or_reply_error(raw):
    try:
        code, _, text = parse_reply_line(raw)
    except ReplyError:
        return
    assert 200 <= code <= 559 and raw[:3] == str(code).encode() and text.isascii()
