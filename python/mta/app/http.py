"""The HTTP listener (aiohttp): /metrics, /health and the /api/... routes added before start(),
served by each worker from its own loop on sockets bound once per server (before the privilege
drop), so no other process can ever join the port."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable

from aiohttp import web

from mta.app.metrics import SNAPSHOT_EVERY, Metrics, Snapshots, render

log = logging.getLogger("mta")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
FAILURE_MEMORY = 10.0  # seconds a failed spool batch keeps /health at 503


def bind(addresses) -> list[socket.socket]:
    """Listening sockets for (host, port) pairs. No SO_REUSEPORT: the workers share these very
    sockets (inherited across fork), and a second server on a port fails here (OSError)."""
    out = []
    try:
        for host, port in addresses:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            out.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only, not sharing
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise OSError(e.errno, f"http listener {host}:{port}: {e.strerror}") from None
            s.listen(128)
            s.setblocking(False)
    except BaseException:
        for s in out:
            s.close()
        raise
    return out


class HttpService:
    """One worker's HTTP face. `stopping` and `spool_ok` are asked per /health request;
    `metrics.scan()` runs at most once a second (the snapshot tick)."""

    def __init__(self, sockets: list[socket.socket], metrics: Metrics, snapshots: Snapshots,
                 stopping: Callable[[], bool], spool_ok: Callable[[], bool],
                 max_body: int = 10 * 1024 * 1024, ssl_context=None):
        self.sockets = sockets
        self.ssl_context = ssl_context  # HTTPS with the [tls] certificate (http.tls)
        self.metrics = metrics
        self.snapshots = snapshots
        self.stopping = stopping
        self.spool_ok = spool_ok
        self.app = web.Application(client_max_size=max_body)
        self.app.router.add_get("/metrics", self.get_metrics)
        self.app.router.add_get("/health", self.get_health)
        self._runner: web.AppRunner | None = None
        self._series: list[list] = []  # this worker's series as of the last tick
        self._scanned: list[list] = []  # the tick's scan (the queue gauges, open sessions, pools)
        self._failed = 0  # the spool's failed batches at the last tick
        self._failed_at = -FAILURE_MEMORY
        self._timer = None

    async def start(self) -> None:
        self.tick()
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        for s in self.sockets:
            await web.SockSite(self._runner, s, ssl_context=self.ssl_context).start()
            host, port = s.getsockname()[:2]
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            log.info("http listening on %s%s", where, " (https)" if self.ssl_context else "")

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def tick(self) -> None:
        """Once a second: take this worker's series (the gauges' scan), note spool
        failures, and write the snapshot the other workers read."""
        self._take()
        try:
            self.snapshots.write(self._series)
        except OSError as e:
            log.warning("metrics snapshot not written: %s", e)
        self._timer = asyncio.get_running_loop().call_later(SNAPSHOT_EVERY, self.tick)

    def _take(self) -> list[list]:
        now = time.monotonic()
        self._scanned = self.metrics.scan()
        self._series = self.metrics.series(self._scanned)
        failed = next((v for n, _, v in self._series if n == "mta_spool_failed_batches"), 0)
        if failed > self._failed:
            self._failed_at = now
        self._failed = failed
        return self._series

    def healthy(self) -> tuple[bool, str]:
        if self.stopping():
            return False, "stopping"
        if time.monotonic() - self._failed_at < FAILURE_MEMORY:
            return False, "spool write failed"
        if not self.spool_ok():
            return False, "spool cannot write"
        return True, "ok"

    async def get_metrics(self, request: web.Request) -> web.Response:
        # This worker's counters live; its gauges as of the last tick (the scan is the
        # tick's, not every scrape's); the other workers' as of their last snapshot.
        body = render(self.snapshots.total(self.metrics.series(self._scanned)))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def get_health(self, request: web.Request) -> web.Response:
        ok, why = self.healthy()
        return web.Response(status=200 if ok else 503, text=why + "\n")
