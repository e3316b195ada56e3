"""`mta queue hold|release|delete|flush` against the real server: the CLI talks
to each shard's control socket (<spool>/<shard>/control.sock); delivery goes to
scriptable SMTP peers on loopback (conftest.SmtpPeer) that defer or accept.

Retries are scheduled an hour apart unless a test needs the queue manager's own
retry, so a delivery that follows a release or flush within seconds proves the
command made the message due. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import mta_cmd  # noqa: E402
from helpers import _toml_value, connect  # noqa: E402

SENDER = "alice@sender.test"
WAIT = 20.0


def ctl(srv_or_spool, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    spool = getattr(srv_or_spool, "spool", srv_or_spool)
    return subprocess.run(mta_cmd("queue", *args, "--spool", str(spool)), capture_output=True, text=True,
                          timeout=timeout)


def config(tmp_path: Path, peer_port: int, retry: str = "1h") -> str:
    d = {"retry_schedule": [retry], "retry_interval": retry, "retry_jitter": 0, "tls": "none",
         "log_file": str(tmp_path / "delivery.log"),
         "local_transport": f"maildir {tmp_path}/mail/{{domain}}/{{user}}"}
    lines = ['local_domains = ["sender.test"]', "[delivery]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in d.items()]
    lines += ["[transport]", f'"dest.test" = "smarthost 127.0.0.1:{peer_port}"']
    return "\n".join(lines) + "\n"


def log_records(tmp_path: Path) -> list[dict]:
    p = tmp_path / "delivery.log"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


def wait_for(what: str, pred, srv, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline or srv.proc.poll() is not None:
            raise AssertionError(f"{what}: not within {timeout}s\nserver:\n{srv.log()[-4000:]}")
        time.sleep(0.1)


def wait_status(tmp_path, srv, qid: str, status: str, n: int = 1) -> list[dict]:
    return wait_for(f"{n} {status} record(s) for {qid}",
                    lambda: (lambda r: r if len(r) >= n else None)(
                        [r for r in log_records(tmp_path) if r["queue_id"] == qid and r["status"] == status]),
                    srv)


def send(srv, subject: str = "test", rcpts=("user@dest.test",)) -> str:
    content = (f"From: <{SENDER}>\r\nTo: <user@dest.test>\r\nSubject: {subject}\r\n"
               f"Message-ID: <{time.time_ns()}@sender.test>\r\n\r\nhello\r\n").encode()
    with connect(srv) as c:
        c.start()
        qid = c.send_message(SENDER, list(rcpts), content)
        c.quit()
    return qid


def by_id(srv) -> dict[str, dict]:
    return {e["id"]: e for e in srv.queue()}


def read_reply(s: socket.socket) -> dict:
    """The server's one JSON line (read until newline or close)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return json.loads(buf)


def raw_request(path: str, data: bytes, timeout: float = 15) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        if data:
            s.sendall(data)
        return read_reply(s)


class Switch:
    """A peer reply that the test flips: 451 until `accept` is set."""

    def __init__(self):
        self.accept = False

    def __call__(self, *_args):
        return None if self.accept else "451 4.3.0 try again later"


# ---------------------------------------------------------------------------

def test_socket_is_0600_and_removed_at_clean_stop(server):
    path = server.spool / "0" / "control.sock"
    st = path.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert raw_request(str(path), b'{"op": "ping"}\n')["ok"] is True
    assert server.stop() == 0
    assert not path.exists()


