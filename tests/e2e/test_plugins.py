"""Python plugins (issue 20) through the real `mta run`: every inbound hook with its context,
every verdict at every stage as the client sees it, plugin failures (raise, timeout, garbage)
as 451 4.3.0 while other sessions carry on, nothing stored for a refused message, the CLI's
configuration errors, entry points and two workers. Delivery-side hooks: test_plugins_delivery.py.

The plugins (tests/e2e/plugin_probes.py) are written to a tmp dir on the server's PYTHONPATH
and report what they saw as JSON lines; their verdicts are chosen by tokens in what the
client sends. One server serves most tests of this module (module-scoped)."""

from __future__ import annotations

import base64
import os
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import free_port, mta_cmd, start_server  # noqa: E402
from helpers import Client, check, connect, queued_id, swaks  # noqa: E402
from plugin_probes import plugin_env, records, wait_records, write_plugins  # noqa: E402

PROBE_TIMEOUT = 3.0  # the probe's per-hook timeout; the sleeping hook overruns it
FAILED = "451 4.3.0 Temporary policy failure, try again later"


def plugin_config(log: Path, *, probe_options: str = "", second: bool = True, extra: str = "",
                  probe_module: str = "probe_plugin") -> str:
    text = f'''mynetworks = ["127.0.0.1/32"]
local_domains = ["local.test"]
{extra}
[smtp]
greeting_delay = 0
reverse_dns = false

[[plugin]]
module = "{probe_module}"
timeout = "{PROBE_TIMEOUT:g}s"
options = {{ log = "{log}", alt_port = 1{probe_options} }}
'''
    if second:
        text += f'''
[[plugin]]
module = "second_plugin"
options = {{ log = "{log}" }}
'''
    return text


