"""Issue 26: OpenSSL (Python's ssl, as mta.smtp.tls builds it) against rustls (mta._native's
TlsConnection) on the same certificate: CPU per full and per resumed handshake (server side, and
client side for outbound), the record layer, and a uvloop server over loopback with each transport.

  PYTHONPATH=python python -m mta tls selfsigned --out /tmp/mta-bench-tls --hostname mx.test
  PYTHONPATH=python python benches/tls_engines.py --cert /tmp/mta-bench-tls/cert.pem \
      --key /tmp/mta-bench-tls/key.pem --out engines.json --md engines.md

In-process figures time only the measured side's calls (time.thread_time: this thread's CPU,
so other load on the machine is left out); the loopback figures are the server process's CPU (getrusage) per message,
the client in another process. Every figure is the median of --rounds rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import sys
import time
from pathlib import Path

from mta import _native
from mta.config.schema import TlsConfig
from mta.smtp.tls import build_context

SECRET = b"\x01" * 32


def openssl_server_ctx(cert: str, key: str) -> ssl.SSLContext:
    return build_context(TlsConfig(cert=cert, key=key))


def openssl_client_ctx() -> ssl.SSLContext:
    """Opportunistic, as outbound STARTTLS without verification."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class OpenSSLEnd:
    """One side over MemoryBIO; `step(data) -> (plaintext, ciphertext to send)` like feed."""

    def __init__(self, ctx: ssl.SSLContext, server: bool, session=None):
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        kw = {} if server else {"server_hostname": "mx.test", "session": session}
        self.obj = ctx.wrap_bio(self.inc, self.out, server_side=server, **kw)
        self.done = False

    def step(self, data: bytes) -> tuple[bytes, bytes]:
        if data:
            self.inc.write(data)
        plain = b""
        if not self.done:
            try:
                self.obj.do_handshake()
                self.done = True
            except ssl.SSLWantReadError:
                pass
        if self.done:  # takes post-handshake messages (tickets) and application data
            parts = []
            try:
                while True:  # one record per read
                    parts.append(self.obj.read(1 << 20))
            except ssl.SSLWantReadError:
                pass
            plain = b"".join(parts)
        return plain, self.out.read()

    def send(self, data: bytes) -> bytes:
        self.obj.write(data)
        return self.out.read()

    @property
    def handshaking(self) -> bool:
        return not self.done

    @property
    def resumed(self) -> bool:
        return self.obj.session_reused


class RustlsEnd:
    def __init__(self, conn):
        self.conn = conn
        self.step = conn.feed
        self.send = conn.send

    @property
    def handshaking(self) -> bool:
        return self.conn.handshaking

    @property
    def resumed(self) -> bool:
        return self.conn.resumed


def handshake(client, server, timed: str) -> float:
    """Runs one handshake to the end (tickets delivered); seconds spent in the `timed` side."""
    spent = 0.0
    clock = time.thread_time  # CPU of this thread: other load on the machine is not counted
    t = clock()
    _, to_s = client.step(b"")
    if timed == "client":
        spent += clock() - t
    for _ in range(10):
        t = clock()
        _, to_c = server.step(to_s)
        if timed == "server":
            spent += clock() - t
        t = clock()
        _, to_s = client.step(to_c)
        if timed == "client":
            spent += clock() - t
        if not to_c and not to_s and not client.handshaking and not server.handshaking:
            return spent
    raise RuntimeError("handshake did not finish")


def bench_handshakes(cert: str, key: str, n: int, rounds: int) -> dict:
    """µs per handshake, median of rounds: {case: {"full": x, "resumed": y}}."""
    pem_cert, pem_key = Path(cert).read_bytes(), Path(key).read_bytes()
    o_srv = openssl_server_ctx(cert, key)
    r_srv = _native.TlsServerConfig(pem_cert, pem_key, "TLSv1.2", SECRET, 3600.0)

    def o_server():
        return OpenSSLEnd(o_srv, True)

    def r_server():
        return RustlsEnd(r_srv.accept())

    runs = {
        # Server side, the client being OpenSSL for both (what most MTAs connecting to us run).
        "server: OpenSSL": lambda resumed: _server_run(o_server, resumed, n),
        "server: rustls": lambda resumed: _server_run(r_server, resumed, n),
        # Client side (outbound), against the rustls server.
        "client: OpenSSL": lambda resumed: _openssl_client_run(r_server, resumed, n),
        "client: rustls": lambda resumed: _rustls_client_run(r_server, resumed, n),
    }
    return _interleaved(rounds, runs)


def _interleaved(rounds: int, runs: dict) -> dict:
    """Each round runs every case once (drift on a shared machine hits all alike); µs medians."""
    seen: dict = {(name, kind): [] for name in runs for kind in ("full", "resumed")}
    for _ in range(rounds):
        for (name, kind), got in seen.items():
            got.append(runs[name](kind == "resumed"))
    out: dict = {}
    for (name, kind), got in seen.items():
        out.setdefault(name, {})[kind] = round(statistics.median(got) * 1e6, 1)
    return out