def test_hold_then_release_delivers(tmp_path, server_factory, peer_factory):
    switch = Switch()
    peer = peer_factory(data=switch)
    srv = server_factory(config=config(tmp_path, peer.port), deliver=True)
    qid = send(srv, "hold me")
    wait_status(tmp_path, srv, qid, "deferred")

    out = ctl(srv, "hold", qid)
    assert out.returncode == 0, out.stderr
    assert f"{qid}: held" in out.stdout
    assert by_id(srv)[qid]["held"] is True
    text = ctl(srv, "list").stdout
    assert any(qid in line and "(held)" in line for line in text.splitlines()), text
    assert "held: yes" in srv.show(qid).stdout.decode()

    switch.accept = True
    # A held message is not flushed: named, it is an error; with flush-all it is left alone.
    out = ctl(srv, "flush", qid)
    assert out.returncode == 1 and "held" in out.stderr, out
    out = ctl(srv, "flush")
    assert out.returncode == 0, out.stderr
    time.sleep(1.5)
    assert len(peer.txns) == 1  # only the first, deferred, attempt
    assert by_id(srv)[qid]["held"] is True

    out = ctl(srv, "release", qid)
    assert out.returncode == 0, out.stderr
    assert f"{qid}: released" in out.stdout
    wait_status(tmp_path, srv, qid, "delivered")  # retry_schedule is 1h: release made it due
    wait_for("empty queue", lambda: srv.queue() == [], srv)
    assert len(peer.txns) == 2
    assert "held by the administrator" in srv.log() and "released by the administrator" in srv.log()


def test_flush_retries_deferred_mail_at_once(tmp_path, server_factory, peer_factory):
    switch = Switch()
    peer = peer_factory(data=switch)
    srv = server_factory(config=config(tmp_path, peer.port), deliver=True)
    first, second = send(srv, "one"), send(srv, "two")
    wait_status(tmp_path, srv, first, "deferred")
    wait_status(tmp_path, srv, second, "deferred")
    switch.accept = True

    out = ctl(srv, "flush", first)
    assert out.returncode == 0, out.stderr
    assert f"{first}: due now" in out.stdout
    wait_status(tmp_path, srv, first, "delivered")
    assert second in by_id(srv)  # not named, not retried (its retry is an hour away)
    assert not [r for r in log_records(tmp_path) if r["queue_id"] == second and r["status"] == "delivered"]

    out = ctl(srv, "flush")
    assert out.returncode == 0, out.stderr
    wait_status(tmp_path, srv, second, "delivered")
    wait_for("empty queue", lambda: srv.queue() == [], srv)


def test_delete_is_logged_never_delivered_no_bounce(tmp_path, server_factory, peer_factory):
    peer = peer_factory(rcpt=lambda *a: "451 4.3.0 not now")
    srv = server_factory(config=config(tmp_path, peer.port), deliver=True)
    qid = send(srv, "delete me")
    keep = send(srv, "keep me")
    wait_status(tmp_path, srv, qid, "deferred")

    out = ctl(srv, "delete", qid)
    assert out.returncode == 0, out.stderr
    assert f"{qid}: deleted" in out.stdout
    assert list(by_id(srv)) == [keep]
    assert f"{qid}: deleted by the administrator" in srv.log()
    assert "user@dest.test" in srv.log().split(f"{qid}: deleted by the administrator", 1)[1].splitlines()[0]

    seen = peer.rcpt_seen.get("user@dest.test", 0)
    out = ctl(srv, "flush")
    assert out.returncode == 0, out.stderr
    wait_status(tmp_path, srv, keep, "deferred", n=2)
    # The delivery log gives the deleted recipient its outcome (after its one deferral).
    assert [(r["status"], r["attempt"]) for r in log_records(tmp_path) if r["queue_id"] == qid] == [
        ("deferred", 1), ("deleted", 1)]
    assert peer.rcpt_seen["user@dest.test"] == seen + 1  # only `keep` was retried
    assert peer.txns == []
    assert not (tmp_path / "mail" / "sender.test").exists()  # no DSN to the sender
    # Deleted means gone for good: the id is unknown now.
    out = ctl(srv, "release", qid)
    assert out.returncode == 1 and qid in out.stderr


