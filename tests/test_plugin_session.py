"""Plugins in the SMTP session, through the offline kit (mta.testing.ScriptedSession: the real
session, parser and chain): what each inbound hook is handed, each verdict's reply, waiting
hooks with pipelined commands, header edits and body reads, notes, routing and events."""

from __future__ import annotations

import asyncio
import types

import pytest

from mta.plugin import Accept, Defer, Disconnect, Reject, Route
from mta.testing import ScriptedSession

RELAY = {"relay_domains": ["example.com"]}


def plugin(**hooks) -> types.SimpleNamespace:
    """An object whose attributes are the hooks (what entry_for takes besides modules)."""
    return types.SimpleNamespace(**hooks)


def session(*plugins, **kw) -> ScriptedSession:
    kw.setdefault("config", RELAY)
    return ScriptedSession(plugins=list(plugins), **kw)


def test_each_inbound_hook_is_handed_its_context():
    seen = {}

    def on_connect(conn):
        seen["connect"] = (conn.peer_ip, conn.peer_port, conn.trusted, conn.listener.profile, conn.helo, conn.tls)
        conn.notes["since"] = "connect"

    def on_helo(conn, name):
        seen["helo"] = (name, conn.helo, dict(conn.notes))

    def on_mail(tx, sender):
        seen["mail"] = (sender, tx.sender, tx.params, list(tx.recipients), tx.conn.helo)

    def on_rcpt(tx, address):
        seen.setdefault("rcpt", []).append((address, list(tx.recipients), list(tx.expansion)))

    def on_data(tx, headers):
        seen["data"] = (headers.get("Subject"), headers.get_all("X-A"), len(tx.recipients))

    async def on_message(tx, msg):
        body = b"".join([c async for c in msg.body_chunks()])
        seen["message"] = (msg.queue_id, msg.size, msg.headers.get("subject"), body, msg.sender, msg.recipients)

    with session(plugin(on_connect=on_connect, on_helo=on_helo, on_mail=on_mail, on_rcpt=on_rcpt,
                        on_data=on_data, on_message=on_message), peer_ip="198.51.100.9", peer_port=4321) as s:
        assert s.ehlo("client.example").code == 250
        assert s.mail("", "SIZE=100 BODY=8BITMIME").code == 250
        assert s.rcpt("a@example.com").code == 250 and s.rcpt("b@example.com").code == 250
        result = s.data(b"Subject: hi\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody line\r\n")
    assert result.code == 250
    assert seen["connect"] == ("198.51.100.9", 4321, False, "mx", "", None)
    assert seen["helo"] == ("client.example", "", {"since": "connect"})
    assert seen["mail"] == ("", "", {"SIZE": 100, "BODY": "8BITMIME"}, [], "client.example")
    assert seen["rcpt"] == [("a@example.com", [], ["a@example.com"]),
                            ("b@example.com", ["a@example.com"], ["b@example.com"])]
    assert seen["data"] == ("hi", ["1", "2"], 2)
    qid, size, subject, body, sender, rcpts = seen["message"]
    assert (qid, size, subject, sender, rcpts) == (None, len(body), "hi", "", ["a@example.com", "b@example.com"])
    assert body.startswith(b"Received: from client.example") and body.endswith(b"\r\n\r\nbody line\r\n")
    assert result.message == body  # what the plugin read is what was stored


@pytest.mark.parametrize("stage", ["on_helo", "on_mail", "on_rcpt", "on_data", "on_message"])
@pytest.mark.parametrize("verdict", [Reject(550, "5.7.1", "blocked by policy"), Defer(450, "4.7.1", "not now")])
def test_a_refusal_is_the_reply_to_that_stage_and_nothing_is_stored(stage, verdict):
    hooks = {stage: (lambda *args: verdict)}
    with session(plugin(**hooks)) as s:
        replies = [s.ehlo("c.example")]
        if stage != "on_helo":
            replies.append(s.mail("a@b.test"))
        if stage not in ("on_helo", "on_mail"):
            replies.append(s.rcpt("x@example.com"))
        if stage in ("on_data", "on_message"):
            result = s.data(b"Subject: s\r\n\r\nbody\r\n")
            replies.append(result.reply)
            assert result.queue_id is None and s.store.stored == {}
        last = replies[-1]
        assert (last.code, last.enhanced, last.text) == (verdict.code, verdict.enhanced, verdict.text)
        assert all(r.code in (250, 354) for r in replies[:-1])
        # The session goes on: a later transaction is served (the hook now says yes).
        hooks[stage] = None


