"""A webhook receiver for tests: a real aiohttp server on loopback, in its own thread, that
keeps every POST (headers and JSON array) and can be taken down (not listening, and 503 on
connections still open) and brought up again on the same port."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

from aiohttp import web


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebhookSink:
    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/events"
        self.status = status  # the answer while up
        self.delay = delay  # seconds before answering
        self.posts: list[tuple[dict, list]] = []  # (headers, records) of every POST answered 2xx
        self.refused = 0  # POSTs answered with a non-2xx
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._site: web.TCPSite | None = None
        self._runner: web.AppRunner | None = None
        self._up = False
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self, up: bool = True) -> "WebhookSink":
        self._thread.start()
        app = web.Application()
        app.router.add_post("/events", self._handle)
        self._runner = web.AppRunner(app)
        self._call(self._runner.setup())
        if up:
            self.up()
        return self

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.status if self._up else 503
        if not 200 <= status < 300:
            with self._lock:
                self.refused += 1
            return web.Response(status=status)
        with self._lock:
            self.posts.append((dict(request.headers), json.loads(body)))
        return web.Response(status=status, text="ok")

    def up(self) -> None:
        async def go():
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
            await self._site.start()
        self._up = True
        self._call(go())

    def down(self) -> None:
        """Stop listening (connection refused); a connection still open gets 503s."""
        self._up = False
        if self._site is not None:
            self._call(self._site.stop())
            self._site = None

    def records(self) -> list[dict]:
        with self._lock:
            return [r for _, batch in self.posts for r in batch]

    def wait(self, pred, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.records()
            if pred(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"webhook sink: timed out; got {self.records()!r}")

    def stop(self) -> None:
        if self._runner is not None:
            self._call(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