class Box:
    """The module's shared server and its probe log."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.dir = write_plugins(tmp / "plugins")
        self.log = tmp / "probe.jsonl"
        self.srv = start_server(tmp, config=plugin_config(self.log), env=plugin_env(self.dir))

    def records(self, hook=None, **match):
        return records(self.log, hook, **match)

    def wait(self, hook, n=1, **match):
        return wait_records(self.log, hook, n, srv=self.srv, **match)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    b = Box(tmp_path_factory.mktemp("plugins"))
    yield b
    b.srv.stop()


def client_from(srv, source_ip: str) -> Client:
    """A raw client whose connection comes from `source_ip` (any 127/8 address is ours)."""
    c = Client(srv.addr, connect=False)
    c.sock = socket.create_connection(srv.addr, timeout=c.timeout, source_address=(source_ip, 0))
    return c


def reply_line(r) -> str:
    return str(r)


def message(subject: str, extra: str = "", body: bytes = b"hello\r\n") -> bytes:
    return (f"From: <a@sender.test>\r\nTo: <b@dest.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@sender.test>\r\n{extra}\r\n").encode() + body


def nothing_pending(c: Client, wait: float = 0.0) -> bool:
    """No reply bytes have arrived on c (none buffered, none readable)."""
    if c.buf:
        return False
    c.sock.setblocking(False)
    try:
        time.sleep(wait)
        try:
            c.sock.recv(1, socket.MSG_PEEK)  # data, or b"" for a close: something came
            return False
        except BlockingIOError:
            return True
    finally:
        c.sock.setblocking(True)


# ---------------------------------------------------------------------------
# 1. every inbound hook, its context
# ---------------------------------------------------------------------------

def test_inbound_hooks_see_connection_helo_mail_rcpt_and_headers(box):
    s = smtplib.SMTP(box.srv.host, box.srv.port, local_hostname="ctx.example.test", timeout=15)
    try:
        port = s.sock.getsockname()[1]
        s.ehlo()
        assert s.mail("", ["SIZE=123", "BODY=8BITMIME"]) == (250, b"2.1.0 Ok")
        assert s.rcpt("a@dest.test")[0] == 250
        assert s.rcpt("b@local.test")[0] == 250
        content = message("context", "To: <second@dest.test>\r\n")
        code, text = s.data(content)
        assert code == 250, text
    finally:
        s.quit()

    [conn] = box.records("on_connect", peer_port=port)
    assert {k: conn[k] for k in ("peer_ip", "peer_port", "trusted", "helo", "tls", "auth_user",
                                 "listener_address", "listener_profile")} == {
        "peer_ip": "127.0.0.1", "peer_port": port, "trusted": True, "helo": "", "tls": None,
        "auth_user": None, "listener_address": f"127.0.0.1:{box.srv.port}", "listener_profile": "mx"}
    [helo] = box.records("on_helo", peer_port=port)
    assert helo["name"] == "ctx.example.test"
    [mail] = box.records("on_mail", peer_port=port)
    assert mail["sender"] == "" and mail["tx_sender"] == ""
    assert mail["params"] == {"SIZE": 123, "BODY": "8BITMIME"}
    assert mail["helo"] == "ctx.example.test"
    assert mail["conn_notes"] == {"seen_port": port}  # conn.notes kept from on_connect
    assert mail["recipients"] == []
    rcpts = box.records("on_rcpt", plugin="probe", helo="ctx.example.test")
    assert [(r["address"], r["recipients"]) for r in rcpts] == [
        ("a@dest.test", []), ("b@local.test", ["a@dest.test"])]
    assert all(r["sender"] == "" for r in rcpts)
    [data] = box.records("on_data", helo="ctx.example.test")
    assert data["subject"] == "context"
    assert data["to_all"] == ["<b@dest.test>", "<second@dest.test>"]
    assert data["missing"] is None and data["missing_all"] == []
    assert data["recipients"] == ["a@dest.test", "b@local.test"]
    # the second plugin (class form, async) ran after the probe at RCPT and at the end of data
    assert [r["address"] for r in box.records("on_rcpt", plugin="second", helo="ctx.example.test")] == [
        "a@dest.test", "b@local.test"]
    assert len(box.records("on_message", plugin="second", helo="ctx.example.test")) == 1


def test_on_message_sees_size_headers_and_body_chunks(box):
    content = message("whole", "X-Probe-Message: body\r\n", body=b"line one\r\n.dot line\r\nend\r\n")
    with connect(box.srv) as c:
        c.start("body.example.test")
        qid = c.send_message("bob@sender.test", ["x@dest.test", "y@dest.test"], content)
        c.quit()
    [m] = box.records("on_message", plugin="probe", helo="body.example.test")
    body = base64.b64decode(m["body"])
    # our Received header first, then exactly what the client sent (dot-unstuffed)
    assert body.startswith(b"Received: from body.example.test"), body[:200]
    assert body.endswith(content), body[-300:]
    assert m["size"] == len(body)
    assert m["chunks"] >= 1
    assert m["queue_id"] is None  # not queued yet at on_message
    assert m["subject"] == "whole" and m["to_all"] == ["<b@dest.test>"]
    assert m["sender"] == "bob@sender.test" and m["recipients"] == ["x@dest.test", "y@dest.test"]
    assert m["notes"]["probe"]["sender"] == "bob@sender.test"
    entry = {e["id"]: e for e in box.srv.queue()}[qid]
    assert entry["size"] == m["size"]


# ---------------------------------------------------------------------------
# 2. verdicts at every stage: exactly `code enhanced text`
# ---------------------------------------------------------------------------

VERDICTS = {
    "reject": ("554 5.7.1 {stage} refused by probe", False),
    "defer": ("450 4.7.1 {stage} deferred by probe", False),
    "disconnect": ("421 4.7.0 {stage} closing by probe", True),
}


@pytest.mark.parametrize("ip,expected", [
    ("127.0.0.2", "554 5.7.1 on_connect refused by probe"),
    ("127.0.0.3", "421 4.7.2 on_connect deferred by probe"),
    ("127.0.0.4", "421 4.7.0 on_connect closing by probe"),
])
def test_on_connect_verdict_replaces_the_greeting_then_closes(box, ip, expected):
    with client_from(box.srv, ip) as c:
        assert reply_line(c.reply()) == expected
        c.assert_closed()
    assert box.records("on_connect", peer_ip=ip)


def drive_to(c: Client, stage: str, token: str, tag: str):
    """Run a session up to `stage` with `token` where that stage's hook looks; its reply."""
    c.greeting()
    if stage == "on_helo":
        return c.cmd(f"EHLO {token}.{tag}.example.test")
    c.ehlo(f"{tag}.example.test")
    if stage == "on_mail":
        return c.cmd(f"MAIL FROM:<{token}@sender.test>")
    c.expect("MAIL FROM:<a@sender.test>", 250, "2.1.0")
    if stage == "on_rcpt":
        return c.cmd(f"RCPT TO:<{token}@dest.test>")
    c.expect("RCPT TO:<b@dest.test>", 250, "2.1.5")
    header = "X-Probe-Data" if stage == "on_data" else "X-Probe-Message"
    return c.data(message(tag, f"{header}: {token}\r\n"))