def _server_run(make_server, resumed: bool, n: int) -> float:
    cctx = openssl_client_ctx()
    session = None
    total = 0.0
    for i in range(n + 1):
        client = OpenSSLEnd(cctx, False, session if resumed else None)
        t = time.thread_time()
        server = make_server()
        made = time.thread_time() - t
        spent = handshake(client, server, "server") + made
        assert server.resumed == (resumed and i > 0), (resumed, i)
        session = client.obj.session
        if i:  # the first one only seeds the session
            total += spent
    return total / n


def _openssl_client_run(make_server, resumed: bool, n: int) -> float:
    cctx = openssl_client_ctx()
    session = None
    total = 0.0
    for i in range(n + 1):
        t = time.thread_time()
        client = OpenSSLEnd(cctx, False, session if resumed else None)
        made = time.thread_time() - t
        spent = handshake(client, make_server(), "client") + made
        assert client.resumed == (resumed and i > 0)
        session = client.obj.session
        if i:
            total += spent
    return total / n


def _rustls_client_run(make_server, resumed: bool, n: int) -> float:
    cfg = _native.TlsClientConfig(False)
    total = 0.0
    for i in range(n + 1):
        if not resumed:
            cfg = _native.TlsClientConfig(False)  # no session to offer (made outside the timing)
        t = time.thread_time()
        client = RustlsEnd(cfg.connect("mx.test"))
        made = time.thread_time() - t
        spent = handshake(client, make_server(), "client") + made
        assert client.resumed == (resumed and i > 0)
        if i:
            total += spent
    return total / n


def bench_records(cert: str, key: str, n: int, rounds: int) -> dict:
    """µs to encrypt a message on one side and decrypt it on the other, per size."""
    pem_cert, pem_key = Path(cert).read_bytes(), Path(key).read_bytes()
    pairs = {
        "OpenSSL": lambda: (OpenSSLEnd(openssl_client_ctx(), False), OpenSSLEnd(openssl_server_ctx(cert, key), True)),
        "rustls": lambda: (
            RustlsEnd(_native.TlsClientConfig(False).connect("mx.test")),
            RustlsEnd(_native.TlsServerConfig(pem_cert, pem_key, "TLSv1.2", SECRET, 3600.0).accept()),
        ),
    }
    out = {}
    for name, make in pairs.items():
        client, server = make()
        handshake(client, server, "server")
        for size in (1024, 65536):
            msg = os.urandom(size)
            count = max(50, n * 1024 // size)

            got = [_records(client, server, msg, count) for _ in range(rounds)]
            out[f"{name} {size // 1024} KiB"] = round(statistics.median(got) * 1e6, 2)
    return out


def _records(client, server, msg: bytes, count: int) -> float:
    t = time.thread_time()
    for _ in range(count):
        plain, _ = server.step(client.send(msg))
        assert len(plain) == len(msg)
    return (time.thread_time() - t) / count


def markdown(res: dict) -> str:
    lines = ["### Handshakes, in process (µs of the measured side's CPU per handshake)", "",
             "| side: engine | full | resumed |", "|---|---:|---:|"]
    for name, v in res["handshakes"].items():
        lines.append(f"| {name} | {v['full']} | {v['resumed']} |")
    lines += ["", "### Record layer, in process (µs to encrypt and decrypt one message)", "",
              "| engine, size | µs |", "|---|---:|"]
    for name, v in res["records"].items():
        lines.append(f"| {name} | {v} |")
    if "transport" in res:
        lines += ["", "### uvloop server over loopback (server process CPU, µs per message)", "",
                  "| transport | kept connection | one connection per message |", "|---|---:|---:|"]
        for name, v in res["transport"].items():
            lines.append(f"| {name} | {v['kept']} | {v['per_connection']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cert", required=True, help="PEM certificate (python -m mta tls selfsigned)")
    ap.add_argument("--key", required=True, help="its PEM key")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per figure; the median is reported")
    ap.add_argument("--handshakes", type=int, default=200, help="handshakes per round")
    ap.add_argument("--records", type=int, default=2000, help="1 KiB messages per record round (64 KiB: 1/64 as many)")
    ap.add_argument("--messages", type=int, default=2000, help="messages per loopback round (kept connection)")
    ap.add_argument("--connections", type=int, default=300, help="connections per loopback round (one message each)")
    ap.add_argument("--skip-transport", action="store_true", help="in-process figures only")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--md", help="write the markdown tables here (else printed)")
    a = ap.parse_args(argv)
    res = {
        "openssl": ssl.OPENSSL_VERSION,
        "python": sys.version.split()[0],
        "handshakes": bench_handshakes(a.cert, a.key, a.handshakes, a.rounds),
        "records": bench_records(a.cert, a.key, a.records, a.rounds),
    }
    if not a.skip_transport:
        from tls_loopback import bench_transport  # benches/ is this script's directory

        res["transport"] = bench_transport(a.cert, a.key, a.messages, a.connections, a.rounds)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)
    md = markdown(res)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
