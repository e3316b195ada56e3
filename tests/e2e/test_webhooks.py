"""Event webhooks end to end: a real mta, real SMTP peers and a real receiver (aiohttp on
loopback). Every event arrives with its fields; an endpoint outage and a restart of mta
(SIGTERM, and kill -9) in the middle lose none and repeat none; beyond max_backlog the
oldest are dropped and counted while mail keeps flowing."""

from __future__ import annotations

import collections
import signal
import smtplib
import time

import pytest

from webhooksink import WebhookSink


def config(sink: WebhookSink, ok: int, bad: int, later: int, *, events: str | None = None,
           max_backlog: int = 100000) -> str:
    kinds = f"events = {events}\n" if events else ""
    return (
        "[delivery]\n"
        'retry_schedule = ["1s"]\nretry_jitter = 0\ntls = "none"\n'
        "[transport]\n"
        f'"good.test" = "smarthost 127.0.0.1:{ok}"\n'
        f'"bad.test" = "smarthost 127.0.0.1:{bad}"\n'
        f'"later.test" = "smarthost 127.0.0.1:{later}"\n'
        "[[webhook]]\n"
        f'name = "events"\nurl = "{sink.url}"\n{kinds}batch = 4\nmax_backlog = {max_backlog}\n'
        'retry_min = "100ms"\nretry_max = "500ms"\ntimeout = "5s"\n'
    )


@pytest.fixture
def sink():
    s = WebhookSink().start()
    yield s
    s.stop()


@pytest.fixture
def peers(peer_factory):
    return (peer_factory(), peer_factory(rcpt=lambda a, n, p: "550 5.1.1 no such user here"),
            peer_factory(rcpt=lambda a, n, p: "451 4.3.0 try again later"))


