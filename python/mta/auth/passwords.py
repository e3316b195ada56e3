"""Password hashes for the user file: $scrypt$n=16384,r=8,p=1$<salt b64>$<hash b64>.
Invariants: compared in constant time; slow on purpose (call off the event loop);
a hand-edited hash can never make one check cost gigabytes or minutes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 16384, 8, 1  # ~16 MiB and ~50 ms per verification
_SALT_LEN, _DK_LEN = 16, 32
_HASH_RE = re.compile(r"\$scrypt\$n=(\d+),r=(\d+),p=(\d+)\$([A-Za-z0-9+/]+={0,2})\$([A-Za-z0-9+/]+={0,2})")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    text = text.rstrip("=")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=256 * r * n + (1 << 20))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """A new salted hash for the user file (slow on purpose: call off the event loop)."""
    salt = secrets.token_bytes(_SALT_LEN)
    dk = _scrypt(password.encode("utf-8"), salt, n, r, p, _DK_LEN)
    return f"$scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(dk)}"


def parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    """(n, r, p, salt, hash) of a well-formed hash within the cost bounds, else None."""
    m = _HASH_RE.fullmatch(encoded)
    if m is None:
        return None
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    # Bounds: a hand-edited file must not make one login cost gigabytes or minutes.
    if not (2 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
        return None
    try:
        salt, dk = _unb64(m[4]), _unb64(m[5])
    except (binascii.Error, ValueError):
        return None
    if not 8 <= len(salt) <= 64 or not 16 <= len(dk) <= 64:
        return None
    return n, r, p, salt, dk


def verify_password(password: str, encoded: str) -> bool:
    """Constant-time check of `password` against a stored hash; False for a malformed hash."""
    parsed = parse_hash(encoded)
    if parsed is None:
        return False
    n, r, p, salt, expected = parsed
    try:
        got = _scrypt(password.encode("utf-8", "surrogatepass"), salt, n, r, p, len(expected))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


# Verified when the user is unknown, so that "no such user" takes as long as
# "wrong password" (no user enumeration by timing).
DUMMY_HASH = f"$scrypt$n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}${_b64(bytes(16))}${_b64(bytes(32))}"
