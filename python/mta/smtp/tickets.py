"""TLS session-ticket keys shared by the workers and rotated: derived from one secret and the
epoch floor(now / rotation); tickets are sealed with the current epoch's key and opened with the
current or the previous one, anything else gets a full handshake. Never breaks a handshake."""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import logging
import os
import ssl
import struct
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

log = logging.getLogger("mta.tls")

SECRET_BYTES = 32
_IV_BYTES = 16  # EVP_MAX_IV_LENGTH; AES-256-CBC uses all 16
_secret: bytes | None = None


def process_secret() -> bytes:
    """This process's ticket secret, made on first use. The supervisor asks for it before it
    forks, so every worker (a respawned one too) inherits the same; one process alone makes its own."""
    global _secret
    if _secret is None:
        _secret = os.urandom(SECRET_BYTES)
    return _secret


class Key(NamedTuple):
    """One epoch's ticket key: the name in the ticket, its HMAC-SHA256 key, its AES-256 key."""

    name: bytes  # 16
    hmac: bytes  # 32
    aes: bytes  # 32


def derive(secret: bytes, epoch: int) -> Key:
    """The key of `epoch`: three HMAC-SHA256 outputs of the secret, one per use, so that the
    public name tells nothing about the other two."""
    tail = struct.pack(">q", epoch)

    def part(label: bytes) -> bytes:
        return hmac.new(secret, b"mta tls ticket " + label + tail, hashlib.sha256).digest()

    return Key(part(b"name")[:16], part(b"hmac"), part(b"aes"))


