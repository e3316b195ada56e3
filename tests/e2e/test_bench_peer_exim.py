"""The Exim peer (Debian's package unpacked privately) relays bursts into the bench sink in clear and
under STARTTLS both ways, restarts on its port and leaves nothing system-wide (no /etc/exim4, no
/var/spool/exim4, no mount outside its namespace); its two small parsers by table and property."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit import free_port, ready_peer, relay_burst, start_sink

from mta.bench import peers
from mta.bench.peers.exim import exim_version, lib_packages
from mta.bench.peers.runner import PeerProcess
from mta.bench.sendrun import run_send
from mta.bench.tlsutil import throwaway_certificate

SYSTEM_PATHS = ("/etc/exim4", "/var/spool/exim4", "/var/log/exim4", "/run/exim4", "/var/lib/exim4")


def _snapshot() -> dict[str, list[str] | None]:
    return {p: sorted(os.listdir(p)) if os.path.isdir(p) else None for p in SYSTEM_PATHS}


def _mainlog(burst_dir: Path) -> list[str]:
    (mainlog,) = burst_dir.glob("peer-exim-*/exim/log/mainlog")
    return mainlog.read_text().splitlines()


def _deliveries(burst_dir: Path) -> list[str]:
    return [line for line in _mainlog(burst_dir) if " => " in line]


def test_exim_relays_a_burst_in_clear_and_under_starttls(tmp_path):
    ready_peer("exim")
    before = _snapshot()
    for sub in ("clear", "tls"):
        (tmp_path / sub).mkdir()
        relay_burst("exim", tmp_path / sub, messages=20, starttls=(sub == "tls"))
    clear, tls = _deliveries(tmp_path / "clear"), _deliveries(tmp_path / "tls")
    assert len(clear) == 20 and not any(" X=" in line for line in clear), clear[:3]
    # The sink offered STARTTLS, so Exim's outbound connections must have used it.
    assert len(tls) == 20 and all(" X=TLS" in line for line in tls), tls[:3]
    # queue_only: the daemon's queue runners delivered, not a process forked per received message.
    assert any("Start queue run" in line for line in _mainlog(tmp_path / "clear"))
    assert _snapshot() == before


def test_exim_restarts_on_the_same_port_and_changes_nothing_system_wide(tmp_path):
    peer = ready_peer("exim")
    before = _snapshot()
    cert, key = throwaway_certificate("relay.bench.test")
    sink, sink_port = start_sink(tmp_path, 20, tls=False)
    run = peers.PeerRun(home=peers.peers_home(), work=Path(tempfile.mkdtemp(prefix="peer-exim-", dir=tmp_path)),
                        port=free_port(), sink_port=sink_port, cert=cert, key=key, python=sys.executable)
    mount_point = run.home / "exim" / "run"
    try:
        for start in range(2):
            with open(tmp_path / f"exim-{start}.log", "wb") as log:
                proc = PeerProcess(peer, run, log, ready_timeout=30)
                try:
                    # The bind mount lives in the peer's namespace only.
                    assert os.listdir(mount_point) == []
                    sent = run_send(f"127.0.0.1:{run.port}", messages=10, size=1024, sessions=4, workers=1,
                                    timeout=30)
                    assert sent["messages"] == 10 and not sent["errors"], sent
                    deadline = time.monotonic() + 30
                    while not proc.drained() and time.monotonic() < deadline:
                        time.sleep(0.1)
                    assert proc.drained()
                finally:
                    proc.stop()
            with pytest.raises(ConnectionRefusedError):  # nothing of Exim is left listening
                socket.create_connection(("127.0.0.1", run.port), timeout=2).close()
            assert not (run.work / "exim" / "spool").exists()  # cleanup emptied the spool
        sink.wait(30)
    finally:
        if sink.poll() is None:
            os.killpg(sink.pid, signal.SIGTERM)
            sink.wait(30)
    got = json.loads((tmp_path / "sink.json").read_text())
    assert got["messages"] == 20 and got["integrity_errors"] == 0, got
    assert not (run.work / "exim" / "log" / "paniclog").exists()
    assert peer.version(run.home).startswith("Exim 4.")
    assert _snapshot() == before


DEPENDS = ("exim4-base (>= 4.96), debconf (>= 0.5) | debconf-2.0, libc6 (>= 2.34), libcrypt1 (>= 1:4.1.0), "
           "libdb5.3, libgnutls-dane0 (>= 3.7.0), libidn12 (>= 1.13), libpcre2-8-0 (>= 10.22)")


@pytest.mark.parametrize(("field", "want"), [
    (DEPENDS, ["libc6", "libcrypt1", "libdb5.3", "libgnutls-dane0", "libidn12", "libpcre2-8-0"]),
    ("", []),
    ("debconf | debconf-2.0", []),
    ("libfoo1 | libbar2, libfoo1 (>= 1)", ["libfoo1"]),  # first alternative only, once
    ("libssl3:amd64 (>= 3),\n libz1", ["libssl3", "libz1"]),  # arch qualifier, folded line
])
def test_lib_packages_table(field, want):
    assert lib_packages(field) == want


_plain = st.from_regex(r"[a-z][a-z0-9.+-]{1,12}", fullmatch=True)
_name = st.one_of(_plain, _plain.map(lambda n: "lib" + n))
_item = st.tuples(st.lists(_name, min_size=1, max_size=3), st.sampled_from(["", " (>= 1.2)", " (<< 2:3)"]))


@given(st.lists(_item, max_size=8))
def test_lib_packages_names_each_first_lib_alternative_once_in_order(items):
    field = ", ".join(" | ".join(f"{n}{version}" for n in alts) for alts, version in items)
    want: list[str] = []
    for alts, _ in items:
        if alts[0].startswith("lib") and alts[0] not in want:
            want.append(alts[0])
    assert lib_packages(field) == want


@pytest.mark.parametrize(("out", "want"), [
    ("Exim version 4.96 #2 built 26-Nov-2026 14:26:47\nCopyright (c) University of Cambridge", "4.96"),
    ("2026-12-05 18:06:54 Warning: purging the environment.\nExim version 4.98.1 #1 built x\n", "4.98.1"),
    ("exim: failed to find uid for user name \"Debian-exim\"\n", None),
    ("Exim version\n", None),
    ("", None),
])
def test_exim_version_table(out, want):
    assert exim_version(out) == want


@given(st.text(), st.from_regex(r"[0-9][0-9.]{0,8}", fullmatch=True), st.text())
def test_exim_version_finds_the_banner_among_any_lines(before, version, after):
    lines = [ln for ln in (before + "\n").splitlines() if not ln.split()[:2] == ["Exim", "version"]]
    out = "\n".join([*lines, f"Exim version {version} #2 built today", after])
    assert exim_version(out) == version
