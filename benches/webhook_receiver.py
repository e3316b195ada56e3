"""A webhook endpoint for the benchmarks: answers every POST 200 at once and counts the
records; `python benches/webhook_receiver.py PORT` (prints the count on SIGTERM)."""

import json
import signal
import sys

from aiohttp import web

count = [0, 0]  # POSTs, records


async def events(request: web.Request) -> web.Response:
    count[0] += 1
    count[1] += len(json.loads(await request.read()))
    return web.Response(text="ok")


def main() -> None:
    app = web.Application()
    app.router.add_post("/events", events)
    signal.signal(signal.SIGTERM, lambda *_: (print(f"posts={count[0]} records={count[1]}", flush=True),
                                              sys.exit(0)))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