@pytest.mark.parametrize("kind", list(VERDICTS))
@pytest.mark.parametrize("stage", ["on_helo", "on_mail", "on_rcpt", "on_data", "on_message"])
def test_verdict_at_each_stage_is_the_exact_reply(box, stage, kind):
    expected, closes = VERDICTS[kind]
    tag = f"v-{stage.replace('_', '')}-{kind}"
    with connect(box.srv) as c:
        r = drive_to(c, stage, f"probe-{kind}", tag)
        assert reply_line(r) == expected.format(stage=stage)
        if closes:
            c.assert_closed()
        else:  # the session goes on: a new transaction is served
            c.expect("RSET", 250)
            if stage == "on_helo":
                c.ehlo(f"{tag}.example.test")
            qid = c.send_message("a@sender.test", ["b@dest.test"], message(tag + "-after"))
            assert qid
            c.quit()


def test_swaks_sees_the_rcpt_refusal(box):
    p = swaks(box.srv, "--from", "a@sender.test", "--to", "probe-reject@dest.test", "--quit-after", "RCPT")
    out = p.stdout.decode(errors="replace")
    assert "<** 554 5.7.1 on_rcpt refused by probe" in out, out


def test_accept_skips_the_later_plugins_of_the_stage(box):
    with connect(box.srv) as c:
        c.start("accept.example.test")
        c.expect("MAIL FROM:<a@sender.test>", 250)
        # the probe (first) accepts: the second plugin, which would refuse, is not asked
        c.expect("RCPT TO:<probe-accept-second-reject@dest.test>", 250, "2.1.5")
        # without the probe's Accept the second plugin refuses it
        assert reply_line(c.cmd("RCPT TO:<second-reject@dest.test>")) == \
            "550 5.7.1 second plugin refuses second-reject"
        c.quit()
    probe = [r["address"] for r in box.records("on_rcpt", plugin="probe", helo="accept.example.test")]
    second = [r["address"] for r in box.records("on_rcpt", plugin="second", helo="accept.example.test")]
    assert probe == ["probe-accept-second-reject@dest.test", "second-reject@dest.test"]
    assert second == ["second-reject@dest.test"]
    # in config order: the probe saw the refused one before the second plugin did
    lines = [r for r in box.records("on_rcpt", address="second-reject@dest.test")]
    assert [r["plugin"] for r in lines] == ["probe", "second"]


def test_relay_denied_recipient_never_reaches_on_rcpt(box):
    with client_from(box.srv, "127.0.0.5") as c:  # outside mynetworks (127.0.0.1/32)
        c.start("untrusted.example.test")
        c.expect("MAIL FROM:<a@sender.test>", 250)
        r = c.cmd("RCPT TO:<outside@dest.test>")
        check(r, 554, "5.7.1")
        c.expect("RCPT TO:<inside@local.test>", 250, "2.1.5")
        c.quit()
    [conn] = box.records("on_connect", peer_ip="127.0.0.5")
    assert conn["trusted"] is False
    seen = [r["address"] for r in box.records("on_rcpt", helo="untrusted.example.test")]
    assert seen == ["inside@local.test", "inside@local.test"]  # probe, then second; never outside@
    assert not box.records("on_rcpt", address="outside@dest.test")