def test_hold_during_delivery_finishes_attempt_then_no_retry(tmp_path, server_factory, peer_factory):
    switch = Switch()
    peer = peer_factory(data=switch, delay=2.0)  # end-of-data reply comes 2 s late
    srv = server_factory(config=config(tmp_path, peer.port, retry="1s"), deliver=True)
    qid = send(srv, "in flight")
    wait_for("DATA at the peer", lambda: "DATA" in peer.commands, srv)

    out = ctl(srv, "hold", qid)
    assert out.returncode == 0, out.stderr
    wait_status(tmp_path, srv, qid, "deferred")  # the attempt in flight ends as it would have
    time.sleep(3)  # retry_schedule is 1 s: a retry now would show
    assert peer.data_seen == 1
    entry = by_id(srv)[qid]
    assert entry["held"] is True and entry["recipients"][0]["state"] == "deferred"

    switch.accept = True
    assert ctl(srv, "release", qid).returncode == 0
    wait_status(tmp_path, srv, qid, "delivered")


def test_delete_during_delivery_waits_for_the_attempt(tmp_path, server_factory, peer_factory):
    peer = peer_factory(data=Switch(), delay=2.0)
    srv = server_factory(config=config(tmp_path, peer.port, retry="1s"), deliver=True)
    qid = send(srv, "in flight")
    wait_for("DATA at the peer", lambda: "DATA" in peer.commands, srv)
    out = ctl(srv, "delete", qid)
    assert out.returncode == 0, out
    assert f"{qid}: deleted" in out.stdout
    assert srv.queue() == []
    time.sleep(2)
    assert peer.data_seen == 1
    assert "delivery attempt for" not in srv.log()  # the attempt's own record did not fail


def test_two_workers_every_command_spans_the_shards(tmp_path, server_factory):
    srv = server_factory(args=("--workers", "2"))
    sockets = [srv.spool / str(n) / "control.sock" for n in (0, 1)]
    wait_for("both control sockets", lambda: all(p.exists() for p in sockets), srv)
    ids: list[str] = []
    for i in range(60):
        ids.append(send(srv, f"m{i}"))
        if i >= 8 and len({q[-2:] for q in ids}) == 2:
            break  # the queue id ends with its shard in base 62
    per_shard = {s: [q for q in ids if q[-2:] == s] for s in ("00", "01")}
    assert all(per_shard.values()), f"all messages landed on one shard: {ids}"
    a, b = per_shard["00"][0], per_shard["01"][0]

    out = ctl(srv, "hold", a, b)
    assert out.returncode == 0, out.stderr
    q = by_id(srv)
    assert q[a]["held"] and q[b]["held"]
    assert sum(e["held"] for e in q.values()) == 2

    out = ctl(srv, "hold", "ALL")
    assert out.returncode == 0, out.stderr
    assert all(e["held"] for e in srv.queue())
    out = ctl(srv, "release", b)
    assert out.returncode == 0, out.stderr
    assert by_id(srv)[b]["held"] is False

    out = ctl(srv, "flush")
    assert out.returncode == 0, out.stderr
    out = ctl(srv, "delete", a, b)
    assert out.returncode == 0, out.stderr
    assert a not in by_id(srv) and b not in by_id(srv)
    out = ctl(srv, "delete", "ALL")
    assert out.returncode == 0, out.stderr
    assert f"{len(ids) - 2} message(s): deleted" in out.stdout
    assert srv.queue() == []
    assert srv.stop() == 0
    assert not any(p.exists() for p in sockets)


def test_no_server_running_is_a_clear_error(tmp_path, server_factory):
    out = ctl(tmp_path / "no-spool-here", "flush")
    assert out.returncode == 1
    assert "no server is running" in out.stderr

    srv = server_factory()
    qid = send(srv)
    assert srv.stop() == 0
    out = ctl(srv, "hold", qid)
    assert out.returncode == 1
    assert "no server is running" in out.stderr
    assert by_id(srv)[qid]["held"] is False  # nothing edited behind the spool's back

    # A server killed outright leaves its socket behind: it refuses connections.
    srv2 = server_factory(spool=srv.spool)
    srv2.stop(signal_kill())
    assert (srv.spool / "0" / "control.sock").exists()
    out = ctl(srv, "delete", qid)
    assert out.returncode == 1
    assert "no server is running" in out.stderr
    assert qid in by_id(srv)
    # The next server takes the stale socket over.
    srv3 = server_factory(spool=srv.spool)
    assert ctl(srv3, "hold", qid).returncode == 0


