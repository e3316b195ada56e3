"""One bench peer relaying a small burst into the bench sink, through the same runner that
`mta bench compare` uses: set up (skipped with the reason when the peer cannot be set up
here), started, loaded, drained, stopped, and the sink's count and integrity checked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mta.bench import peers
from mta.bench.peers.runner import PeerProcess
from mta.bench.procs import wait_greeting
from mta.bench.sendrun import run_send
from mta.bench.tlsutil import throwaway_certificate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready_peer(name: str) -> peers.Peer:
    """The peer, set up (once per machine); skip with the reason when that is impossible here."""
    peer = peers.get(name)
    home = peers.peers_home()
    if peer.missing(home):
        try:
            peer.setup(home, lambda line: print(line, file=sys.stderr))
        except peers.SetupError as e:
            pytest.skip(f"{name} cannot be set up here: {e}")
    why = peer.missing(home)
    if why:
        pytest.skip(f"{name}: {why}")
    return peer


def start_sink(tmp: Path, count: int, tls: bool) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "mta", "bench", "sink", "--listen", f"127.0.0.1:{port}", "--count", str(count),
           "--json", str(tmp / "sink.json"), "--quiet", "--workers", "1"]
    if not tls:
        cmd.append("--no-starttls")
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_greeting(port, time.monotonic() + 30), "the bench sink did not start"
    return p, port


def wait_drained(proc: PeerProcess, sink: subprocess.Popen, sink_s: float = 60.0, drain_s: float = 30.0) -> bool:
    """Wait for the sink to have counted its messages (it exits), then for the peer's queue to
    drain; True when it did."""
    try:
        sink.wait(sink_s)
    except subprocess.TimeoutExpired:
        os.killpg(sink.pid, signal.SIGTERM)
        sink.wait(30)
    deadline = time.monotonic() + drain_s
    while not proc.drained() and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc.drained()


def stop_all(proc: PeerProcess, sink: subprocess.Popen) -> None:
    proc.stop()
    if sink.poll() is None:
        os.killpg(sink.pid, signal.SIGTERM)
        sink.wait(30)


def relay_burst(name: str, tmp: Path, messages: int = 20, starttls: bool = False, size: int = 1024) -> dict:
    """Send `messages` through the peer into the sink; return {"send", "sink", "drained", "cpu_s",
    "memory_bytes"}. Fails (assert) on anything lost or damaged."""
    peer = ready_peer(name)
    cert, key = throwaway_certificate("relay.bench.test")
    sink, sink_port = start_sink(tmp, messages, starttls)
    run = peers.PeerRun(home=peers.peers_home(), work=Path(tempfile.mkdtemp(prefix=f"peer-{name}-", dir=tmp)),
                        port=free_port(), sink_port=sink_port, cert=cert, key=key, python=sys.executable)
    with open(tmp / f"{name}.log", "wb") as log:
        proc = PeerProcess(peer, run, log, ready_timeout=60)
        try:
            sent = run_send(f"127.0.0.1:{run.port}", messages=messages, size=size, sessions=4,
                            starttls=starttls, workers=1, timeout=30)
            drained = wait_drained(proc, sink)
            cpu, mem = proc.cpu(), proc.memory()
        finally:
            stop_all(proc, sink)
    got = json.loads((tmp / "sink.json").read_text())
    assert sent["messages"] == messages, (sent, (tmp / f"{name}.log").read_text(errors="replace")[-2000:])
    assert got["messages"] == messages and got["integrity_errors"] == 0, got
    assert drained, f"{name}: the queue did not drain"
    if starttls and peer.relays:  # STARTTLS on both sides: the peer took it when the sink offered it
        assert got["tls_sessions"] >= 1, got
    elif not starttls:
        assert got["tls_sessions"] == 0, got
    assert cpu > 0 and mem > 0
    return {"send": sent, "sink": got, "drained": drained, "cpu_s": cpu, "memory_bytes": mem}
