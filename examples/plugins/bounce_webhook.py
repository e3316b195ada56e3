"""POST every bounce (a recipient the server gave up on) as JSON to a URL, with retries and
back-off, without ever holding up delivery: the hook only queues the event and returns.

Enable it (the directory holding this file must be on the server's PYTHONPATH):

    [[plugin]]
    module = "bounce_webhook"
    options = { url = "https://hooks.example.com/mta/bounces", retries = 5 }

Options: url (http or https, required); retries (further tries after a failed POST, default
5); backoff (seconds before the first retry, doubled each time up to 60, default 1);
request_timeout (seconds per POST, default 10); max_pending (events waiting at most, default
1000: beyond that new events are dropped and logged, so a dead webhook cannot eat memory);
drain (seconds stop() waits for pending POSTs at shutdown, default 2).

What is POSTed (Content-Type: application/json), one request per bounced recipient:

    {"event": "bounced", "id": "<queue id>/<recipient>/<attempt>", "queue_id": "...",
     "recipient": "bob@example.net", "reply": {"code": 550, "enhanced": "5.1.1",
     "text": "no such user"}, "attempt": 1, "remote_host": "mx.example.net",
     "remote_ip": "192.0.2.25", "notes": {...}, "time": 1764921600.0}

`notes` are the transaction's notes that plugins set at receipt (`tx.notes`). A bounce of
mta's own delivery status notification (sender <>, nobody to tell) is posted too. The receiver
should answer 2xx; a 5xx, 408, 429 or a network error is retried, any other answer is
final. `id` is the same for every retry of one event, so the receiver can drop duplicates.
Events are not stored: those still pending when the server stops (after `drain`) are lost,
and logged as such. Uses only the standard library (urllib in mta's thread pool).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request

from mta.plugin import OptionsError, run_blocking

log = logging.getLogger("mta.plugin.bounce_webhook")

RETRYABLE = {408, 429}  # and every 5xx


class Plugin:
    def __init__(self, options: dict):
        url = options.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise OptionsError('options.url: an http:// or https:// URL is required')
        self.url = url
        self.retries = _number(options, "retries", 5, int)
        self.backoff = _number(options, "backoff", 1.0, float)
        self.request_timeout = _number(options, "request_timeout", 10.0, float)
        self.max_pending = _number(options, "max_pending", 1000, int)
        self.drain = _number(options, "drain", 2.0, float)
        self.pending: set[asyncio.Task] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sent = self.failed = self.dropped = 0  # counters, for your own metrics

    def start(self) -> None:
        # start() runs on the worker's event loop, the one every hook runs on.
        self.loop = asyncio.get_running_loop()

    def on_bounced(self, event) -> None:
        """A plain function that returns at once: the POST happens in a task of its own,
        and the server goes on with its queue meanwhile. Its return value is ignored."""
        if len(self.pending) >= self.max_pending:
            self.dropped += 1
            log.error("bounce_webhook: %d events pending, dropping %s/%s", len(self.pending),
                      event.queue_id, event.recipient)
            return
        body = json.dumps(payload(event), separators=(",", ":")).encode()
        loop = self.loop or asyncio.get_running_loop()
        task = loop.create_task(self.post(body, f"{event.queue_id}/{event.recipient}"))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def post(self, body: bytes, what: str) -> bool:
        """POST `body`, retrying with back-off; True once the receiver took it."""
        delay = self.backoff
        for attempt in range(1 + self.retries):
            if attempt:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
            try:
                # urllib blocks: it runs in mta's thread pool, never on the event loop.
                status = await run_blocking(self.send, body)
            except urllib.error.HTTPError as e:
                if e.code < 500 and e.code not in RETRYABLE:
                    log.error("bounce_webhook: %s refused %s with HTTP %d; not retried", self.url, what, e.code)
                    break
                error = f"HTTP {e.code}"
            except (OSError, ValueError) as e:  # URLError, timeouts, refused connections
                error = f"{type(e).__name__}: {e}"
            else:
                self.sent += 1
                log.debug("bounce_webhook: %s posted (HTTP %d)", what, status)
                return True
            log.warning("bounce_webhook: POST of %s failed (%s), try %d of %d", what, error, attempt + 1,
                        1 + self.retries)
        self.failed += 1
        log.error("bounce_webhook: gave up on %s", what)
        return False

    def send(self, body: bytes) -> int:
        """One POST (runs in a thread); raises for an answer other than 2xx."""
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "mta-bounce-webhook/1"})
        with urllib.request.urlopen(request, timeout=self.request_timeout) as response:
            return response.status

    async def stop(self) -> None:
        """At shutdown: give the pending POSTs up to `drain` seconds, then drop the rest."""
        if self.pending:
            await asyncio.wait(list(self.pending), timeout=self.drain)
        if self.pending:
            log.error("bounce_webhook: %d events not posted at shutdown", len(self.pending))
            tasks = list(self.pending)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def payload(event) -> dict:
    """The JSON object for one event (a mta.plugin.DeliveryEvent)."""
    return {
        "event": "bounced",
        "id": f"{event.queue_id}/{event.recipient}/{event.attempt}",
        "queue_id": event.queue_id,
        "recipient": event.recipient,
        "reply": {"code": event.reply.code, "enhanced": event.reply.enhanced, "text": event.reply.text},
        "attempt": event.attempt,
        "remote_host": event.remote_host,
        "remote_ip": event.remote_ip,
        "notes": event.notes,
        "time": time.time(),
    }


def _number(options: dict, key: str, default, kind):
    value = options.get(key, default)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            or (kind is int and value != int(value))):
        raise OptionsError(f"options.{key}: a {'whole ' if kind is int else ''}number >= 0, not {value!r}")
    return kind(value)
