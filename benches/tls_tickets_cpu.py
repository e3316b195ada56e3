#!/usr/bin/env python3
"""Server CPU per TLS 1.3 handshake, full and resumed, in-process over ssl.MemoryBIO with the
server context mta builds (mta.smtp.tls.build_context, P-256 certificate), with the ticket key
callback of mta.smtp.tickets installed and with OpenSSL's own ticket key (no callback).

Only the server's calls (wrap_bio, do_handshake) are inside time.process_time(); the client's
work and the copies between the BIOs are outside. Rounds alternate the two contexts.

  python benches/tls_tickets_cpu.py [--handshakes 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from mta.config.schema import TlsConfig
from mta.smtp import tickets
from mta.smtp.tls import build_context, selfsigned


def client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, session) -> tuple[float, ssl.SSLObject]:
    """(server CPU seconds, the client's SSLObject) for one whole handshake."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="mx.example.test", session=session)
    cpu = 0.0
    t = time.process_time()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    cpu += time.process_time() - t
    c_done = s_done = False
    while not (c_done and s_done):
        if not c_done:
            try:
                c.do_handshake()
                c_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not s_done:
            t = time.process_time()
            try:
                s.do_handshake()
                s_done = True
            except ssl.SSLWantReadError:
                pass
            cpu += time.process_time() - t
        c_in.write(s_out.read())
    try:
        c.read(1)  # takes in the tickets
    except ssl.SSLWantReadError:
        pass
    return cpu, c


def run(server: ssl.SSLContext, n: int, resumed: bool) -> tuple[float, int]:
    """(server µs per handshake, how many were resumed)."""
    client = client_ctx()
    _, c = handshake(server, client, None)
    session = c.session
    total, reused = 0.0, 0
    for _ in range(n):
        cpu, c = handshake(server, client, session if resumed else None)
        total += cpu
        reused += c.session_reused
        if resumed:
            session = c.session  # the renewed ticket, as a real client would keep it
    return total / n * 1e6, reused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--handshakes", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key, cert = selfsigned(tmp, "mx.example.test", 2)
        cfg = TlsConfig(cert=cert, key=key)
        ours = build_context(cfg, tickets.TicketKeys(b"b" * 32, 3600.0))
        # build_context's settings without the callback: OpenSSL's own ticket key
        plain = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        plain.minimum_version, plain.options, plain.num_tickets = ours.minimum_version, ours.options, ours.num_tickets
        plain.load_cert_chain(cert, key)
        results: dict[tuple[str, str], list[float]] = {}
        for _ in range(a.rounds):
            for name, ctx in (("callback", ours), ("openssl", plain)):
                for kind in ("full", "resumed"):
                    us, reused = run(ctx, a.handshakes, kind == "resumed")
                    assert reused == (a.handshakes if kind == "resumed" else 0), (name, kind, reused)
                    results.setdefault((name, kind), []).append(us)
    print(f"{ssl.OPENSSL_VERSION}; {a.handshakes} handshakes x {a.rounds} rounds; server CPU per handshake "
          f"(median of rounds, µs)")
    print(f"{'ticket key':<10} {'full':>8} {'resumed':>8} {'resumed/full':>13}")
    for name in ("callback", "openssl"):
        full = statistics.median(results[(name, "full")])
        res = statistics.median(results[(name, "resumed")])
        print(f"{name:<10} {full:8.1f} {res:8.1f} {res / full:13.2f}")


if __name__ == "__main__":
    main()
