"""POST /api/inject/v1 end to end against the real `mta run`: content mode arrives at a sink
byte-exact after our Received header, fields mode as valid MIME, a batch of 100, the 401/403/
400/413 replies, a plugin's refusal as that message's error, 507/503 with nothing stored, and
kill -9 right after the 200: the message is there after restart and gets delivered.

One server (with a probe plugin and a sink as next hop) serves most tests of this module."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import SmtpPeer, free_port, mta_cmd, start_server  # noqa: E402
from dkimkit import dkimpy_results, make_key  # noqa: E402
from helpers import Client, first_field  # noqa: E402
from test_tls import selfsigned  # noqa: E402

PLUGIN = r'''
import json
from mta.plugin import Defer, Reject

LOG = {}


def setup(options):
    LOG.update(options)


def record(**kw):
    with open(LOG["log"], "a") as f:
        f.write(json.dumps(kw) + "\n")


def on_connect(conn):
    record(hook="on_connect", peer_ip=conn.peer_ip, profile=conn.listener.profile)


def on_helo(conn, name):
    record(hook="on_helo", name=name)


def on_auth(conn, user):
    record(hook="on_auth", user=user)


def on_mail(tx, sender):
    record(hook="on_mail", sender=sender, auth_user=tx.conn.auth_user)
    tx.notes["tenant"] = "t1"


def on_delivered(event):
    record(hook="on_delivered", queue_id=event.queue_id, notes=event.notes)


def on_rcpt(tx, address):
    if address.startswith("refuse-me@"):
        return Reject(550, "5.7.1", "refused by the test plugin")
    if address.startswith("defer-me@"):
        return Defer(451, "4.7.1", "deferred by the test plugin")
    return None
'''


def http(port: int, body, token: str | None = None, *, raw: bytes | None = None,
         https: bool = False) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http{'s' if https else ''}://127.0.0.1:{port}/api/inject/v1", data=data,
                                 method="POST")
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    ctx = None
    if https:
        import ssl
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # a self-signed test certificate
    try:
        with urllib.request.urlopen(req, timeout=60, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def add_token(cwd: Path, name: str, scope: str = "inject", senders: str | None = None) -> str:
    args = ["http", "token", "add", name, "--scope", scope, "--tokens-file", str(cwd / "mta-tokens")]
    if senders:
        args += ["--senders", senders]
    out = subprocess.run(mta_cmd(*args), capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip().splitlines()[-1]


def server_config(sink_port: int, log: Path, extra: str = "", http_extra: str = "") -> str:
    return (
        'mynetworks = ["127.0.0.0/8"]\n'
        f"{extra}\n"
        "[smtp]\nreverse_dns = false\ngreeting_delay = 0\n"
        f'[http]\nmax_body = "256KiB"\n{http_extra}\n'
        '[delivery]\ntls = "none"\nretry_schedule = ["1s"]\nretry_jitter = 0\n'
        "[transport]\n"
        f'"dest.test" = "smarthost 127.0.0.1:{sink_port}"\n'
        "[[plugin]]\n"
        'module = "inject_probe"\n'
        f'options = {{ log = "{log}" }}\n'
    )


class Env:
    def __init__(self, tmp: Path, sink: SmtpPeer, deliver: bool = True, extra: str = "",
                 spool: Path | None = None, env: dict | None = None, http_extra: str = ""):
        self.tmp, self.sink = tmp, sink
        (tmp / "plugins").mkdir(exist_ok=True)
        (tmp / "plugins" / "inject_probe.py").write_text(PLUGIN)
        self.log = tmp / "probe.jsonl"
        self.http_port = free_port()
        path = str(tmp / "plugins") + ":" + os.environ.get("PYTHONPATH", "")
        self.srv = start_server(tmp, config=server_config(sink.port, self.log, extra, http_extra), deliver=deliver,
                                args=("--http", f"127.0.0.1:{self.http_port}"),
                                env={"PYTHONPATH": path, **(env or {})},
                                spool=spool)
        deadline = time.monotonic() + 20
        while "http listening on" not in self.srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)

    def post(self, body, token=None, **kw):
        return http(self.http_port, body, token, **kw)

    def records(self, hook: str) -> list[dict]:
        if not self.log.exists():
            return []
        return [r for r in map(json.loads, self.log.read_text().splitlines()) if r["hook"] == hook]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inject")
    sink = SmtpPeer().start()
    key = make_key(tmp / "keys", "signed.test", "s1")
    dkim = f'\n[[dkim.sign]]\ndomain = "signed.test"\nselector = "s1"\nkey = "{key.path}"\n'
    e = Env(tmp, sink, extra=dkim)
    e.key = key
    e.token = add_token(tmp, "app1")
    e.admin = add_token(tmp, "ops", scope="admin")
    e.limited = add_token(tmp, "shop", senders="@shop.test,boss@corp.test")
    yield e
    e.srv.stop()
    sink.stop()


MESSAGE = ("From: App <app@sender.test>\r\nTo: <rcpt@dest.test>\r\nSubject: over http\r\n"
           "Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <inject-1@sender.test>\r\n\r\n"
           "line one\r\n.dot line\r\nünïcode ✓\r\n")


def arrived(sink: SmtpPeer, marker: bytes, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in list(sink.txns):
            if marker in t.data:
                return t
        time.sleep(0.05)
    raise AssertionError(f"{marker!r} never reached the sink")


def test_content_mode_arrives_byte_exact(env):
    content = MESSAGE.replace("inject-1", "content-exact")
    status, body = env.post({"envelope_sender": "app@sender.test", "recipients": ["rcpt@dest.test"],
                             "content": content}, env.token)
    assert status == 200, body
    assert body["success_count"] == 1 and body["fail_count"] == 0
    qid = body["queue_ids"][0]
    assert body["messages"] == [{"index": 0, "status": "queued", "queue_id": qid, "recipients": 1, "held": False}]
    txn = arrived(env.sink, b"content-exact")
    assert txn.sender == "app@sender.test" and txn.rcpts == ["rcpt@dest.test"]
    received, rest = first_field(txn.data)
    assert rest == content.encode()
    assert received.startswith(b"Received: from app1 (unknown [127.0.0.1])")
    assert b"with HTTPA id " + qid.encode() in received and b"for <rcpt@dest.test>" in received
    # The hooks ran as for an authenticated submission, with the token's name as the user.
    assert {"hook": "on_auth", "user": "app1"} in env.records("on_auth")
    assert {"hook": "on_mail", "sender": "app@sender.test", "auth_user": "app1"} in env.records("on_mail")
    assert env.records("on_connect")[-1]["profile"] == "submission"


def test_content_line_ends_become_crlf_and_missing_fields_are_added(env):
    status, body = env.post({"envelope_sender": "", "recipients": ["rcpt@dest.test"],
                             "content": "Subject: bare-lf-test\nX-A: 1\r\rbody\nlast"}, env.token)
    assert status == 200, body
    txn = arrived(env.sink, b"bare-lf-test")
    assert txn.sender == ""
    _, rest = first_field(txn.data)
    head, _, tail = rest.partition(b"\r\n\r\n")
    assert tail == b"body\r\nlast\r\n"
    names = [line.split(b":")[0] for line in head.split(b"\r\n")]
    assert names[:2] == [b"Message-ID", b"Date"] and names[2:] == [b"Subject", b"X-A"]


def test_fields_mode_builds_mime(env):
    status, body = env.post({
        "envelope_sender": "app@sender.test", "recipients": ["rcpt@dest.test", "other@dest.test"],
        "from": "Zoë App <app@sender.test>", "subject": "fields-mode ✓ test",
        "text_body": "Hello\nwörld", "html_body": "<p>Hello wörld</p>",
        "headers": {"To": "Readers <rcpt@dest.test>", "X-Campaign": "c-42"}}, env.token)
    assert status == 200, body
    assert body["messages"][0]["recipients"] == 2
    txn = arrived(env.sink, b"X-Campaign: c-42")
    assert sorted(txn.rcpts) == ["other@dest.test", "rcpt@dest.test"]
    assert txn.data.isascii()  # 7-bit: encoded words and quoted-printable
    msg = email.message_from_bytes(txn.data, policy=email.policy.default)
    assert msg["Subject"] == "fields-mode ✓ test"
    assert msg["From"].addresses[0].display_name == "Zoë App"
    assert msg["From"].addresses[0].addr_spec == "app@sender.test"
    assert msg["Date"].datetime is not None
    assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@mx.example.test>")
    assert msg.get_content_type() == "multipart/alternative"
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == "Hello\nwörld\n"
    assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == "<p>Hello wörld</p>\n"
    assert b"Received: from app1 " in txn.data.split(b"\r\n", 1)[0]


def test_batch_of_100(env):
    msgs = [{"envelope_sender": "app@sender.test", "recipients": [f"b{i}@dest.test"],
             "content": f"Subject: batch-{i:03d}-mark\r\n\r\nbody {i}\r\n"} for i in range(100)]
    status, body = env.post({"messages": msgs}, env.token)
    assert status == 200, body
    assert body["success_count"] == 100 and body["fail_count"] == 0
    ids = body["queue_ids"]
    assert len(set(ids)) == 100 and all(ids)
    for i in (0, 57, 99):
        arrived(env.sink, f"batch-{i:03d}-mark".encode())
    deadline = time.monotonic() + 30
    while sum(b"-mark" in t.data for t in env.sink.txns) < 100 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(b"-mark" in t.data for t in env.sink.txns) == 100


def test_dkim_signs_injected_mail(env):
    content = MESSAGE.replace("app@sender.test", "app@signed.test").replace("inject-1", "dkim-content")
    assert env.post({"envelope_sender": "app@signed.test", "recipients": ["rcpt@dest.test"],
                     "content": content}, env.token)[0] == 200
    status, _ = env.post({"envelope_sender": "app@signed.test", "recipients": ["rcpt@dest.test"],
                          "from": "App <app@signed.test>", "subject": "dkim-fields ✓", "text_body": "signed\n",
                          "headers": {"X-Mark": "dkim-fields"}}, env.token)
    assert status == 200
    for marker in (b"dkim-content", b"X-Mark: dkim-fields"):
        data = arrived(env.sink, marker).data
        _, rest = first_field(data)  # our Received, then the signature over the message
        assert rest.startswith(b"DKIM-Signature:")
        assert dkimpy_results(data, [env.key]) == [(b"signed.test", b"s1", True)]


def test_tokens_and_scopes(env):
    msg = {"envelope_sender": "app@sender.test", "recipients": ["rcpt@dest.test"], "content": MESSAGE}
    status, body = env.post(msg)
    assert status == 401 and "bearer token" in body["error"]
    assert env.post(msg, "mta_not-a-token")[0] == 401
    status, body = env.post(msg, env.admin)
    assert status == 403 and "'inject'" in body["error"]
    # A token made with --senders: other envelope senders get 403 naming the field.
    status, body = env.post({"messages": [dict(msg, envelope_sender="x@shop.test"),
                                          dict(msg, envelope_sender="app@sender.test")]}, env.limited)
    assert status == 403 and body["field"] == "messages[1].envelope_sender", body
    assert env.post(dict(msg, envelope_sender="boss@corp.test"), env.limited)[0] == 200
    assert env.post(dict(msg, envelope_sender="boss@corp.test"), env.limited)[0] == 200


OK = {"envelope_sender": "a@sender.test", "recipients": ["r@dest.test"], "content": "Subject: x\r\n\r\nx\r\n"}


@pytest.mark.parametrize("body, field", [
    ([OK], "body"),
    ({k: v for k, v in OK.items() if k != "recipients"}, "recipients"),
    (dict(OK, recipients=[]), "recipients"),
    (dict(OK, recipients=["r@dest.test", "not an address"]), "recipients[1]"),
    (dict(OK, recipients=["r@dest.test", "a@b> NOTIFY=NEVER"]), "recipients[1]"),
    (dict(OK, recipients=["x\r\nRSET@b"]), "recipients[0]"),
    (dict(OK, recipients=[7]), "recipients[0]"),
    (dict(OK, envelope_sender="bad sender"), "envelope_sender"),
    (dict(OK, content=42), "content"),
    (dict(OK, subject="mixed"), "subject"),
    ({"messages": [OK, OK, OK, dict(OK, recipients=["r@dest.test", "ok@dest.test", "@@"])]},
     "messages[3].recipients[2]"),
    ({"messages": [OK] * 101}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [OK], "envelope_sender": "x@y.test"}, "envelope_sender"),
    ({"envelope_sender": "a@s.test", "recipients": ["r@dest.test"], "subject": "no body"}, "text_body"),
    ({"envelope_sender": "a@s.test", "recipients": ["r@dest.test"], "text_body": "x"}, "from"),
    ({"envelope_sender": "a@s.test", "recipients": ["r@dest.test"], "from": "a@s.test", "text_body": "x",
      "headers": {"Content-Type": "text/html"}}, "headers.Content-Type"),
])
def test_validation_errors_name_the_field(env, body, field):
    before = len(env.srv.queue())
    status, reply = env.post(body, env.token)
    assert status == 400, reply
    assert reply["field"] == field and reply["error"].startswith(field + ":"), reply
    assert len(env.srv.queue()) == before  # all or nothing: nothing stored


def test_bad_json_and_body_over_max_body(env):
    status, reply = env.post(None, env.token, raw=b"{not json")
    assert status == 400 and reply["error"].startswith("body: invalid JSON")
    big = dict(OK, content="Subject: big\r\n\r\n" + "x" * 300_000 + "\r\n")
    status, reply = env.post(big, env.token)
    assert status == 413 and "http.max_body" in reply["error"]


def test_a_refused_recipient_is_that_messages_error(env):
    good = dict(OK, recipients=["fine@dest.test"], content="Subject: refusal-batch-good\r\n\r\nx\r\n")
    bad = dict(OK, recipients=["ok2@dest.test", "refuse-me@dest.test"], content="Subject: refused\r\n\r\nx\r\n")
    status, body = env.post({"messages": [good, bad]}, env.token)
    assert status == 200, body
    assert body["success_count"] == 1 and body["fail_count"] == 1
    refused = body["messages"][1]
    assert refused["status"] == "refused" and refused["stage"] == "rcpt"
    assert (refused["code"], refused["enhanced"]) == (550, "5.7.1")
    assert refused["failed_recipients"] == [{"recipient": "refuse-me@dest.test", "code": 550,
                                             "enhanced": "5.7.1", "text": "refused by the test plugin"}]
    assert body["queue_ids"][1] is None
    assert body["failed_recipients"] == ["ok2@dest.test", "refuse-me@dest.test"]
    assert body["errors"][0].startswith("messages[1]: 550 5.7.1 ")
    arrived(env.sink, b"refusal-batch-good")
    # Alone: nothing stored; a permanent refusal is 422, a temporary one 503.
    status, body = env.post(dict(OK, recipients=["refuse-me@dest.test"]), env.token)
    assert status == 422 and body["success_count"] == 0, body
    status, body = env.post(dict(OK, recipients=["defer-me@dest.test"]), env.token)
    assert status == 503 and body["messages"][0]["code"] == 451, body


def test_notes_travel_with_the_message(env):
    status, body = env.post(dict(OK, content="Subject: notes\r\n\r\nx\r\n"), env.token)
    assert status == 200
    qid = body["queue_ids"][0]
    deadline = time.monotonic() + 20
    while not [r for r in env.records("on_delivered") if r["queue_id"] == qid] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r["notes"] for r in env.records("on_delivered") if r["queue_id"] == qid] == [{"tenant": "t1"}]


def test_kill_9_after_the_200_loses_nothing(tmp_path):
    sink = SmtpPeer().start()
    try:
        first = Env(tmp_path, sink, deliver=False)
        token = add_token(tmp_path, "app1")
        status, body = first.post(dict(OK, recipients=["r@dest.test"],
                                       content="Subject: survives-kill\r\n\r\nx\r\n"), token)
        assert status == 200, body
        first.srv.proc.send_signal(signal.SIGKILL)
        first.srv.proc.wait(10)
        qid = body["queue_ids"][0]
        assert qid in [m["id"] for m in first.srv.queue()]
        second = Env(tmp_path, sink, deliver=True, spool=first.srv.spool)
        try:
            arrived(sink, b"survives-kill", timeout=30)
        finally:
            second.srv.stop()
    finally:
        sink.stop()


def test_no_room_is_507(tmp_path):
    sink = SmtpPeer().start()
    try:
        full = Env(tmp_path, sink, deliver=False, extra="[spool]\nmin_free_space = 1000000000000000000\n")
        token = add_token(tmp_path, "app1")
        status, body = full.post(OK, token)
        assert status == 507 and "min_free_space" in body["error"]
        assert full.srv.queue() == []
        full.srv.stop()
    finally:
        sink.stop()


def test_spool_write_failure_is_503(tmp_path):
    sink = SmtpPeer().start()
    fault = tmp_path / "faults"
    try:
        e = Env(tmp_path, sink, deliver=False, env={"MTA_TEST_FAULT_FILE": str(fault)})
        token = add_token(tmp_path, "app1")
        fault.write_text("write 28")  # ENOSPC on every spool write, polled every 0.2 s
        deadline = time.monotonic() + 10
        status, body = e.post(OK, token)
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            status, body = e.post(OK, token)
        assert status == 503 and body["messages"][0]["stage"] == "store", body
        assert body["messages"][0]["code"] == 451
        e.srv.stop()
    finally:
        sink.stop()


def test_stopping_is_503(tmp_path):
    sink = SmtpPeer().start()
    try:
        e = Env(tmp_path, sink, deliver=False)
        token = add_token(tmp_path, "app1")
        c = Client(e.srv.addr).connect()
        c.greeting()
        c.ehlo()
        c.expect("MAIL FROM:<a@example.test>", 250)  # a transaction in progress holds the stop
        e.srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while "stopping:" not in e.srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = e.post(OK, token)
        assert status == 503 and "stopping" in body["error"], body
        c.expect("RSET", 250)
        c.close()
        assert e.srv.proc.wait(15) == 0
        assert e.srv.queue() == []
    finally:
        sink.stop()


def test_https_received_says_httpsa(tmp_path):
    sink = SmtpPeer().start()
    certs = selfsigned(tmp_path / "certs")
    try:
        e = Env(tmp_path, sink, extra=f'[tls]\ncert = "{certs / "cert.pem"}"\nkey = "{certs / "key.pem"}"\n',
                http_extra="tls = true")
        token = add_token(tmp_path, "app1")
        status, body = http(e.http_port, dict(OK, content="Subject: over-https\r\n\r\nx\r\n"), token, https=True)
        assert status == 200, body
        received, _ = first_field(arrived(sink, b"over-https").data)
        assert b"with HTTPSA id" in received and b"(using TLSv1." in received
        e.srv.stop()
    finally:
        sink.stop()