def test_hold_survives_kill_9_right_after_the_reply(tmp_path, server_factory):
    srv = server_factory()
    ids = [send(srv, f"m{i}") for i in range(3)]
    out = ctl(srv, "hold", *ids[:2])
    assert out.returncode == 0, out.stderr
    srv.stop(signal_kill())  # the reply came after the record was durable
    again = server_factory(spool=srv.spool)
    q = by_id(again)
    assert [q[i]["held"] for i in ids] == [True, True, False]
    out = ctl(again, "delete", ids[0])
    assert out.returncode == 0, out.stderr
    again.stop(signal_kill())
    third = server_factory(spool=srv.spool)
    assert sorted(by_id(third)) == sorted(ids[1:])


def signal_kill() -> int:
    import signal

    return signal.SIGKILL


def test_unknown_queue_id_is_named(server):
    qid = send(server)
    out = ctl(server, "hold", "NOSUCHID")
    assert out.returncode == 1
    assert "NOSUCHID" in out.stderr
    out = ctl(server, "hold", qid, "NOSUCHID2", "bad/id")
    assert out.returncode == 1
    assert f"{qid}: held" in out.stdout
    assert "NOSUCHID2" in out.stderr and "bad/id" in out.stderr
    assert by_id(server)[qid]["held"] is True


def test_bad_requests_get_an_error_reply_and_the_server_carries_on(server):
    path = str(server.spool / "0" / "control.sock")
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.settimeout(20)
    idle.connect(path)  # says nothing: answered after the read timeout
    try:
        cases = {
            b"garbage\n": "not a JSON object",
            b"[1, 2]\n": "not a JSON object",
            b'{"op": "explode"}\n': "op must be one of",
            b'{"op": "hold"}\n': "needs ids",
            b'{"op": "hold", "ids": ["x/y"]}\n': "bad queue id",
            b'{"op": "hold", "ids": ["A"], "all": true}\n': "either ids or all",
            b'{"op": "hold", "ids": ["A"], "extra": 1}\n': "unknown request field",
            b'{"op": "delete", "ids": [' + b",".join([b'"A"'] * 1001) + b"]}\n": "at most 1000",
            b"\xff\xfe\n": "not a JSON object",
            b"\n": "empty request",
            b'{"op": "hold", "ids": ["' + b"A" * 70_000 + b'"]}\n': "longer than",
        }
        for data, expected in cases.items():
            reply = raw_request(path, data)
            assert reply["ok"] is False and expected in reply["error"], (data[:60], reply)
        reply = read_reply(idle)
        assert reply["ok"] is False and "no request line" in reply["error"]
    finally:
        idle.close()
    assert raw_request(path, b'{"op": "ping"}\n')["ok"] is True
    qid = send(server)  # SMTP unharmed too
    assert raw_request(path, json.dumps({"op": "hold", "ids": [qid]}).encode() + b"\n") == {
        "ok": True, "results": {qid: "held"}, "shard": 0}
    assert server.proc.poll() is None
    assert "Traceback" not in server.log()


def test_long_spool_path_still_gets_a_socket(tmp_path, server_factory):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    srv = server_factory(spool=deep / "spool")
    assert len(os.fsencode(str(srv.spool / "0" / "control.sock"))) > 108
    qid = send(srv)
    out = ctl(srv, "hold", qid)
    assert out.returncode == 0, out.stderr
    assert by_id(srv)[qid]["held"] is True