def send(port: int, sender: str, rcpt: str, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        assert c.sendmail(sender, [rcpt], f"Subject: {subject}\r\n\r\nx\r\n") == {}


def by_kind(records: list[dict]) -> dict[str, list[dict]]:
    out = collections.defaultdict(list)
    for r in records:
        out[r["event"]].append(r)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_every_event_arrives_with_its_fields(server_factory, peers, sink, workers):
    """With two workers each sends its own shard's events (one connection per message,
    so both take some)."""
    ok, bad, later = peers
    srv = server_factory(config=config(sink, ok.port, bad.port, later.port), deliver=True,
                         args=("--workers", str(workers)))
    send(srv.port, "alice@example.test", "u@good.test", "ok")
    send(srv.port, "", "u@bad.test", "bad")  # null sender: no DSN
    send(srv.port, "carol@example.test", "u@later.test", "later")

    def done(got):
        k = by_kind(got)
        return len(k["accepted"]) == 3 and k["delivered"] and k["bounced"] and k["deferred"]
    k = by_kind(sink.wait(done))
    got = sink.records()
    assert len({r["id"] for r in got}) == len(got), "ids are unique"
    acc = {r["recipients"][0]: r for r in k["accepted"]}
    assert set(acc) == {"u@good.test", "u@bad.test", "u@later.test"}
    a = acc["u@good.test"]
    assert (a["sender"], a["client_ip"]) == ("alice@example.test", "127.0.0.1")
    assert a["size"] > 0 and a["time"].endswith("Z") and len(a["queue_id"]) == 12
    (d,) = k["delivered"]
    assert (d["queue_id"], d["recipient"], d["status"], d["attempt"]) == (a["queue_id"], "u@good.test", "delivered", 1)
    assert d["reply"].startswith("250") and d["remote_ip"] == "127.0.0.1"
    (b,) = k["bounced"]
    assert (b["queue_id"], b["recipient"], b["status"]) == (acc["u@bad.test"]["queue_id"], "u@bad.test", "bounced")
    assert b["reply"].startswith("550 5.1.1") and b["class"] == "invalid_recipient"
    f = k["deferred"][0]
    assert (f["queue_id"], f["recipient"], f["status"]) == (acc["u@later.test"]["queue_id"], "u@later.test", "deferred")
    assert f["reply"].startswith("451 4.3.0") and "class" in f
    # Each record is the delivery log's record plus "id" and "event".
    assert list(d)[:4] == ["id", "event", "time", "queue_id"]


def outage(server_factory, peers, sink, tmp_path, how: signal.Signals) -> None:
    """Endpoint down; mail accepted and delivered; mta restarted (`how`); endpoint up."""
    ok, bad, later = peers
    sink.down()
    cfg = config(sink, ok.port, bad.port, later.port, events='["accepted", "delivered"]')
    srv = server_factory(config=cfg, deliver=True)
    for i in range(6):
        send(srv.port, "alice@example.test", f"u{i}@good.test", f"m{i}")
    ok.wait_txns(6)
    time.sleep(1.0)  # the DELETE records (and their events) are durable within the lazy sync delay
    srv.stop(how)
    srv = server_factory(config=cfg, deliver=True, spool=srv.spool)
    for i in range(6, 9):
        send(srv.port, "alice@example.test", f"u{i}@good.test", f"m{i}")
    ok.wait_txns(9)
    time.sleep(2.0)  # down for a while more: retries keep failing
    assert sink.refused == 0 and not sink.records()
    sink.up()
    got = sink.wait(lambda g: len(g) >= 18)
    time.sleep(1.5)  # nothing more comes
    got = sink.records()
    ids = collections.Counter(r["id"] for r in got)
    assert max(ids.values()) == 1, "none twice: nothing was sent before the restart"
    k = by_kind(got)
    assert sorted(r["recipients"][0] for r in k["accepted"]) == sorted(f"u{i}@good.test" for i in range(9))
    assert sorted(r["recipient"] for r in k["delivered"]) == sorted(f"u{i}@good.test" for i in range(9))
    assert "webhook events: 12 event(s) pending" in srv.log()  # recovered from the spool


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill9"])
def test_an_outage_and_a_restart_lose_nothing(server_factory, peers, sink, tmp_path, how):
    outage(server_factory, peers, sink, tmp_path, how)


def test_kill9_while_sending_repeats_only_the_unacknowledged_batch(server_factory, peers, sink):
    """Up all along, slow to answer: mta is killed with POSTs going on. Every id arrives; an id
    arrives twice only if it was in the last batch received before the kill (sent, maybe not
    acknowledged): the sender sends a batch only after the one before was acknowledged."""
    ok, bad, later = peers
    sink.delay = 0.2
    cfg = config(sink, ok.port, bad.port, later.port, events='["accepted"]')
    srv = server_factory(config=cfg, deliver=True)
    for i in range(12):
        send(srv.port, "alice@example.test", f"u{i}@good.test", f"m{i}")
    sink.wait(lambda g: len(g) >= 4)
    srv.stop(signal.SIGKILL)
    time.sleep(sink.delay + 0.3)  # a POST in flight at the kill is still taken by the receiver
    before = list(sink.posts)
    last = {r["id"] for r in before[-1][1]}
    srv = server_factory(config=cfg, deliver=True, spool=srv.spool)
    got = sink.wait(lambda g: {r["recipients"][0] for r in g} >= {f"u{i}@good.test" for i in range(12)})
    time.sleep(1.0)
    got = sink.records()
    twice = {i for i, n in collections.Counter(r["id"] for r in got).items() if n > 1}
    assert twice <= last, (twice, last)
    assert len({r["id"] for r in got}) == 12


def test_beyond_max_backlog_the_oldest_are_dropped_and_mail_flows(server_factory, peers, sink):
    ok, bad, later = peers
    sink.down()
    cfg = config(sink, ok.port, bad.port, later.port, events='["delivered"]', max_backlog=3)
    srv = server_factory(config=cfg, deliver=True)
    for i in range(10):
        send(srv.port, "alice@example.test", f"u{i}@good.test", f"m{i}")
    assert len(ok.wait_txns(10)) == 10  # mail flows while the endpoint is down
    deadline = time.monotonic() + 10
    while "dropped the" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "webhook events: backlog over max_backlog (3): dropped the" in srv.log()
    time.sleep(1.5)  # a sender looks at its backlog at least every retry_max
    sink.up()
    sink.wait(lambda g: len(g) >= 3)
    time.sleep(1.0)
    assert len(sink.records()) == 3
    assert srv.queue() == []


def test_a_reload_moves_the_events_to_the_new_webhook(server_factory, peers, sink):
    """SIGHUP with [[webhook]] pointing elsewhere: events recorded after the reload go to the
    new receiver (the old senders hand over); the old receiver gets nothing new."""
    ok, bad, later = peers
    other = WebhookSink().start()
    try:
        srv = server_factory(config=config(sink, ok.port, bad.port, later.port, events='["accepted"]'),
                             deliver=True)
        send(srv.port, "alice@example.test", "u@good.test", "before")
        sink.wait(lambda got: len(got) == 1)
        srv.config.write_text(srv.config.read_text().replace(sink.url, other.url))
        srv.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "reload: applied" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "webhook" in srv.log().split("reload: applied", 1)[1].splitlines()[0]
        send(srv.port, "alice@example.test", "u@good.test", "after")
        got = other.wait(lambda got: len(got) == 1)
        assert got[0]["event"] == "accepted"
        time.sleep(0.5)
        assert len(sink.records()) == 1
    finally:
        other.stop()


def test_metrics_count_the_events_sent(server_factory, peers, sink):
    """/metrics: mta_webhook_events_total{result="sent"} equals what the receiver got, the
    backlog drains to 0, and no POST failed."""
    from conftest import free_port
    from test_http import wait_for

    ok, bad, later = peers
    http_port = free_port()
    srv = server_factory(config=config(sink, ok.port, bad.port, later.port, events='["accepted", "delivered"]'),
                         deliver=True, args=("--http", f"127.0.0.1:{http_port}"))
    for i in range(3):
        send(srv.port, "alice@example.test", "u@good.test", f"m{i}")
    sink.wait(lambda got: len(got) == 6)
    want = {("mta_webhook_events_total", (("result", "sent"), ("webhook", "events"))): 6.0,
            ("mta_webhook_events_total", (("result", "dropped"), ("webhook", "events"))): 0.0,
            ("mta_webhook_failures_total", (("webhook", "events"),)): 0.0,
            ("mta_webhook_backlog", (("webhook", "events"),)): 0.0}
    assert wait_for(http_port, want) == want
