"""The plugins of examples/plugins/, through mta.testing.ScriptedSession (the real session, parser
and hook chain, no sockets or spool) and, where it helps, their own functions: routes from a
TOML map that changes, a SQLite allow-list, header rewriting, and a bounce webhook."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mta.errors import ConfigError
from mta.plugin import DeliveryEvent, Reply
from mta.testing import ScriptedSession

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "plugins"
sys.path.insert(0, str(EXAMPLES))

import bounce_webhook  # noqa: E402
import header_rewrite  # noqa: E402
import sqlite_recipients  # noqa: E402
import tenant_routing  # noqa: E402

TRUSTED = "127.0.0.1"  # in the default mynetworks: may relay anywhere


def _send(s: ScriptedSession, sender: str, recipients: list[str], message: bytes):
    assert s.ehlo("client.test").code == 250
    assert s.mail(sender).code == 250
    for r in recipients:
        assert s.rcpt(r).code == 250, r
    result = s.data(message)
    assert result.code == 250, result.reply
    return result


def _write(path: Path, text: str, bump: int = 0) -> None:
    """Write the file and move its mtime on by `bump` seconds, so a change is seen even on a
    file system with coarse timestamps."""
    path.write_text(text)
    if bump:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


# --- tenant_routing -------------------------------------------------------------------------

MAP_A = """
[senders]
"acme.example" = "smarthost 10.0.0.5:25"
"""

MAP_B = """
default = "smarthost 10.0.0.9:2525"

[senders]
"acme.example" = { transport = "smarthost 10.0.0.6:587", tls = "required", auth = "acme:s3cret" }
"""

MAP_TENANTS = """
[tenants]
globex = "lmtp unix:/run/globex/lmtp"

