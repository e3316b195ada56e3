"""The webhook senders' HTTP/1.1 client: one kept-alive connection per sender, one POST at a time
(the request, then its whole answer). Invariant: a connection is used again only after a complete,
well-formed answer that did not ask to close it; anything else closes it, and the next POST connects anew."""

# Why not aiohttp's client: a POST through it cost ~150 µs of CPU, this one ~45 µs, and under
# load a sender POSTs tens of times a second (issue 23: a webhook within 10% of none).
from __future__ import annotations

import asyncio
import ssl
import urllib.parse

MAX_ANSWER = 1 << 20  # bytes of one answer (head and body) kept before giving up on it
_NO_BODY = (204, 304)


class HttpError(OSError):
    """The endpoint's answer could not be read (malformed, too big, or cut short)."""


class ClosedBeforeAnswer(HttpError):
    """The connection ended before any byte of an answer (a kept one the endpoint closed)."""


def parse_answer(buf: bytes | bytearray, eof: bool) -> tuple[int, bool, int] | None:
    """The first complete answer in `buf`: (status, keep the connection, bytes it took); None
    while more bytes are needed. `eof`: the peer sent everything it will. 1xx answers before
    it are passed over. HttpError when no answer can come from these bytes."""
    start = 0
    while True:
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) - start > MAX_ANSWER:
                raise HttpError("answer header too long")
            if eof:
                if start == len(buf):
                    raise ClosedBeforeAnswer("connection closed before the answer")
                raise HttpError("answer cut short")
            return None
        lines = bytes(buf[start:end]).split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() \
                or rest[3:4] not in (b"", b" "):
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        length, chunked, close = None, False, version == b"HTTP/1.0"
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise HttpError(f"malformed header line: {line[:80]!r}")
            name, value = name.lower(), value.strip().lower()
            if name == b"content-length":
                if not value.isdigit() or (length is not None and int(value) != length):
                    raise HttpError(f"bad Content-Length: {value[:40]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    close = True  # the body runs to the end of the connection
            elif name == b"connection":
                tokens = {t.strip() for t in value.split(b",")}
                close = b"close" in tokens or (close and b"keep-alive" not in tokens)
        body = end + 4
        if 100 <= status < 200:
            if status == 101:
                raise HttpError("the endpoint switched protocols")
            start = body  # an interim answer: the real one follows
            continue
        if status in _NO_BODY:
            return status, not close, body
        if chunked:
            taken = _chunked_end(buf, body, eof, body + MAX_ANSWER)
            return None if taken is None else (status, not close, taken)
        if length is not None:
            if length > MAX_ANSWER:
                raise HttpError("answer body too long")
            if len(buf) >= body + length:
                return status, not close, body + length
            if eof:
                raise HttpError("answer cut short")
            return None
        if len(buf) - body > MAX_ANSWER:
            raise HttpError("answer body too long")
        return (status, False, len(buf)) if eof else None  # no length: the body ends with the connection


def _chunked_end(buf: bytes | bytearray, pos: int, eof: bool, limit: int) -> int | None:
    """Where a chunked body starting at `pos` ends (trailers included); None: not all here yet.
    HttpError when it would end beyond `limit`."""
    while True:
        nl = buf.find(b"\r\n", pos)
        if nl < 0:
            return _more(buf, eof, limit)
        size = bytes(buf[pos:nl]).split(b";", 1)[0].strip()
        try:
            n = int(size, 16) if size and all(c in b"0123456789abcdefABCDEF" for c in size) else -1
        except ValueError:
            n = -1
        if n < 0:
            raise HttpError(f"bad chunk size: {size[:40]!r}")
        if n == 0:  # the last chunk: trailer lines up to an empty one
            pos = nl + 2
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    return _more(buf, eof, limit)
                if nl == pos:
                    return nl + 2
                pos = nl + 2
        if nl + 4 + n > limit:
            raise HttpError("answer body too long")
        if len(buf) < nl + 2 + n + 2:
            return _more(buf, eof, limit)
        if buf[nl + 2 + n:nl + 4 + n] != b"\r\n":
            raise HttpError("chunk not followed by CRLF")
        pos = nl + 4 + n


def _more(buf: bytes | bytearray, eof: bool, limit: int) -> None:
    """None (wait for more bytes), unless no more can come or too many came."""
    if eof:
        raise HttpError("answer cut short")
    if len(buf) > limit:
        raise HttpError("answer body too long")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.lost = False
        self.waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self.eof = self.lost = True
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class PostClient:
    """POSTs bytes to one URL with fixed headers; `post` returns the answer's status."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.port = parts.port or (443 if self.tls else 80)
        self.timeout = timeout
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc.rpartition('@')[2]}",
                 "Content-Type: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()
        self._conn: _Connection | None = None

    async def post(self, body: bytes) -> int:
        """The status of the answer to one POST of `body`; OSError (HttpError among them) or
        TimeoutError when there is none within the timeout."""
        try:
            async with asyncio.timeout(self.timeout):
                conn = self._conn
                if conn is not None and not conn.eof and not conn.buf:
                    try:
                        return await self._exchange(conn, body)
                    except ClosedBeforeAnswer:
                        pass  # a kept connection the endpoint closed meanwhile: once more on a new one
                self.close()
                conn = self._conn = await self._connect()
                return await self._exchange(conn, body)
        except BaseException:
            self.close()  # the connection's state is unknown: never reused
            raise

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self.tls,
                                               server_hostname=self.host if self.tls else None)
        return conn

    async def _exchange(self, conn: _Connection, body: bytes) -> int:
        conn.transport.writelines([self._head, b"%d\r\n\r\n" % len(body), body])
        loop = asyncio.get_running_loop()
        while True:
            got = parse_answer(conn.buf, conn.eof)
            if got is not None:
                status, keep, taken = got
                del conn.buf[:taken]
                if not keep or conn.buf:  # bytes after the answer were never asked for
                    self.close()
                return status
            conn.waiter = loop.create_future()
            try:
                await conn.waiter
            finally:
                conn.waiter = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.transport is not None:
            conn.transport.close()
