"""In-process TLS costs for benches/tls_cost.py: handshakes over MemoryBIO pairs (each side's
CPU apart), context creation, the handshake's primitives and the record layer. Invariant: the
same contexts mta uses (build_context on a P-256 certificate; the opportunistic CERT_NONE client)."""

from __future__ import annotations

import ssl
import statistics
import time

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from mta.bench.payload import build_message
from mta.config.schema import TlsConfig
from mta.smtp.tls import build_context

clock = time.thread_time
SSL_READ_MAX_SIZE = 256 * 1024  # what uvloop's SSLProtocol asks SSLObject.read for (Protocol apps)


def server_context(cert: str, key: str, num_tickets: int | None = None) -> ssl.SSLContext:
    ctx = build_context(TlsConfig(cert=cert, key=key))
    if num_tickets is not None:
        ctx.num_tickets = num_tickets
    return ctx


def client_context() -> ssl.SSLContext:
    """As mta's opportunistic delivery makes it (delivery/smtp/client.py, tls != required)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def per_call_us(fn, calls: int, rounds: int) -> dict:
    """Median / min / max over rounds of this thread's CPU µs per call."""
    fn()  # outside the clock: lazy tables, allocator
    out = []
    for _ in range(rounds):
        t0 = clock()
        for _ in range(calls):
            fn()
        out.append((clock() - t0) * 1e6 / calls)
    return {"us": med(out), "min": round(min(out), 2), "max": round(max(out), 2)}


# -- handshakes -------------------------------------------------------------------------


class Pair:
    """A client and a server SSLObject joined by four MemoryBIOs; each side's CPU kept apart."""

    def __init__(self, sctx: ssl.SSLContext, cctx: ssl.SSLContext, session=None) -> None:
        self.ci, self.co, self.si, self.so = (ssl.MemoryBIO() for _ in range(4))
        t0 = clock()
        self.c = cctx.wrap_bio(self.ci, self.co, server_side=False, server_hostname=None, session=session)
        t1 = clock()
        self.s = sctx.wrap_bio(self.si, self.so, server_side=True)
        t2 = clock()
        self.tc, self.ts = t1 - t0, t2 - t1

    def _step(self, obj, outb, peer_in) -> tuple[bool, float]:
        t0 = clock()
        try:
            obj.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        dt = clock() - t0
        data = outb.read()
        if data:
            peer_in.write(data)
        return done, dt

    def handshake(self) -> None:
        cdone = sdone = False
        for _ in range(10):
            if not cdone:
                cdone, dt = self._step(self.c, self.co, self.si)
                self.tc += dt
            if not sdone:
                sdone, dt = self._step(self.s, self.so, self.ci)
                self.ts += dt
            if cdone and sdone:
                break
        else:
            raise RuntimeError("handshake did not finish")
        # TLS 1.3: the tickets follow the server's Finished; the client takes them on its next read
        t0 = clock()
        try:
            self.c.read(1)
        except ssl.SSLWantReadError:
            pass
        self.tc += clock() - t0


def handshakes(sctx, cctx, n: int, rounds: int, resume: bool) -> dict:
    """Per handshake: server CPU µs, client CPU µs (object creation and ticket read included)."""
    first = Pair(sctx, cctx)
    first.handshake()
    session = first.c.session if resume else None
    srv, cli, reused = [], [], 0
    for _ in range(rounds):
        ts = tc = 0.0
        for _ in range(n):
            p = Pair(sctx, cctx, session)
            p.handshake()
            ts += p.ts
            tc += p.tc
            reused += p.c.session_reused
        srv.append(ts * 1e6 / n)
        cli.append(tc * 1e6 / n)
    return {"server_us": med(srv), "client_us": med(cli), "resumed_share": round(reused / (n * rounds), 3),
            "version": first.c.version(), "cipher": first.c.cipher()[0]}


# OpenSSL's SSL_OP_ALLOW_NO_DHE_KEX (Python names no constant for it): a TLS 1.3 resumption
# may then skip the X25519 exchange (psk_ke), when both sides allow it.
OP_ALLOW_NO_DHE_KEX = 0x400


def measure_handshakes(cert: str, key: str, n: int, rounds: int) -> list[dict]:
    sctx, cctx = server_context(cert, key), client_context()
    s12, c12 = server_context(cert, key), client_context()
    c12.maximum_version = ssl.TLSVersion.TLSv1_2
    s_nodhe, c_nodhe = server_context(cert, key), client_context()
    s_nodhe.options |= OP_ALLOW_NO_DHE_KEX
    c_nodhe.options |= OP_ALLOW_NO_DHE_KEX
    rows = []
    for label, s, c, resume in (
            ("TLS 1.3 full (server sends 2 tickets: OpenSSL's default)", sctx, cctx, False),
            ("TLS 1.3 full, server sends no tickets (num_tickets = 0)", server_context(cert, key, 0), cctx, False),
            ("TLS 1.3 resumed (session= from a previous connection; psk_dhe_ke: X25519 again)", sctx, cctx, True),
            ("TLS 1.3 resumed, psk_ke (ALLOW_NO_DHE_KEX both sides: no X25519)", s_nodhe, c_nodhe, True),
            ("TLS 1.2 full (ECDHE-ECDSA)", s12, c12, False),
            ("TLS 1.2 resumed (abbreviated, ticket)", s12, c12, True)):
        rows.append({"handshake": label, **handshakes(s, c, n, rounds, resume)})
    return rows


