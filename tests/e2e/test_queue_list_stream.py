"""`mta queue list` streams: a few thousand queued messages listed a page at a time from the running
server (and from the files once it stopped) give the same bytes whatever the page size, the JSON
holds exactly the accepted messages as admin.entry makes them, and the text form is the old one."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import threading

from conftest import mta_cmd
from mta import _native
from mta.app import admin

N = 2000
SENDERS = 4


def send_all(srv, n: int, sessions: int = SENDERS) -> list[str]:
    """Queue `n` messages over `sessions` kept connections; their queue ids, from the 250 replies."""
    ids: list[list[str]] = [[] for _ in range(sessions)]

    def one(k: int) -> None:
        with smtplib.SMTP(srv.host, srv.port, timeout=60) as c:
            c.ehlo("client.example.test")
            for i in range(k, n, sessions):
                assert c.mail(f"s{i}@example.test")[0] == 250
                for r in range(1 + i % 3):
                    assert c.rcpt(f"r{r}.{i}@dest{i % 5}.example.test")[0] == 250
                code, text = c.data(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
                assert code == 250, text
                ids[k].append(text.decode().rsplit(" ", 1)[1])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [q for part in ids for q in part]


def listing(srv, *args: str, page: int | None = None) -> bytes:
    env = dict(os.environ)
    env.pop("MTA_QUEUE_PAGE", None)
    if page is not None:
        env["MTA_QUEUE_PAGE"] = str(page)
    p = subprocess.run(mta_cmd("queue", "list", "--spool", str(srv.spool), *args), capture_output=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


def old_text(entries: list[dict]) -> bytes:
    """The plain listing as `mta queue list` printed it before it streamed."""
    out = []
    for e in entries:
        held = "  (held)" if e["held"] else ""
        out.append(f"{e['id']:<24} {e['size']:>10} {e['arrival']}  <{e['sender']}>{held}")
        out += [f"{'':<24} {r['state']:>10} <{r['address']}>" for r in e["recipients"]]
    out.append(f"-- {len(entries)} message(s)")
    return "".join(line + "\n" for line in out).encode()


def test_the_list_streams_the_same_bytes_online_offline_and_whatever_the_page(server):
    accepted = send_all(server, N)
    held = accepted[:3]
    p = subprocess.run(mta_cmd("queue", "hold", *held, "--spool", str(server.spool)), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr

    as_json = listing(server, "--json")
    assert listing(server, "--json", page=7) == as_json  # pages of 7: the same bytes
    entries = json.loads(as_json)
    assert sorted(e["id"] for e in entries) == sorted(accepted) and len(entries) == N
    assert {e["id"] for e in entries if e["held"]} == set(held)
    # Each message as admin.entry made it from the envelope (the order: log order here).
    files = {e.queue_id: admin.entry(e) for e in _native.SpoolReader(str(server.spool)).list()}
    assert entries == [files[e["id"]] for e in entries]
    # One kept connection's messages are listed in the order it sent them.
    mine = [e["id"] for e in entries if e["id"] in set(accepted[:N // SENDERS])]
    assert mine == accepted[:N // SENDERS]

    text = listing(server)
    assert listing(server, page=7) == text
    assert text == old_text(entries)
    shape = summary(server)
    assert shape["total"] == N and {r["name"]: r["recipients"] for r in shape["rows"]} == {
        f"dest{d}.example.test": sum(1 + i % 3 for i in range(N) if i % 5 == d) for d in range(5)}

    assert server.stop() == 0
    assert listing(server, "--json") == as_json  # from the files now, the same
    assert listing(server, page=13) == text
    offline = summary(server)
    assert offline["rows"] == shape["rows"] and offline["flags_note"] == "no server running: flags unknown"


def summary(srv) -> dict:
    p = subprocess.run(mta_cmd("queue", "summary", "--json", "--spool", str(srv.spool)), capture_output=True,
                       timeout=120, env=dict(os.environ, MTA_QUEUE_PAGE="11"))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_shards_are_merged_online_as_offline(server_factory):
    srv = server_factory(args=("--workers", "2"))
    accepted = send_all(srv, 300)
    online = listing(srv, "--json", page=7)
    entries = json.loads(online)
    assert sorted(e["id"] for e in entries) == sorted(accepted)
    assert srv.stop() == 0
    assert listing(srv, "--json", page=7) == online
    assert listing(srv, page=7).endswith(b"-- 300 message(s)\n")


def test_a_bad_page_size_is_refused(server):
    env = dict(os.environ, MTA_QUEUE_PAGE="0")
    p = subprocess.run(mta_cmd("queue", "list", "--spool", str(server.spool)), capture_output=True, timeout=60, env=env)
    assert p.returncode == 1 and b"mta: MTA_QUEUE_PAGE: expected a whole number 1..100000 (messages per page), not '0'" in p.stderr
    assert p.stdout == b""


def test_a_bad_ping_timeout_is_refused(server):
    for value, args in (("0", ("list",)), ("601", ("summary",)), ("soon", ("hold", "ALL"))):
        env = dict(os.environ, MTA_PING_TIMEOUT=value)
        p = subprocess.run(mta_cmd("queue", *args, "--spool", str(server.spool)), capture_output=True, timeout=60,
                           env=env)
        assert p.returncode != 0, args
        assert f"MTA_PING_TIMEOUT: expected seconds from 0.1 to 600, not '{value}'".encode() in p.stderr, (args, p.stderr)
