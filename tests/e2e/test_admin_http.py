"""/api/admin/... end to end: one `mta run --workers 2` (per module) whose next hop defers every
recipient, driven over HTTP with real bearer tokens made by `mta http token add`; every answer
is checked against the CLI's for the same state (they call the same functions in mta.app.admin).

The queue ids end with their shard in base 62 ("00", "01"), so a test can tell that a request
reached both shards whichever worker took it. Retries are an hour apart: a delivery attempt
that follows a flush within seconds proves the flush made the message due.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import SmtpPeer, free_port, mta_cmd, start_server
from helpers import _toml_value, connect
from mta.app import control

SENDER = "alice@sender.test"
WAIT = 20.0


# A hung shard is given up on after 2 s, not the default 10 (test_a_shard_whose_server_does_not_answer_is_503);
# listings go 3 messages a page, so the streamed ones span several pages of each shard.
ENV = {"MTA_PING_TIMEOUT": "2", "MTA_QUEUE_PAGE": "3"}


class Node:
    def __init__(self, tmp: Path, peer: SmtpPeer):
        self.tmp = tmp
        self.http = free_port()
        self.tokens = tmp / "tokens"
        d = {"retry_schedule": ["1h"], "retry_interval": "1h", "retry_jitter": 0, "tls": "none",
             "log_file": str(tmp / "delivery.log"),
             "local_transport": f"maildir {tmp}/mail/{{domain}}/{{user}}"}
        lines = ['local_domains = ["sender.test"]', "[http]", f'tokens_file = "{self.tokens}"', "[delivery]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in d.items()]
        lines += ["[transport]"] + [f'"{dom}" = "smarthost 127.0.0.1:{peer.port}"'
                                    for dom in ("dest.test", "other.test", "bounce.test")]
        self.admin = self.token("ops", "admin")
        self.inject = self.token("app", "inject")
        self.srv = start_server(tmp, config="\n".join(lines) + "\n", deliver=True, env=ENV,
                                args=("--workers", "2", "--http", f"127.0.0.1:{self.http}"))
        self.wait(lambda: self.srv.log().count("http listening on") >= 2
                  and all((self.srv.spool / str(n) / "control.sock").exists() for n in (0, 1)), "both workers")

    def token(self, name: str, scope: str) -> str:
        out = subprocess.run(mta_cmd("http", "token", "add", name, "--scope", scope, "--tokens-file", str(self.tokens)),
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout.strip().splitlines()[-1]

    def wait(self, pred, what: str, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while not (got := pred()):
            if time.monotonic() > deadline or self.srv.proc.poll() is not None:
                raise AssertionError(f"{what}: not within {timeout}s\nserver:\n{self.srv.log()[-4000:]}")
            time.sleep(0.1)
        return got

    def request(self, method: str, path: str, body=None, token: str | None = "admin",
                raw: bytes | None = None) -> tuple[int, object]:
        """(status, the JSON reply, or the bytes when it is not JSON)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {self.admin if token == 'admin' else token}")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                status, ctype, payload = r.status, r.headers.get("Content-Type", ""), r.read()
        except urllib.error.HTTPError as e:
            status, ctype, payload = e.code, e.headers.get("Content-Type", ""), e.read()
        return status, (json.loads(payload) if ctype.startswith("application/json") else payload)

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(mta_cmd("queue", *args, "--spool", str(self.srv.spool)), capture_output=True,
                              timeout=90, check=False, env={**os.environ, **ENV})

    def records(self, qid: str | None = None) -> list[dict]:
        p = self.tmp / "delivery.log"
        recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []
        return [r for r in recs if qid is None or r["queue_id"] == qid]

    def send(self, domain: str = "dest.test", n: int = 4) -> dict[str, list[str]]:
        """Messages to `domain` until each shard has at least two and `n` in all, each deferred
        once (so none is in flight): {"00": ids, "01": ids}."""
        ids: list[str] = []
        for i in range(60):
            content = (f"From: <{SENDER}>\r\nTo: <user@{domain}>\r\nSubject: m{i}\r\n"
                       f"Message-ID: <{time.time_ns()}@sender.test>\r\n\r\nhello\r\n").encode()
            with connect(self.srv) as c:
                c.start()
                ids.append(c.send_message(SENDER, [f"user{i}@{domain}"], content))
                c.quit()
            shards = {s: [q for q in ids if q.endswith(s)] for s in ("00", "01")}
            if len(ids) >= n and all(len(v) >= 2 for v in shards.values()):
                break
        assert all(len(v) >= 2 for v in shards.values()), f"all on one shard: {ids}"
        for q in ids:
            self.wait(lambda q=q: [r for r in self.records(q) if r["status"] == "deferred"], f"{q} deferred")
        return shards


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    peer = SmtpPeer(rcpt=lambda *a: "451 4.3.0 not now").start()
    n = Node(tmp_path_factory.mktemp("admin-http"), peer)
    try:
        yield n
    finally:
        n.srv.stop()
        peer.stop()


