"""The control protocol's parsing and the client's view of a shard without a
server (mta.control); the server side is exercised end to end in
tests/e2e/test_queue_control.py."""

from __future__ import annotations

import json
import os
import socket

import pytest

from mta.app import control, control_server
from mta.app.control import MAX_IDS, MAX_LINE, Request, RequestError, parse_request


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.parametrize("obj, want", [
    ({"op": "ping"}, Request("ping")),
    ({"op": "reload"}, Request("reload")),
    ({"op": "hold", "ids": ["ABC1"]}, Request("hold", ("ABC1",))),
    ({"op": "release", "ids": ["A", "B", "A"]}, Request("release", ("A", "B"))),  # duplicates once
    ({"op": "delete", "all": True}, Request("delete", all=True)),
    ({"op": "flush", "all": True}, Request("flush", all=True)),
    ({"op": "flush", "ids": ["x" * 64], "all": False}, Request("flush", ("x" * 64,))),
])
def test_good_requests(obj, want):
    assert parse_request(line(obj)) == want


def test_a_request_without_newline_is_the_same_request():
    assert parse_request(b'{"op":"hold","ids":["Q1"]}') == Request("hold", ("Q1",))


@pytest.mark.parametrize("data, message", [
    (b"hold Q1\n", "not a JSON object"),
    (b"\xff\n", "not a JSON object"),
    (b'"hold"\n', "not a JSON object"),
    (b"[]\n", "not a JSON object"),
    (line({"op": "HOLD", "ids": ["Q"]}), "op must be one of"),
    (line({"ids": ["Q"]}), "op must be one of"),
    (line({"op": "hold"}), "needs ids"),
    (line({"op": "hold", "ids": []}), "needs ids"),
    (line({"op": "hold", "ids": "Q1"}), "needs ids"),
    (line({"op": "hold", "ids": [1]}), "bad queue id 1"),
    (line({"op": "hold", "ids": ["a b"]}), "bad queue id 'a b'"),
    (line({"op": "hold", "ids": ["x" * 65]}), "bad queue id"),
    (line({"op": "hold", "ids": ["Q"], "all": True}), "either ids or all"),
    (line({"op": "hold", "all": "yes"}), "all must be true or false"),
    (line({"op": "ping", "all": True}), "ping takes no ids"),
    (line({"op": "reload", "ids": ["Q"]}), "reload takes no ids"),
    (line({"op": "reload", "domain": "a.test"}), "reload takes no domain"),
    (line({"op": "hold", "ids": ["Q"], "force": True}), "unknown request field(s): 'force'"),
    (line({"op": "hold", "ids": [f"Q{i}" for i in range(MAX_IDS + 1)]}), f"at most {MAX_IDS} ids"),
    (b"{" + b" " * MAX_LINE + b"}\n", f"longer than {MAX_LINE} bytes"),
])
def test_bad_requests_say_what_is_wrong(data, message):
    with pytest.raises(RequestError) as e:
        parse_request(data)
    assert message in str(e.value)


def test_request_error_is_a_value_error():
    assert issubclass(RequestError, ValueError)


def test_replies_are_one_line():
    out = control.encode({"ok": False, "error": "a\nb"})
    assert out.endswith(b"\n") and out.count(b"\n") == 1


def test_shards_are_the_numbered_directories(tmp_path):
    for name in ("0", "1", "10", "corrupt", "x1"):
        (tmp_path / name).mkdir()
    (tmp_path / "2").write_text("not a directory")
    assert control.shards(str(tmp_path)) == [0, 1, 10]
    assert control.shards(str(tmp_path / "missing")) == []


def test_no_socket_and_stale_socket_mean_no_server(tmp_path):
    (tmp_path / "0").mkdir()
    with pytest.raises(control.NoServer):
        control.call(str(tmp_path), 0, {"op": "ping"})
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(control.socket_path(str(tmp_path), 0))
    s.close()  # bound, never listening, left behind: a killed server's socket
    with pytest.raises(control.NoServer):
        control.call(str(tmp_path), 0, {"op": "ping"})


def test_client_reads_a_reply_over_a_long_path(tmp_path):
    d = tmp_path / ("x" * 70) / ("y" * 70) / "0"
    d.mkdir(parents=True)
    path = control.socket_path(str(d.parent), 0)
    assert len(os.fsencode(path)) > 108
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with control.SunPath(path) as p:
        srv.bind(p)
    srv.listen(1)
    import threading

    def answer():
        c, _ = srv.accept()
        with c:
            c.recv(1000)
            c.sendall(b'{"ok": false, "error": "nope"}\n')

    t = threading.Thread(target=answer)
    t.start()
    try:
        with pytest.raises(control.ControlError, match="nope"):
            control.call(str(d.parent), 0, {"op": "ping"}, timeout=10)
    finally:
        t.join(10)
        srv.close()


