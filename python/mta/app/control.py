"""The control channel's protocol and client: a unix socket per spool shard (0600) through which
`mta queue ...` and `mta reload` reach the running server (mta.app.control_server), one bounded JSON
line each way (a page's bytes follow its line); a reply names only changes already durable."""

from __future__ import annotations

import json
import math
import os
import re
import socket
from dataclasses import dataclass

from mta.app.control_pages import ALL_FIELDS, FIELDS, PAGE_OPS, SHAPE_BUCKETS, PageFieldError, page_fields, whole
from mta.config.kinds import domain_name

SOCKET_NAME = "control.sock"
MAX_LINE = 64 * 1024  # bytes in a request line, newline included
MAX_REPLY = 1024 * 1024  # bytes in a reply line (at most MAX_IDS results of bounded size)
MAX_IDS = 1000  # queue ids in one request (the CLI sends more in several requests)
CLIENT_TIMEOUT = 60.0  # the CLI's bound on one request's reply
PING_ENV = "MTA_PING_TIMEOUT"  # seconds (0.1..600) a shard's server has to answer "ping"
DEFAULT_PING_TIMEOUT = 10.0


def ping_timeout() -> float:
    """Seconds a shard's server has to answer "ping" before it counts as not answering (and a
    listing reads its files instead): $MTA_PING_TIMEOUT, else 10; ValueError (without the
    variable's name) when malformed."""
    raw = os.environ.get(PING_ENV, "").strip()
    if not raw:
        return DEFAULT_PING_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 600:
        raise ValueError(f"expected seconds from 0.1 to 600, not {raw[:40]!r}")
    return value

OPS = ("ping", "hold", "release", "delete", "flush", "suspend", "resume", "flags", "bounce", "reload",
       "page", "shape", "ids")
MAX_PAGE_REPLY = 1 << 30  # bytes of a page's reply the client takes (line and data each)
QUEUE_ID = re.compile(r"[A-Za-z0-9]{1,64}")
MAX_SITE = 255  # characters of a site text (a [[shaping.rule]] site glob, or MX host names joined by ",")
MAX_UNTIL = 2.0 ** 32  # a wall time beyond this (year 2106) is a mistake, not a suspension
_SUN_PATH_MAX = 107  # sun_path is 108 bytes with its NUL


class RequestError(ValueError):
    """A request line the server refuses; the text goes back as the error reply."""


@dataclass(frozen=True)
class Request:
    op: str
    ids: tuple[str, ...] = ()
    all: bool = False  # every message of the shard instead of `ids`
    domain: str | None = None  # suspend, resume, bounce: a recipient domain (lower case)
    site: str | None = None  # suspend, resume: a destination site
    until: float | None = None  # suspend: the wall time the suspension ends (0: clear it)
    cursor: int = 0  # page, shape, ids: where to go on (0: the start; else a reply's "next")
    limit: int = 0  # page, shape, ids: messages at most (1..MAX_PAGE)
    form: str = ""  # page: "json" or "text"
    now: float | None = None  # shape: ages at this unix time (default: the server's clock)
    buckets: tuple[int, ...] = SHAPE_BUCKETS  # shape: the age columns' bounds, minutes