def test_disconnect_replies_then_closes_and_connect_refusal_replaces_the_greeting():
    with session(plugin(on_mail=lambda tx, s: Disconnect(421, "4.7.0", "go away"))) as s:
        s.ehlo()
        assert str(s.mail("a@b.test")) == "421 4.7.0 go away" and s.transport.closed
    s = session(plugin(on_connect=lambda conn: Reject(554, "5.7.1", "no mail from you")))
    assert str(s.greeting) == "554 5.7.1 no mail from you" and s.transport.closed
    s.close()


def test_relay_control_comes_first_and_no_plugin_overrides_it():
    asked = []
    with session(plugin(on_rcpt=lambda tx, a: asked.append(a) or Accept())) as s:
        s.ehlo()
        s.mail("a@b.test")
        assert str(s.rcpt("x@elsewhere.test")) == "554 5.7.1 Relay access denied"
        assert s.rcpt("x@example.com").code == 250
    assert asked == ["x@example.com"]


def test_accept_skips_the_later_plugins_of_the_stage():
    first = plugin(on_rcpt=lambda tx, a: Accept() if a.startswith("vip") else None)
    second = plugin(on_rcpt=lambda tx, a: Reject(550, "5.1.1", "unknown"))
    with session(first, second) as s:
        s.ehlo()
        s.mail("a@b.test")
        assert s.rcpt("vip@example.com").code == 250
        assert str(s.rcpt("joe@example.com")) == "550 5.1.1 unknown"


def test_waiting_hooks_keep_pipelined_commands_in_order():
    async def on_mail(tx, sender):
        await asyncio.sleep(0.02)

    async def on_rcpt(tx, address):
        await asyncio.sleep(0.01)
        if address.startswith("no"):
            return Reject(550, "5.1.1", "no such user")

    with session(plugin(on_mail=on_mail, on_rcpt=on_rcpt)) as s:
        s.ehlo()
        s.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<no@example.com>\r\nRCPT TO:<yes@example.com>\r\n"
                                b"DATA\r\nSubject: p\r\n\r\npipelined\r\n.\r\n")
        replies = [s.reply() for _ in range(5)]
    assert [str(r) for r in replies[:3]] == ["250 2.1.0 Ok", "550 5.1.1 no such user", "250 2.1.5 Ok"]
    assert replies[3].code == 354 and replies[4].code == 250


@pytest.mark.parametrize("bad", ["raise", "garbage", "timeout"])
def test_a_failing_hook_gives_451_430_and_the_session_goes_on(bad):
    async def on_rcpt(tx, address):
        if address.startswith("ok"):
            return None
        if bad == "raise":
            raise RuntimeError("boom")
        if bad == "garbage":
            return "550 I mean it"
        await asyncio.sleep(5)

    with session(plugin(on_rcpt=on_rcpt), timeout=0.05) as s:
        s.ehlo()
        s.mail("a@b.test")
        assert str(s.rcpt("x@example.com")) == "451 4.3.0 Temporary policy failure, try again later"
        assert s.rcpt("ok@example.com").code == 250
        assert s.data(b"Subject: s\r\n\r\nb\r\n").code == 250
    assert s.hooks.failure_counts() == {("SimpleNamespace", "on_rcpt"): 1}


def test_on_data_sees_the_headers_read_only_and_its_refusal_discards_the_body():
    def on_data(tx, headers):
        with pytest.raises(TypeError, match="read-only"):
            headers.add("X-No", "1")
        if headers.get("X-Spam") == "yes":
            return Reject(554, "5.7.1", "spam")

    big = b"Subject: big\r\nX-Spam: yes\r\n\r\n" + (b"y" * 998 + b"\r\n") * 3000
    with session(plugin(on_data=on_data)) as s:
        s.ehlo()
        s.mail("a@b.test")
        s.rcpt("x@example.com")
        s.send(b"DATA\r\n")
        s.reply()
        s.send(big[:50000])  # the header block is complete: on_data has answered
        assert s.session.tx.message.discarded
        s.send(big[50000:] + b".\r\n")
        assert str(s.reply()) == "554 5.7.1 spam" and s.store.stored == {}
        s.mail("a@b.test")
        s.rcpt("x@example.com")
        assert s.data(b"Subject: fine\r\n\r\nok\r\n").code == 250


def test_header_edits_at_on_message_are_stored_byte_exact():
    def on_message(tx, msg):
        h = msg.headers
        h.add("X-Tenant", "acme")
        assert h.remove("X-Internal-Id") == 2
        h.replace("Subject", "[ext] hello")
        h.prepend("X-First", "1")

    with session(plugin(on_message=on_message)) as s:
        s.ehlo()
        s.mail("a@b.test")
        s.rcpt("x@example.com")
        r = s.data(b"Subject: hello\r\nX-Internal-Id: 1\r\nFrom: a@b.test\r\nX-Internal-Id: 2\r\n\r\nbody\r\n.x\r\n")
    stored = r.message
    received_end = stored.index(b"X-First")
    assert stored.startswith(b"Received: ")
    assert stored[received_end:] == (b"X-First: 1\r\nSubject: [ext] hello\r\nFrom: a@b.test\r\nX-Tenant: acme\r\n"
                                     b"\r\nbody\r\n.x\r\n")