def test_helo_runs_on_helo_too(box):
    with connect(box.srv) as c:
        c.greeting()
        assert reply_line(c.cmd("HELO probe-reject.helo.example.test")) == "554 5.7.1 on_helo refused by probe"
        check(c.cmd("HELO plain-helo.example.test"), 250)
        c.quit()
    assert [r["name"] for r in box.records("on_helo") if "helo.example.test" in r["name"]] == [
        "probe-reject.helo.example.test", "plain-helo.example.test"]


def test_pipelined_commands_keep_their_order_while_async_hooks_wait(box):
    with connect(box.srv) as c:
        c.start("pipelined.example.test")
        # on_mail (the probe) and on_rcpt (the second plugin) are async and really suspend
        c.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<p1@dest.test>\r\nRCPT TO:<second-reject@dest.test>\r\n"
               b"RCPT TO:<p2@dest.test>\r\nDATA\r\n")
        assert [reply_line(r) for r in c.replies(5)] == [
            "250 2.1.0 Ok", "250 2.1.5 Ok", "550 5.7.1 second plugin refuses second-reject", "250 2.1.5 Ok",
            "354 End data with <CR><LF>.<CR><LF>"]
        c.send(message("pipelined") + b".\r\n")
        qid = queued_id(c.reply())
        # a refused MAIL: the commands pipelined behind it are refused in order
        c.send(b"MAIL FROM:<probe-reject@sender.test>\r\nRCPT TO:<p3@dest.test>\r\nDATA\r\n")
        first, second, third = c.replies(3)
        assert reply_line(first) == "554 5.7.1 on_mail refused by probe"
        check(second, 503)
        assert third.code in (503, 554), third
        c.quit()
    entry = {e["id"]: e for e in box.srv.queue()}[qid]
    assert [r["address"] for r in entry["recipients"]] == ["p1@dest.test", "p2@dest.test"]
    assert [r["recipients"] for r in box.records("on_rcpt", plugin="probe", helo="pipelined.example.test")] == [
        [], ["p1@dest.test"], ["p1@dest.test"]]


def test_bdat_on_data_refusal_comes_with_the_last_chunk(box):
    with connect(box.srv) as c:
        c.start("bdat.example.test")
        c.mail_rcpt("a@sender.test", ["b@dest.test"])
        head = message("bdat", "X-Probe-Data: probe-defer\r\n", body=b"")
        c.send(f"BDAT {len(head)}\r\n".encode() + head)
        check(c.reply(), 250)  # a chunk is acknowledged; the verdict waits for LAST
        wait_records(box.log, "on_data", srv=box.srv, subject="bdat")
        body = b"x" * 5000 + b"\r\n"
        c.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
        assert reply_line(c.reply()) == "450 4.7.1 on_data deferred by probe"
        # BDAT with an edit at on_message: stored edited
        c.mail_rcpt("a@sender.test", ["b@dest.test"])
        content = message("bdat edit", "X-Probe-Message: edit\r\nX-Internal-Secret: x\r\n")
        c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
        qid = queued_id(c.reply())
        c.quit()
    from helpers import body_of
    stored = body_of(box.srv, qid, helo="bdat.example.test")
    assert stored == content.replace(b"Subject: bdat edit\r\n", b"Subject: [probe] bdat edit\r\n").replace(
        b"X-Internal-Secret: x\r\n\r\n", b"X-Tenant: acme\r\n\r\n"), stored


def test_header_edit_on_a_message_without_a_body(box):
    """RFC 5322 lets a message end after its fields (no empty line, no body)."""
    content = b"Subject: headers only\r\nX-Probe-Message: edit\r\n"
    with connect(box.srv) as c:
        c.start("nobody.example.test")
        c.mail_rcpt("a@sender.test", ["b@dest.test"])
        r = c.data(content)
        c.quit()
    assert r.code == 250, f"{r} (server: {box.srv.log()[-1500:]})"
    from helpers import body_of
    fields = b"Subject: [probe] headers only\r\nX-Probe-Message: edit\r\nX-Tenant: acme\r\n"
    assert body_of(box.srv, queued_id(r), helo="nobody.example.test") in (fields, fields + b"\r\n")


