"""Outbound delivery end to end (issue 5 §8): the real `mta run` with delivery
on, delivering to real peers on loopback.

- A private Postfix instance (tests/e2e/postfix_peer.py) receives relayed mail
  into a Maildir: headers, body and envelope byte-exact apart from Received.
- A real authoritative DNS server on 127.0.0.1 (tests/dnsserver.py) serves MX
  and A records pointing at scriptable SMTP peers on 127.0.0.2 / 127.0.0.3
  (`peer_factory` in conftest.py): preference, failover, implicit MX, null MX,
  NXDOMAIN, SERVFAIL.
- Peers that answer 4xx then 2xx, 5xx, a mix per recipient; DSNs land in the
  sender's Maildir (the sender's domain is local to mta) and are parsed with
  `email`; bounce of a bounce; queue lifetime expiry.
- Local delivery: Maildir with aliases, unknown users refused at RCPT, LMTP
  over TCP and a unix socket with per-recipient replies.

Outcomes are read from the delivery log ([delivery] log_file, JSON lines) and
`mta queue list --json`. Retries are 1 s apart without jitter. Every wait is
bounded; nothing asserts speed.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dnsserver import DNSServer  # noqa: E402
from helpers import _toml_value, connect  # noqa: E402
from postfix_peer import PostfixPeer  # noqa: E402

SENDER = "alice@sender.test"
WAIT = 20.0  # seconds: the bound on every wait for a delivery outcome
# A retry is due 1 s after a deferral (retry_schedule ["1s"], no jitter); allow
# ample slack for a loaded machine, but far less than the queue manager's
# longest idle sleep (30 s), so a missed wake-up shows as a failure.
RETRY_WAIT = 10.0


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def mta_config(tmp_path: Path, *, top: dict | None = None, delivery: dict | None = None,
               dns: dict | None = None, transport: dict | None = None,
               aliases: dict | None = None, virtual: dict | None = None) -> str:
    """TOML for a delivering server: fast retries, a delivery log in tmp_path,
    the sender's domain local (DSNs land in tmp_path/mail/<domain>/<user>)."""
    top = {"local_domains": ["sender.test"], **(top or {})}
    d = {
        "retry_schedule": ["1s"],
        "retry_interval": "1s",
        "retry_jitter": 0,
        "log_file": str(tmp_path / "delivery.log"),
        "tls": "none",
        "local_transport": f"maildir {tmp_path}/mail/{{domain}}/{{user}}",
        **(delivery or {}),
    }
    out = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for name, table in (("delivery", d), ("dns", dns), ("transport", transport),
                        ("aliases", aliases), ("virtual", virtual)):
        if table:
            out.append(f"\n[{name}]")
            out += [f"{_toml_value(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"


def dns_table(dns: DNSServer) -> dict:
    return {"nameservers": dns.nameservers, "port": dns.port, "timeout": "2s"}


def log_records(tmp_path: Path) -> list[dict]:
    p = tmp_path / "delivery.log"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def wait_log(tmp_path: Path, srv, pred, n: int = 1, timeout: float = WAIT) -> list[dict]:
    """The delivery-log records matching pred, once there are at least n."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in log_records(tmp_path) if pred(r)]
        if len(found) >= n:
            return found
        if time.monotonic() > deadline or srv.proc.poll() is not None:
            raise AssertionError(f"{len(found)} of {n} matching delivery-log records after {timeout}s;"
                                 f"\nlog: {log_records(tmp_path)}\nserver:\n{srv.log()[-4000:]}")
        time.sleep(0.1)


def rec(rcpt: str, status: str | None = None, qid: str | None = None):
    return lambda r: (r["recipient"] == rcpt and (status is None or r["status"] == status)
                      and (qid is None or r["queue_id"] == qid))


def wait_queue(srv, pred, timeout: float = WAIT) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        q = srv.queue()
        if pred(q):
            return q
        if time.monotonic() > deadline:
            raise AssertionError(f"queue never matched in {timeout}s: {q}\nserver:\n{srv.log()[-4000:]}")
        time.sleep(0.2)


def queue_empty(srv, timeout: float = WAIT) -> None:
    wait_queue(srv, lambda q: q == [], timeout)


def send(srv, rcpts: list[str], content: bytes, sender: str = SENDER, params: str = "") -> str:
    with connect(srv) as c:
        c.start()
        qid = c.send_message(sender, rcpts, content, params)
        c.quit()
    return qid


def message(subject: str = "test", body: bytes = b"hello\r\n", to: str = "user@dest.test") -> bytes:
    return (f"From: Alice <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '.')}.{time.time_ns()}@sender.test>\r\n"
            "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n\r\n").encode() + body


def maildir_files(root: Path) -> list[Path]:
    new = root / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def wait_maildir(root: Path, n: int, srv, timeout: float = WAIT) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        files = maildir_files(root)
        if len(files) >= n:
            return files
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(files)} of {n} messages in {root} after {timeout}s;\n"
                                 f"server:\n{srv.log()[-4000:]}")
        time.sleep(0.1)


def parse_dsn(path: Path) -> tuple[email.message.EmailMessage, list]:
    """(the DSN, its per-recipient status blocks); checks the report structure."""
    raw = path.read_bytes()
    assert raw.startswith(b"Return-Path: <>\n"), f"a DSN's envelope sender must be <>: {raw[:200]!r}"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report", msg["Content-Type"]
    assert msg.get_param("report-type") == "delivery-status", msg["Content-Type"]
    parts = msg.get_payload()
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    assert parts[2].get_content_type() in ("text/rfc822-headers", "message/rfc822")
    blocks = parts[1].get_payload()  # [per-message fields, per-recipient fields...]
    assert "Reporting-MTA" in blocks[0], blocks[0]
    return msg, blocks[1:]


def strip_received(data: bytes, eol: bytes = b"\n") -> tuple[list[bytes], bytes]:
    """Leading Received header fields (folded lines included) and the rest."""
    fields: list[bytes] = []
    rest = data
    for _ in range(100):
        if not rest.startswith(b"Received:"):
            break
        end = 0
        for _ in range(1000):
            i = rest.index(eol, end) + len(eol)
            end = i
            if rest[i:i + 1] not in (b" ", b"\t"):
                break
        fields.append(rest[:end])
        rest = rest[end:]
    return fields, rest


def pair_of_peers(peer_factory, hosts=("127.0.0.2", "127.0.0.3"), **kw):
    """Peers on several loopback addresses sharing one port (MX deliveries all go
    to [delivery] smtp_port)."""
    for _ in range(20):
        first = peer_factory(host=hosts[0], name=f"peer-{hosts[0]}", **kw)
        try:
            rest = [peer_factory(host=h, port=first.port, name=f"peer-{h}", **kw) for h in hosts[1:]]
        except OSError:
            first.stop()
            continue
        return [first, *rest]
    raise RuntimeError("no port free on every address")


def refused_port(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return False
    except OSError:
        return True


# ---------------------------------------------------------------------------
# 1. relay into a real Postfix
# ---------------------------------------------------------------------------

def test_relay_into_postfix_byte_exact(tmp_path, server_factory):
    pf = PostfixPeer(tmp_path / "pf", domain="dest.test", users=["user", "other"])
    try:
        pf.start()  # raises PostfixError with Postfix's reason: a failure, never a skip
        srv = server_factory(config=mta_config(tmp_path), deliver=True,
                             args=("--relay-to", f"127.0.0.1:{pf.port}"))
        body = (b"first line\r\n"
                b".a line starting with a dot\r\n"
                b"..two dots\r\n"
                b".\r\n"  # a lone dot in the content: must not end the message anywhere
                b"8-bit: caf\xc3\xa9 \xe2\x82\xac na\xc3\xafve\r\n"
                b"trailing spaces   \r\n"
                b"\ttab-indented\r\n"
                b"\r\n"
                b"last line\r\n")
        content = (b"From: Alice <alice@sender.test>\r\n"
                   b"To: user@dest.test, other@dest.test\r\n"
                   b"Subject: =?utf-8?q?caf=C3=A9?= relay test\r\n"
                   b"Message-ID: <relay.1@sender.test>\r\n"
                   b"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
                   b"X-Folded: one\r\n\ttwo\r\n"
                   b"MIME-Version: 1.0\r\n"
                   b"Content-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Transfer-Encoding: 8bit\r\n"
                   b"\r\n" + body)
        qid = send(srv, ["user@dest.test", "other@dest.test"], content, params="BODY=8BITMIME")
        for user in ("user", "other"):
            files = pf.wait_messages(user, 1, timeout=WAIT)
            assert len(files) == 1, files
            got = files[0].read_bytes()
            expected_head = (b"Return-Path: <alice@sender.test>\n"
                             + f"X-Original-To: {user}@dest.test\nDelivered-To: {user}@dest.test\n".encode())
            assert got.startswith(expected_head), got[:400]
            received, rest = strip_received(got[len(expected_head):])
            assert len(received) == 2, received  # Postfix's, then ours
            assert b"by postfix.dest.test (Postfix)" in received[0], received[0]
            assert b"by mx.example.test" in received[1] and qid.encode() in received[1], received[1]
            assert rest == content.replace(b"\r\n", b"\n"), (rest, content)
        recs = wait_log(tmp_path, srv, lambda r: r["status"] == "delivered", n=2)
        assert {r["recipient"] for r in recs} == {"user@dest.test", "other@dest.test"}
        for r in recs:
            assert r["queue_id"] == qid and r["attempt"] == 1 and r["remote_ip"] == "127.0.0.1", r
            assert r["reply"].startswith("250"), r
        queue_empty(srv)
        # One transaction for both recipients, BODY=8BITMIME passed on.
        assert "from=<alice@sender.test>" in pf.log() and "nrcpt=2" in pf.log(), pf.log()[-3000:]
    finally:
        pf.stop()


@pytest.mark.parametrize("agent", [True, False], ids=["agent", "in-process"])
def test_queued_messages_are_pipelined_into_postfix_without_rset(tmp_path, server_factory, agent):
    """One connection allowed (delivery.max_connections = 1) and Postfix pausing a second
    before each end-of-data reply: the messages that wait meanwhile go behind the data (a
    BDAT chunk: Postfix offers CHUNKING) of the one before them, envelope in the same write
    and no RSET (RFC 2920). Postfix takes every one, byte for byte, never logs improper
    pipelining, and counts fewer RSETs than transactions on its connection."""
    pf = PostfixPeer(tmp_path / "pf", domain="dest.test", extra={"smtpd_end_of_data_restrictions": "sleep 1"})
    try:
        pf.start()
        srv = server_factory(config=mta_config(tmp_path, delivery={"agent": agent, "max_connections": 1}),
                             deliver=True, args=("--relay-to", f"127.0.0.1:{pf.port}"))
        n = 6
        contents = [message(f"chained {i}") for i in range(n)]
        # The first opens the connection (and starts the agent); the rest come while one
        # after the other waits a second for its end-of-data reply, on the pooled connection.
        qids = [send(srv, ["user@dest.test"], contents[0])]
        wait_log(tmp_path, srv, lambda r: r["status"] == "delivered", n=1)
        with connect(srv) as c:
            c.start()
            qids += [c.send_message(SENDER, ["user@dest.test"], content) for content in contents[1:]]
            c.quit()
        files = pf.wait_messages("user", n, timeout=WAIT + n)
        got = sorted(f.read_bytes() for f in files)
        assert len(got) == n, got
        for content in contents:
            assert sum(1 for g in got if content.replace(b"\r\n", b"\n") in g) == 1, content
        recs = wait_log(tmp_path, srv, lambda r: r["status"] == "delivered", n=n)
        assert sorted(r["queue_id"] for r in recs) == sorted(qids) and all(r["attempt"] == 1 for r in recs), recs
        queue_empty(srv)
        assert srv.stop() == 0  # QUITs the pooled connection: Postfix logs its command counts
        deadline = time.monotonic() + WAIT
        while "disconnect from" not in (log := pf.log()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "improper command pipelining" not in log, log[-3000:]
        counts = {"mail": 0, "rset": 0}
        for line in log.splitlines():
            if "disconnect from" in line:
                for k in counts:
                    counts[k] += sum(int(w.split("=")[1].split("/")[0]) for w in line.split() if w.startswith(k + "="))
        # RSET before the first of the five on the pooled connection, and perhaps the second
        # (if it came after the first's chunk went); the others went behind a chunk.
        assert counts["mail"] == n and counts["rset"] <= 2, (counts, log[-3000:])
        assert "Traceback" not in srv.log(), srv.log()[-3000:]
    finally:
        pf.stop()


# ---------------------------------------------------------------------------
# 2. MX through the loopback DNS server
# ---------------------------------------------------------------------------

@pytest.fixture
def dns():
    with DNSServer(ttl=300, negative_ttl=1) as srv:
        yield srv


def mx_server(tmp_path, server_factory, dns, port, **kw):
    delivery = {"smtp_port": port, **kw.pop("delivery", {})}
    return server_factory(config=mta_config(tmp_path, delivery=delivery, dns=dns_table(dns), **kw),
                          deliver=True)


def test_mx_preference_order(tmp_path, server_factory, peer_factory, dns):
    p2, p3 = pair_of_peers(peer_factory)
    # Listed worst first: the order must come from the preference, not the answer.
    dns.add("dest.test", [("MX", "20 mx-b.dest.test."), ("MX", "10 mx-a.dest.test.")])
    dns.add("mx-a.dest.test", [("A", "127.0.0.3")])
    dns.add("mx-b.dest.test", [("A", "127.0.0.2")])
    srv = mx_server(tmp_path, server_factory, dns, p2.port)
    qids = [send(srv, [f"u{i}@dest.test"], message(f"pref {i}", to=f"u{i}@dest.test")) for i in range(3)]
    recs = wait_log(tmp_path, srv, lambda r: r["status"] == "delivered", n=3)
    assert {r["queue_id"] for r in recs} == set(qids)
    for r in recs:
        assert r["remote_ip"] == "127.0.0.3" and r["remote_host"] == "mx-a.dest.test", r
    assert len(p3.wait_txns(3)) == 3
    assert p2.txns == [] and p2.connections == 0
    assert dns.count("dest.test", "MX") >= 1
    queue_empty(srv)


def test_mx_failover_when_first_refuses(tmp_path, server_factory, peer_factory, dns):
    (p2,) = pair_of_peers(peer_factory, hosts=("127.0.0.2",))
    assert refused_port("127.0.0.4", p2.port)
    dns.add("dest.test", [("MX", "10 mx-dead.dest.test."), ("MX", "20 mx-live.dest.test.")])
    dns.add("mx-dead.dest.test", [("A", "127.0.0.4")])  # nothing listens there
    dns.add("mx-live.dest.test", [("A", "127.0.0.2")])
    srv = mx_server(tmp_path, server_factory, dns, p2.port)
    qid = send(srv, ["user@dest.test"], message("failover"))
    (r,) = wait_log(tmp_path, srv, rec("user@dest.test"))
    assert r["status"] == "delivered" and r["attempt"] == 1, r
    assert r["remote_ip"] == "127.0.0.2" and r["remote_host"] == "mx-live.dest.test", r
    (txn,) = p2.wait_txns(1)
    assert txn.rcpts == ["user@dest.test"] and txn.sender == SENDER
    received, _ = strip_received(txn.data, b"\r\n")
    assert len(received) == 1 and f"id {qid}".encode() in received[0], received
    queue_empty(srv)


def test_implicit_mx(tmp_path, server_factory, peer_factory, dns):
    (p2,) = pair_of_peers(peer_factory, hosts=("127.0.0.2",))
    dns.add("dest.test", [("A", "127.0.0.2")])  # no MX: the domain itself is the host
    srv = mx_server(tmp_path, server_factory, dns, p2.port)
    send(srv, ["user@dest.test"], message("implicit"))
    (r,) = wait_log(tmp_path, srv, rec("user@dest.test"))
    assert r["status"] == "delivered" and r["remote_ip"] == "127.0.0.2", r
    assert len(p2.wait_txns(1)) == 1
    queue_empty(srv)


def check_dsn_for(tmp_path, srv, rcpt: str, status: str, diag: str | None = None,
                  user: str = "alice") -> email.message.EmailMessage:
    (path,) = wait_maildir(tmp_path / "mail" / "sender.test" / user, 1, srv)
    msg, blocks = parse_dsn(path)
    assert len(blocks) == 1, blocks
    b = blocks[0]
    assert b["Final-Recipient"].lower() == f"rfc822; {rcpt}", b["Final-Recipient"]
    assert b["Action"] == "failed", b["Action"]
    assert b["Status"] == status, b["Status"]
    if diag is not None:
        assert diag in b["Diagnostic-Code"], b["Diagnostic-Code"]
    assert msg["To"] == f"{user}@sender.test"
    return msg


def test_null_mx_bounces_5_1_10(tmp_path, server_factory, dns):
    dns.add("dest.test", [("MX", "0 .")])
    srv = mx_server(tmp_path, server_factory, dns, 25)
    qid = send(srv, ["user@dest.test"], message("null mx"))
    (r,) = wait_log(tmp_path, srv, rec("user@dest.test", qid=qid))
    assert r["status"] == "bounced" and r["attempt"] == 1, r
    assert r["reply"].startswith("556 5.1.10"), r
    check_dsn_for(tmp_path, srv, "user@dest.test", "5.1.10")
    queue_empty(srv)


def test_nxdomain_bounces_5_1_2(tmp_path, server_factory, dns):
    dns.add("other.test", [("A", "127.0.0.2")])  # dest.test itself does not exist
    srv = mx_server(tmp_path, server_factory, dns, 25)
    qid = send(srv, ["user@dest.test"], message("nxdomain"))
    (r,) = wait_log(tmp_path, srv, rec("user@dest.test", qid=qid))
    assert r["status"] == "bounced" and "5.1.2" in r["reply"], r
    check_dsn_for(tmp_path, srv, "user@dest.test", "5.1.2")
    queue_empty(srv)


def test_servfail_defers_then_delivers(tmp_path, server_factory, peer_factory, dns):
    (p2,) = pair_of_peers(peer_factory, hosts=("127.0.0.2",))
    dns.add("dest.test", "servfail")
    srv = mx_server(tmp_path, server_factory, dns, p2.port)
    qid = send(srv, ["user@dest.test"], message("servfail"))
    (r,) = wait_log(tmp_path, srv, rec("user@dest.test", "deferred"))
    assert r["reply"].startswith("451 4.4.3"), r
    assert r["attempt"] == 1, r
    # The log line comes just before the state record is durable: wait for it.
    wait_queue(srv, lambda q: [(m["id"], [rc["state"] for rc in m["recipients"]]) for m in q]
               == [(qid, ["deferred"])], timeout=5)
    assert not maildir_files(tmp_path / "mail" / "sender.test" / "alice"), "SERVFAIL must not bounce"
    # The DNS recovers: the next retry delivers.
    dns.behave("dest.test", None)
    dns.add("dest.test", [("MX", "10 mx.dest.test.")])
    dns.add("mx.dest.test", [("A", "127.0.0.2")])
    (d,) = wait_log(tmp_path, srv, rec("user@dest.test", "delivered"), timeout=RETRY_WAIT)
    assert d["attempt"] >= 2, d
    assert len(p2.wait_txns(1)) == 1
    queue_empty(srv)


# ---------------------------------------------------------------------------
# 3. retries and bounces
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("phase", ["rcpt", "data"])
def test_4xx_then_2xx_delivers_on_attempt_2(tmp_path, server_factory, peer_factory, phase):
    if phase == "rcpt":
        peer = peer_factory(rcpt=lambda a, n, p: "451 4.3.0 try again later" if n == 1 else None)
    else:
        peer = peer_factory(data=lambda t, n, p: "451 4.3.0 try again later" if n == 1 else None)
    srv = server_factory(config=mta_config(tmp_path, transport={"dest.test": f"smarthost 127.0.0.1:{peer.port}"}),
                         deliver=True)
    qid = send(srv, ["user@dest.test"], message("retry"))
    recs = wait_log(tmp_path, srv, rec("user@dest.test", "delivered"), timeout=RETRY_WAIT)
    all_recs = [r for r in log_records(tmp_path) if r["queue_id"] == qid]
    assert [(r["status"], r["attempt"]) for r in all_recs] == [("deferred", 1), ("delivered", 2)], all_recs
    assert all_recs[0]["reply"].startswith("451 4.3.0"), all_recs[0]
    assert recs[0]["remote_ip"] == "127.0.0.1"
    txns = peer.wait_txns(1 if phase == "rcpt" else 2)
    delivered = [t for t in txns if t.replies["user@dest.test"].startswith("250")]
    assert len(delivered) == 1, txns
    queue_empty(srv)
    time.sleep(1.5)  # a retry that should not happen would show up now
    assert len(peer.txns) == (1 if phase == "rcpt" else 2)


def test_5xx_dsn_reaches_sender_maildir(tmp_path, server_factory, peer_factory):
    peer = peer_factory(rcpt=lambda a, n, p: "550 5.1.1 <user@dest.test>: no such user here")
    srv = server_factory(config=mta_config(tmp_path, transport={"dest.test": f"smarthost 127.0.0.1:{peer.port}"}),
                         deliver=True)
    qid = send(srv, ["user@dest.test"], message("bounce me"))
    (r,) = wait_log(tmp_path, srv, rec("user@dest.test", qid=qid))
    assert r["status"] == "bounced" and r["attempt"] == 1, r
    assert r["reply"] == "550 5.1.1 <user@dest.test>: no such user here", r
    msg = check_dsn_for(tmp_path, srv, "user@dest.test", "5.1.1",
                        diag="550 5.1.1 <user@dest.test>: no such user here")
    parts = msg.get_payload()
    assert "no such user here" in parts[0].get_content()
    headers = parts[2]
    original = headers.get_payload() if headers.get_content_type() == "text/rfc822-headers" else ""
    assert "Subject: bounce me" in str(original) or "bounce me" in headers.as_string(), headers.as_string()
    # The DSN itself went through the spool and the queue: logged, delivered, gone.
    wait_log(tmp_path, srv, rec(SENDER, "delivered"))
    queue_empty(srv)
    assert peer.txns == []


def test_mixed_per_recipient_replies(tmp_path, server_factory, peer_factory):
    replies = {"ok@dest.test": lambda n: None,
               "later@dest.test": lambda n: "450 4.2.1 mailbox busy" if n == 1 else None,
               "gone@dest.test": lambda n: "550 5.1.1 no such user"}
    peer = peer_factory(rcpt=lambda a, n, p: replies[a](n))
    srv = server_factory(config=mta_config(tmp_path, transport={"dest.test": f"smarthost 127.0.0.1:{peer.port}"}),
                         deliver=True)
    qid = send(srv, list(replies), message("mixed"))
    wait_log(tmp_path, srv, lambda r: r["queue_id"] == qid and r["attempt"] == 1, n=3)
    first = {r["recipient"]: r for r in log_records(tmp_path) if r["queue_id"] == qid and r["attempt"] == 1}
    assert first["ok@dest.test"]["status"] == "delivered", first
    assert first["later@dest.test"]["status"] == "deferred", first
    assert first["later@dest.test"]["reply"].startswith("450 4.2.1"), first
    assert first["gone@dest.test"]["status"] == "bounced", first
    check_dsn_for(tmp_path, srv, "gone@dest.test", "5.1.1", diag="no such user")
    # The retry carries only the deferred recipient: no duplicate for the others.
    (d,) = wait_log(tmp_path, srv, rec("later@dest.test", "delivered", qid), timeout=RETRY_WAIT)
    assert d["attempt"] == 2, d
    txns = peer.wait_txns(2)
    assert [t.rcpts for t in txns] == [["ok@dest.test"], ["later@dest.test"]], txns
    assert peer.rcpt_seen == {"ok@dest.test": 1, "later@dest.test": 2, "gone@dest.test": 1}
    queue_empty(srv)
    time.sleep(1.5)
    assert len(peer.txns) == 2


def test_bounce_of_a_bounce_is_dropped(tmp_path, server_factory, peer_factory):
    peer = peer_factory(rcpt=lambda a, n, p: "550 5.1.1 no such user")
    srv = server_factory(config=mta_config(tmp_path, transport={"dest.test": f"smarthost 127.0.0.1:{peer.port}"}),
                         deliver=True)
    qid = send(srv, ["user@dest.test"], message("a bounce"), sender="")
    (r,) = wait_log(tmp_path, srv, rec("user@dest.test", qid=qid))
    assert r["status"] in ("bounced", "dropped"), r
    queue_empty(srv)
    time.sleep(1.0)
    assert srv.queue() == [], "nothing new may be queued for a bounce of a bounce"
    assert [x for x in log_records(tmp_path) if x["queue_id"] != qid] == []
    assert not (tmp_path / "mail").exists() or not any((tmp_path / "mail").rglob("new/*"))
    assert "dropped" in srv.log() or r["status"] == "dropped", srv.log()[-3000:]


def test_expiry_bounces_4_4_7(tmp_path, server_factory, peer_factory):
    peer = peer_factory(rcpt=lambda a, n, p: "451 4.3.0 come back later")
    srv = server_factory(config=mta_config(tmp_path, delivery={"max_lifetime": "2s"},
                                           transport={"dest.test": f"smarthost 127.0.0.1:{peer.port}"}),
                         deliver=True)
    t0 = time.monotonic()
    qid = send(srv, ["user@dest.test"], message("expire"))
    (b,) = wait_log(tmp_path, srv, rec("user@dest.test", "bounced", qid), timeout=2 + 2 * RETRY_WAIT)
    assert time.monotonic() - t0 >= 2.0
    assert b["reply"].startswith("550 4.4.7") or "4.4.7" in b["reply"], b
    history = [r for r in log_records(tmp_path) if r["queue_id"] == qid]
    assert [r["status"] for r in history[:-1]] == ["deferred"] * (len(history) - 1), history
    assert [r["attempt"] for r in history] == list(range(1, len(history) + 1)), history
    check_dsn_for(tmp_path, srv, "user@dest.test", "4.4.7", diag="451 4.3.0 come back later")
    queue_empty(srv)


# ---------------------------------------------------------------------------
# 4. local delivery
# ---------------------------------------------------------------------------

def test_maildir_aliases_and_unknown_user(tmp_path, server_factory):
    cfg = mta_config(tmp_path, top={"local_domains": ["sender.test", "local.test"],
                                    "local_recipients": ["alice", "bob", "carol"]},
                     aliases={"team": ["bob@local.test", "carol@local.test"]})
    srv = server_factory(config=cfg, deliver=True)
    with connect(srv) as c:
        c.start()
        c.expect("MAIL FROM:<sender@remote.test>", 250)
        c.expect("RCPT TO:<nobody@local.test>", 550, "5.1.1")
        c.expect("RCPT TO:<team@local.test>", 250)
        content = message("to the team", body=b"hi team\r\n.dotted\r\n\xc3\xa9\r\n", to="team@local.test")
        reply = c.data(content)
        assert reply.code == 250, reply
        qid = reply.lines[-1].split()[-1]
        c.quit()
    for user in ("bob", "carol"):
        (path,) = wait_maildir(tmp_path / "mail" / "local.test" / user, 1, srv)
        got = path.read_bytes()
        head = f"Return-Path: <sender@remote.test>\nDelivered-To: {user}@local.test\n".encode()
        assert got.startswith(head), got[:300]
        received, rest = strip_received(got[len(head):])
        assert len(received) == 1 and qid.encode() in received[0], received
        assert rest == content.replace(b"\r\n", b"\n")
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    recs = wait_log(tmp_path, srv, lambda r: r["queue_id"] == qid, n=2)
    assert sorted(r["recipient"] for r in recs) == ["bob@local.test", "carol@local.test"]
    assert all(r["status"] == "delivered" for r in recs), recs
    assert not maildir_files(tmp_path / "mail" / "local.test" / "nobody")
    assert not maildir_files(tmp_path / "mail" / "local.test" / "team")
    queue_empty(srv)


def _lmtp_test(tmp_path, server_factory, peer_factory, *, unix: bool, agent: bool = True):
    script = {"a@lists.test": "250 2.0.0 delivered",
              "b@lists.test": "452 4.2.2 over quota",
              "c@lists.test": "550 5.1.1 no such mailbox"}
    kw = dict(lmtp=True, lmtp_rcpt=lambda r, n, p: script[r] if n == 1 else "250 2.0.0 delivered")
    if unix:
        sock = tmp_path / "lmtp.sock"
        assert len(str(sock)) < 100, sock
        peer = peer_factory(unix=str(sock), **kw)
        transport = f"lmtp unix:{sock}"
    else:
        peer = peer_factory(**kw)
        transport = f"lmtp 127.0.0.1:{peer.port}"
    srv = server_factory(config=mta_config(tmp_path, transport={"lists.test": transport}, delivery={"agent": agent}),
                         deliver=True)
    qid = send(srv, list(script), message("lmtp", to="a@lists.test"))
    wait_log(tmp_path, srv, lambda r: r["queue_id"] == qid and r["attempt"] == 1, n=3)
    first = {r["recipient"]: r for r in log_records(tmp_path) if r["queue_id"] == qid and r["attempt"] == 1}
    assert {k: v["status"] for k, v in first.items()} == {
        "a@lists.test": "delivered", "b@lists.test": "deferred", "c@lists.test": "bounced"}, first
    assert first["b@lists.test"]["reply"] == "452 4.2.2 over quota"
    assert first["c@lists.test"]["reply"] == "550 5.1.1 no such mailbox"
    if unix:
        assert first["a@lists.test"]["remote_ip"] == "unix", first
    check_dsn_for(tmp_path, srv, "c@lists.test", "5.1.1", diag="no such mailbox")
    (d,) = wait_log(tmp_path, srv, rec("b@lists.test", "delivered", qid), timeout=RETRY_WAIT)
    assert d["attempt"] == 2
    txns = peer.wait_txns(2)
    assert [t.rcpts for t in txns] == [list(script), ["b@lists.test"]]
    assert any(cmd.startswith("LHLO ") for cmd in peer.commands), peer.commands
    queue_empty(srv)


def test_lmtp_tcp_per_recipient_replies(tmp_path, server_factory, peer_factory):
    _lmtp_test(tmp_path, server_factory, peer_factory, unix=False)


def test_lmtp_unix_socket_per_recipient_replies(tmp_path, server_factory, peer_factory):
    _lmtp_test(tmp_path, server_factory, peer_factory, unix=True)


def test_lmtp_per_recipient_replies_delivered_in_the_worker(tmp_path, server_factory, peer_factory):
    """The same with `delivery.agent = false`: the worker's own client, same outcomes."""
    _lmtp_test(tmp_path, server_factory, peer_factory, unix=False, agent=False)


# ---------------------------------------------------------------------------
# 6. the queue's callback lane through either transport
# ---------------------------------------------------------------------------

def test_the_delivery_log_times_the_outcome_not_the_attempts_start(tmp_path, server_factory, peer_factory):
    """A peer that takes 1.5 s before its end-of-data reply: each record's time and
    delay_s count from when the reply came (like Postfix's delay=), for a first message
    (a new connection, the coroutine path) and for the next one (the pooled connection's
    callback lane)."""
    peer = peer_factory(name="slow.test", delay=1.5)
    srv = server_factory(config=mta_config(tmp_path), deliver=True, args=("--relay-to", f"127.0.0.1:{peer.port}"))
    for i in range(2):
        sent = time.time()
        qid = send(srv, ["user@dest.test"], message(f"slow {i}"))
        (r,) = wait_log(tmp_path, srv, rec("user@dest.test", "delivered", qid))
        logged = time.mktime(time.strptime(r["time"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        assert r["delay_s"] >= 1.4, r
        assert logged + 1 >= sent + 1.4, (r, sent)  # (the record's time has whole seconds here)
    assert peer.connections == 1


@pytest.mark.parametrize("agent", [True, False], ids=["agent", "in-process"])
def test_relay_reuses_the_pooled_connection_through_either_transport(tmp_path, server_factory,
                                                                      peer_factory, agent):
    """After the first message (a new connection, the coroutine path), the next ones find
    the connection pooled and take the callback lane: in the delivery agent, or with
    `delivery.agent = false` in the worker's own SMTP client. Every message arrives once,
    over that one connection, and the queue ends empty (a wrong callback signature once
    left every lane attempt active for ever: nothing but the first was delivered)."""
    peer = peer_factory(name="hub.test")
    srv = server_factory(config=mta_config(tmp_path, delivery={"agent": agent}), deliver=True,
                         args=("--relay-to", f"127.0.0.1:{peer.port}"))
    qids = []
    for i in range(5):  # one at a time: each finds the previous one's connection idle in the pool
        qids.append(send(srv, ["user@dest.test"], message(f"lane {i}")))
        recs = wait_log(tmp_path, srv, rec("user@dest.test", "delivered"), n=i + 1)
    assert sorted(r["queue_id"] for r in recs) == sorted(qids), recs
    assert all(r["attempt"] == 1 for r in recs), recs
    txns = peer.wait_txns(5)
    assert len(txns) == 5 and peer.connections == 1, (peer.connections, peer.commands)
    assert sorted(t.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for t in txns) == \
        [f"lane {i}".encode() for i in range(5)]
    queue_empty(srv)
    assert "completion callback failed" not in srv.log() and "Traceback" not in srv.log(), srv.log()[-3000:]
