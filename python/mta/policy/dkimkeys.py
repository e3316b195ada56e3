"""DKIM keys for `mta dkim keygen`: a private key (PEM, written 0600 from the start) and the
public key's TXT record (RFC 6376 3.6.1; Ed25519 as RFC 8463 3). The key file never exists
with wider permissions, and an existing file is never overwritten."""

from __future__ import annotations

import base64
import os
import re
from typing import NamedTuple

ALGORITHMS = ("rsa2048", "rsa4096", "ed25519")
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z")


class KeyFiles(NamedTuple):
    private: str  # DIR/SELECTOR.private
    txt: str  # DIR/SELECTOR.txt
    record: str  # the TXT value, one line: "v=DKIM1; k=rsa; p=..."
    name: str  # where it is published: SELECTOR._domainkey.DOMAIN


def valid_selector(selector: str) -> bool:
    """A selector is one or more DNS labels (RFC 6376 3.1)."""
    return len(selector) <= 253 and _SELECTOR.match(selector) is not None


def generate(algorithm: str) -> tuple[bytes, str]:
    """(private key PEM, TXT record value) for a new key. RSA keys are written as PKCS#1
    ("RSA PRIVATE KEY", what OpenDKIM and dkimpy read), Ed25519 as PKCS#8."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
    # Here, not at the top: every `mta` command loads this module for its --algorithm choices,
    # and cryptography takes ~20 ms to import.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return pem, f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    key = rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[3:]))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"


def write(out_dir: str, domain: str, selector: str, algorithm: str) -> KeyFiles:
    """Make a key and write OUT/SELECTOR.private (0600) and OUT/SELECTOR.txt. Raises
    ValueError for a bad selector or algorithm, FileExistsError rather than overwrite."""
    if not valid_selector(selector):
        raise ValueError(f"selector {selector!r} is not a DNS label (letters, digits, hyphens; dots between labels)")
    pem, record = generate(algorithm)
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    private = os.path.join(out_dir, f"{selector}.private")
    txt = os.path.join(out_dir, f"{selector}.txt")
    for path in (private, txt):
        if os.path.exists(path):
            raise FileExistsError(f"{path} exists: not overwritten (remove it, or choose another selector)")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    with open(txt, "w") as f:
        f.write(record + "\n")
    return KeyFiles(private, txt, record, f"{selector}._domainkey.{domain.rstrip('.').lower()}")


def zone_line(files: KeyFiles) -> str:
    """The record as a zone file writes it: the value split into quoted strings of at most
    255 octets (RFC 1035 3.3.14), which DKIM verifiers join again."""
    value = files.record
    parts = [value[i:i + 255] for i in range(0, len(value), 255)]
    return f'{files.name}. IN TXT ( {" ".join(chr(34) + p + chr(34) for p in parts)} )'
