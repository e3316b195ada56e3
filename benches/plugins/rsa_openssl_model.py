"""A model, not a signer: what mta's RSA-2048 signing would cost per message if its RSA
operation were OpenSSL's (`cryptography`, GIL released) instead of the rsa crate's. Each
message gets what mta.policy.dkim does for RSA (signing input, a thread of a pool of
max(2, CPUs), a field on top), with `_native.dkim_sign` run with an Ed25519 key (the
canonicalisation and hashes, ~25 µs) plus one OpenSSL RSA-2048 signature of a digest; the
field stored is the Ed25519 one (256 octets shorter than an RSA-2048 one). Benchmarks only:
benches/mta-bench-dkim-model.toml, keys from benches/dkim-keys.sh."""

import asyncio
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, utils
from mta import _native

KEYS = os.environ.get("MTA_BENCH_DKIM_KEYS", "/tmp/mta-bench-dkim")
with open(os.path.join(KEYS, "bench-rsa.private"), "rb") as f:
    _RSA = serialization.load_pem_private_key(f.read(), password=None)
with open(os.path.join(KEYS, "bench-ed.private"), "rb") as f:
    _ED = _native.DkimSigner("example.test", "bench-ed", _native.DkimKey(f.read()))
_POOL = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="dkim-model")


def _sign(block: bytes, body, now: int) -> list[bytes]:
    fields = _native.dkim_sign(block, body, [_ED], now)
    _RSA.sign(hashlib.sha256(fields[0]).digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    return fields


async def on_message(tx, msg):
    block, body = msg.signing_input()
    fields = await asyncio.get_running_loop().run_in_executor(_POOL, _sign, block, body, int(time.time()))
    for field in fields:
        msg.add_trace(field)