def parse_request(line: bytes) -> Request:
    """One request line → Request, or RequestError saying what is wrong.

    Forms: {"op": "ping"}; {"op": "reload"}; {"op": OP, "ids": [ID, ...]}; {"op": OP, "all": true},
    OP one of hold, release, delete, flush; 1..MAX_IDS ids of [A-Za-z0-9]{1,64};
    {"op": "suspend", "domain": D | "site": S, "until": T}; {"op": "resume", "domain": D |
    "site": S}; {"op": "flags"}; {"op": "bounce", "domain": D}. D a domain name, S at most
    MAX_SITE printable characters without spaces, T a unix time (0: clear). Pages of the queue:
    {"op": "page", "cursor": C, "limit": N, "form": "json"|"text"}; {"op": "shape", "cursor": C,
    "limit": N[, "now": T][, "buckets": [minutes, ...]]}; {"op": "ids", "cursor": C, "limit": N};
    C 0 or a reply's "next", N 1..MAX_PAGE.
    """
    if len(line) > MAX_LINE:
        raise RequestError(f"request longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("request is not a JSON object on one line") from None
    if not isinstance(obj, dict):
        raise RequestError("request is not a JSON object on one line")
    unknown = sorted(set(obj) - {"op", "ids", "all", "domain", "site", "until"} - set(ALL_FIELDS))
    if unknown:
        raise RequestError(f"unknown request field(s): {', '.join(map(repr, unknown))}")
    op = obj.get("op")
    if op not in OPS:
        raise RequestError(f"op must be one of {', '.join(OPS)}, not {op!r}")
    ids, every = obj.get("ids"), obj.get("all", False)
    if every not in (True, False):
        raise RequestError("all must be true or false")
    try:
        paging = page_fields(op, obj)
    except PageFieldError as e:
        raise RequestError(str(e)) from None
    if op in PAGE_OPS:
        if ids is not None or every or set(obj) & {"domain", "site", "until"}:
            raise RequestError(f"{op} takes only {', '.join(FIELDS[op])}")
        return Request(op, **paging)
    shaping = _shaping_fields(op, obj)
    if op in ("suspend", "resume", "flags", "bounce"):
        if ids is not None or every:
            raise RequestError(f"{op} takes no ids and no all")
        return Request(op, **shaping)
    if shaping:
        raise RequestError(f"{op} takes no {', '.join(sorted(shaping))}")
    if op in ("ping", "reload"):
        if ids is not None or every:
            raise RequestError(f"{op} takes no ids and no all")
        return Request(op)
    if every:
        if ids is not None:
            raise RequestError("give either ids or all, not both")
        return Request(op, all=True)
    if not isinstance(ids, list) or not ids:
        raise RequestError(f"{op} needs ids (a non-empty list of queue ids) or all: true")
    if len(ids) > MAX_IDS:
        raise RequestError(f"at most {MAX_IDS} ids in one request, not {len(ids)}")
    for q in ids:
        if not isinstance(q, str) or not QUEUE_ID.fullmatch(q):
            raise RequestError(f"bad queue id {q!r}: expected 1-64 letters and digits")
    return Request(op, tuple(dict.fromkeys(ids)))


# op -> (the fields it needs or allows, as "domain|site" for exactly one of the two, "until")
SHAPING_FIELDS = {"suspend": ("domain|site", "until"), "resume": ("domain|site",), "bounce": ("domain",),
                   "flags": ()}


def _shaping_fields(op: str, obj: dict) -> dict:
    """The domain, site and until fields of a request, each checked; RequestError when one
    is malformed, missing or not for this op (a non-shaping op gets them back to refuse)."""
    out: dict = {}
    if "domain" in obj:
        raw = obj["domain"]
        name = domain_name(raw) if isinstance(raw, str) else None
        if name is None:
            raise RequestError(f"bad domain {raw!r}: expected a domain name (ASCII labels; IDNs as xn--)")
        out["domain"] = name
    if "site" in obj:
        raw = obj["site"]
        if not isinstance(raw, str) or not 0 < len(raw) <= MAX_SITE or not raw.isprintable() or " " in raw:
            raise RequestError(f"bad site {str(raw)[:300]!r}: expected 1-{MAX_SITE} printable characters, no spaces")
        out["site"] = raw.lower()
    if "until" in obj:
        raw = obj["until"]
        if (isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw)
                or not 0 <= raw < MAX_UNTIL):
            raise RequestError(f"bad until {raw!r}: expected a unix time as a number (0: clear)")
        out["until"] = float(raw)
    if op not in SHAPING_FIELDS:
        return out
    wanted = SHAPING_FIELDS[op]
    extra = sorted(set(out) - {f for w in wanted for f in w.split("|")})
    if extra:
        raise RequestError(f"{op} takes no {', '.join(extra)}")
    if "domain|site" in wanted and ("domain" in out) == ("site" in out):
        raise RequestError(f"{op} needs either domain or site (one of the two)")
    for need in ("domain", "until"):
        if need in wanted and need not in out:
            raise RequestError(f"{op} needs {need}")
    return out


