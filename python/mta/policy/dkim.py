"""DKIM signing, the chain's last entry: after the plugins' edits and before the message is
made durable, with the keys of its From: domain. Invariant: a message meant to be signed is
never stored unsigned unless `dkim.on_key_error = "send-unsigned"` says so."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mta import _native
from mta.config.dkim import SignSpec
from mta.errors import ConfigError
from mta.plugin import Defer
from mta.policy.chain import Entry
from mta.policy.dmarc import author_domain

log = logging.getLogger("mta.dkim")

SIGN_FAILED = Defer(451, "4.7.0", "DKIM signing failed, try again later")
# An RSA signature costs a few hundred microseconds: made off the event loop (the GIL is
# released), so other sessions go on and a second core can sign; Ed25519 is signed in place.
_POOL_SIZE = max(2, os.cpu_count() or 2)


def load_key(spec: SignSpec) -> tuple[Any, Any]:
    """(the `_native.DkimKey` of one [[dkim.sign]] table, the OpenSSL signing operation for
    an RSA key or None); ValueError naming what is wrong."""
    try:
        with open(spec.key, "rb") as f:
            pem = f.read(1 << 20)
    except OSError as e:
        raise ValueError(f"cannot read the key file: {e.strerror or e}") from e
    try:
        key = _native.DkimKey(pem)
    except ValueError as e:
        raise ValueError(f"not a usable DKIM private key: {e}") from e
    return key, (openssl_rsa(pem) if key.algorithm == "rsa-sha256" else None)


def openssl_rsa(pem: bytes):
    """RSASSA-PKCS1-v1_5 over a SHA-256 digest by OpenSSL (the `cryptography` package, blinded,
    the GIL released): 5-7 times faster than the pure-Rust RSA, the rest stays in Rust."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    private = serialization.load_pem_private_key(pem, None)
    pad, prehashed = padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())

    def sign_digest(digest: bytes) -> bytes:
        return private.sign(digest, pad, prehashed)

    return sign_digest


