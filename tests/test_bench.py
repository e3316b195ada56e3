"""`mta bench`: the generator and the sink against each other, against aiosmtpd and
smtplib, the integrity check, injected failures, and `compare` end to end on a tiny
workload. Correctness, not speed; loopback only; every wait is bounded.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from mta.bench import payload
from mta.bench.sendrun import run_send
from mta.bench.sinkrun import parse_fail_rate
from mta.bench.stats import latency_summary, percentile

SEND_KEYS = {"messages_per_s", "elapsed_s", "messages", "latency_ms", "errors"}
LAT_KEYS = {"p50", "p90", "p99", "max"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_greeting(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(100).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing greets on port {port}")


def mta(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=120, **kw)


class Sink:
    """`mta bench sink` in a subprocess; `stop()` returns its JSON report."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        self.port = free_port()
        self.json = tmp / f"sink-{self.port}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mta", "bench", "sink", "--listen", f"127.0.0.1:{self.port}",
             "--json", str(self.json), "--quiet", "--workers", "2", *extra])
        wait_greeting(self.port)
        self.target = f"127.0.0.1:{self.port}"

    def stop(self) -> dict:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)
        return json.loads(self.json.read_text())


@pytest.fixture
def sink(tmp_path):
    made = []

    def start(*extra):
        s = Sink(tmp_path, *extra)
        made.append(s)
        return s

    yield start
    for s in made:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def raw_session(port: int, chunks: list[bytes], replies: int) -> bytes:
    """Write each chunk, then read until `replies` final reply lines came back after the
    greeting (all of them: a count short of the session's made the test depend on the
    last replies arriving in the same read)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        got = s.recv(1000)
        for c in chunks:
            s.sendall(c)
        deadline = time.monotonic() + 10
        while sum(1 for ln in got.split(b"\r\n") if len(ln) >= 4 and ln[3:4] == b" ") < replies + 1:
            assert time.monotonic() < deadline, got
            more = s.recv(65536)
            if not more:
                break
            got += more
        return got


def message_with_dots() -> bytes:
    """A valid bench message whose body has lines starting with '.' (needs stuffing)."""
    body = b".leading dot\r\n..two dots\r\nplain\r\n.\r\n"
    head = b"Subject: dots\r\nX-Bench-Checksum: crc32=%08x; len=%d\r\n\r\n" % (zlib.crc32(body), len(body))
    return head + body


# -- pure parts ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [300, 1024, 4097, 65536])
def test_message_size_and_checksum(size):
    m = payload.build_message(size, "a@example.test", "b@example.test", 7)
    assert len(m) == size
    assert payload.verify(m) is True
    assert b"\r\n." not in m  # nothing to dot-stuff
    flipped = m[:-20] + bytes([m[-20] ^ 1]) + m[-19:]
    assert payload.verify(flipped) is False
    assert payload.verify(m[:-3] + b"\r\n") is False  # truncated
    assert payload.verify(b"Subject: x\r\n\r\nhello\r\n") is None


def test_unstuff_and_verify_dot_lines():
    m = message_with_dots()
    stuffed = m.replace(b"\r\n.", b"\r\n..")
    assert payload.unstuff(stuffed) == m
    assert payload.verify(m) is True


def test_fail_rate_parsing():
    assert parse_fail_rate("4xx:0.1,5xx:0.05") == (0.1, 0.05)
    assert parse_fail_rate(None) == (0.0, 0.0)
    for bad in ("6xx:0.1", "4xx:x", "4xx:1.5", "4xx:0.6,5xx:0.6"):
        with pytest.raises(ValueError):
            parse_fail_rate(bad)


def test_percentiles():
    vals = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert percentile(vals, 50) == 0.05
    assert latency_summary(vals) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert latency_summary([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}


# -- generator against sink ---------------------------------------------------------------

def test_cli_send_to_sink_json(sink, tmp_path):
    s = sink()
    out = tmp_path / "send.json"
    r = mta("bench", "send", "--target", s.target, "--messages", "300", "--sessions", "10", "--size", "2048",
            "--json", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert SEND_KEYS <= set(rep)
    assert set(rep["latency_ms"]) == LAT_KEYS
    assert rep["messages"] == 300 and rep["errors"] == {}
    assert rep["elapsed_s"] > 0 and rep["messages_per_s"] > 0
    assert 0 < rep["latency_ms"]["p50"] <= rep["latency_ms"]["p90"] <= rep["latency_ms"]["p99"] <= rep["latency_ms"]["max"]
    got = s.stop()
    assert got["messages"] == 300 and got["connections"] >= 300
    assert got["integrity_errors"] == 0 and got["unchecked"] == 0
    assert got["bytes"] == 300 * 2048
    assert {"messages_per_s", "elapsed_s", "messages", "integrity_errors", "rejected"} <= set(got)


@pytest.mark.parametrize("per_conn,bdat,starttls,rcpts", [
    (10, False, False, 1), (5, True, False, 3), (1, False, True, 2), (4, True, True, 1)])
def test_modes_against_sink(sink, per_conn, bdat, starttls, rcpts):
    s = sink()
    rep = run_send(s.target, messages=120, sessions=6, per_connection=per_conn, bdat=bdat,
                   starttls=starttls, recipients=rcpts, size=3000, workers=2)
    assert rep["errors"] == {} and rep["messages"] == 120
    got = s.stop()
    assert got["messages"] == 120 and got["integrity_errors"] == 0 and got["unchecked"] == 0
    assert got["connections"] == pytest.approx(120 / per_conn, abs=6)


def test_warmup_duration_and_open_loop(sink):
    s = sink()
    rep = run_send(s.target, messages=100, warmup=40, sessions=5)
    assert rep["messages"] == 100 and rep["warmup"] == 40
    dur = run_send(s.target, duration=0.6, sessions=5, per_connection=20)
    assert dur["messages"] > 50 and 0.5 < dur["elapsed_s"] < 3
    rep = run_send(s.target, messages=60, rate=150, sessions=10)  # 60 arrivals at 150/s: about 0.4 s
    assert rep["messages"] == 60 and 0.35 < rep["elapsed_s"] < 2.5
    assert rep["open_loop"]["rate"] == 150
    got = s.stop()
    assert got["messages"] == 100 + 40 + dur["messages"] + 60  # warm-up sent, not counted
    assert got["integrity_errors"] == 0


def test_fail_rate_reaches_the_generator(sink):
    s = sink("--fail-rate", "4xx:0.2,5xx:0.1", "--seed", "7")
    rep = run_send(s.target, messages=400, sessions=8, per_connection=3)
    got = s.stop()
    errs = rep["errors"]
    assert set(errs) == {"451", "554"}
    assert errs["451"] > 30 and errs["554"] > 10
    assert rep["messages"] + errs["451"] + errs["554"] == 400
    assert got["rejected"] == errs
    assert got["messages"] == rep["messages"]


def test_reply_delay_shows_in_latency(sink):
    s = sink("--reply-delay", "60")
    rep = run_send(s.target, messages=20, sessions=5, per_connection=2, workers=1)
    s.stop()
    assert rep["messages"] == 20
    assert rep["latency_ms"]["p50"] >= 55


def test_connect_refused_and_timeout(tmp_path):
    port = free_port()
    rep = run_send(f"127.0.0.1:{port}", messages=6, sessions=2, workers=1)
    assert rep["messages"] == 0 and rep["errors"] == {"connect": 6}
    # a server that greets, then never answers
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(10)
    held = []

    def accept():
        for _ in range(2):
            c, _ = srv.accept()
            c.sendall(b"220 silent\r\n")
            held.append(c)

    threading.Thread(target=accept, daemon=True).start()
    rep = run_send(f"127.0.0.1:{srv.getsockname()[1]}", messages=2, sessions=2, workers=1, timeout=0.5)
    srv.close()
    assert rep["errors"] == {"timeout": 2}


def test_cli_sink_fail_rate_is_validated():
    r = mta("bench", "sink", "--listen", "127.0.0.1:1", "--fail-rate", "7xx:1")
    assert r.returncode == 2 and "fail-rate" in r.stderr


# -- against Python's own SMTP pieces ----------------------------------------------------

def test_generator_against_aiosmtpd():
    from aiosmtpd.controller import Controller

    from mta.bench.tlsutil import server_context

    seen = {"ok": 0, "bad": 0, "peers": set()}

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            seen["ok" if payload.verify(envelope.original_content) else "bad"] += 1
            seen["peers"].add(session.peer[0])
            return "250 2.0.0 Ok"

    port = free_port()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, tls_context=server_context())
    ctl.start()
    try:
        rep = run_send(f"127.0.0.1:{port}", messages=40, sessions=4, per_connection=2, workers=1,
                       source_ips=["127.0.0.2", "127.0.0.3"])
        assert rep["errors"] == {} and rep["messages"] == 40
        rep = run_send(f"127.0.0.1:{port}", messages=6, sessions=2, workers=1, starttls=True, bdat=True)
        assert rep["errors"] == {} and rep["messages"] == 6  # no CHUNKING there: BDAT falls back to DATA
    finally:
        ctl.stop()
    assert seen["ok"] == 46 and seen["bad"] == 0
    assert {"127.0.0.2", "127.0.0.3"} <= seen["peers"]


def test_smtplib_to_sink(sink):
    s = sink()
    good = payload.build_message(1500, "a@example.test", "b@example.test", 1)
    with smtplib.SMTP("127.0.0.1", s.port, timeout=10) as c:
        c.ehlo()
        assert c.has_extn("pipelining") and c.has_extn("chunking") and c.has_extn("starttls")
        c.starttls()
        c.ehlo()
        assert not c.has_extn("starttls")
        c.sendmail("a@example.test", ["b@example.test", "c@example.test"], good)
        c.sendmail("a@example.test", ["b@example.test"], message_with_dots())  # smtplib dot-stuffs
        c.sendmail("a@example.test", ["b@example.test"], b"Subject: no checksum\r\n\r\nhi\r\n")
        code, _ = c.docmd("DATA")
        assert code == 503 or code == 554
    got = s.stop()
    assert got["messages"] == 3 and got["integrity_errors"] == 0 and got["unchecked"] == 1


def test_integrity_check_catches_corruption(sink):
    s = sink()
    good = payload.build_message(2000, "a@example.test", "b@example.test", 3)
    bad = good[:-30] + b"corrupted!" + good[-20:]
    env = b"EHLO raw\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
    # pipelined in one write, then the bodies split at odd places
    got = raw_session(s.port, [env, good[:777], good[777:] + b".\r\n", env[10:], bad + b".\r\n",
                               b"MAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 1000\r\n" + bad[:1000],
                               b"BDAT %d LAST\r\n" % (len(bad) - 1000) + bad[1000:], b"QUIT\r\n"], replies=14)
    assert got.count(b"250 2.0.0 Ok: queued") == 3, got
    rep = s.stop()
    assert rep["messages"] == 3 and rep["integrity_errors"] == 2 and rep["unchecked"] == 0


def test_sink_protocol_edges(sink):
    s = sink()
    got = raw_session(s.port, [b"EHLO x\r\nDATA\r\nRCPT TO:<a@x>\r\nMAIL FROM:<a@x>\r\nMAIL FROM:<a@x>\r\n"
                               b"RSET\r\nNOOP\r\nFOO\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n.\r\nQUIT\r\n"], replies=13)
    codes = [ln[:3] for ln in got.split(b"\r\n") if len(ln) >= 4 and ln[3:4] == b" "]
    assert codes == [b"220", b"250", b"554", b"503", b"250", b"503", b"250", b"250", b"502",
                     b"250", b"250", b"354", b"250", b"221"], got
    rep = s.stop()
    assert rep["messages"] == 1 and rep["unchecked"] == 1


# -- compare ---------------------------------------------------------------------------------

def test_compare_end_to_end(tmp_path):
    cfg = tmp_path / "c.toml"
    out = tmp_path / "res" / "cmp"
    cfg.write_text(f"""