class QueueStub:
    """What the control server asks of the queue manager, recorded."""

    def __init__(self) -> None:
        self.active: set[str] = set()
        self.calls: list[tuple] = []

    def kick(self) -> None:
        self.calls.append(("kick",))

    def retry_now(self, qids=None) -> None:
        self.calls.append(("retry_now", sorted(qids)))

    def exclude(self, qids) -> None:
        self.calls.append(("exclude", sorted(qids)))

    def include(self, qids) -> None:
        self.calls.append(("include", sorted(qids)))


def test_the_operations_on_a_real_store_without_a_socket(tmp_path):
    """ControlServer takes the store and the queue it talks to: hold, release, flush and
    delete answered from durable records, the queue told what to leave alone and retry."""
    import asyncio
    import time

    from mta.config import schema as config
    from mta.delivery.deliverylog import DeliveryLog
    from mta.queue.store import SpoolService

    cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": str(tmp_path / "spool")})

    async def main():
        store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, "mx.example.test")
        store.attach(asyncio.get_running_loop())
        queue = QueueStub()
        dlog = DeliveryLog(str(tmp_path / "delivery.log"))
        srv = control_server.ControlServer(store, queue, dlog, str(tmp_path / "control.sock"), 0)
        a = await store.inject(b"Subject: a\r\n\r\na\r\n", sender="s@x.test", recipient="r@y.test")
        b = await store.inject(b"Subject: b\r\n\r\nb\r\n", sender="s@x.test", recipient="r@y.test")
        await store.update(b, [(0, "deferred", 1, time.time() + 3600, "451 4.3.0 later")])
        out = [await srv.handle(Request("hold", (a, "NOSUCH")))]
        out.append(store.get(a).held)
        out.append(await srv.handle(Request("release", (a, b))))
        out.append(await srv.handle(Request("flush", (b,))))
        out.append(store.get(b).recipients[0].next_attempt <= time.time())
        queue.active.add(a)
        out.append(await srv.handle(Request("flush", all=True)))
        queue.active.clear()
        out.append(await srv.handle(Request("delete", (a,))))
        out.append((store.get(a), [e.queue_id for e in store.list()]))
        dlog.close()
        store.close()
        return a, b, out, queue.calls

    a, b, out, calls = asyncio.run(main())
    assert out[0] == {"ok": True, "results": {a: "held", "NOSUCH": "unknown"}}
    assert out[1] is True
    assert out[2] == {"ok": True, "results": {a: "released", b: "not held"}}
    assert out[3] == {"ok": True, "results": {b: "flushed"}}
    assert out[4] is True
    assert out[5] == {"ok": True, "counts": {"active": 1, "flushed": 1}}
    assert out[6] == {"ok": True, "results": {a: "deleted"}}
    assert out[7] == (None, [b])
    assert calls == [("kick",), ("retry_now", [b]), ("retry_now", [b]), ("exclude", [a]), ("include", [a])]
    with open(tmp_path / "delivery.log") as f:
        assert [(r["queue_id"], r["status"]) for r in map(json.loads, f)] == [(a, "deleted")]


def test_reload_calls_the_server_and_reports_a_refusal_as_an_answer(tmp_path):
    """{"op": "reload"} answers what the server's reload said: applied or not, and why;
    a server without a reload callback says it cannot."""
    import asyncio

    calls = []

    async def reload():
        calls.append(1)
        return len(calls) == 1, ["changed: transport"] if len(calls) == 1 else ["bogus: unknown key"]

    async def main():
        with_cb = control_server.ControlServer(None, None, None, str(tmp_path / "a.sock"), 3, reload=reload)
        without = control_server.ControlServer(None, None, None, str(tmp_path / "b.sock"), 0)
        out = [await with_cb.handle(Request("reload")), await with_cb.handle(Request("reload"))]
        with pytest.raises(RequestError, match="cannot reload"):
            await without.handle(Request("reload"))
        return out

    assert asyncio.run(main()) == [{"ok": True, "applied": True, "messages": ["changed: transport"]},
                                   {"ok": True, "applied": False, "messages": ["bogus: unknown key"]}]
