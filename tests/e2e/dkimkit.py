"""What the authentication tests share: keys made independently of mta (cryptography), dkimpy
as the reference signer and verifier (keys served from a dict), and the DNS server on
127.0.0.153:53 that OpenDKIM needs (skip, naming what failed, when it cannot be had).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dnsserver import DNSServer
from opendkim import OpenDKIM, missing

PORT53_HOST = "127.0.0.153"  # a loopback address of its own: nothing else serves DNS there


@dataclass
class Key:
    """A DKIM key pair: the PEM file, the TXT record, and what dkimpy signs with."""

    domain: str
    selector: str
    path: Path
    record: str  # "v=DKIM1; k=...; p=..." (one line, unquoted)

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def algorithm(self) -> str:
        return "ed25519-sha256" if "k=ed25519" in self.record else "rsa-sha256"

    def dkimpy_private(self) -> bytes:
        """dkimpy takes RSA as PEM but Ed25519 as the base64 of the 32-octet seed."""
        pem = self.path.read_bytes()
        if self.algorithm == "rsa-sha256":
            return pem
        key = serialization.load_pem_private_key(pem, None)
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return base64.b64encode(raw)


def make_key(directory: Path, domain: str, selector: str, algorithm: str = "rsa2048") -> Key:
    """A key made with cryptography, not with mta: for the independent signers."""
    directory.mkdir(parents=True, exist_ok=True)
    if algorithm == "ed25519":
        priv = ed25519.Ed25519PrivateKey.generate()
        pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
        raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        record = f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    else:
        priv = rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm.removeprefix("rsa")))
        pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
        der = priv.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        record = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    path = directory / f"{selector}.{domain}.private"
    path.write_bytes(pem)
    path.chmod(0o600)
    return Key(domain, selector, path, record)


def mta_key(directory: Path, domain: str, selector: str) -> Key:
    """A key that `mta dkim keygen --out directory` wrote (SELECTOR.private, SELECTOR.txt)."""
    return Key(domain, selector, directory / f"{selector}.private",
               (directory / f"{selector}.txt").read_text().strip())


# -- dkimpy ------------------------------------------------------------------------

def dnsfunc(keys: list[Key]):
    """dkimpy's key lookup, answered from the keys' records (no DNS at all)."""
    table = {k.name.lower(): k.record.encode() for k in keys}

    def lookup(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return table.get(name.rstrip(".").lower(), b"")

    return lookup


def dkimpy_sign(message: bytes, key: Key, *, canonicalization: str = "relaxed/relaxed",
                headers: list[bytes] | None = None) -> bytes:
    c = canonicalization.split("/") + ["simple"]
    sig = dkim.sign(message, key.selector.encode(), key.domain.encode(), key.dkimpy_private(),
                    canonicalize=(c[0].encode(), c[1].encode()), include_headers=headers,
                    signature_algorithm=key.algorithm.encode())
    return sig + message


def dkimpy_results(message: bytes, keys: list[Key]) -> list[tuple[bytes, bytes, bool]]:
    """(d=, s=, verified) for every DKIM-Signature field, top first."""
    d = dkim.DKIM(message)
    lookup = dnsfunc(keys)
    out = []
    count = sum(1 for name, _v in d.headers if name.lower() == b"dkim-signature")
    for i in range(count):
        try:
            ok = bool(d.verify(idx=i, dnsfunc=lookup))
        except dkim.DKIMException:  # a body hash mismatch raises instead of returning False
            ok = False
        out.append((d.domain, d.selector, ok))
    return out


# -- the port-53 DNS server and OpenDKIM ------------------------------------------------

def start_port53(zone: dict | None = None) -> DNSServer:
    """The DNS server OpenDKIM can ask (127.0.0.153:53), or a skip naming what failed."""
    srv = port53_or_reason(zone)
    if isinstance(srv, str):
        pytest.skip(srv)
    return srv


def port53_or_reason(zone: dict | None = None) -> DNSServer | str:
    """The running DNS server on 127.0.0.153:53, or why OpenDKIM cannot be used here."""
    reason = missing()
    if reason:
        return reason
    try:
        return DNSServer(zone, host=PORT53_HOST, port=53).start()
    except OSError as e:
        return f"cannot serve DNS on {PORT53_HOST}:53 for OpenDKIM (it asks port 53 only): {e}"


class Unavailable:
    """Stands in for OpenDKIM where it cannot run: the test's dkimpy checks run, and its
    first use of OpenDKIM skips the rest, naming why."""

    def __init__(self, reason: str):
        self.reason = reason

    def __getattr__(self, name: str):
        pytest.skip(self.reason)


def opendkim_for(dns: DNSServer, workdir: Path) -> OpenDKIM:
    return OpenDKIM(workdir, nameserver=dns.host, dns_timeout=2)


def publish(dns: DNSServer, *keys: Key) -> None:
    for k in keys:
        dns.add(k.name, [("TXT", k.record)])


# -- reading what arrived ----------------------------------------------------------------

def fields(message: bytes) -> list[tuple[str, str]]:
    """The header fields (name, value unfolded, CRLFs gone) in order, top first."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "surrogateescape")
    out: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + line)
        elif ":" in line:
            name, value = line.split(":", 1)
            out.append((name.strip(), value.strip()))
    return out


def sig_tags(value: str) -> dict[str, str]:
    """A DKIM-Signature's tags, whitespace removed from every value."""
    tags = {}
    for part in value.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            tags[k.strip()] = "".join(v.split())
    return tags


def authres(value: str) -> tuple[str, list[dict]]:
    """An Authentication-Results value (RFC 8601) -> (authserv-id, [{"method", "result",
    "reason", "comments", "props"}]): split at the ";" outside comments and quotes."""
    parts, comments, buf, depth, quoted = [], [[]], [], 0, False
    for ch in value:
        if quoted:
            buf.append(ch)
            quoted = ch != '"'
        elif depth:
            depth += (ch == "(") - (ch == ")")
            if depth:
                comments[-1].append(ch)
            else:
                comments[-1].append(" ")
        elif ch == "(":
            depth = 1
        elif ch == ";":
            parts.append("".join(buf))
            buf = []
            comments.append([])
        else:
            quoted = ch == '"'
            buf.append(ch)
    parts.append("".join(buf))
    authserv = parts[0].split()[0] if parts[0].split() else ""
    out = []
    for text, com in zip(parts[1:], comments[1:]):
        reason = re.search(r'\breason\s*=\s*("[^"]*"|\S+)', text)
        if reason:
            text = text[:reason.start()] + text[reason.end():]
        tokens = text.split()
        if not tokens or "=" not in tokens[0]:
            continue
        method, result = tokens[0].split("=", 1)
        props = dict(t.split("=", 1) for t in tokens[1:] if "=" in t)
        out.append({"method": method.lower(), "result": result.lower(), "reason": reason.group(1).strip('"') if reason else "",
                    "comments": "".join(com).strip(), "props": props})
    return authserv, out