def measure_contexts(cert: str, key: str, rounds: int, calls: int) -> list[dict]:
    return [
        {"op": "ssl.SSLContext(PROTOCOL_TLS_CLIENT), CERT_NONE (opportunistic outbound, per connection today)",
         **per_call_us(client_context, calls, rounds)},
        {"op": "ssl.create_default_context() with the system CAs (verified outbound, per connection today)",
         **per_call_us(ssl.create_default_context, max(3, calls // 10), rounds)},
        {"op": "mta.smtp.tls.build_context (server; start-up and SIGHUP only)",
         **per_call_us(lambda: server_context(cert, key), max(3, calls // 10), rounds)},
        {"op": "SSLContext.wrap_bio (one SSLObject, client side)",
         **per_call_us(lambda: client_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO()), calls, rounds)},
    ]


# -- the handshake's primitives (cryptography: OpenSSL underneath, plus its Python call) ----------


def measure_primitives(rounds: int, calls: int) -> list[dict]:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    pub = ec_key.public_key()
    tbs = b" " * 64 + b"TLS 1.3, server CertificateVerify" + b"\0" + b"h" * 48
    sig = ec_key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    peer = x25519.X25519PrivateKey.generate().public_key()
    prk = b"k" * 48

    def x25519_side():
        k = x25519.X25519PrivateKey.generate()
        k.public_key().public_bytes_raw()
        k.exchange(peer)

    def hkdf_expand():
        HKDFExpand(hashes.SHA384(), 32, b"tls13 key").derive(prk)

    return [
        {"op": "X25519 keygen + exchange (each side, every handshake, resumed too)", **per_call_us(x25519_side, calls, rounds)},
        {"op": "ECDSA P-256 sign (server CertificateVerify, full handshakes)",
         **per_call_us(lambda: ec_key.sign(tbs, ec.ECDSA(hashes.SHA256())), calls, rounds)},
        {"op": "ECDSA P-256 verify (client, full handshakes; done even with CERT_NONE)",
         **per_call_us(lambda: pub.verify(sig, tbs, ec.ECDSA(hashes.SHA256())), calls, rounds)},
        {"op": "HKDF-Expand-Label SHA-384, 32 bytes (~15 per side in the key schedule)",
         **per_call_us(hkdf_expand, calls * 5, rounds)},
    ]


# -- the record layer -------------------------------------------------------------------


def established(cert: str, key: str) -> Pair:
    p = Pair(server_context(cert, key), client_context())
    p.handshake()
    return p


def _one_message(p: Pair, msg: bytes, reader) -> tuple[float, float]:
    t0 = clock()
    p.c.write(msg)
    wire = p.co.read()
    t1 = clock()
    p.si.write(wire)
    got = reader(p.s)
    t2 = clock()
    if got != len(msg):
        raise RuntimeError(f"read {got} of {len(msg)} bytes")
    return t1 - t0, t2 - t1


def _reader(size: int | None):
    if size is None:  # into a buffer: uvloop's path for a BufferedProtocol
        buf = bytearray(SSL_READ_MAX_SIZE)

        def read_into(s) -> int:
            n = 0
            try:
                while True:
                    k = s.read(SSL_READ_MAX_SIZE - n, memoryview(buf)[n:])
                    if not k:
                        return n
                    n += k
            except ssl.SSLWantReadError:
                return n
        return read_into

    def read(s) -> int:
        n = 0
        try:
            while True:
                n += len(s.read(size))
        except ssl.SSLWantReadError:
            return n
    return read


def measure_records(cert: str, key: str, sizes: tuple[int, ...], rounds: int, calls: int) -> list[dict]:
    rows = []
    for size in sizes:
        msg = build_message(size, "from@example.test", "to@example.test", 1, "client.example.test")
        n = max(20, calls * 1024 // size) if size > 1024 else calls
        copy = per_call_us(lambda msg=msg: bytearray(msg), n, rounds)["us"]
        for label, rsize in ((f"read({SSL_READ_MAX_SIZE}): uvloop, asyncio.Protocol (mta's session)", SSL_READ_MAX_SIZE),
                             ("read(16384)", 16384), ("read into a buffer: uvloop, BufferedProtocol", None)):
            p = established(cert, key)
            reader = _reader(rsize)
            _one_message(p, msg, reader)
            ws, rs = [], []
            for _ in range(rounds):
                w = r = 0.0
                for _ in range(n):
                    dw, dr = _one_message(p, msg, reader)
                    w += dw
                    r += dr
                ws.append(w * 1e6 / n)
                rs.append(r * 1e6 / n)
            wr, rd = med(ws), med(rs)
            rows.append({"size": size, "reader": label, "seal_us": wr, "open_us": rd,
                         "seal_MBps": round(size / wr, 1), "open_MBps": round(size / rd, 1), "copy_us": copy,
                         "copy_MBps": round(size / copy, 1) if copy else None})
    return rows


def measure_aead(sizes: tuple[int, ...], rounds: int, calls: int) -> list[dict]:
    aes = AESGCM(AESGCM.generate_key(bit_length=256))
    nonce = b"n" * 12
    data = {s: b"m" * s for s in sizes}
    return [{"op": f"AES-256-GCM encrypt, {s // 1024} KiB (cryptography)",
             **per_call_us(lambda s=s: aes.encrypt(nonce, data[s], None), max(20, calls * 1024 // s), rounds)}
            for s in sizes]
