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
import asyncio
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


# --- through the transports, over loopback -------------------------------------------

MODES = ("kept", "per_connection", "resumed")  # one connection; one each; one each, resuming
MESSAGE = b"x" * 1019 + b"\r\n.\r\n"  # 1 KiB with its end mark


class Relayish(asyncio.Protocol):
    """The server: 220, STARTTLS with the engine under test, then 250 per message, QUIT."""

    def __init__(self, engine: str, tls):
        self.engine, self.tls, self.buf, self.secure = engine, tls, b"", False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"220 mx.test\r\n")

    def data_received(self, data):
        self.buf += data
        if not self.secure and self.buf.startswith(b"STARTTLS\r\n"):
            self.buf = b""
            self.transport.write(b"220 go\r\n")
            self.transport.pause_reading()
            asyncio.get_running_loop().create_task(self.starttls())
            return
        while True:
            if self.buf.startswith(b"QUIT\r\n"):
                self.transport.write(b"221 bye\r\n")
                self.transport.close()
                return
            end = self.buf.find(b"\r\n.\r\n")
            if end < 0:
                return
            self.buf = self.buf[end + 5:]
            self.transport.write(b"250 ok\r\n")

    async def starttls(self):
        loop = asyncio.get_running_loop()
        if self.engine == "OpenSSL (loop.start_tls)":
            self.transport = await loop.start_tls(self.transport, self, self.tls, server_side=True)
        else:
            from mta.smtp.tlstransport import start_tls

            self.transport = await start_tls(loop, self.transport, self, self.tls.accept(), 30.0)
        self.secure = True


class _Resuming(ssl.SSLContext):
    """Offers the last session (loop.start_tls takes none; wrap_bio is where it goes in),
    as mta.delivery.smtp.tlsclient does."""

    last = None

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        return super().wrap_bio(incoming, outgoing, server_side=server_side,
                                server_hostname=server_hostname, session=session or self.last)


async def _client(port: int, sessions: int, per_session: int, tls: int, parallel: int) -> None:
    """tls: 0 plaintext, 1 STARTTLS with full handshakes, 2 resuming the last session."""
    ctx = _Resuming(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    async def session():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        await r.readline()
        if tls:
            w.write(b"STARTTLS\r\n")
            await r.readline()
            await w.start_tls(ctx, server_hostname="mx.test")
        for _ in range(per_session):
            w.write(MESSAGE)
            assert (await r.readline()).startswith(b"250")
        if tls == 2:  # the ticket has come with or before the reply
            obj = w.get_extra_info("ssl_object")
            reused.append(obj.session_reused)
            ctx.last = obj.session
        w.write(b"QUIT\r\n")
        await r.readline()
        w.close()

    async def worker(count):
        for _ in range(count):
            await session()

    reused: list[bool] = []
    share = [sessions // parallel + (i < sessions % parallel) for i in range(parallel)]
    await asyncio.gather(*(worker(c) for c in share if c))
    # Only the workers' first connections (and a few racing them) have no session to offer.
    assert sum(reused) >= len(reused) - 2 * parallel, f"resumed {sum(reused)} of {len(reused)}"


async def _transport_round(engine: str, tls, mode: str, messages: int, connections: int) -> float:
    """Server process CPU (this process) per message while a client process sends them."""
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(lambda: Relayish(engine, tls), "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    sessions, per, parallel = (1, messages, 1) if mode == "kept" else (connections, 1, 4)
    kind = 0 if engine == "plaintext" else 2 if mode == "resumed" else 1
    argv = [sys.executable, __file__, "--client", str(port), str(sessions), str(per), str(kind), str(parallel)]
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE)
    cpu = time.process_time()  # after the fork and exec, which cost this process too
    proc.stdin.write(b"go\n")
    if await proc.wait():
        raise RuntimeError(f"client failed: {engine} {mode}")
    spent = time.process_time() - cpu
    srv.close()
    await srv.wait_closed()
    return spent / (sessions * per)


def bench_transport(cert: str, key: str, messages: int, connections: int, rounds: int) -> dict:
    """µs of server CPU per message: {engine: {mode: x}} (MODES)."""
    import uvloop

    engines = {
        "plaintext": None,
        "OpenSSL (loop.start_tls)": openssl_server_ctx(cert, key),
        "rustls (tlstransport)": _native.TlsServerConfig(Path(cert).read_bytes(), Path(key).read_bytes(),
                                                         "TLSv1.2", SECRET, 3600.0),
    }
    got: dict = {(e, m): [] for e in engines for m in MODES if e != "plaintext" or m != "resumed"}

    async def run():
        for _ in range(rounds):
            for (engine, mode), cell in got.items():
                cell.append(await _transport_round(engine, engines[engine], mode, messages, connections))

    uvloop.run(run())
    out: dict = {}
    for (engine, mode), cell in got.items():
        out.setdefault(engine, {})[mode] = round(statistics.median(cell) * 1e6, 1)
    return out


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
        lines += ["", "### uvloop server over loopback (server process CPU, µs per 1 KiB message)", "",
                  ("| server transport | kept connection | one connection per message "
                   "| the same, resumed |"), "|---|---:|---:|---:|"]
        for name, v in res["transport"].items():
            lines.append(f"| {name} | {v['kept']} | {v['per_connection']} | {v.get('resumed', '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--client"]:  # the loopback client, in its own process
        import uvloop

        port, sessions, per, tls, parallel = (int(x) for x in argv[1:6])
        sys.stdin.readline()  # the server has started its CPU clock
        uvloop.run(_client(port, sessions, per, tls, parallel))
        return 0
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
