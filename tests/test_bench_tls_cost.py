"""benches/tls_cost.py's parts on tiny counts: the MemoryBIO handshakes (resumption really
resumes), the record layer, one transport run per mode, perf/py-spy parsing and the report.
The whole script runs minutes (--quick about 15 s), so it is not run here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
import tls_cost
import tls_cost_micro as micro
import tls_cost_profile as prof
import tls_cost_transport as transport
from mta.bench.tlsutil import client_context
from tls_cost_report import breakdown, markdown, outbound


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return tls_cost.certificate(str(tmp_path_factory.mktemp("cert")))


def test_handshakes_split_the_sides_and_resume(cert):
    rows = micro.measure_handshakes(*cert, n=3, rounds=1)
    by = {r["handshake"].split(" (")[0]: r for r in rows}
    full, resumed = by["TLS 1.3 full"], by["TLS 1.3 resumed"]
    assert full["version"] == "TLSv1.3" and full["resumed_share"] == 0 and resumed["resumed_share"] == 1
    assert by["TLS 1.2 resumed"]["version"] == "TLSv1.2" and by["TLS 1.2 resumed"]["resumed_share"] == 1
    assert all(r["server_us"] > 0 and r["client_us"] > 0 for r in rows)


def test_record_layer_reads_whole_messages_and_contexts_are_timed(cert):
    rows = micro.measure_records(*cert, sizes=(1024, 65536), rounds=1, calls=3)
    assert [(r["size"], r["reader"][:4]) for r in rows] == [
        (1024, "read"), (1024, "read"), (1024, "read"), (65536, "read"), (65536, "read"), (65536, "read")]
    assert all(r["seal_us"] > 0 and r["open_us"] > 0 and r["copy_us"] >= 0 for r in rows)
    ctx = micro.measure_contexts(*cert, rounds=1, calls=3)
    assert len(ctx) == 4 and all(r["us"] > 0 for r in ctx)


@pytest.mark.parametrize("per_conn", [False, True])
def test_a_transport_run_counts_the_server_cpu_per_message(cert, per_conn):
    sf = lambda: micro.server_context(*cert)
    plain = transport.one_run(None, None, 1024, 30, 10, per_conn)
    tls = transport.one_run(sf(), client_context(), 1024, 30, 10, per_conn)
    assert plain["server_us"] > 0 and tls["server_us"] > 0 and plain["full"] == tls["resumed"] == 0
    assert tls["full"] == (40 if per_conn else transport.SESSIONS)
    if per_conn:  # the resuming client resumes once its first sessions brought tickets
        res = transport.one_run(sf(), client_context(transport.ResumingContext), 1024, 30, 10, True)
        assert res["full"] + res["resumed"] == 40 and res["resumed"] >= 40 - 2 * transport.SESSIONS


def test_perf_and_pyspy_text_are_grouped():
    text = """# Overhead  Shared Object
    40.00%  libcrypto.so.3
     5.50%  libssl.so.3
    20.00%  libpython3.11.so.1.0
     9.00%  [kernel.kallsyms]
     7.00%  loop.cpython-311-x86_64-linux-gnu.so
     2.00%  _native.cpython-311-x86_64-linux-gnu.so
     1.00%  libmta_core.so
     0.50%  _ssl.cpython-311-x86_64-linux-gnu.so
    10.00%  libc.so.6
     4.50%  [unknown]
