"""CPU per DKIM signature (issue 21): `_native.dkim_sign` on the bench messages (1 KiB, 64 KiB)
with RSA-2048 as the server signs (OpenSSL's RSA through mta.policy.dkim's sign_digest), with
the extension's own RSA (RustCrypto) and with Ed25519, next to the bare signing operation of
the same key through `cryptography` (OpenSSL) on a 32-byte digest: what signing costs beyond
the public-key operation itself. CPU time of this thread (time.thread_time), median of runs.

  PYTHONPATH=/tmp/mta-dkim/python python benches/dkim_cost.py [--runs 7] [--calls 200] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from mta import _native
from mta.bench.payload import build_message
from mta.policy import dkim as signing

DOMAIN = "example.test"  # the bench messages are From: <from@example.test> (mta.bench defaults)
SIZES = (1024, 65536)


def keys() -> dict[str, tuple[object, bytes, object]]:
    """{label: (the cryptography key, its PEM, sign_digest for DkimSigner)}: one key per
    algorithm for both sides; the RSA key twice, signed by OpenSSL (as mta.policy.dkim
    makes its signers, when it can) and by the extension's own RSA."""
    out = {}
    r = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = r.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                          serialization.NoEncryption())
    if hasattr(signing, "openssl_rsa"):
        out["rsa-2048, OpenSSL (the server's)"] = (r, pem, signing.openssl_rsa(pem))
    out["rsa-2048, RustCrypto"] = (r, pem, None)
    e = ed25519.Ed25519PrivateKey.generate()
    out["ed25519"] = (e, e.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), None)
    return out


def per_call_us(fn, calls: int, runs: int) -> tuple[float, float, float]:
    """(median, min, max) of the thread's CPU µs per call over `runs` runs of `calls` calls."""
    fn()  # first call outside the clock (lazy tables, allocator)
    out = []
    for _ in range(runs):
        t0 = time.thread_time()
        for _ in range(calls):
            fn()
        out.append((time.thread_time() - t0) * 1e6 / calls)
    return statistics.median(out), min(out), max(out)


def measure(runs: int, calls: int) -> list[dict]:
    rows = []
    digest = hashlib.sha256(b"the canonicalized header fields").digest()
    for alg, (key, pem, sign_digest) in keys().items():
        extra = {"sign_digest": sign_digest} if sign_digest else {}
        signer = _native.DkimSigner(DOMAIN, "bench", _native.DkimKey(pem), **extra)
        if alg.startswith("rsa"):
            def bare(k=key):  # what a DKIM signer must do at least: one PKCS#1 v1.5 signature
                k.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        else:
            def bare(k=key):  # RFC 8463: Ed25519 signs the 32-byte SHA-256 of the header data
                k.sign(digest)
        n = max(20, calls // 4) if alg.startswith("rsa") else calls  # RSA is 10-50x slower
        bare_us = per_call_us(bare, n, runs)
        for size in SIZES:
            msg = build_message(size, f"from@{DOMAIN}", "to@example.test", 1)
            cut = msg.index(b"\r\n\r\n") + 2
            block, body = msg[:cut], msg[cut + 2:]
            now = int(time.time())
            fields = _native.dkim_sign(block, body, [signer], now)
            assert fields and fields[0].startswith(b"DKIM-Signature:"), fields

            def sign(block=block, body=body, now=now, signer=signer):
                _native.dkim_sign(block, body, [signer], now)

            def body_sha(body=body):  # the floor of the body hash: one SHA-256 pass, no canonicalization
                hashlib.sha256(body).digest()

            med, lo, hi = per_call_us(sign, n, runs)
            rows.append({"algorithm": alg, "size": size, "dkim_sign_us": round(med, 1),
                         "dkim_sign_min_max_us": [round(lo, 1), round(hi, 1)],
                         "openssl_sign_us": round(bare_us[0], 1),
                         "sha256_body_us": round(per_call_us(body_sha, calls, runs)[0], 1),
                         "beyond_openssl_us": round(med - bare_us[0], 1),
                         "ratio_to_openssl": round(med / bare_us[0], 2)})
    return rows


def table(rows: list[dict]) -> str:
    out = [("| key | message | `_native.dkim_sign` µs (min–max) | OpenSSL sign of a digest µs | "
            "SHA-256 of the body µs | beyond OpenSSL µs | × OpenSSL |"), "|---|---|---|---|---|---|---|"]
    for r in rows:
        lo, hi = r["dkim_sign_min_max_us"]
        out.append(f"| {r['algorithm']} | {r['size'] // 1024} KiB | {r['dkim_sign_us']:,.1f} ({lo:,.1f}–{hi:,.1f}) "
                   f"| {r['openssl_sign_us']:,.1f} | {r['sha256_body_us']:,.1f} | {r['beyond_openssl_us']:+,.1f} "
                   f"| {r['ratio_to_openssl']:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7, help="runs per figure (the median is reported)")
    ap.add_argument("--calls", type=int, default=200, help="calls per run (RSA: a quarter of them)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = measure(a.runs, a.calls)
    print(json.dumps(rows, indent=1) if a.json else table(rows))


if __name__ == "__main__":
    main()
