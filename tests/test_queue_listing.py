"""The streaming queue tools below the CLI: native Spool/SpoolReader pages equal what Python made
of each envelope (json.dumps(admin.entry), the old `mta queue list` lines, admin.shape), the page
requests of the control channel are checked, and "all" requests walk the shard in chunks."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mta import _native
from mta.app import admin, control, control_server
from mta.app.control import Request, RequestError, parse_request
from test_control import QueueStub

STATES = ("queued", "delivered", "deferred", "bounced")


def old_text(e: dict) -> str:
    """What `mta queue list` printed per message before it streamed (cli.queue_list)."""
    held = "  (held)" if e["held"] else ""
    lines = [f"{e['id']:<24} {e['size']:>10} {e['arrival']}  <{e['sender']}>{held}"]
    lines += [f"{'':<24} {r['state']:>10} <{r['address']}>" for r in e["recipients"]]
    return "".join(line + "\n" for line in lines)


def settle(spool, n: int, timeout: float = 20) -> None:
    done: dict = {}
    deadline = time.monotonic() + timeout
    while len(done) < n:
        done.update(spool.completions())
        assert time.monotonic() < deadline, "spool completions did not arrive"
        time.sleep(0.001)
    assert all(err is None for err in done.values()), done


def put(spool, envs) -> list[str]:
    """Spool each (sender, [(address, state)], held, arrival); their queue ids."""
    qids = []
    for token, (sender, rcpts, held, arrival) in enumerate(envs, 1):
        qid = spool.new_queue_id()
        m = spool.new_message()
        m.push(b"Subject: x\r\n\r\nbody\r\n")
        spool.submit(token, qid, m, sender=sender, recipients=[(a, None, None) for a, _ in rcpts],
                     held=held, arrival=arrival)
        qids.append(qid)
    settle(spool, len(envs))
    changes = [(qid, [(i, s, 1, None, "250 ok" if s == "delivered" else "5.0.0 no")
                      for i, (_, s) in enumerate(rcpts) if s != "queued"])
               for qid, (_, rcpts, _, _) in zip(qids, envs)]
    changes = [(q, c) for q, c in changes if c]
    for token, (qid, c) in enumerate(changes, 1000):
        spool.update(token, qid, c)
    settle(spool, len(changes))
    return qids


def whole(fetch, *args, limit=3):
    """Every page of a native page method concatenated: (data pieces, count)."""
    cursor, out, total = 0, [], 0
    while cursor is not None:
        data, n, cursor = fetch(cursor, limit, *args)
        out.append(data)
        total += n
    return out, total


texts = st.text(st.characters(codec="utf-8"), max_size=12)  # control characters, quotes, astral planes
envelopes = st.lists(st.tuples(
    texts, st.lists(st.tuples(texts, st.sampled_from(STATES)), min_size=1, max_size=3), st.booleans(),
    st.floats(min_value=0, max_value=4e9)), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def spool():
    with tempfile.TemporaryDirectory() as d:
        s = _native.Spool(d, sync=False)
        yield s
        s.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(envelopes)
def test_native_pages_equal_what_python_made_of_each_envelope(spool, envs):
    put(spool, envs)
    ids = [q for chunk, _ in iter_ids(spool) for q in chunk]
    mine = [spool.get(q) for q in ids]
    entries = [admin.entry(e) for e in mine]
    pieces, n = whole(spool.page, "json")
    assert n == len(ids)
    assert b", ".join(p for p in pieces if p).decode() == ", ".join(json.dumps(e) for e in entries)
    pieces, n = whole(spool.page, "text")
    assert b"".join(pieces).decode() == "".join(old_text(e) for e in entries)
    now = time.time()
    table, rcpts = {}, {}
    cursor = 0
    while cursor is not None:
        part, counts, cursor = spool.shape(cursor, 2, now, list(admin.BUCKETS))
        for d, row in part.items():
            table[d] = [a + b for a, b in zip(table.get(d, [0] * len(row)), row)]
        for d, k in counts.items():
            rcpts[d] = rcpts.get(d, 0) + k
    assert (table, rcpts) == admin.shape(mine, now)


def iter_ids(spool, limit=5):
    cursor = 0
    while cursor is not None:
        chunk, cursor = spool.ids(cursor, limit)
        yield chunk, cursor


def test_pages_are_bounded_and_the_reader_gives_the_same(tmp_path):
    s = _native.Spool(str(tmp_path), sync=False)
    try:
        put(s, [(f"s{i}@x.test", [(f"r{i}@y.test", "queued")], i % 3 == 0, 1.7e9 + i) for i in range(25)])
        one, n = s.page(0, 1000, "json")[:2]
        assert n == 25 and s.page(0, 1000, "json")[2] is None
        _data, n, cursor = s.page(0, 10, "json")
        assert n == 10 and cursor is not None
        pieces, n = whole(s.page, "json", limit=4)
        assert n == 25 and b", ".join(pieces) == one
        for bad in (0, 100_001):
            with pytest.raises(ValueError, match="limit must be"):
                s.page(0, bad, "json")
        with pytest.raises(ValueError, match="form must be 'json' or 'text'"):
            s.page(0, 10, "xml")
        with pytest.raises(ValueError, match="buckets"):
            s.shape(0, 10, time.time(), [10, 5])
        with pytest.raises(OverflowError):
            s.page(-1, 10, "json")
        assert s.page(2 ** 64 - 1, 10, "json") == (b"", 0, None)  # past the end: nothing
        listed = json.loads(b"[" + one + b"]")
    finally:
        s.close()
    r = _native.SpoolReader(str(tmp_path))
    assert r.shards() == [0]
    assert b", ".join(whole(lambda c, n, f: r.page(0, c, n, f), "json", limit=7)[0]) == one
    assert [q for chunk, _ in iter_ids_reader(r) for q in chunk] == [e["id"] for e in listed]
    assert listed == [admin.entry(e) for e in r.list()]  # arrival order is log order here


def iter_ids_reader(r, limit=6):
    cursor = 0
    while cursor is not None:
        chunk, cursor = r.ids(0, cursor, limit)
        yield chunk, cursor


# --- the control channel's page requests -------------------------------------------------

@pytest.mark.parametrize("obj, want", [
    ({"op": "page", "limit": 10, "form": "json"}, Request("page", limit=10, form="json")),
    ({"op": "page", "cursor": 2 ** 40, "limit": 1, "form": "text"}, Request("page", cursor=2 ** 40, limit=1, form="text")),
    ({"op": "ids", "cursor": 0, "limit": 100_000}, Request("ids", limit=100_000)),
    ({"op": "shape", "limit": 5, "now": 1.5e9, "buckets": [1, 2]}, Request("shape", limit=5, now=1.5e9, buckets=(1, 2))),
])
def test_good_page_requests(obj, want):
    assert parse_request(json.dumps(obj).encode()) == want


@pytest.mark.parametrize("obj, message", [
    ({"op": "page", "limit": 10}, "page needs form, 'json' or 'text'"),
    ({"op": "page", "limit": 10, "form": "xml"}, "page needs form, 'json' or 'text', not 'xml'"),
    ({"op": "page", "form": "json"}, "page needs limit, a whole number 1..100000"),
    ({"op": "ids", "limit": 0}, "ids needs limit, a whole number 1..100000, not '0'"),
    ({"op": "ids", "limit": 100_001}, "ids needs limit"),
    ({"op": "ids", "limit": True}, "ids needs limit"),
    ({"op": "ids", "limit": 5, "cursor": -1}, "bad cursor '-1'"),
    ({"op": "ids", "limit": 5, "cursor": 2 ** 64}, "bad cursor"),
    ({"op": "ids", "limit": 5, "cursor": "0"}, "bad cursor"),
    ({"op": "ids", "limit": 5, "form": "json"}, "ids takes no form"),
    ({"op": "shape", "limit": 5, "buckets": [5, 5]}, "bad buckets"),
    ({"op": "shape", "limit": 5, "now": "soon"}, "bad now"),
    ({"op": "page", "limit": 5, "form": "json", "all": True}, "page takes only cursor, limit, form"),
    ({"op": "hold", "ids": ["A"], "limit": 5}, "hold takes no limit"),
])
def test_bad_page_requests_say_what_is_wrong(obj, message):
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(".", r"\.")):
        parse_request(json.dumps(obj).encode())


def test_the_page_ops_and_all_in_chunks_over_a_real_socket(tmp_path, monkeypatch):
    """A running ControlServer answers page/shape/ids from its index (a page's bytes after the
    line, read by control.fetch), refuses bad ones clearly, and hold all walks 4 at a time."""
    from mta.config import schema as config
    from mta.queue.store import SpoolService

    root = str(tmp_path / "spool")
    cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": root})
    monkeypatch.setattr(control_server, "WALK_CHUNK", 4)

    async def main():
        store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, "mx.example.test")
        store.attach(asyncio.get_running_loop())
        queue = QueueStub()
        srv = control_server.ControlServer(store, queue, None, control.socket_path(root, 0), 0)
        await srv.start()
        ids = [await store.inject(b"Subject: a\r\n\r\na\r\n", sender=f"s{i}@x.test", recipient="r@Y.test")
               for i in range(11)]

        def client():
            out = {}
            out["page"] = control.fetch(root, 0, {"op": "page", "cursor": 0, "limit": 4, "form": "json"})
            out["ids"] = control.fetch(root, 0, {"op": "ids", "limit": 100})
            out["shape"] = control.fetch(root, 0, {"op": "shape", "limit": 100, "now": time.time()})
            for bad in ({"op": "page", "limit": 4, "form": "yaml"}, {"op": "ids", "limit": 0},
                        {"op": "ids", "limit": 4, "cursor": -5}):
                with pytest.raises(control.ControlError) as e:
                    control.fetch(root, 0, bad)
                out.setdefault("errors", []).append(str(e.value))
            out["hold"] = control.call(root, 0, {"op": "hold", "all": True})
            out["again"] = control.call(root, 0, {"op": "hold", "all": True})
            return out

        out = await asyncio.to_thread(client)
        held = [store.get(q).held for q in ids]
        await srv.stop()
        store.close()
        return ids, out, held, queue.calls

    ids, out, held, _calls = asyncio.run(main())
    (reply, data) = out["page"]
    assert reply["count"] == 4 and reply["next"] is not None and reply["bytes"] == len(data)
    assert [e["id"] for e in json.loads(b"[" + data + b"]")] == ids[:4]
    assert out["ids"][0]["ids"] == ids and out["ids"][0]["next"] is None and out["ids"][1] == b""
    shape = out["shape"][0]
    assert shape["table"] == {"y.test": [11, 11] + [0] * 9} and shape["rcpts"] == {"y.test": 11}
    assert out["errors"] == ["shard 0: page needs form, 'json' or 'text', not 'yaml'",
                             "shard 0: ids needs limit, a whole number 1..100000, not '0'",
                             "shard 0: bad cursor '-5': expected 0 or the \"next\" of a reply"]
    assert out["hold"]["counts"] == {"held": 11} and out["again"]["counts"] == {"held": 11}
    assert all(held)


def test_all_leaves_alone_what_arrived_after_the_walk_began(tmp_path, monkeypatch):
    """A message whose arrival is after the walk started (mail coming in meanwhile, a DSN the
    bounce made) is not acted on, as a snapshot of the queue would not hold it."""
    from mta.config import schema as config
    from mta.queue.store import SpoolService

    cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": str(tmp_path / "spool")})
    monkeypatch.setattr(control_server, "WALK_CHUNK", 2)

    async def main():
        store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, "mx.example.test")
        store.attach(asyncio.get_running_loop())
        srv = control_server.ControlServer(store, QueueStub(), None, str(tmp_path / "c.sock"), 0)
        old = [await store.inject(b"S: a\r\n\r\na\r\n", sender="s@x.test", recipient="r@y.test") for _ in range(5)]
        qid = store.new_queue_id()
        m = store.new_message()
        m.push(b"S: later\r\n\r\nb\r\n")
        fut = asyncio.get_running_loop().create_future()
        store.submit(qid, m, lambda err: fut.set_result(err), sender="s@x.test",
                     recipients=[("r@y.test", None, None)], arrival=time.time() + 3600)
        assert await fut is None
        reply = await srv.handle(Request("hold", all=True))
        held = {q: store.get(q).held for q in old + [qid]}
        store.close()
        return old, qid, reply, held

    old, late, reply, held = asyncio.run(main())
    assert reply == {"ok": True, "counts": {"held": 5}}
    assert all(held[q] for q in old) and not held[late]