def cli_json(node: Node, *args: str):
    out = node.cli(*args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_tokens_are_checked(node):
    for method, path in (("GET", "/api/admin/queue"), ("POST", "/api/admin/queue/hold"),
                         ("GET", "/api/admin/queue/summary"), ("POST", "/api/admin/reload")):
        status, body = node.request(method, path, {"all": True} if method == "POST" else None, token=None)
        assert status == 401 and "bearer token" in body["error"], (path, body)
        status, body = node.request(method, path, token="not-a-token")
        assert status == 401, (path, body)
        status, body = node.request(method, path, {"all": True} if method == "POST" else None, token=node.inject)
        assert status == 403 and "'admin'" in body["error"], (path, body)
    assert all(not e["held"] for e in cli_json(node, "list", "--json"))  # the refused hold did nothing


def test_list_and_show_cover_both_shards_and_equal_the_cli(node):
    shards = node.send(n=8)
    cli_list = cli_json(node, "list", "--json")
    assert len(cli_list) > 6  # more than two pages of 3
    for _ in range(6):  # either worker may take each request: every one sees both shards
        status, got = node.get("/api/admin/queue")
        assert status == 200 and got == cli_list
    # Streamed a page at a time (chunked), the bytes json.dumps would write for the list.
    req = urllib.request.Request(f"http://127.0.0.1:{node.http}/api/admin/queue",
                                 headers={"Authorization": f"Bearer {node.admin}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Transfer-Encoding"] == "chunked" and r.headers["Content-Type"].startswith("application/json")
        assert r.read() == json.dumps(cli_list).encode()
    ids = {e["id"] for e in cli_list}
    assert set(shards["00"]) <= ids and set(shards["01"]) <= ids

    for qid in (shards["00"][0], shards["01"][0]):
        status, env = node.get(f"/api/admin/queue/{qid}")
        assert status == 200, env
        assert env["id"] == qid and env["sender"] == SENDER and env["shard"] == int(qid[-2:])
        [r] = env["recipients"]
        assert r["state"] == "deferred" and r["attempts"] == 1 and r["last_reply"].startswith("451")
        assert r["next_attempt"] > env["arrival"]
        text = node.cli("show", qid).stdout
        head, _, data = text.partition(b"\n\n")
        assert f"recipient: <{r['address']}> deferred".encode() in head
        assert f"client: {env['helo']} [{env['client_ip']}]".encode() in head
        status, raw = node.get(f"/api/admin/queue/{qid}/message")
        assert status == 200 and raw == data and b"Subject: m" in raw

    status, body = node.get("/api/admin/queue/NOSUCHID")
    assert status == 404 and body == {"error": "no message with queue id 'NOSUCHID'", "id": "NOSUCHID"}
    assert node.get("/api/admin/queue/NOSUCHID/message")[0] == 404


def test_hold_release_flush_delete(node):
    shards = node.send()
    a, b = shards["00"][0], shards["01"][0]
    total = len(cli_json(node, "list", "--json"))

    status, done = node.post("/api/admin/queue/hold", {"all": True})
    assert status == 200, done
    assert done["counts"] == {"held": total} and done["ok"] and done["untouched"] == []
    status, listed = node.get("/api/admin/queue")
    assert all(e["held"] for e in listed) and listed == cli_json(node, "list", "--json")

    status, done = node.post("/api/admin/queue/release", {"ids": [a, b]})
    assert status == 200, done
    assert [(r["id"], r["status"], r["ok"]) for r in done["results"]] == [(a, "released", True), (b, "released", True)]
    assert done["results"][0]["text"] == f"{a}: released, due now"
    # Released means due now: each is attempted again at once (retries are an hour apart).
    for q in (a, b):
        node.wait(lambda q=q: len([r for r in node.records(q) if r["status"] == "deferred"]) >= 2, f"{q} retried")

    status, done = node.post("/api/admin/queue/flush", {"ids": [shards["00"][1]]})
    assert status == 409 and done["results"][0]["status"] == "held", done  # a held one is not flushed
    assert "mta queue release" in done["error"]
    status, done = node.post("/api/admin/queue/release", {"all": True})
    assert status == 200 and done["counts"] == {"not held": 2, "released": total - 2}, done
    node.wait(lambda: all(not e["held"] for e in cli_json(node, "list", "--json")), "all released")
    for e in cli_json(node, "list", "--json"):
        node.wait(lambda q=e["id"]: len([r for r in node.records(q) if r["status"] == "deferred"]) >= 2,
                  f"{e['id']} retried")

    before = len([r for r in node.records(a) if r["status"] == "deferred"])
    status, done = node.post("/api/admin/queue/flush", {"ids": [a]})
    assert status == 200 and done["results"][0]["status"] == "flushed", done
    node.wait(lambda: len([r for r in node.records(a) if r["status"] == "deferred"]) > before, "flushed one retried")
    status, done = node.post("/api/admin/queue/flush")  # no body: every message, like `mta queue flush`
    assert status == 200 and done["all"] is True and done["ok"], done

    status, done = node.post("/api/admin/queue/delete", {"ids": [b, "NOSUCHID"]})
    assert status == 404, done
    assert done["error"] == "no message with queue id 'NOSUCHID'"
    assert [(r["id"], r["status"]) for r in done["results"]] == [(b, "deleted"), ("NOSUCHID", "unknown")]
    status, listed = node.get("/api/admin/queue")
    assert b not in {e["id"] for e in listed} and a in {e["id"] for e in listed}
    assert f"{b}: deleted by the administrator" in node.srv.log()
    # The CLI says the same of the same state: one implementation.
    out = node.cli("hold", a, b)
    assert out.returncode == 1 and f"{a}: held".encode() in out.stdout and repr(b).encode() in out.stderr
    status, done = node.post("/api/admin/queue/release", {"ids": [a]})
    assert status == 200 and done["results"][0]["status"] == "released"


@pytest.mark.parametrize("path, body, field", [
    ("/api/admin/queue/hold", {}, "ids"),
    ("/api/admin/queue/hold", {"ids": []}, "ids"),
    ("/api/admin/queue/hold", {"ids": "A1"}, "ids"),
    ("/api/admin/queue/hold", {"ids": ["A1", "bad/id"]}, "ids[1]"),
    ("/api/admin/queue/delete", {"ids": [7]}, "ids[0]"),
    ("/api/admin/queue/release", {"all": "yes"}, "all"),
    ("/api/admin/queue/release", {"all": True, "ids": ["A1"]}, "ids"),
    ("/api/admin/queue/flush", {"all": False}, "ids"),
    ("/api/admin/queue/hold", {"ids": ["A1"], "extra": 1}, "extra"),
    ("/api/admin/queue/hold", ["A1"], "body"),
    ("/api/admin/suspend", {}, "domain"),
    ("/api/admin/suspend", {"domain": "a.test", "site": "mx.a.test"}, "domain"),
    ("/api/admin/suspend", {"domain": "not a domain"}, "domain"),
    ("/api/admin/suspend", {"site": "two words"}, "site"),
    ("/api/admin/suspend", {"domain": "a.test", "duration": "soon"}, "duration"),
    ("/api/admin/suspend", {"domain": "a.test", "duration": 10 ** 9}, "duration"),
    ("/api/admin/resume", {"domain": "a.test", "duration": "1h"}, "duration"),
    ("/api/admin/bounce", {}, "domain"),
    ("/api/admin/bounce", {"site": "mx.a.test"}, "site"),
    ("/api/admin/bounce", {"domain": 5}, "domain"),
])
def test_bad_requests_name_the_field(node, path, body, field):
    status, reply = node.post(path, body)
    assert status == 400 and reply["field"] == field and reply["error"].startswith(f"{field}: "), reply


def test_bad_json_and_bad_queries_are_400(node):
    status, reply = node.post("/api/admin/queue/hold", raw=b'{"ids": [')
    assert status == 400 and "invalid JSON" in reply["error"]
    for query, field in (("by=mx", "by"), ("top=-1", "top"), ("top=x", "top"), ("limit=3", "limit")):
        status, reply = node.get(f"/api/admin/queue/summary?{query}")
        assert status == 400 and reply["field"] == field, (query, reply)
    assert node.get("/api/admin/queue/hold")[0] == 404  # GET of an op is a lookup of that id
    assert node.request("POST", "/api/admin/queue")[0] == 405


def test_summary_equals_the_cli(node):
    node.send("other.test", n=2)
    for query, args in (("", ()), ("?top=1", ("--top", "1")), ("?by=domain&top=0", ("--top", "0"))):
        status, got = node.get(f"/api/admin/queue/summary{query}")
        assert status == 200, got
        assert got == cli_json(node, "summary", "--json", *args)
    assert {r["name"] for r in got["rows"]} >= {"dest.test", "other.test"}
    assert got["flags"] == {} and got["flags_note"] is None
    # By site, through the server's own configuration (its transport routes name the smarthost).
    status, got = node.get("/api/admin/queue/summary?by=site")
    assert status == 200, got
    assert got == cli_json(node, "summary", "--json", "--by", "site", "--config", str(node.srv.config))
    [row] = got["rows"]
    assert row["name"] == "127.0.0.1" and {"dest.test", "other.test"} <= set(row["domains"])


def test_suspend_and_resume_a_domain_in_every_worker(node):
    status, done = node.post("/api/admin/suspend", {"domain": "Other.Test", "duration": "30m"})
    assert status == 200, done
    assert done["domain"] == "other.test" and done["workers"] == 2 and done["seconds"] == 1800
    for shard in (0, 1):  # set in each worker, whichever took the request
        flags = control.call(str(node.srv.spool), shard, {"op": "flags"})["flags"]
        assert flags.get("suspend|@other.test") == pytest.approx(done["until"])
    status, got = node.get("/api/admin/queue/summary")
    assert list(got["flags"]) == ["suspend|@other.test"]
    assert got == cli_json(node, "summary", "--json")

    status, done = node.post("/api/admin/resume", {"domain": "other.test"})
    assert status == 200, done
    assert done["was_suspended"] is True and done["workers"] == 2 and done["ok"]
    for shard in (0, 1):
        assert "suspend|@other.test" not in control.call(str(node.srv.spool), shard, {"op": "flags"})["flags"]
    status, done = node.post("/api/admin/resume", {"site": "mx.nowhere.test"})
    assert status == 200 and done["was_suspended"] is False and done["site"] == "mx.nowhere.test"
    status, done = node.post("/api/admin/suspend", {"site": "MX.Slow.Test", "duration": 60})
    assert status == 200 and done["site"] == "mx.slow.test" and done["seconds"] == 60
    assert node.post("/api/admin/resume", {"site": "mx.slow.test"})[0] == 200


def test_bounce_a_domain_sends_the_dsns(node):
    shards = node.send("bounce.test", n=4)
    ids = shards["00"] + shards["01"]
    status, done = node.post("/api/admin/bounce", {"domain": "bounce.test"})
    assert status == 200, done
    assert done == {"domain": "bounce.test", "recipients": len(ids), "counts": {"bounced": len(ids)},
                    "workers": 2, "problems": [], "ok": True}
    status, listed = node.get("/api/admin/queue")
    assert not {e["id"] for e in listed} & set(ids)
    for q in ids:
        node.wait(lambda q=q: [r for r in node.records(q) if r["status"] == "bounced"], f"{q} bounced")
    inbox = node.tmp / "mail" / "sender.test" / "alice" / "new"
    node.wait(lambda: inbox.exists() and len(list(inbox.iterdir())) >= len(ids), "the DSNs")
    dsns = [p.read_bytes() for p in inbox.iterdir()]
    assert all(b"bounced by the administrator" in d and b"report-type=delivery-status" in d for d in dsns)
    status, done = node.post("/api/admin/bounce", {"domain": "bounce.test"})
    assert status == 200 and done["recipients"] == 0


def test_reload(node):
    status, done = node.post("/api/admin/reload", {})
    assert status == 200 and done["workers"] == 2 and done["ok"], done
    assert all(sh["applied"] for sh in done["shards"]), done
    # A file with an error: every worker refuses it (409) and keeps the running configuration.
    path = node.srv.config
    good = path.read_text()
    try:
        path.write_text(good + "\nno_such_key = 1\n")
        status, done = node.post("/api/admin/reload", {})
        assert status == 409 and not done["ok"], done
        assert all(not sh["applied"] and any("no_such_key" in m for m in sh["messages"])
                   for sh in done["shards"]), done
    finally:
        path.write_text(good)
    status, done = node.post("/api/admin/reload", {})
    assert status == 200 and done["ok"], done


def test_a_shard_whose_server_does_not_answer_is_503(node):
    """A hung worker: its socket takes the connection and never replies. The other shards'
    work is done and reported; the reply says which shard failed."""
    stuck = node.srv.spool / "7"
    stuck.mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(stuck / "control.sock"))
        sock.listen(8)
        listed = cli_json(node, "list", "--json")
        qid = listed[0]["id"]
        status, done = node.post("/api/admin/queue/hold", {"ids": [qid]})
        assert status == 503, done
        assert "shard 7" in done["error"] and "no reply within 2 s" in done["error"]
        assert done["results"] == [{"id": qid, "status": "held", "ok": True, "text": f"{qid}: held"}]
        out = node.cli("release", qid)
        assert out.returncode == 1 and b"shard 7" in out.stderr and f"{qid}: released".encode() in out.stdout
    finally:
        sock.close()
        os.unlink(stuck / "control.sock")
        stuck.rmdir()
