"""The webhook senders' HTTP client: the answer parser (table, and any answer framed any legal way
and cut anywhere reads the same), and POSTs against a real loopback server answering in each
framing, keeping or closing the connection, closing a kept one, and never answering."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mta.queue.webhook_http import (
    MAX_ANSWER,
    ClosedBeforeAnswer,
    HttpError,
    PostClient,
    parse_answer,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

TABLE = [
    # (bytes, eof, result)
    (OK, False, (200, True, len(OK))),
    (OK + b"HTTP/1.1", False, (200, True, len(OK))),  # what follows is not this answer's
    (b"HTTP/1.1 204 No Content\r\n\r\n", False, (204, True, 27)),
    (b"HTTP/1.1 500 x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", False, (500, False, 56)),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False, (200, False, 38)),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", False, (200, True, 62)),
    (b"HTTP/1.1 200\r\ncontent-length: 1\r\n\r\nx", False, (200, True, 36)),  # no reason phrase
    (b"HTTP/1.1 100 Continue\r\n\r\n" + OK, False, (200, True, 25 + len(OK))),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nT: 1\r\n\r\n", False,
     (200, True, 69)),
    (b"HTTP/1.1 200 OK\r\n\r\nall of it", True, (200, False, 28)),  # no length: to the end
    (b"HTTP/1.1 200 OK\r\n\r\nsome", False, None),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", False, None),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n", False, None),
    (b"HTTP/1.1 200 O", False, None),
    (b"", False, None),
]

BAD = [
    (b"", True, ClosedBeforeAnswer),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", True, HttpError),
    (b"HTTP/1.1 200 O", True, HttpError),
    (b"HTTP/2 200\r\n\r\n", False, HttpError),
    (b"SMTP 220 hi\r\n\r\n", False, HttpError),
    (b"HTTP/1.1 2000 OK\r\n\r\n", False, HttpError),
    (b"HTTP/1.1 101 Switching\r\n\r\n", False, HttpError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", False, HttpError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", False, HttpError),
    (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", False, HttpError),
    (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", False, HttpError),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False, HttpError),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX", False, HttpError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_ANSWER + 1), False, HttpError),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * (MAX_ANSWER // 6 + 1), False, HttpError),
]


@pytest.mark.parametrize("data,eof,want", TABLE)
def test_answers(data, eof, want):
    assert parse_answer(data, eof) == want
    assert parse_answer(bytearray(data), eof) == want


@pytest.mark.parametrize("data,eof,exc", BAD)
def test_bad_answers(data, eof, exc):
    with pytest.raises(exc):
        parse_answer(data, eof)


def frame(status: int, body: bytes, how: str, chunks: list[int], close: bool) -> bytes:
    head = b"HTTP/1.1 %d Whatever\r\nServer: t\r\n" % status + (b"Connection: close\r\n" if close else b"")
    if how == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    out, pos = head + b"Transfer-Encoding: chunked\r\n\r\n", 0
    for n in chunks:
        if body[pos:pos + n]:
            out += b"%x\r\n" % len(body[pos:pos + n]) + body[pos:pos + n] + b"\r\n"
        pos += n
    if body[pos:]:
        out += b"%X;ext=1\r\n" % len(body[pos:]) + body[pos:] + b"\r\n"
    return out + b"0\r\n\r\n"


@given(st.sampled_from([200, 201, 299, 400, 503]), st.binary(max_size=300), st.sampled_from(["length", "chunked"]),
       st.lists(st.integers(1, 50), max_size=5), st.booleans(), st.data())
def test_any_framing_cut_anywhere_reads_the_same(status, body, how, chunks, close, data):
    """Bytes arriving a piece at a time: nothing until the answer is whole, then the same answer."""
    wire = frame(status, body, how, chunks, close)
    cut = data.draw(st.integers(0, len(wire) - 1))
    assert parse_answer(wire[:cut], False) is None
    assert parse_answer(wire, False) == (status, not close, len(wire))
    assert parse_answer(wire + b"HTTP/1.1 500", False) == (status, not close, len(wire))


@given(st.binary(max_size=200), st.booleans())
def test_any_bytes_give_an_answer_none_or_http_error(data, eof):
    try:
        got = parse_answer(data, eof)
    except HttpError:
        return
    assert got is None or (100 <= got[0] <= 999 and 0 < got[2] <= len(data))


class Peer:
    """A loopback HTTP server answering each request with the next of `answers` (bytes; None:
    close the connection without answering; "hang": never answer)."""

    def __init__(self, answers: list) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hook?x=1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(n))
                answer = self.answers.pop(0)
                if answer == "hang":
                    await asyncio.sleep(30)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def test_posts_reuse_reconnect_and_time_out():
    async def main():
        chunked = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        closing = b"HTTP/1.1 500 No\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        peer = Peer([OK, chunked, closing, OK, None, OK, "hang"])
        url = await peer.start()
        http = PostClient(url, {"Authorization": "Bearer t"}, timeout=1.0)
        assert [await http.post(b"[1]"), await http.post(b"[2]")] == [200, 202]
        assert peer.connections == 1  # kept alive
        assert await http.post(b"[3]") == 500  # and the endpoint closed it
        assert await http.post(b"[4]") == 200 and peer.connections == 2
        # A kept connection closed without an answer: sent once more on a new one.
        assert await http.post(b"[5]") == 200 and peer.connections == 3
        with pytest.raises(TimeoutError):
            await http.post(b"[6]")
        http.close()
        peer.server.close()
        first = peer.requests[0]
        assert first.startswith(b"POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        assert b"\r\nContent-Type: application/json\r\n" in first and b"\r\nAuthorization: Bearer t\r\n" in first
        assert first.endswith(b"\r\nContent-Length: 3\r\n\r\n[1]")
        assert [r[-3:] for r in peer.requests] == [b"[%d]" % i for i in (1, 2, 3, 4, 5, 5, 6)]

    asyncio.run(main())


def test_a_refused_connection_is_an_os_error():
    async def main():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            await PostClient(f"http://127.0.0.1:{port}/", {}, timeout=2.0).post(b"[]")

    asyncio.run(main())