[senders]
"acme.example" = "smarthost 10.0.0.5:25"
"""


def test_tenant_routing_by_sender_domain_follows_the_file(tmp_path):
    routes = tmp_path / "routes.toml"
    _write(routes, MAP_A)
    with ScriptedSession(plugins=[tenant_routing], options={"map": str(routes)}, peer_ip=TRUSTED) as s:
        _send(s, "alice@ACME.example", ["bob@remote.test"], b"Subject: one\r\n\r\nbody\r\n")
        assert s.route("bob@remote.test") == "smarthost 10.0.0.5:25"
        other = _send(s, "carol@other.example", ["bob@remote.test"], b"Subject: two\r\n\r\nbody\r\n")
        # No entry and no default: the hook falls through to the server's tables (MX here).
        assert s.route("bob@remote.test", other.queue_id) == "mx"

        _write(routes, MAP_B, bump=2)  # the change is seen at the next call, no restart
        first = s.route("bob@remote.test", other.queue_id)
        assert first == "smarthost 10.0.0.9:2525"  # now the map's default
        _send(s, "alice@acme.example", ["bob@remote.test"], b"Subject: three\r\n\r\nbody\r\n")
        assert s.route("bob@remote.test") == "smarthost 10.0.0.6:587 tls=required auth=acme:s3cret"

        _write(routes, "[senders\nbroken", bump=4)  # a broken edit: the last good map stays
        assert s.route("bob@remote.test") == "smarthost 10.0.0.6:587 tls=required auth=acme:s3cret"
        _write(routes, MAP_A, bump=6)  # fixed again: read again
        assert s.route("bob@remote.test") == "smarthost 10.0.0.5:25"


def test_tenant_routing_header_wins_over_sender(tmp_path):
    routes = tmp_path / "routes.toml"
    _write(routes, MAP_TENANTS)
    with ScriptedSession(plugins=[tenant_routing], options={"map": str(routes)}, peer_ip=TRUSTED) as s:
        _send(s, "alice@acme.example", ["bob@remote.test"],
              b"X-Tenant:  Globex \r\nSubject: hi\r\n\r\nbody\r\n")
        assert s.route("bob@remote.test") == "lmtp unix:/run/globex/lmtp"
        _send(s, "alice@acme.example", ["bob@remote.test"], b"X-Tenant: unknown\r\nSubject: hi\r\n\r\nbody\r\n")
        assert s.route("bob@remote.test") == "smarthost 10.0.0.5:25"  # no such tenant: by sender


def test_tenant_routing_bad_map_is_a_configuration_error(tmp_path):
    routes = tmp_path / "routes.toml"
    _write(routes, '[senders]\n"acme.example" = "smarthst 10.0.0.5:25"\n')
    with pytest.raises(ConfigError, match=r"senders\.acme\.example: 'smarthst 10\.0\.0\.5:25' is not a transport"):
        ScriptedSession(plugins=[tenant_routing], options={"map": str(routes)})
    with pytest.raises(ConfigError, match="options.map"):
        ScriptedSession(plugins=[tenant_routing], options={"map": str(tmp_path / "missing.toml")})
    with pytest.raises(ValueError, match="unknown option"):
        _write(routes, '[senders]\n"a.example" = { transport = "mx", tsl = "none" }\n')
        tenant_routing.load_map(str(routes))


# --- sqlite_recipients -----------------------------------------------------------------------

def _recipients_db(tmp_path) -> str:
    path = str(tmp_path / "recipients.db")
    sqlite_recipients.create_database(path, ["Alice@example.com", "@catchall.example"])
    return path


def _sqlite_session(path: str, plugin=None) -> ScriptedSession:
    plugin = plugin or sqlite_recipients.Plugin({"database": path, "domains": ["example.com", "catchall.example"]})
    # An untrusted client; we relay for the listed domains (as a backup MX would).
    return ScriptedSession(plugins=[plugin], peer_ip="203.0.113.7",
                           config={"relay_domains": ["example.com", "catchall.example"]})


def test_sqlite_recipients_refuses_unknown_at_rcpt(tmp_path):
    path = _recipients_db(tmp_path)
    with _sqlite_session(path) as s:
        assert s.ehlo().code == 250
        assert s.mail("someone@sender.test").code == 250
        assert s.rcpt("alice@EXAMPLE.com").code == 250  # compared in lower case
        r = s.rcpt("mallory@example.com")
        assert (r.code, r.enhanced, r.text) == (550, "5.1.1", "Recipient address rejected: User unknown")
        assert s.rcpt("anyone@catchall.example").code == 250  # the '@domain' row
        # Relay control runs first: a domain we do not relay for never reaches the plugin.
        assert s.rcpt("bob@elsewhere.test").code == 554
        # A row added while the server runs counts at the next RCPT.
        with sqlite3.connect(path) as db:
            db.execute("INSERT INTO recipients VALUES ('mallory@example.com')")
        db.close()
        assert s.rcpt("mallory@example.com").code == 250
        result = s.data(b"Subject: hi\r\n\r\nbody\r\n")
        assert result.code == 250
        assert s.store.stored[result.queue_id]["recipients"] == [
            "alice@EXAMPLE.com", "anyone@catchall.example", "mallory@example.com"]


def test_sqlite_recipients_other_domains_pass_on(tmp_path):
    path = _recipients_db(tmp_path)
    plugin = sqlite_recipients.Plugin({"database": path, "domains": ["example.com"]})
    with ScriptedSession(plugins=[plugin], peer_ip=TRUSTED) as s:
        s.ehlo()
        s.mail("a@sender.test")
        assert s.rcpt("whoever@remote.test").code == 250  # not a listed domain: not checked
        assert s.rcpt("Postmaster").code == 250
        assert s.rcpt("nobody@example.com").code == 550


def test_sqlite_recipients_lifecycle_and_failures(tmp_path):
    path = _recipients_db(tmp_path)
    plugin = sqlite_recipients.Plugin({"database": path, "domains": ["example.com"]})
    s = _sqlite_session(path, plugin)
    assert plugin.db is not None  # start() opened it
    s.ehlo()
    s.mail("a@sender.test")
    # The database breaks under the running server: 451 4.3.0, mail deferred, not refused.
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE recipients")
    db.close()
    r = s.rcpt("alice@example.com")
    assert (r.code, r.enhanced) == (451, "4.3.0")
    assert s.hooks.failure_counts()[(type(plugin).__name__, "on_rcpt")] == 1
    s.close()
    assert plugin.db is None  # stop() closed it

    with pytest.raises(ConfigError, match="no such table: recipients"):
        _sqlite_session(path)  # start() checks the table
    with pytest.raises(ConfigError, match="unable to open database"):
        _sqlite_session(str(tmp_path / "missing.db"))
    with pytest.raises(ValueError, match="options.domains"):
        sqlite_recipients.Plugin({"database": path, "domains": "example.com"})


# --- header_rewrite ----------------------------------------------------------------------------

class TenantFromLogin:
    """An earlier plugin that picks the tenant per message, in tx.notes."""

    def on_mail(self, tx, sender):
        tx.notes["tenant"] = "acme-" + sender.rpartition("@")[2].split(".")[0]


MESSAGE = (b"Subject: quarterly figures\r\n"
           b"X-Internal-Trace: hop1\r\n\tfolded\r\n"
           b"x-internal-score: 0.4\r\n"
           b"X-Tenant: evil\r\n"
           b"From: <a@sales.example>\r\n"
           b"\r\n"
           b"X-Internal-Trace: in the body, not a header\r\n")


def _stored_without_received(result) -> bytes:
    data = result.message
    assert data.startswith(b"Received: ")
    return data[data.index(b"\r\n", data.index(b"; ")) + 2:]  # our Received header, 3 lines, dropped


def test_header_rewrite_strips_internal_headers_leaving(tmp_path):
    options = [{}, {"tenant": "fallback", "internal_domains": ["acme.example"]}]
    with ScriptedSession(plugins=[TenantFromLogin(), header_rewrite], options=options, peer_ip=TRUSTED) as s:
        result = _send(s, "a@sales.example", ["boss@acme.example", "partner@remote.test"], MESSAGE)
        assert _stored_without_received(result) == (
            b"Subject: quarterly figures\r\n"
            b"From: <a@sales.example>\r\n"
            b"X-Tenant: acme-sales\r\n"
            b"\r\n"
            b"X-Internal-Trace: in the body, not a header\r\n")
        assert result.headers.get_all("X-Tenant") == ["acme-sales"]
        assert result.notes == {"tenant": "acme-sales"}  # stored with the message


def test_header_rewrite_keeps_internal_headers_inside(tmp_path):
    with ScriptedSession(plugins=[header_rewrite], options={"tenant": "acme", "internal_domains": ["acme.example"]},
                         peer_ip=TRUSTED) as s:
        result = _send(s, "a@acme.example", ["boss@ACME.example"], MESSAGE)
        stored = _stored_without_received(result)
        assert b"X-Internal-Trace: hop1\r\n\tfolded\r\n" in stored  # kept byte for byte
        assert b"x-internal-score: 0.4\r\n" in stored
        assert result.headers.get_all("X-Tenant") == ["acme"]  # the client's "evil" replaced


def test_header_rewrite_untrusted_client_cannot_pick_a_tenant(tmp_path):
    with ScriptedSession(plugins=[header_rewrite], options={"internal_domains": ["acme.example"]},
                         peer_ip="203.0.113.7", config={"relay_domains": ["acme.example"]}) as s:
        result = _send(s, "a@outside.test", ["boss@acme.example"], MESSAGE)
        assert "X-Tenant" not in result.headers
        assert result.headers.get("X-Internal-Trace") == "hop1\tfolded"  # inside: kept
    with pytest.raises(ConfigError, match="options.internal_domains"):
        ScriptedSession(plugins=[header_rewrite], options={"internal_domains": "acme.example"})


# --- bounce_webhook ---------------------------------------------------------------------------

class Webhook:
    """A local HTTP server: answers the first `fail` POSTs with `status`, then 204; records
    every request (its status and JSON body)."""

    def __init__(self, fail: int = 1, status: int = 500, delay: float = 0.0):
        self.requests: list[tuple[int, dict]] = []
        self.fail, self.status, self.delay = fail, status, delay
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.headers["Content-Type"] == "application/json"
                time.sleep(hook.delay)
                code = hook.status if len(hook.requests) < hook.fail else 204
                hook.requests.append((code, body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/bounces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self) -> list[dict]:
        return [body for code, body in self.requests if code == 204]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook():
    hooks = []

    def make(**kw) -> Webhook:
        hooks.append(Webhook(**kw))
        return hooks[-1]
    yield make
    for h in hooks:
        h.close()


def test_bounce_webhook_posts_the_event_after_a_failure(webhook):
    hook = webhook(fail=1, status=500)
    options = [{}, {"url": hook.url, "retries": 3, "backoff": 0.05}]
    with ScriptedSession(plugins=[TenantFromLogin(), bounce_webhook], options=options, peer_ip=TRUSTED) as s:
        result = _send(s, "alice@shop.example", ["bob@remote.test"], b"Subject: order\r\n\r\nbody\r\n")
        s.deliver(outcome="bounced", reply="550 5.1.1 no such user")  # waits for background tasks
        assert [code for code, _ in hook.requests] == [500, 204]  # the first failed, the retry landed
        [event] = hook.received()
        assert event.pop("time") == pytest.approx(time.time(), abs=60)
        assert event == {
            "event": "bounced", "id": f"{result.queue_id}/bob@remote.test/1", "queue_id": result.queue_id,
            "recipient": "bob@remote.test", "reply": {"code": 550, "enhanced": "5.1.1", "text": "no such user"},
            "attempt": 1, "remote_host": "mx.remote.test", "remote_ip": "192.0.2.25",
            "notes": {"tenant": "acme-shop"},
        }
        s.deliver(outcome="delivered")  # not a bounce: nothing posted
        assert len(hook.requests) == 2


def _event(n: int = 1) -> DeliveryEvent:
    return DeliveryEvent(f"Q{n}", f"r{n}@remote.test", Reply(550, "5.1.1", "no such user"), 1, None, None, None, {})


def test_bounce_webhook_never_blocks_and_stop_drains(webhook):
    hook = webhook(fail=0, delay=0.3)  # a slow receiver
    plugin = bounce_webhook.Plugin({"url": hook.url, "drain": 5})

    async def run():
        plugin.start()
        started = time.monotonic()
        for n in range(3):
            assert plugin.on_bounced(_event(n)) is None
        returned = time.monotonic() - started
        assert len(plugin.pending) == 3
        await plugin.stop()  # waits for the pending POSTs
        return returned

    assert asyncio.run(run()) < 0.05  # the hook returned at once: nothing waited for the POSTs
    assert sorted(body["queue_id"] for body in hook.received()) == ["Q0", "Q1", "Q2"]
    assert (plugin.sent, plugin.failed, plugin.pending) == (3, 0, set())


def test_bounce_webhook_gives_up_after_retries(webhook):
    down = webhook(fail=100, status=503)
    refused = webhook(fail=100, status=400)
    plugins = [bounce_webhook.Plugin({"url": h.url, "retries": 2, "backoff": 0.01}) for h in (down, refused)]

    async def run():
        for p in plugins:
            p.start()
            p.on_bounced(_event())
            await asyncio.wait(p.pending, timeout=10)

    asyncio.run(run())
    assert [code for code, _ in down.requests] == [503, 503, 503]  # 1 + retries, then it gives up
    assert [code for code, _ in refused.requests] == [400]  # a 4xx is final
    assert [(p.sent, p.failed) for p in plugins] == [(0, 1), (0, 1)]


def test_bounce_webhook_bounds_pending_and_stop_gives_up(webhook):
    hook = webhook(fail=0, delay=1.0)
    plugin = bounce_webhook.Plugin({"url": hook.url, "max_pending": 2, "drain": 0.1})

    async def run():
        plugin.start()
        for n in range(3):
            plugin.on_bounced(_event(n))
        assert (len(plugin.pending), plugin.dropped) == (2, 1)
        started = time.monotonic()
        await plugin.stop()
        return time.monotonic() - started

    assert asyncio.run(run()) < 0.9  # drain, then the rest cancelled
    assert plugin.pending == set()
    with pytest.raises(ValueError, match="options.url"):
        bounce_webhook.Plugin({"url": "ftp://example.com"})
    with pytest.raises(ValueError, match="options.retries"):
        bounce_webhook.Plugin({"url": hook.url, "retries": -1})


# --- docs/plugins.md ---------------------------------------------------------------------------

def test_docs_test_kit_example_runs():
    """The worked example of the test kit in docs/plugins.md runs as written."""
    text = (EXAMPLES.parent.parent / "docs" / "plugins.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    [example] = [b for b in blocks if "def test_blocklist" in b]
    scope: dict = {}
    exec(compile(example, "docs/plugins.md", "exec"), scope)
    scope["test_blocklist"]()


@pytest.mark.parametrize("module, hooks", [
    (tenant_routing, {"route": "sync"}), (sqlite_recipients, {"on_rcpt": "async"}),
    (header_rewrite, {"on_message": "sync"}), (bounce_webhook, {"on_bounced": "sync"}),
])
def test_each_example_docstring_gives_a_plugin_table_that_loads(module, hooks):
    """The `[[plugin]]` table each example's docstring shows is valid configuration, and the
    loader finds the hooks the example defines."""
    import tomllib

    from mta.config import schema as config_schema
    from mta.policy import loader

    lines = module.__doc__.splitlines()
    start = lines.index("    [[plugin]]")
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line[4:])
    table = tomllib.loads("\n".join(block))
    assert table["plugin"][0]["module"] == module.__name__
    cfg = config_schema.load(None, {"plugin": table["plugin"]})
    [entry] = loader.load(cfg.plugin)
    assert entry.kinds() == hooks
    assert entry.setup is not None  # each example checks its options or opens something first


def test_test_kit_runs_async_observers_on_the_loop():
    """docs/plugins.md: deliver() fires the outbound hooks as the server does, on the event
    loop, and waits for their background work (an async on_bounced that awaits)."""
    seen = []

    class Observer:
        async def on_bounced(self, event):
            await asyncio.sleep(0.01)
            seen.append((event.recipient, str(event.reply)))

        def on_delivered(self, event):
            asyncio.get_running_loop()  # a sync hook runs on the loop too
            seen.append((event.recipient, "delivered"))

    with ScriptedSession(plugins=[Observer()], peer_ip=TRUSTED) as s:
        _send(s, "a@shop.example", ["bob@remote.test"], b"Subject: s\r\n\r\nbody\r\n")
        s.deliver(outcome="bounced", reply="550 5.1.1 no such user")
        s.deliver(outcome="delivered")
        assert seen == [("bob@remote.test", "550 5.1.1 no such user"), ("bob@remote.test", "delivered")]
        assert s.hooks.failure_counts() == {}
