"""The OpenSMTPD bench peer (Debian's package unpacked privately, run in its own mount namespace)
relays a burst into the bench sink, in clear and over STARTTLS to a sink that offers it, takes 50
concurrent sessions, restarts on the same port from an empty queue, and leaves the host's
compile-time paths untouched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from peerkit import free_port, ready_peer, relay_burst, start_sink, stop_all, wait_drained

from mta.bench import peers
from mta.bench.peers import opensmtpd_ns
from mta.bench.peers.runner import PeerProcess
from mta.bench.sendrun import run_send
from mta.bench.tlsutil import throwaway_certificate

# what smtpd would write on a host where it was installed: it must find none of them changed
HOST_PATHS = ("/var/spool/smtpd", "/etc/smtpd.conf", "/etc/mail", "/etc/mailname", "/var/lib/opensmtpd",
              "/run/smtpd.sock")


def snapshot(paths=HOST_PATHS) -> dict[str, object]:
    """Every file and directory under the paths, with its mode, owner, mtime and content digest."""
    seen: dict[str, object] = {}
    for top in paths:
        if not os.path.lexists(top):
            seen[top] = None
            continue
        for folder, _dirs, files in os.walk(top):
            for name in [folder, *(os.path.join(folder, f) for f in files)]:
                st = os.lstat(name)
                digest = ""
                if os.path.isfile(name) and not os.path.islink(name):
                    digest = hashlib.sha256(Path(name).read_bytes()).hexdigest()
                seen[name] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, digest)
    return seen


def new_run(tmp: Path, port: int, sink_port: int) -> peers.PeerRun:
    cert, key = throwaway_certificate("relay.bench.test")
    return peers.PeerRun(home=peers.peers_home(), work=Path(tempfile.mkdtemp(prefix="opensmtpd-", dir=tmp)),
                         port=port, sink_port=sink_port, cert=cert, key=key, python=sys.executable)


def test_relays_a_burst_in_clear_and_leaves_the_host_alone(tmp_path):
    ready_peer("opensmtpd")
    before = snapshot()
    got = relay_burst("opensmtpd", tmp_path)
    assert got["drained"] and got["sink"]["messages"] == 20
    assert snapshot() == before


def test_uses_starttls_outbound_when_the_sink_offers_it_and_offers_none_inbound(tmp_path):
    peer = ready_peer("opensmtpd")
    assert peer.offers_starttls is False and "STARTTLS" in peer.notes
    sink, sink_port = start_sink(tmp_path, 10, tls=True)
    run = new_run(tmp_path, free_port(), sink_port)
    with open(tmp_path / "opensmtpd.log", "wb") as log:
        proc = PeerProcess(peer, run, log)
        try:
            with smtplib.SMTP("127.0.0.1", run.port, timeout=10) as c:
                c.ehlo("client.test")
                # Debian's 6.8.0p2 cannot finish a server-side handshake under OpenSSL 3
                assert not c.has_extn("starttls")
            sent = run_send(f"127.0.0.1:{run.port}", messages=10, sessions=2, workers=1, timeout=30)
            drained = wait_drained(proc, sink)
        finally:
            stop_all(proc, sink)
    got = json.loads((tmp_path / "sink.json").read_text())
    assert sent["messages"] == 10 and got["messages"] == 10 and got["integrity_errors"] == 0, (sent, got)
    assert drained
    text = (tmp_path / "opensmtpd.log").read_text(errors="replace")
    # smtpd logs the cipher of each outbound session it secured with STARTTLS
    assert "mta tls ciphers=TLSv1" in text, text[-2000:]


def listen_backlog(port: int) -> int | None:
    """The backlog of the listener on 127.0.0.1:port as `ss` shows it (Send-Q), None without ss."""
    try:
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                             timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return int(out.split()[2]) if out.split() else 0


def test_takes_300_messages_from_50_sessions(tmp_path):
    # Before the tuning, a burst of connects stalled: greetings held 5 s by resolver retries,
    # handshakes lost from smtpd's 5-deep accept queue (60 s timeouts), and one outbound
    # connection every few seconds draining the queue at ~15 messages/s.
    peer = ready_peer("opensmtpd")
    sink, sink_port = start_sink(tmp_path, 300, tls=False)
    run = new_run(tmp_path, free_port(), sink_port)
    with open(tmp_path / "opensmtpd.log", "wb") as log:
        proc = PeerProcess(peer, run, log)
        try:
            deadline = time.monotonic() + 10
            while listen_backlog(run.port) == 5 and time.monotonic() < deadline:
                time.sleep(0.05)  # the wrapper's helper raises it just after smtpd listens
            backlog = listen_backlog(run.port)
            sent = run_send(f"127.0.0.1:{run.port}", messages=300, sessions=50, workers=1, timeout=20)
            drained = wait_drained(proc, sink)
        finally:
            stop_all(proc, sink)
    got = json.loads((tmp_path / "sink.json").read_text())
    assert sent["messages"] == 300 and not sent["errors"], sent
    assert got["messages"] == 300 and got["integrity_errors"] == 0, got
    assert drained
    assert backlog in (None, min(4096, int(Path("/proc/sys/net/core/somaxconn").read_text()))), backlog


def test_raise_backlog_reaches_a_listener_in_a_child_and_gives_up_when_the_process_ends():
    code = ("import socket, os, sys, time\n"
            "if os.fork() == 0:\n"
            "    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
            "    print(s.getsockname()[1], flush=True); time.sleep(30)\n"
            "else:\n"
            "    time.sleep(30)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        port = int(parent.stdout.readline())
        assert opensmtpd_ns.listening_sockets(parent.pid)  # held by the child, found from the parent
        assert opensmtpd_ns.raise_backlog(parent.pid, 77, wait=10) == 1
        assert listen_backlog(port) in (None, 77)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)  # the parent and its listening child
        parent.wait(10)
    short = subprocess.Popen([sys.executable, "-c", "pass"])
    t0 = time.monotonic()
    assert opensmtpd_ns.raise_backlog(short.pid, 77, wait=20) == 0
    assert time.monotonic() - t0 < 5
    short.wait(10)


def test_restarts_on_the_same_port_from_an_empty_queue(tmp_path):
    peer = ready_peer("opensmtpd")
    port = free_port()
    for n in range(2):
        # nothing listens on the sink port: what is accepted stays queued (deferred)
        run = new_run(tmp_path, port, free_port())
        with open(tmp_path / f"start{n}.log", "wb") as log:
            proc = PeerProcess(peer, run, log)
            try:
                assert peer.drained(run)  # the start found no queue left by the one before
                sent = run_send(f"127.0.0.1:{port}", messages=3, sessions=1, workers=1, timeout=30)
                assert sent["messages"] == 3, sent
                assert not peer.drained(run)
                assert any(peer.queue_dir(run).joinpath("queue").rglob("message"))
            finally:
                proc.stop()
        assert not peer.queue_dir(run).exists()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_the_namespace_shows_every_host_entry_and_writes_none(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace needs root")
    # (not a snapshot of all /var/spool: other peers' queues there change under our feet)
    before = snapshot(("/var/spool/smtpd", "/var/lib/opensmtpd")), sorted(os.listdir("/var/spool"))
    probe = ("test -d /var/spool/smtpd -a -d /var/lib/opensmtpd/empty && touch /var/spool/smtpd/probe "
             "&& ls -A /var/lib /var/spool && cat /etc/resolv.conf")
    r = subprocess.run([sys.executable, "-m", "mta.bench.peers.opensmtpd_ns", "--root", str(tmp_path), "--",
                        "/bin/sh", "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    inside = set(r.stdout.split())
    assert set(os.listdir("/var/lib")) | {"opensmtpd"} <= inside
    assert set(os.listdir("/var/spool")) | {"smtpd"} <= inside
    assert (tmp_path / "var-spool" / "smtpd" / "probe").exists()  # the queue is on run.work's disk
    # smtpd's resolver answers from the hosts file: no client's greeting waits on a nameserver
    assert "\nlookup file\n" in r.stdout
    assert (snapshot(("/var/spool/smtpd", "/var/lib/opensmtpd")), sorted(os.listdir("/var/spool"))) == before


def test_config_version_and_durability_for_the_report():
    peer = peers.get("opensmtpd")
    assert "fsync" in peer.durability
    home = peers.peers_home()
    if peer.missing(home) is None:
        assert peer.version(home).startswith("OpenSMTPD 6.8")
    run = peers.PeerRun(home=home, work=Path("/nonexistent"), port=2525, sink_port=2626, cert="c", key="k")
    text = peer.config_text(run)
    assert "listen on 127.0.0.1 port 2525 " in text
    assert 'relay host "smtp://127.0.0.1:2626"' in text
    assert "smtp limit max-mails" in text
    assert "conn-delay-route 0" in text and "task-hiwat" in text
    assert "--backlog" in peer.command(run)