[compare]
repeats = 2
output = "{out}"

[[workload]]
name = "tiny"
messages = 200
sessions = 10

[[system]]
name = "mta"
start = "{{python}} -m mta run --listen 127.0.0.1:{{port}} --spool {{tmp}}/spool --hostname mta.example.test"
port = {free_port()}

[[system]]
name = "sink"
start = "{{python}} -m mta bench sink --listen 127.0.0.1:{{port}} --quiet"
port = {free_port()}
""")
    r = mta("bench", "compare", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "res" / "cmp.json").read_text())
    assert {"meta", "rows", "trials"} <= set(doc)
    trials = doc["trials"]
    assert [(t["system"], t["repeat"]) for t in trials] == [("mta", 0), ("sink", 0), ("mta", 1), ("sink", 1)]
    for t in trials:
        assert t["messages"] == 200 and t["errors"] == {}
        assert t["accepted_per_s"] > 0 and t["server_cpu_s"] >= 0
    summ = {s["system"]: s for s in doc["rows"]}
    assert set(summ) == {"mta", "sink"}
    for s in summ.values():
        assert s["messages_per_s_min"] <= s["messages_per_s"] <= s["messages_per_s_max"]
        assert s["trials"] == 2 and s["cpu_us_per_msg"] is not None
    assert summ["mta"]["ratio_vs_first"] == 1.0 and summ["sink"]["ratio_vs_first"] > 0
    md = (tmp_path / "res" / "cmp.md").read_text()
    assert "### tiny" in md and "| system | accepted/s (min–max) |" in md
    assert "| mta |" in md and "| sink |" in md
    assert "| mta |" in r.stdout


def test_compare_rejects_unknown_keys(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[system]]\nname = "x"\nport = 1\nstart = "true"\nstrat = "typo"\n')
    r = mta("bench", "compare", "--config", str(cfg))
    assert r.returncode == 2 and "strat" in r.stderr


def test_starttls_required_but_not_offered(sink):
    s = sink("--no-starttls")
    rep = run_send(s.target, messages=4, sessions=2, workers=1, starttls=True)
    s.stop()
    assert rep["messages"] == 0 and rep["errors"] == {"no-starttls": 4}


def test_tls_resume_resumes_after_the_first_handshake(sink, tmp_path):
    # one sink process: its tickets are its own (two would each resume only their own)
    s = sink("--workers", "1")
    out = tmp_path / "send.json"
    r = mta("bench", "send", "--target", s.target, "--messages", "40", "--sessions", "2", "--workers", "1",
            "--starttls", "--tls-resume", "--json", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads(out.read_text())
    assert rep["messages"] == 40 and rep["errors"] == {} and rep["tls_resume"] is True
    h = rep["tls_handshakes"]
    # both sessions start before any ticket came; every later connection offers one
    assert h["full"] + h["resumed"] == 40 and 1 <= h["full"] <= 2 and h["resumed"] >= 38
    plain = run_send(s.target, messages=10, sessions=2, workers=1, starttls=True)
    assert plain["tls_resume"] is False and plain["tls_handshakes"] == {"full": 10, "resumed": 0}
    got = s.stop()
    assert got["messages"] == 50 and got["tls_sessions"] == 50 and got["integrity_errors"] == 0


def test_every_committed_bench_plan_and_config_loads():
    """benches/compare*.toml are valid plans and benches/mta-bench*.toml valid mta configs."""
    import glob

    from mta.config import schema as mta_config
    from mta.bench.compare import load_plan

    benches = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches")
    plans = sorted(glob.glob(os.path.join(benches, "compare*.toml")))
    configs = sorted(glob.glob(os.path.join(benches, "mta-bench*.toml")))
    assert len(plans) >= 3 and len(configs) >= 3
    for path in plans:
        plan = load_plan(path)
        assert plan.systems and plan.workloads, path
    for path in configs:
        mta_config.load(path)


def test_hotpaths_bench_runs_every_path():
    """benches/hotpaths.py (a benchmark, not a timed test): each path completes its
    messages and prints a figure; nothing is asserted about the figures."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benches", "hotpaths.py"), "--messages", "200",
                          "--repeats", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines() if "us/msg" in line]
    assert names == ["session", "queue", "client", "lane"]


