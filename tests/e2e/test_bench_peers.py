"""Each ready-made bench peer (mta, Postfix, smtp-sink) starts from its private directory,
relays a small burst into the bench sink (accepts it, for smtp-sink), drains and stops; a
second start on the same port works (nothing left behind)."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path

import pytest

from peerkit import free_port, ready_peer, relay_burst

from mta.bench import peers
from mta.bench.peers.runner import PeerProcess
from mta.bench.sendrun import run_send
from mta.bench.tlsutil import throwaway_certificate


def test_mta_peer_relays_a_burst_in_clear_and_under_starttls(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        relay_burst("mta", tmp_path / sub, starttls=(sub == "b"))


def test_postfix_peer_relays_a_burst_and_restarts_clean(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        relay_burst("postfix", tmp_path / sub, starttls=(sub == "b"))


def test_smtp_sink_peer_accepts_and_is_accept_only(tmp_path):
    peer = ready_peer("smtp-sink")
    assert peer.relays is False
    cert, key = throwaway_certificate()
    run = peers.PeerRun(home=peers.peers_home(), work=Path(tempfile.mkdtemp(dir=tmp_path)), port=free_port(),
                        sink_port=1, cert=cert, key=key, python=sys.executable)
    with open(tmp_path / "log", "wb") as log:
        proc = PeerProcess(peer, run, log)
        try:
            sent = run_send(f"127.0.0.1:{run.port}", messages=50, sessions=4, workers=1, timeout=30)
        finally:
            proc.stop()
    assert sent["messages"] == 50 and not sent["errors"]
    with pytest.raises(ConnectionRefusedError):  # nothing of the peer is left listening
        socket.create_connection(("127.0.0.1", run.port), timeout=2).close()
