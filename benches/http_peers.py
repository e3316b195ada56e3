"""The HTTP peers of the HTTP-face benchmark (compare-http.toml): a Prometheus-like scraper that
GETs /metrics every second, and a webhook receiver that answers 200 to every POST and counts the
events. Each writes one summary line to its log when it is stopped (SIGTERM), so a trial shows
that the scrapes answered and every event arrived.
  python http_peers.py scrape HTTP_PORT LOG
  python http_peers.py webhook PORT LOG"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from aiohttp import ClientSession, ClientTimeout, web


async def scrape(port: int, log: str) -> None:
    ok = failed = 0
    sizes = []
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with ClientSession(timeout=ClientTimeout(total=5)) as http:
        while not stop.is_set():
            try:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                    body = await r.read()
                    if r.status == 200:
                        ok += 1
                        sizes.append(len(body))
                    else:
                        failed += 1
            except Exception:  # noqa: BLE001 - before mta listens, and while it stops
                failed += 1
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass
    with open(log, "a") as f:
        f.write(f"scraper: {ok} scrapes answered, {failed} failed, last body {sizes[-1] if sizes else 0} bytes\n")


async def webhook(port: int, log: str) -> None:
    events = posts = 0
    ids: set[str] = set()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def receive(request: web.Request) -> web.Response:
        nonlocal events, posts
        batch = json.loads(await request.read())
        posts += 1
        events += len(batch)
        ids.update(str(e.get("id")) for e in batch)
        return web.Response(text="ok")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/events", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    t0 = time.monotonic()
    await stop.wait()
    await runner.cleanup()
    with open(log, "a") as f:
        f.write(f"webhook receiver: {events} events ({len(ids)} distinct ids) in {posts} POSTs "
                f"over {time.monotonic() - t0:.0f} s\n")


if __name__ == "__main__":
    mode, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    asyncio.run(scrape(port, log) if mode == "scrape" else webhook(port, log))