def test_a_message_of_header_fields_only_can_be_edited():
    with session(plugin(on_message=lambda tx, msg: msg.headers.add("X-Seen", "yes"))) as s:
        s.ehlo()
        s.mail("a@b.test")
        s.rcpt("x@example.com")
        r = s.bdat(b"Subject: only headers\r\n")
    assert r.code == 250 and r.message.endswith(b"Subject: only headers\r\nX-Seen: yes\r\n")


def test_notes_are_stored_with_the_message_and_bad_notes_are_refused():
    def on_mail(tx, sender):
        tx.notes["tenant"] = sender.partition("@")[2]
        if sender.startswith("bad"):
            tx.notes["oops"] = object()  # not JSON

    with session(plugin(on_mail=on_mail)) as s:
        s.ehlo()
        s.mail("a@acme.test")
        s.rcpt("x@example.com")
        assert s.data(b"Subject: s\r\n\r\nb\r\n").notes == {"tenant": "acme.test"}
        s.mail("bad@acme.test")
        s.rcpt("x@example.com")
        r = s.data(b"Subject: s\r\n\r\nb\r\n")
        assert str(r.reply) == "451 4.3.0 Temporary policy failure, try again later" and r.queue_id is None


def test_routes_and_outbound_events_see_the_notes():
    events = []

    def on_mail(tx, sender):
        tx.notes["tenant"] = "acme"

    def route(address, msg):
        if msg.notes.get("tenant") == "acme":
            return Route("smarthost 10.0.0.5:25", tls="required")

    def on_deferred(event):
        events.append(("deferred", event.recipient, event.reply.code, event.notes, event.next_attempt is not None))
        return Route("smarthost 10.0.0.6:2525")

    def on_bounced(event):
        events.append(("bounced", event.recipient, str(event.reply), event.attempt))

    with session(plugin(on_mail=on_mail, route=route, on_deferred=on_deferred, on_bounced=on_bounced)) as s:
        s.ehlo()
        s.mail("a@b.test")
        s.rcpt("x@example.com")
        s.data(b"Subject: s\r\n\r\nb\r\n")
        assert s.route("x@example.com") == "smarthost 10.0.0.5:25 tls=required"
        assert s.deliver("deferred", "451 4.4.1 try later") == "smarthost 10.0.0.6:2525"
        assert s.deliver("bounced", "550 5.1.1 no such user", attempt=3) is None
    assert events == [("deferred", "x@example.com", 451, {"tenant": "acme"}, True),
                      ("bounced", "x@example.com", "550 5.1.1 no such user", 3)]


def test_on_auth_may_refuse_a_good_login():
    def on_auth(conn, user):
        if user == "mallory":
            return Reject(535, "5.7.8", "not from here")

    users = {"alice": "pw-alice-1", "mallory": "pw-mallory-1"}
    with session(plugin(on_auth=on_auth), listener="submission", tls=True, users=users) as s:
        s.ehlo()
        assert str(s.auth("mallory", "pw-mallory-1")) == "535 5.7.8 not from here"
        assert s.session.user is None and s.session.conn.auth_user is None
        assert s.auth("alice", "pw-alice-1").code == 235
        assert s.session.conn.auth_user == "alice"


def test_the_sender_login_map_is_a_built_in_entry():
    users = {"alice@example.com": "pw-alice-1"}
    with session(listener="submission", tls=True, users=users,
                 config={**RELAY, "auth.sender_login_default": "self"}) as s:
        s.ehlo()
        assert s.auth("alice@example.com", "pw-alice-1").code == 235
        assert str(s.mail("bob@example.com")) == (
            "553 5.7.1 Sender address rejected: not owned by user alice@example.com")
        assert s.mail("alice@example.com").code == 250
    assert [e.name for e in s.hooks.entries] == ["relay", "recipients", "sender_login"]


@pytest.mark.parametrize("size, stored", [(65536, True), (65537, False)])
def test_notes_at_the_limit_are_stored_and_past_it_refused(size, stored):
    # '{"k":"' + value + '"}' is 8 octets around the value: the JSON is exactly `size` octets.
    with session(plugin(on_mail=lambda tx, s: tx.notes.update(k="x" * (size - 8)))) as s:
        s.ehlo()
        s.mail("a@b.test")
        s.rcpt("x@example.com")
        r = s.data(b"Subject: s\r\n\r\nb\r\n")
    if stored:
        assert r.code == 250 and len(r.notes["k"]) == size - 8
    else:
        assert str(r.reply) == "451 4.3.0 Temporary policy failure, try again later" and r.queue_id is None