def encode(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def socket_path(spool_dir: str, shard: int) -> str:
    return os.path.join(spool_dir, str(shard), SOCKET_NAME)


class SunPath:
    """A path usable in bind/connect: the path itself, or for one longer than
    sun_path allows, /proc/self/fd/<dir fd>/<name> (Linux) while the fd is open."""

    def __init__(self, path: str):
        self.path, self._fd = path, None
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            self._fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self.path = f"/proc/self/fd/{self._fd}/{os.path.basename(path)}"

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)


# ---------------------------------------------------------------------------
# the client side, for the CLI
# ---------------------------------------------------------------------------

class NoServer(Exception):
    """No server answers on this shard's socket (none, or a dead one's)."""


class ControlError(Exception):
    """The server answered with an error, or broke the protocol."""


def shards(spool_dir: str) -> list[int]:
    """The shard numbers present in the spool directory."""
    try:
        names = os.listdir(spool_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(spool_dir, n)))


def _connect(spool_dir: str, shard: int, timeout: float) -> socket.socket:
    """A connected socket to a shard's server, or NoServer / ControlError saying why not."""
    path = socket_path(spool_dir, shard)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with SunPath(path) as p:
            s.connect(p)
    except (ConnectionRefusedError, FileNotFoundError, NotADirectoryError) as e:
        s.close()
        raise NoServer(f"{path}: {e.strerror}") from None
    except PermissionError as e:
        s.close()
        raise ControlError(f"{path}: {e.strerror} (run as the user the server runs as, or root)") from None
    except BaseException:
        s.close()
        raise
    return s


def call(spool_dir: str, shard: int, request: dict, timeout: float = CLIENT_TIMEOUT) -> dict:
    """Send one request to a shard's server; its reply (ok true), or NoServer / ControlError."""
    data = encode(request)
    if len(data) > MAX_LINE:
        raise ValueError("request too long")
    with _connect(spool_dir, shard, timeout) as s:
        try:
            s.sendall(data)
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise ControlError(f"shard {shard}: reply longer than {MAX_REPLY} bytes")
        except socket.timeout:
            raise ControlError(f"shard {shard}: no reply within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"shard {shard}: {e.strerror or e}") from None
    return _reply(shard, bytes(buf))


def _reply(shard: int, buf: bytes) -> dict:
    """A reply line as a dict (ok true), or ControlError saying what it was."""
    if not buf:
        raise ControlError(f"shard {shard}: the server closed the connection without a reply (stopping?)")
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError(f"shard {shard}: unreadable reply {bytes(buf[:200])!r}") from None
    if not isinstance(reply, dict) or reply.get("ok") is not True:
        err = reply.get("error") if isinstance(reply, dict) else None
        raise ControlError(f"shard {shard}: {err or 'bad reply'}")
    return reply


def fetch(spool_dir: str, shard: int, request: dict, timeout: float = CLIENT_TIMEOUT) -> tuple[dict, bytes]:
    """`call` for the page ops: (the reply, the bytes after its line: a page's data, else b"").
    Their replies may be big (up to MAX_PAGE_REPLY): a page of a big queue, a shape of many domains."""
    with _connect(spool_dir, shard, timeout) as s:
        try:
            s.sendall(encode(request))
            with s.makefile("rb") as f:
                reply = _reply(shard, f.readline(MAX_PAGE_REPLY))
                size = reply.get("bytes", 0)
                if not whole(size, 0, MAX_PAGE_REPLY):
                    raise ControlError(f"shard {shard}: bad reply (bytes {str(size)[:40]})")
                data = f.read(size) if size else b""
        except socket.timeout:
            raise ControlError(f"shard {shard}: no reply within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"shard {shard}: {e.strerror or e}") from None
    if len(data) != size:
        raise ControlError(f"shard {shard}: the server closed the connection {size - len(data)} bytes short")
    return reply, data