class TicketKeys:
    """The keys of one secret and rotation period. `clock`: seconds since the epoch (tests
    inject theirs). A ticket sealed in epoch e opens in e and, renewed, in e + 1."""

    def __init__(self, secret: bytes, rotation: float, clock: Callable[[], float] = time.time):
        if len(secret) < 16 or rotation <= 0:
            raise ValueError("a ticket secret of at least 16 bytes and a positive rotation")
        self.secret, self.rotation, self.clock = bytes(secret), float(rotation), clock
        self._keys: dict[int, Key] = {}
        self.callback = None  # the ctypes function OpenSSL calls (made by install(), kept here)

    def epoch(self) -> int:
        return int(self.clock() // self.rotation)

    def key(self, epoch: int) -> Key:
        k = self._keys.get(epoch)
        if k is None:
            if len(self._keys) > 4:  # only the current and previous epochs are ever asked again
                self._keys = {e: v for e, v in self._keys.items() if e >= epoch - 1}
            k = self._keys[epoch] = derive(self.secret, epoch)
        return k

    def sealing(self) -> Key:
        """The key a new ticket is sealed with."""
        return self.key(self.epoch())

    def opening(self, name: bytes) -> tuple[Key, bool] | None:
        """(key, renew) for a ticket whose key name is `name`; None: refused (a full handshake)."""
        now = self.epoch()
        k = self.key(now)
        if name == k.name:
            return k, False
        k = self.key(now - 1)
        if name == k.name:
            return k, True  # still good: the client gets a ticket of the current key
        return None


_shared: dict[float, TicketKeys] = {}


def shared(rotation: float) -> TicketKeys:
    """The process's keys for `rotation` (from process_secret()): every context built with the
    same rotation shares them, so a reload keeps the tickets already handed out."""
    keys = _shared.get(rotation)
    if keys is None:
        keys = _shared[rotation] = TicketKeys(process_secret(), rotation)
    return keys


# --- OpenSSL through ctypes -------------------------------------------------------
# Python's ssl has no ticket-key API; the libssl its _ssl module is linked to has
# SSL_CTX_set_tlsext_ticket_key_evp_cb (OpenSSL 3.0), chosen over the HMAC_CTX callback
# because that one is deprecated in 3.0 (and gone from builds without deprecated APIs).

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
_CTRL_SET_SESS_CACHE_MODE = 44
_CTRL_GET_MIN_PROTO_VERSION = 130
_OCTET_STRING, _UTF8_STRING = 5, 4  # OSSL_PARAM data types
_UNMODIFIED = ctypes.c_size_t(-1).value
_TLS1_3 = 0x0304


class _Param(ctypes.Structure):
    """OSSL_PARAM (openssl/core.h)."""

    _fields_ = [("key", ctypes.c_char_p), ("data_type", ctypes.c_uint), ("data", ctypes.c_void_p),
                ("data_size", ctypes.c_size_t), ("return_size", ctypes.c_size_t)]


class _OpenSSL:
    """The few libssl/libcrypto functions used, typed; raises OSError/AttributeError if absent."""

    def __init__(self):
        lib = ctypes.CDLL(ssl._ssl.__file__)  # dlsym through it finds libssl's and libcrypto's symbols
        vp, c_int, c_long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long

        def fn(name, res, *args):
            f = getattr(lib, name)
            f.restype, f.argtypes = res, list(args)
            return f

        self.set_cb = fn("SSL_CTX_set_tlsext_ticket_key_evp_cb", c_int, vp, _CALLBACK)
        self.get_options = fn("SSL_CTX_get_options", ctypes.c_uint64, vp)
        self.ctrl = fn("SSL_CTX_ctrl", c_long, vp, c_int, c_long, vp)
        self.get_num_tickets = fn("SSL_CTX_get_num_tickets", ctypes.c_size_t, vp)
        self.set_timeout = fn("SSL_CTX_set_timeout", c_long, vp, c_long)
        self.version = fn("SSL_version", c_int, vp)
        self.rand = fn("RAND_bytes", c_int, vp, c_int)
        self.encrypt_init = fn("EVP_EncryptInit_ex", c_int, vp, vp, vp, ctypes.c_char_p, vp)
        self.decrypt_init = fn("EVP_DecryptInit_ex", c_int, vp, vp, vp, ctypes.c_char_p, vp)
        self.mac_params = fn("EVP_MAC_CTX_set_params", c_int, vp, vp)
        # Fetched once: the legacy EVP_aes_256_cbc() would be fetched again at every init.
        self.cipher = fn("EVP_CIPHER_fetch", vp, vp, ctypes.c_char_p, ctypes.c_char_p)(None, b"AES-256-CBC", None)
        if not self.cipher:
            raise OSError("EVP_CIPHER_fetch(AES-256-CBC) failed")
        self._params: dict[bytes, tuple] = {}  # HMAC key -> (OSSL_PARAM[3], the buffer it points to)

    def params(self, hmac_key: bytes):
        """The EVP_MAC parameters (HMAC-SHA256 with this key), made once per key."""
        got = self._params.get(hmac_key)
        if got is None:
            if len(self._params) > 4:
                self._params.clear()
            buf = ctypes.create_string_buffer(hmac_key, len(hmac_key))
            arr = (_Param * 3)(
                _Param(b"key", _OCTET_STRING, ctypes.cast(buf, ctypes.c_void_p), len(hmac_key), _UNMODIFIED),
                _Param(b"digest", _UTF8_STRING, ctypes.cast(_SHA256, ctypes.c_void_p), 6, _UNMODIFIED),
                _Param(None, 0, None, 0, 0))
            got = self._params[hmac_key] = (arr, buf)
        return got[0]


_SHA256 = ctypes.create_string_buffer(b"SHA256")
_lib: _OpenSSL | None = None
_lib_error: str | None = None
_kept: list[TicketKeys] = []  # keys whose callback a context holds: alive for the process
_warned = False


def _openssl() -> _OpenSSL | None:
    global _lib, _lib_error
    if _lib is None and _lib_error is None:
        try:
            if sys.implementation.name != "cpython":
                raise OSError(f"not CPython ({sys.implementation.name})")
            _lib = _OpenSSL()
        except (OSError, AttributeError) as e:
            _lib_error = str(e) or type(e).__name__
    return _lib


def _warn(why: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("tls: session tickets stay per worker and per reload (OpenSSL's own key): %s", why)


def _ssl_ctx(lib: _OpenSSL, ctx: ssl.SSLContext) -> int | None:
    """The SSL_CTX* of `ctx` (the first field after PyObject_HEAD of CPython's PySSLContext),
    or None unless OpenSSL reads through it what Python says of the context."""
    ptr = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not ptr:
        return None
    want_min = int(ctx.minimum_version)
    if lib.get_options(ptr) != int(ctx.options) or lib.get_num_tickets(ptr) != ctx.num_tickets:
        return None
    if lib.ctrl(ptr, _CTRL_GET_MIN_PROTO_VERSION, 0, None) != max(0, want_min):
        return None
    return ptr


def install(ctx: ssl.SSLContext, keys: TicketKeys) -> bool:
    """Seal and open `ctx`'s session tickets with `keys`, and make its sessions last one
    rotation period (the ticket lifetime hint too), so a client never offers a ticket we
    would refuse. False (one warning per process): OpenSSL's own per-context key stays."""
    lib = _openssl()
    if lib is None:
        _warn(f"libssl not usable through ctypes: {_lib_error}")
        return False
    ptr = _ssl_ctx(lib, ctx)
    if ptr is None:
        _warn("the SSL_CTX of Python's SSLContext could not be verified")
        return False
    if keys.callback is None:
        keys.callback = _CALLBACK(_callback(lib, keys))
    if lib.set_cb(ptr, keys.callback) != 1:
        _warn("SSL_CTX_set_tlsext_ticket_key_evp_cb failed")
        return False
    lib.set_timeout(ptr, max(1, int(keys.rotation)))
    if keys not in _kept:
        _kept.append(keys)
    return True


def disable(ctx: ssl.SSLContext) -> None:
    """No resumption at all: no tickets (TLS 1.3 and 1.2) and, where libssl can be reached,
    no session-id cache either (TLS 1.2 would resume from it within one context)."""
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    lib = _openssl()
    ptr = _ssl_ctx(lib, ctx) if lib is not None else None
    if ptr is not None:
        lib.ctrl(ptr, _CTRL_SET_SESS_CACHE_MODE, 0, None)  # SSL_SESS_CACHE_OFF


def _callback(lib: _OpenSSL, keys: TicketKeys):
    """The function OpenSSL calls to seal (enc=1) or open (enc=0) a ticket. It answers 0 on
    any trouble (no ticket; not resumed), never -1, which would fail the handshake."""
    memmove, string_at = ctypes.memmove, ctypes.string_at

    def ticket_key(ssl_, key_name, iv, cctx, hctx, enc) -> int:
        try:
            if enc:
                k = keys.sealing()
                if lib.rand(iv, _IV_BYTES) != 1:
                    return 0
                memmove(key_name, k.name, 16)
                if lib.encrypt_init(cctx, lib.cipher, None, k.aes, iv) != 1:
                    return 0
                return 1 if lib.mac_params(hctx, lib.params(k.hmac)) == 1 else 0
            found = keys.opening(string_at(key_name, 16))
            if found is None:
                return 0
            k, renew = found
            if lib.mac_params(hctx, lib.params(k.hmac)) != 1:
                return 0
            if lib.decrypt_init(cctx, lib.cipher, None, k.aes, iv) != 1:
                return 0
            # 2: a new ticket after this handshake. TLS 1.3 always gets one, as OpenSSL does with
            # its own key: a client should not offer a ticket twice (RFC 8446 C.4), and without
            # it the server sends nothing after the client's Finished, so a client with Nagle on
            # waits a delayed ACK (40 ms) to send its next command.
            return 2 if renew or lib.version(ssl_) >= _TLS1_3 else 1
        except BaseException:  # nothing can be raised into OpenSSL: no ticket instead
            log.exception("tls: session ticket callback failed")
            return 0

    return ticket_key