def test_agent_bench_delivers_every_message():
    """benches/agent.py (a benchmark): the agent delivers its jobs into smtp-sink and the
    line says so; the figures themselves are not asserted."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benches", "agent.py"), "--messages", "100",
                          "--runs", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert "us/msg" in line and line.endswith("not delivered: 0"), line


def test_latency_probe_times_every_step(sink):
    """benches/latency.py against `mta bench sink` for about a second: every step of
    every session is timed (the figures are not asserted), and --json has them all."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    s = sink()
    out = subprocess.run([sys.executable, os.path.join(root, "benches", "latency.py"), "--port", str(s.port),
                          "--seconds", "1", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    steps = ["connect", "greeting", "EHLO", "MAIL", "RCPT", "DATA", "data", "QUIT"]
    assert list(got) == steps
    counts = {v["n"] for v in got.values()}
    assert len(counts) == 1 and counts.pop() >= 1  # each session timed every step
    assert all(0 <= v["p50_ms"] <= v["p90_ms"] for v in got.values())


def test_latency_probe_stops_at_a_refused_step():
    """A server refusing MAIL ends the probe with the refusal, not with figures."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches"))
    import latency

    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        port = ls.getsockname()[1]

        def serve():
            c, _ = ls.accept()
            with c:
                c.sendall(b"220 hi\r\n")
                c.recv(100)
                c.sendall(b"250 ok\r\n")
                c.recv(100)
                c.sendall(b"550 5.7.1 no\r\n")
                c.recv(100)
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        with pytest.raises(ConnectionError, match="MAIL: b'550"):
            latency.probe("127.0.0.1", port, 5.0, timeout=5.0)
        t.join(5)


def test_tree_threads_sees_a_child_and_its_busy_thread():
    """benches/threads.py's /proc reading: every thread of a process tree (a child's
    included), the time a busy one spent on a CPU, its switches, and differences taken
    thread by thread."""
    from mta.bench.procs import cpu_times, tree_threads

    busy = ("import sys, threading, time\n"
            "def spin():\n    t = time.thread_time()\n    while time.thread_time() - t < 0.3: pass\n"
            "    print('spun', flush=True); time.sleep(30)\n"
            "threading.Thread(target=spin, daemon=True).start(); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", busy], stdout=subprocess.PIPE)
    try:
        before = tree_threads(os.getpid())
        assert child.stdout.readline() == b"spun\n"
        after = tree_threads(os.getpid())
        theirs = {k: v for k, v in after.items() if k.startswith(f"{child.pid}/")}
        assert len(theirs) == 2, theirs  # its main thread and the spinner
        spinner = max(theirs.values(), key=lambda t: t.run_ns)
        assert spinner.run_ns >= 250_000_000 and spinner.user_s + spinner.sys_s >= 0.2, spinner
        assert spinner.voluntary + spinner.involuntary >= 1
        key = f"{os.getpid()}/{os.getpid()}"
        d = after[key].minus(before[key])
        assert d.run_ns >= 0 and d.voluntary >= 1 and d.name == after[key].name  # it slept in readline
        assert spinner.minus(None) is spinner
    finally:
        child.kill()
        child.wait()
    cpus = cpu_times()
    assert "cpu" in cpus and len(cpus["cpu"]) == 8 and all(v >= 0 for v in cpus["cpu"])


def test_threads_bench_reports_the_busy_threads():
    """benches/threads.py (a benchmark): a short relaying run, reported thread by thread
    (the figures themselves are not asserted)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benches", "threads.py"), "--messages", "300",
                          "--port", str(free_port())], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("run 1: ") and lines[0].endswith("msgs/s accepted"), lines
    assert any(x.strip().startswith("mta-worker") and "us/msg" in x for x in lines), lines
    assert any(x.strip().startswith("cpu ") and "idle" in x for x in lines), lines