# ---------------------------------------------------------------------------
# 5. failing hooks: raise, overrun, garbage -> 451 4.3.0, logged, others served
# ---------------------------------------------------------------------------

def test_raising_hook_gives_451_and_logs_the_traceback(box):
    with connect(box.srv) as c:
        c.start("raise.example.test")
        c.expect("MAIL FROM:<a@sender.test>", 250)
        r = c.cmd("RCPT TO:<probe-raise@dest.test>")
        assert reply_line(r) == FAILED
        assert "Traceback" not in r.raw.decode() and "exploded" not in r.raw.decode()
        c.expect("RCPT TO:<fine@dest.test>", 250, "2.1.5")  # the session goes on
        c.quit()
    log = box.srv.log()
    i = log.find("plugin probe_plugin: hook on_rcpt failed: RuntimeError: probe exploded in on_rcpt")
    assert i >= 0, log[-3000:]
    tail = log[i:i + 3000]
    assert "Traceback (most recent call last):" in tail, tail
    assert "probe_plugin.py" in tail and "raise RuntimeError" in tail, tail


def test_garbage_answers_give_451_and_a_log_line(box):
    with connect(box.srv) as c:
        c.greeting()
        assert reply_line(c.cmd("EHLO probe-garbage.example.test")) == FAILED
        c.ehlo("garbage.example.test")
        # a Reject with a 4xx code is a plugin error too (Verdict checks its class)
        assert reply_line(c.cmd("MAIL FROM:<probe-badcode@sender.test>")) == FAILED
        c.quit()
    log = box.srv.log()
    assert "plugin probe_plugin: hook on_helo failed: TypeError: returned 42, which is not a verdict" in log
    assert "plugin probe_plugin: hook on_mail failed: ValueError: Reject needs a reply code in 500..599" in log


def test_editing_the_on_data_view_is_a_plugin_error(box):
    with connect(box.srv) as c:
        c.start("dataedit.example.test")
        c.mail_rcpt("a@sender.test", ["b@dest.test"])
        assert reply_line(c.data(message("edit", "X-Probe-Data: edit\r\n"))) == FAILED
        c.quit()
    assert "plugin probe_plugin: hook on_data failed: TypeError" in box.srv.log()


def test_a_failure_after_header_edits_stores_nothing(box):
    with connect(box.srv) as c:
        c.start("halfedit.example.test")
        c.mail_rcpt("halfedit@sender.test", ["b@dest.test"])
        r = c.data(message("half edited", "X-Probe-Message: edit probe-raise\r\n"))
        assert reply_line(r) == FAILED
        c.mail_rcpt("probe-badnotes@sender.test", ["b@dest.test"])  # notes that are not JSON
        assert reply_line(c.data(message("bad notes"))) == FAILED
        c.quit()
    assert "plugin probe_plugin: hook on_message failed: RuntimeError: probe exploded in on_message" in box.srv.log()
    assert "cannot be stored: Object of type set is not JSON serializable" in box.srv.log()
    senders = {e["sender"] for e in box.srv.queue()}
    assert not senders & {"probe-badnotes@sender.test", "halfedit@sender.test"}, senders


