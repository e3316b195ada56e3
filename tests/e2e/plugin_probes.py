"""Plugin modules the plugin end-to-end tests load into the real server, as source text
written to a tmp dir on the server's PYTHONPATH. Each reports what it saw as JSON lines
in the file named by its `log` option; its verdicts are chosen by tokens in what the
client sends (peer address, HELO name, addresses, X-Probe-* headers)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# The main probe (module form). Tokens: "probe-reject", "probe-defer", "probe-disconnect",
# "probe-raise", "probe-garbage", "probe-sleep", "probe-accept" in the value a hook looks at.
PROBE = r'''
import asyncio
import base64
import json
import os
import traceback

from mta.plugin import Accept, Defer, Disconnect, OptionsError, Reject, Route

OPTS = {}
CONNECT_VERDICTS = {
    "127.0.0.2": lambda: Reject(554, "5.7.1", "on_connect refused by probe"),
    "127.0.0.3": lambda: Defer(421, "4.7.2", "on_connect deferred by probe"),
    "127.0.0.4": lambda: Disconnect(421, "4.7.0", "on_connect closing by probe"),
}


def record(hook, **kw):
    with open(OPTS["log"], "a") as f:
        f.write(json.dumps({"hook": hook, "plugin": "probe", "pid": os.getpid(), **kw}, default=repr) + "\n")


def judge(stage, value):
    value = value or ""
    if "probe-reject" in value:
        return Reject(554, "5.7.1", f"{stage} refused by probe")
    if "probe-defer" in value:
        return Defer(450, "4.7.1", f"{stage} deferred by probe")
    if "probe-disconnect" in value:
        return Disconnect(421, "4.7.0", f"{stage} closing by probe")
    if "probe-raise" in value:
        raise RuntimeError(f"probe exploded in {stage}")
    if "probe-garbage" in value:
        return 42
    if "probe-badcode" in value:
        return Reject(450, "4.7.1", "a 4xx code in a Reject")
    if "probe-accept" in value:
        return Accept()
    return None


def setup(options):
    if options.get("fail_setup"):
        raise OptionsError(f"probe: option map {options['fail_setup']!r} is not a readable file")
    OPTS.update(options)
    record("setup", options=options)


def stop():
    record("stop")


def on_connect(conn):
    conn.notes["seen_port"] = conn.peer_port
    record("on_connect", peer_ip=conn.peer_ip, peer_port=conn.peer_port, trusted=conn.trusted,
           helo=conn.helo, tls=conn.tls, auth_user=conn.auth_user,
           listener_address=conn.listener.address, listener_profile=conn.listener.profile)
    make = CONNECT_VERDICTS.get(conn.peer_ip)
    return make() if make else None


def on_helo(conn, name):
    record("on_helo", name=name, peer_port=conn.peer_port, conn_helo=conn.helo)
    return judge("on_helo", name)


async def on_mail(tx, sender):
    await asyncio.sleep(0)  # a real suspension: the chain's task path
    tx.notes["probe"] = {"sender": sender, "helo": tx.conn.helo, "tags": ["a", 1, True, None]}
    record("on_mail", sender=sender, tx_sender=tx.sender, params=tx.params, helo=tx.conn.helo,
           conn_notes=tx.conn.notes, recipients=list(tx.recipients), peer_port=tx.conn.peer_port)
    if "probe-badnotes" in sender:
        tx.notes["bad"] = {1, 2}  # not JSON: the message cannot be stored with it
    if "probe-sleep" in sender:
        await asyncio.sleep(30)
    return judge("on_mail", sender)


def on_rcpt(tx, address):
    record("on_rcpt", address=address, recipients=list(tx.recipients), sender=tx.sender,
           helo=tx.conn.helo)
    return judge("on_rcpt", address.split("@")[0])


def on_data(tx, headers):
    probe = headers.get("X-Probe-Data")
    record("on_data", helo=tx.conn.helo, subject=headers.get("Subject"),
           received=headers.get_all("Received"), to_all=headers.get_all("To"),
           missing=headers.get("X-Not-There"), missing_all=headers.get_all("X-Not-There"),
           probe=probe, recipients=list(tx.recipients))
    if probe and "edit" in probe:
        headers.add("X-Edited-In-On-Data", "yes")  # read-only view: must raise TypeError
    return judge("on_data", probe)


async def on_message(tx, msg):
    probe = msg.headers.get("X-Probe-Message") or ""
    body = b""
    chunks = 0
    if "body" in probe:  # only where a test asks: body_chunks() is checked on its own
        async for chunk in msg.body_chunks():
            chunks += 1
            body += chunk
    record("on_message", helo=tx.conn.helo, size=msg.size, queue_id=msg.queue_id,
           subject=msg.headers.get("Subject"), to_all=msg.headers.get_all("To"),
           body=base64.b64encode(body).decode(), chunks=chunks, probe=probe,
           sender=msg.sender, recipients=list(msg.recipients), notes=msg.notes)
    if "edit" in probe:
        h = msg.headers
        h.add("X-Tenant", "acme")
        h.remove("X-Internal-Secret")
        h.replace("Subject", "[probe] " + h.get("Subject"))
    return judge("on_message", probe)


def route(address, msg):
    record("route", address=address, queue_id=msg.queue_id, notes=msg.notes, sender=msg.sender,
           recipients=list(msg.recipients), size=msg.size, subject=msg.headers.get("Subject"))
    domain = address.rpartition("@")[2]
    if domain == "routed.test":
        return Route(f"smarthost 127.0.0.1:{OPTS['alt_port']}", tls="none")
    if domain == "string.test":
        return f"smarthost 127.0.0.1:{OPTS['alt_port']}"
    if domain == "garbage.test":
        return 42
    if domain == "discard.test":
        return "discard"
    if domain == "maildir.test":
        return Route(f"maildir {OPTS['maildir']}/{{user}}")
    return None


def _event(event):
    return dict(queue_id=event.queue_id, recipient=event.recipient, code=event.reply.code,
                enhanced=event.reply.enhanced, text=event.reply.text, attempt=event.attempt,
                remote_host=event.remote_host, remote_ip=event.remote_ip,
                next_attempt=event.next_attempt, notes=event.notes)


async def on_delivered(event):
    await asyncio.sleep(0)
    record("on_delivered", **_event(event))


def on_deferred(event):
    record("on_deferred", **_event(event))
    if "reroute" in event.recipient:
        return Route(f"smarthost 127.0.0.1:{OPTS['alt_port']}", tls="none")
    return None


def on_bounced(event):
    record("on_bounced", **_event(event))
'''

# A second plugin, class form with async hooks, listed after the probe (for Accept's
# skip-the-rest and ordering).
SECOND = r'''
import asyncio
import json
import os

from mta.plugin import Reject


class Plugin:
    def __init__(self, options):
        self.log = options["log"]
        self.started = False

    def _record(self, hook, **kw):
        with open(self.log, "a") as f:
            f.write(json.dumps({"hook": hook, "plugin": "second", "pid": os.getpid(), **kw}) + "\n")

    async def start(self):
        await asyncio.sleep(0)
        self.started = True
        self._record("start")

    def stop(self):
        self._record("stop", started=self.started)

    async def on_rcpt(self, tx, address):
        await asyncio.sleep(0)
        self._record("on_rcpt", address=address, helo=tx.conn.helo)
        if "second-reject" in address:
            return Reject(550, "5.7.1", "second plugin refuses " + address.split("@")[0])
        return None

    async def on_message(self, tx, msg):
        self._record("on_message", helo=tx.conn.helo, size=msg.size)
'''

# Fails at random (raise) in on_rcpt, on_message and route while its flag file exists.
FLAKY = r'''
import json
import os
import random

OPTS = {}


def setup(options):
    OPTS.update(options)


def _fail(stage):
    if os.path.exists(OPTS["flag"]) and random.random() < OPTS["rate"]:
        raise RuntimeError(f"flaky {stage}")


def on_rcpt(tx, address):
    _fail("on_rcpt")


async def on_message(tx, msg):
    _fail("on_message")


def route(address, msg):
    _fail("route")
    return None
'''

# An async route hook that reads the queued message's body (msg.body_chunks() at route).
BODY_ROUTE = r'''
import base64
import json

OPTS = {}


def setup(options):
    OPTS.update(options)


async def route(address, msg):
    if not address.endswith("@bodyroute.test"):
        return None
    body = b""
    async for chunk in msg.body_chunks():
        body += chunk
    with open(OPTS["log"], "a") as f:
        f.write(json.dumps({"hook": "route", "plugin": "body_route", "queue_id": msg.queue_id,
                            "address": address, "size": msg.size,
                            "body": base64.b64encode(body).decode()}) + "\n")
    return "smarthost 127.0.0.1:" + str(OPTS["alt_port"])
'''


# The deprecated `delivery.route_hook = "legacy_route:pick"`.
LEGACY = r'''
import json
import os


def pick(address, msg):
    with open(os.environ["LEGACY_ROUTE_LOG"], "a") as f:
        f.write(json.dumps({"address": address, "queue_id": msg.queue_id}) + "\n")
    if address.endswith("@legacy.test"):
        return "smarthost 127.0.0.1:" + os.environ["LEGACY_ROUTE_PORT"]
    return None
'''


def write_plugins(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("probe_plugin", PROBE), ("second_plugin", SECOND), ("flaky_plugin", FLAKY),
                       ("legacy_route", LEGACY), ("body_route", BODY_ROUTE)):
        (directory / f"{name}.py").write_text(text)
    return directory


def plugin_env(directory: Path, **extra: str) -> dict:
    """The server's environment: the plugins' dir first on PYTHONPATH."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(directory), path) if p), **extra}


def records(log: Path, hook: str | None = None, **match) -> list[dict]:
    """The probe log's records (of `hook`, with the given field values)."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if (hook is None or r["hook"] == hook) and all(r.get(k) == v for k, v in match.items()):
            out.append(r)
    return out


def wait_records(log: Path, hook: str, n: int = 1, timeout: float = 20.0, srv=None, **match) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = records(log, hook, **match)
        if len(found) >= n:
            return found
        if time.monotonic() > deadline or (srv is not None and srv.proc.poll() is not None):
            raise AssertionError(f"{len(found)} of {n} {hook} records {match} in {timeout}s; log:\n"
                                 + (log.read_text()[-3000:] if log.exists() else "(none)")
                                 + ("" if srv is None else "\nserver:\n" + srv.log()[-3000:]))
        time.sleep(0.05)