def test_settle_waits_for_busy_cpus_up_to_its_limit_and_reports_the_idle_share():
    """accept.py's start of a trial: with every CPU kept busy by spinners it waits out its
    limit and reports a low idle share; asked for an idle share of 0 it returns after one
    window."""
    from mta.bench.procs import idle_share, settle

    spin = "import time\nt = time.time()\nwhile time.time() - t < 30: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    try:
        time.sleep(0.2)
        waited, share = settle(limit=1.0, idle=0.9, window=0.25)
        assert 1.0 <= waited < 5.0 and share < 0.5, (waited, share)
        waited, share = settle(limit=10.0, idle=0.0, window=0.25)
        assert waited < 5.0 and 0.0 <= share <= 1.0
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    assert 0.0 <= idle_share(0.1) <= 1.0


def test_server_instructions_counts_the_worker_and_the_agent():
    """benches/server-instructions.sh (a benchmark): a short callgrind run of the real
    server relaying, one figure per process (the figures themselves are not asserted).
    Needs valgrind, as the Postfix tests need Postfix: scripts/test installs both."""
    assert shutil.which("callgrind_control"), "valgrind is not installed (scripts/test installs it)"
    import mta

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))  # the one under test
    out = subprocess.run(["bash", os.path.join(root, "benches", "server-instructions.sh"), "-p", package_dir,
                          "-n", "100"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    figures = dict(line.rsplit(None, 2)[:2] for line in out.stdout.splitlines() if line.endswith("instructions/msg"))
    assert set(figures) == {"worker", "delivery agent"}, out.stdout
    assert all(int(v) > 10_000 for v in figures.values()), figures


def test_fsync_bench_times_both_ways_and_leaves_no_file(tmp_path):
    """benches/fsync.py (a benchmark): one line per way of writing, each with a rate,
    three latency percentiles and the CPU per sync; its file is removed."""
    bench = os.path.join(os.path.dirname(__file__), "..", "benches", "fsync.py")
    out = subprocess.run([sys.executable, bench, "--dir", str(tmp_path), "--syncs", "40", "--rounds", "1"],
                         capture_output=True, text=True, timeout=120, check=True).stdout.splitlines()
    assert [line.split("  ")[0].strip() for line in out] == ["append", "zeros ahead"]
    for line in out:
        assert re.search(r"\d+ syncs/s  p50 +\d+ us  p90 +\d+ us  p99 +\d+ us  CPU +\d+ us/sync$", line), line
    assert list(tmp_path.iterdir()) == []


def _free_ports(*offsets: int) -> int:
    """A port P with P + each offset free on 127.0.0.1 (accept.py puts its sinks there)."""
    for _ in range(50):
        base = free_port()
        if base + max(offsets) > 65535:
            continue
        try:
            socks = []
            for off in offsets:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free port group found")


@pytest.mark.parametrize("delivery", ["relay", "ideal"])
def test_accept_bench_runs_mta_and_the_sink(tmp_path, delivery):
    """benches/accept.py (the issue-4 benchmark) on a tiny workload: mta relaying (or
    accepting while smtp-source -d relays the same N: `ideal`) and the ceiling, every
    message stored, the sync figures read from mta's log, the relayer's CPU counted as the
    server's (the figures themselves are not asserted)."""
    assert shutil.which("smtp-source", path="/usr/sbin:/usr/bin"), "postfix is not installed (scripts/test)"
    import mta

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))  # the one under test
    out_json = tmp_path / "accept.json"
    cmd = [sys.executable, os.path.join(root, "benches", "accept.py"), "--mta-python", package_dir,
           "--messages", "200", "--trials", "1",
           "--sizes", "1024", "--modes", "conn", "--systems", "mta,sink", "--settle", "0",
           "--mta-delivery", delivery, "--port", str(_free_ports(0, 1, 200)), "--workdir", str(tmp_path),
           "--out", str(out_json), "--timeout", "120"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    result = json.loads(out_json.read_text())
    trials = {t["system"]: t for t in result["trials"]}
    assert set(trials) == {"mta", "sink"} and not any("failed" in t for t in trials.values()), trials
    row = trials["mta"]
    assert row["queued_lines"] == 200 and row["syncs"] >= 1 and row["accepted_per_s"] > 0, row
    if delivery == "ideal":
        assert row["relay_client_cpu_s"] > 0 and row["relay_done_s"] > 0, row
        assert row["server_cpu_s"] >= row["relay_client_cpu_s"], row
    else:
        assert "relay_client_cpu_s" not in row, row
    label = {"relay": "relaying into smtp-sink -c", "ideal": "accepting; a C client relays"}[delivery]
    assert f"| mta run ({label}) | 1 KiB | 1/conn |" in out.stdout, out.stdout
    assert not list(tmp_path.glob("mta-accept-*")), "a trial's spool was left behind"