def openssl_rsa_verify(key: Any):
    """The check of an RSASSA-PKCS1-v1_5 signature over a SHA-256 digest by OpenSSL for the
    RSA key of a `_native.DkimPublicKey` (its `rsa_spki`): about 12 times faster than the
    pure-Rust check. None for a key that is not RSA."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    spki = key.rsa_spki
    if spki is None:
        return None
    public = serialization.load_der_public_key(spki)
    pad, prehashed = padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())

    def verify_digest(digest: bytes, signature: bytes) -> bool:
        try:
            public.verify(signature, digest, pad, prehashed)
        except InvalidSignature:
            return False
        return True

    return verify_digest


class Keyring:
    """The signers of each configured domain, and which apply to a message."""

    def __init__(self, signers: dict[str, list[Any]], *, default_domain: str = "",
                 sign_untrusted: bool = False, send_unsigned: bool = False):
        self.signers = signers  # domain -> [DkimSigner], in config order
        self.default_domain = default_domain
        self.sign_untrusted = sign_untrusted
        self.send_unsigned = send_unsigned

    @classmethod
    def from_config(cls, dcfg) -> Keyring:
        """Read every key of `[[dkim.sign]]`. ConfigError naming each table, key file and
        reason, unless on_key_error = "send-unsigned" (then logged, and the key skipped)."""
        signers: dict[str, list[Any]] = {}
        problems = []
        send_unsigned = dcfg.on_key_error == "send-unsigned"
        for i, spec in enumerate(dcfg.sign):
            try:
                key, sign_digest = load_key(spec)
                signer = _native.DkimSigner(spec.domain, spec.selector, key,
                                            list(spec.headers) if spec.headers else None,
                                            spec.canonicalization,
                                            int(spec.expire) if spec.expire is not None else None,
                                            sign_digest=sign_digest)
            except ValueError as e:
                problems.append(f"dkim.sign[{i}] {spec.label}: {e}")
                continue
            signers.setdefault(spec.domain, []).append(signer)
        if problems and not send_unsigned:
            raise ConfigError(problems)
        for p in problems:
            log.error("%s; mail for this key goes unsigned (dkim.on_key_error = send-unsigned)", p)
        return cls(signers, default_domain=dcfg.default_domain.lower().rstrip("."),
                   sign_untrusted=dcfg.sign_untrusted, send_unsigned=send_unsigned)

    def choose(self, from_domain: str | None, trusted: bool, asked: Any = None) -> list[Any] | None:
        """The signers for a message: those a plugin asked for in `tx.notes["dkim"]`, else
        those of its From: domain or the nearest parent, else (trusted mail) the default
        domain's. [] when it is not to be signed; None when a plugin asked for a domain or
        selector that has no key."""
        if asked is not None:
            return self._asked(asked)
        if not trusted and not self.sign_untrusted:
            return []
        if from_domain:
            labels = from_domain.lower().rstrip(".").split(".")
            for i in range(len(labels) - 1):
                found = self.signers.get(".".join(labels[i:]))
                if found:
                    return found
        if trusted and self.default_domain:
            return self.signers.get(self.default_domain, [])
        return []

    def _asked(self, asked: Any) -> list[Any] | None:
        if asked is False or (isinstance(asked, dict) and asked.get("sign") is False):
            return []
        if not isinstance(asked, dict) or not isinstance(asked.get("domain"), str):
            return None
        found = self.signers.get(asked["domain"].lower().rstrip("."), [])
        selector = asked.get("selector")
        if selector is not None:
            found = [s for s in found if s.selector.lower() == str(selector).lower()]
        return found or None


def entry(keyring: Keyring) -> Entry:
    """The signer as the chain's last on_message entry (after the plugins' edits)."""
    pool: list[ThreadPoolExecutor] = []  # made on first RSA signature

    def on_message(tx, msg):
        conn = tx.conn
        asked = tx.notes.get("dkim") if tx.notes else None
        trusted = conn is not None and (conn.trusted or conn.auth_user is not None)
        if asked is None and not trusted and not keyring.sign_untrusted:
            return None
        from_domain, _why = author_domain(msg.headers.get_all("From"))
        signers = keyring.choose(from_domain, trusted, asked)
        if signers is None:
            log.error("message %s: tx.notes[\"dkim\"] = %r names no configured key", getattr(tx, "queue_id", None), asked)
            return None if keyring.send_unsigned else SIGN_FAILED
        if not signers:
            return None
        block, body = msg.signing_input()
        now = int(time.time())
        if all(s.algorithm == "ed25519-sha256" for s in signers):
            return _signed(msg, tx, block, body, signers, now)
        if not pool:
            pool.append(ThreadPoolExecutor(_POOL_SIZE, thread_name_prefix="dkim"))
        return _sign_off_loop(pool[0], msg, tx, block, body, signers, now)

    def _signed(msg, tx, block, body, signers, now):
        try:
            return _added(msg, _native.dkim_sign(block, body, signers, now))
        except Exception as e:  # noqa: BLE001 - a key or message the signer refuses
            return _failure(tx, e)

    async def _sign_off_loop(executor, msg, tx, block, body, signers, now):
        try:
            fields = await asyncio.get_running_loop().run_in_executor(
                executor, _native.dkim_sign, block, body, signers, now)
        except Exception as e:  # noqa: BLE001
            return _failure(tx, e)
        return _added(msg, fields)

    def _added(msg, fields):
        for f in fields:
            msg.add_trace(f)

    def _failure(tx, e: Exception):
        log.error("DKIM signing of %s failed: %s", getattr(tx, "queue_id", None), e)
        return None if keyring.send_unsigned else SIGN_FAILED

    def stop():
        if pool:
            pool[0].shutdown(wait=False)

    return Entry("dkim_sign", {"on_message": on_message}, module="mta.policy.dkim", builtin=True, stop=stop)