def test_pipelined_rset_and_a_vanished_client_while_a_hook_waits(box):
    gone = connect(box.srv)
    gone.start("vanished.example.test")
    gone.send(b"MAIL FROM:<probe-sleep@sender.test>\r\n")
    gone.close()  # the client leaves while its hook waits
    with connect(box.srv) as c:
        c.start("rset.example.test")
        c.send(b"MAIL FROM:<probe-sleep@sender.test>\r\nRSET\r\nMAIL FROM:<a@sender.test>\r\n")
        assert [reply_line(r) for r in c.replies(3, timeout=PROBE_TIMEOUT + 10)] == [
            FAILED, "250 2.0.0 Ok", "250 2.1.0 Ok"]
        c.quit()
    # by now the vanished client's hook has overrun too; the server carries on
    with connect(box.srv) as c:
        c.start("after-vanished.example.test")
        c.mail_rcpt("a@sender.test", ["b@dest.test"])
        assert queued_id(c.data(message("after")))
        c.quit()
    assert box.srv.proc.poll() is None
    assert box.srv.log().count("plugin probe_plugin: hook on_mail timed out") >= 2


def test_hook_past_its_timeout_gives_451_while_another_session_is_served(box):
    slow = connect(box.srv)
    try:
        slow.start("slow.example.test")
        t0 = time.monotonic()
        slow.send(b"MAIL FROM:<probe-sleep@sender.test>\r\n")
        # meanwhile another session runs a whole transaction
        with connect(box.srv) as other:
            other.start("meanwhile.example.test")
            qid = other.send_message("a@sender.test", ["b@dest.test"], message("meanwhile"))
            other.quit()
        other_done = time.monotonic() - t0
        assert other_done < PROBE_TIMEOUT, f"the other session took {other_done:.2f}s"
        assert nothing_pending(slow), "the slow hook's reply came before the other session's 250s"
        r = slow.reply(timeout=PROBE_TIMEOUT + 10)
        waited = time.monotonic() - t0
        assert reply_line(r) == FAILED
        assert PROBE_TIMEOUT - 0.2 <= waited < PROBE_TIMEOUT + 5, waited
        slow.expect("MAIL FROM:<a@sender.test>", 250, "2.1.0")  # the session carries on
        slow.quit()
    finally:
        slow.close()
    assert qid in {e["id"] for e in box.srv.queue()}
    assert f"plugin probe_plugin: hook on_mail timed out (timeout {PROBE_TIMEOUT:g}s)" in box.srv.log()


# ---------------------------------------------------------------------------
# 4. refused messages leave nothing in the spool
# ---------------------------------------------------------------------------

def spool_bytes(spool: Path) -> int:
    """Bytes the spool takes on disk (allocated: the throttle table is a sparse file)."""
    return sum(p.stat().st_blocks * 512 for p in spool.rglob("*") if p.is_file())