"""
    g = prof.group_dso_report(text)
    assert g["libcrypto (OpenSSL crypto)"] == 40.0 and g["libssl (OpenSSL TLS)"] == 5.5
    assert g["Python interpreter"] == 20.0 and g["kernel"] == 9.0 and g["uvloop (loop.so)"] == 7.0
    assert g["mta._native (Rust)"] == 3.0 and g["Python's _ssl module"] == 0.5 and g["libc"] == 10.0
    assert g["other"] == 4.5 and sum(g.values()) == pytest.approx(99.5)
    loop = "main (x.py:1);Runner.run (asyncio/runners.py:118)"
    raw = (f"{loop};run (b.py:2);SSL_do_handshake (libssl.so.3) 30\n{loop};data_received (c.py:3) 15\n"
           f"{loop};x;SSL_do_handshake (libssl.so.3) 5\nbroken line\n{loop};epoll_pwait (libc.so.6) 99\n"
           "_worker (concurrent/futures/thread.py:81);0x7f (libc.so.6) 50\n")
    top = prof.top_frames(raw, 2)
    assert top["leaves"] == [("SSL_do_handshake (libssl.so.3)", 70.0), ("data_received (c.py:3)", 30.0)]
    assert top["python"] == [("run (b.py:2)", 60.0), ("data_received (c.py:3)", 30.0)]
    assert prof.process_cpu(os.getpid()) > 0 and prof.process_cpu(1 << 30) == 0


def test_the_report_renders_again_from_saved_json(tmp_path, capsys):
    saved = tmp_path / "run.json"
    saved.write_text('{"machine": {"date": "then"}, "contexts": []}')
    assert tls_cost.main(["--from-json", str(saved), "--out", str(tmp_path / "again")]) == 0
    assert "then" in (tmp_path / "again.md").read_text() and not (tmp_path / "again.json").exists()


def test_the_breakdown_adds_up_and_the_report_renders():
    res = {
        "machine": {"date": "d", "commit": "c", "python": "3.11", "openssl": "OpenSSL 3", "cpus": 2},
        "handshakes": [{"handshake": "TLS 1.3 full", "server_us": 300.0, "client_us": 450.0, "resumed_share": 0.0,
                        "version": "TLSv1.3", "cipher": "X"}],
        "records": [{"size": 1024, "reader": "r", "seal_us": 2.0, "open_us": 4.0, "seal_MBps": 1.0,
                     "open_MBps": 1.0, "copy_us": 0.1, "copy_MBps": 1.0}],
        "transport": [{"size": 1024, "connections": "one message per connection", "security": s, "messages": 1,
                       "server_us": us, "client_us": us, "server_rate": 1.0, "resumed_share": 0.0}
                      for s, us in (("plain", 40.0), ("TLS", 500.0))],
        "server": [{"mode": "plaintext in and out", "accepted_per_s": 2000.0, "server_cpu_us_per_msg": 450.0,
                    "server_cpu_share": 0.5, "perf_dso_pct": {"kernel": 50.0, "other": 50.0}},
                   {"mode": "STARTTLS in, plaintext out", "accepted_per_s": 600.0, "server_cpu_us_per_msg": 1150.0,
                    "server_cpu_share": 0.6, "perf_dso_pct": {"kernel": 20.0, "other": 80.0},
                    "pyspy": {"pid_is_root": True, "leaves": [["do_handshake", 12.5]], "python": [["s.py:1", 3.0]]}},
                   {"mode": "STARTTLS in and out", "failed": "no sink"}],
    }
    rows = {r[0].split(":")[0].split(" (")[0]: r[1] for r in breakdown(res)}
    assert rows["mta run, STARTTLS in minus plaintext"] == 700.0
    assert rows["TLS 1.3 full handshake in OpenSSL"] == 300.0 and rows["record layer"] == 4.0
    assert rows["uvloop SSLProtocol beyond those two"] == 156.0 and rows["the rest"] == 240.0
    assert outbound(res) == []  # no contexts measured: no outbound table
    res["contexts"] = [{"op": "client", "us": 100.0, "min": 1, "max": 1}, {"op": "default", "us": 20000.0, "min": 1, "max": 1}]
    ob = {r[0]: r[1] for r in outbound(res)}
    assert ob["uvloop SSLProtocol beyond those (client side)"] == 8.0  # 460 - 450 - 2
    assert ob["**per opportunistic connection**"] == 560.0 and ob["per message on a pooled connection of 100 (opportunistic)"] == 5.6
    text = markdown(res)
    assert "| 1 KiB | one message per connection | TLS | 500 | 460 |" in text
    assert "20.0% / 230" in text and "do_handshake" in text and "failed: no sink" in text