def test_refused_messages_leave_nothing_in_the_spool(tmp_path):
    plugins = write_plugins(tmp_path / "plugins")
    log = tmp_path / "probe.jsonl"
    cfg = plugin_config(log, second=False)
    srv = start_server(tmp_path, config=cfg, env=plugin_env(plugins))
    try:
        with connect(srv) as c:
            c.start("spool.example.test")
            c.mail_rcpt("a@sender.test", ["b@dest.test"])
            r = c.data(message("refused whole", "X-Probe-Message: probe-reject\r\n"))
            assert reply_line(r) == "554 5.7.1 on_message refused by probe"
            # a large message refused at the end of its headers: the refusal comes at the
            # end of data, and its body is never stored
            c.mail_rcpt("a@sender.test", ["b@dest.test"])
            c.expect("DATA", 354)
            c.send(message("refused big", "X-Probe-Data: probe-reject\r\n", body=b""))
            wait_records(log, "on_data", srv=srv, subject="refused big")  # fired mid-DATA
            line = b"x" * 998 + b"\r\n"
            for _ in range(8 * 1024 * 1024 // len(line)):  # 8 MiB
                c.send(line)
            assert nothing_pending(c, 0.3), "a reply before the end of data"
            assert spool_bytes(srv.spool) < 1024 * 1024, "the refused body is being kept"
            c.send(b".\r\n")
            assert reply_line(c.reply(timeout=60)) == "554 5.7.1 on_data refused by probe"
            c.quit()
        assert srv.queue() == []
        assert spool_bytes(srv.spool) < 1024 * 1024
        assert "queued " not in srv.log()
    finally:
        assert srv.stop() == 0
    again = start_server(tmp_path, config=cfg, env=plugin_env(plugins), spool=srv.spool)
    try:
        assert again.queue() == []
        assert "recovered 0 message(s)" in again.log(), again.log()
    finally:
        again.stop()


# ---------------------------------------------------------------------------
# 9. mta plugins list, check-config and run: configuration errors name the plugin
# ---------------------------------------------------------------------------

BAD_PLUGINS = {
    "bad_hook": ("def on_rcp(tx, address):\n    return None\n",
                 "plugin[0] bad_hook (bad_hook): unknown hook 'on_rcp' (did you mean 'on_rcpt'?)"),
    "bad_signature": ("def on_rcpt(tx):\n    return None\n",
                      ("plugin[0] bad_signature (bad_signature): hook on_rcpt(tx) has the wrong signature: "
                       "it is called as on_rcpt(tx, address)")),
    "bad_import": ("import no_such_dependency_xyz\n\ndef on_rcpt(tx, address):\n    return None\n",
                   ("plugin[0] bad_import (bad_import): import failed: ModuleNotFoundError: "
                    "No module named 'no_such_dependency_xyz'")),
    "probe_plugin": (None, ("plugin probe_plugin (probe_plugin): setup failed: OptionsError: "
                            "probe: option map '/nope/map.toml' is not a readable file")),
}


def run_cli(args, env, cwd, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(mta_cmd(*args), capture_output=True, text=True, env={**os.environ, **env},
                          cwd=cwd, timeout=timeout, check=False)


def test_plugins_list_without_a_config_has_no_plugins(tmp_path):
    p = run_cli(["plugins", "list"], {}, tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1:] == ["no plugins configured"], p.stdout


def test_plugins_list_shows_hooks_kinds_and_timeouts(tmp_path):
    plugins = write_plugins(tmp_path / "plugins")
    cfg = tmp_path / "mta.toml"
    cfg.write_text(plugin_config(tmp_path / "probe.jsonl"))
    p = run_cli(["plugins", "list", "--config", str(cfg)], plugin_env(plugins), tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("built-in: relay (on_rcpt), recipients (on_rcpt)"), p.stdout
    assert lines[1:] == [
        f"1. probe_plugin  module=probe_plugin  timeout={PROBE_TIMEOUT:g}s",
        ("   hooks: on_connect (sync), on_helo (sync), on_mail (async), on_rcpt (sync), on_data (sync), "
         "on_message (async), route (sync), on_delivered (async), on_deferred (sync), on_bounced (sync)"),
        "   lifecycle: setup/start, stop",
        "2. second_plugin  module=second_plugin  timeout=5s",
        "   hooks: on_rcpt (async), on_message (async)",
        "   lifecycle: setup/start, stop",
    ], p.stdout


@pytest.mark.parametrize("module", list(BAD_PLUGINS))
def test_configuration_errors_name_the_plugin_at_check_config_and_run(tmp_path, module):
    plugins = write_plugins(tmp_path / "plugins")
    source, expected = BAD_PLUGINS[module]
    options = 'options = { fail_setup = "/nope/map.toml", log = "%s" }' % (tmp_path / "probe.jsonl")
    if source is not None:
        (plugins / f"{module}.py").write_text(source)
        options = ""
    cfg = tmp_path / "mta.toml"
    cfg.write_text(f'[[plugin]]\nmodule = "{module}"\n{options}\n')
    env = plugin_env(plugins)
    p = run_cli(["check-config", str(cfg)], env, tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert expected in p.stderr, p.stderr
    spool = tmp_path / "spool"
    port = str(free_port())
    r = run_cli(["run", "--config", str(cfg), "--spool", str(spool), "--listen", f"127.0.0.1:{port}"],
                env, tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "mta: configuration error:" in r.stderr and expected in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# 11, 12. an entry point plugin by name; two workers; setup/start and stop at SIGTERM
# ---------------------------------------------------------------------------

def test_entry_point_plugin_loads_by_name(tmp_path):
    from plugin_probes import PROBE
    site = tmp_path / "site"
    dist = site / "acme_probe-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-probe\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mta.plugins]\nacme-probe = acme_probe_impl\n")
    (site / "acme_probe_impl.py").write_text(PROBE)
    log = tmp_path / "probe.jsonl"
    cfg = plugin_config(log, second=False, probe_module="acme-probe")
    env = plugin_env(site)
    cfg_file = tmp_path / "ep.toml"
    cfg_file.write_text(cfg)
    p = run_cli(["plugins", "list", "--config", str(cfg_file)], env, tmp_path)
    assert p.returncode == 0, p.stderr
    assert f"1. acme-probe  module=acme-probe  timeout={PROBE_TIMEOUT:g}s" in p.stdout, p.stdout
    srv = start_server(tmp_path, config=cfg, env=env)
    try:
        with connect(srv) as c:
            c.start("entrypoint.example.test")
            r = c.cmd("MAIL FROM:<probe-reject@sender.test>")
            assert reply_line(r) == "554 5.7.1 on_mail refused by probe"
            c.quit()
        assert records(log, "on_helo", name="entrypoint.example.test")
    finally:
        assert srv.stop() == 0
    assert [r["hook"] for r in records(log) if r["hook"] in ("setup", "stop")] == ["setup", "stop"]


def test_two_workers_both_load_the_plugins_and_mail_flows(tmp_path):
    plugins = write_plugins(tmp_path / "plugins")
    log = tmp_path / "probe.jsonl"
    srv = start_server(tmp_path, config=plugin_config(log), env=plugin_env(plugins), args=("--workers", "2"))
    try:
        setups = wait_records(log, "setup", 2, srv=srv)
        pids = {r["pid"] for r in setups}
        assert len(pids) == 2, setups
        assert all(r["options"] == {"log": str(log), "alt_port": 1} for r in setups), setups
        assert {r["pid"] for r in wait_records(log, "start", 2, srv=srv, plugin="second")} == pids
        seen: set[int] = set()
        qids = []
        for i in range(60):  # connections spread over the workers by SO_REUSEPORT
            with connect(srv) as c:
                c.start(f"w{i}.example.test")
                qids.append(c.send_message("a@sender.test", ["b@dest.test"], message(f"w{i}")))
                c.quit()
            seen |= {r["pid"] for r in records(log, "on_mail", helo=f"w{i}.example.test")}
            if seen == pids and i >= 3:
                break
        assert seen == pids, f"on_mail ran in {seen}, workers {pids}"
        assert sorted(e["id"] for e in srv.queue()) == sorted(qids)
    finally:
        assert srv.stop() == 0
    stops = records(log, "stop")
    assert {r["pid"] for r in stops if r["plugin"] == "probe"} == pids
    assert all(r["started"] for r in stops if r["plugin"] == "second")
    assert {r["pid"] for r in stops if r["plugin"] == "second"} == pids


def test_sigterm_while_a_hook_waits_stops_cleanly_and_runs_stop(tmp_path):
    import signal
    plugins = write_plugins(tmp_path / "plugins")
    log = tmp_path / "probe.jsonl"
    srv = start_server(tmp_path, config=plugin_config(log), env=plugin_env(plugins))
    c = connect(srv)
    try:
        c.start("sigterm.example.test")
        c.send(b"MAIL FROM:<probe-sleep@sender.test>\r\n")
        wait_records(log, "on_mail", srv=srv, helo="sigterm.example.test")
        srv.proc.send_signal(signal.SIGTERM)
        # the waiting hook still gets its answer (its timeout), then the client leaves
        assert reply_line(c.reply(timeout=PROBE_TIMEOUT + 10)) == FAILED
        r = c.cmd("QUIT")
        assert r.code in (221, 421), r
        assert srv.proc.wait(15) == 0, srv.log()[-3000:]
    finally:
        c.close()
        srv.stop()
    assert [r["plugin"] for r in records(log, "stop")] == ["second", "probe"]  # last first
    assert "Traceback" not in srv.log(), srv.log()[-3000:]
