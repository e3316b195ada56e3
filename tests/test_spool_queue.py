"""The spool's queue-manager API through Python: update/hold/delete completed
through notify_fd like submit, due()/next_due(), get/message_bytes on the live
Spool, restart, SpoolReader, and compaction."""

import asyncio
import time

import pytest

from mta._native import Spool, SpoolReader

from test_spool import completions, content, submit


async def done(spool: Spool, n: int) -> None:
    got = await completions(spool, n)
    assert all(err is None for err in got.values()), got


def two_rcpts(spool: Spool, token: int, data: bytes, arrival: float | None = None) -> str:
    return submit(spool, token, data, recipients=[("a@x.test", None, None), ("b@y.test", ("FAILURE",), None)], arrival=arrival)


def test_update_hold_delete_through_event_loop(tmp_path):
    spool = Spool(str(tmp_path))
    t = time.time()

    async def main():
        q1 = two_rcpts(spool, 1, content(1), arrival=t - 10)
        q2 = two_rcpts(spool, 2, content(2), arrival=t - 5)
        await done(spool, 2)
        assert spool.due(t, 10) == [q1, q2]
        assert spool.due(t, 1) == [q1]
        assert spool.next_due() is not None and spool.next_due() <= t
        # one batch of changes: one update, one hold; one wake-up each batch
        spool.update(3, q1, [(0, "delivered", 1, None, "250 2.0.0 ok"), (1, "deferred", 1, t + 60, "451 4.7.1 later")])
        spool.hold(4, q2, True)
        # not applied before it is durable ... and applied after
        await done(spool, 2)
        e = spool.get(q1)
        assert [(r.state, r.attempts, r.next_attempt, r.last_reply) for r in e.recipients] == [
            ("delivered", 1, None, "250 2.0.0 ok"), ("deferred", 1, pytest.approx(t + 60), "451 4.7.1 later")]
        assert spool.get(q2).held and not e.held
        assert spool.due(t, 10) == []
        assert spool.next_due() == pytest.approx(t + 60)
        assert spool.due(t + 61, 10) == [q1]
        assert spool.message_bytes(q1) == content(1)
        spool.delete(5, q2)
        await done(spool, 1)
        assert spool.get(q2) is None and spool.message_bytes(q2) is None
        return q1, q2

    q1, q2 = asyncio.run(main())
    spool.close()
    for view in (SpoolReader(str(tmp_path)), Spool(str(tmp_path))):
        (e,) = view.list()
        assert e.queue_id == q1
        assert [(r.state, r.attempts, r.last_reply) for r in e.recipients] == [
            ("delivered", 1, "250 2.0.0 ok"), ("deferred", 1, "451 4.7.1 later")]
        assert view.get(q2) is None
        if isinstance(view, Spool):
            assert view.due(t, 10) == [] and view.due(t + 61, 10) == [q1]
            view.close()


def test_errors_at_call_time(tmp_path):
    spool = Spool(str(tmp_path))

    async def main():
        q = two_rcpts(spool, 1, content(1))
        with pytest.raises(ValueError):
            spool.update(2, q, [(0, "delivered", 1, None, None)])  # not durable yet
        await done(spool, 1)
        for bad in ([(2, "delivered", 1, None, None)], [(0, "sent", 1, None, None)], [(0, "deferred", 1, -5.0, None)]):
            with pytest.raises(ValueError):
                spool.update(2, q, bad)
        for call in (lambda: spool.update(2, "nope", []), lambda: spool.hold(2, "nope", True), lambda: spool.delete(2, "nope")):
            with pytest.raises(ValueError):
                call()
        assert spool.completions() == []

    asyncio.run(main())
    spool.close()


def test_delivered_never_due_after_restart(tmp_path):
    spool = Spool(str(tmp_path))

    async def main():
        q = two_rcpts(spool, 1, content(1))
        await done(spool, 1)
        spool.update(2, q, [(0, "delivered", 1, None, "250 ok")])
        await done(spool, 1)
        return q

    q = asyncio.run(main())
    assert spool.due(time.time(), 10) == [q]  # b@y.test still queued
    asyncio.run(_bounce(spool, q))
    assert spool.due(time.time() + 1e6, 10) == [] and spool.next_due() is None
    spool.close()
    spool = Spool(str(tmp_path))
    assert [r.state for r in spool.get(q).recipients] == ["delivered", "bounced"]
    assert spool.due(time.time() + 1e6, 10) == [] and spool.next_due() is None
    spool.close()


async def _bounce(spool, q):
    spool.update(3, q, [(1, "bounced", 1, None, "550 5.1.1 unknown")])
    await done(spool, 1)


def test_compaction_reclaims_space(tmp_path):
    spool = Spool(str(tmp_path), segment_size=16384)
    seg_dir = tmp_path / "0" / "segments"

    async def main():
        ids = [two_rcpts(spool, i, content(i, 3000)) for i in range(40)]
        await done(spool, 40)
        many = len(list(seg_dir.iterdir()))
        keep = ids[::10]
        for i, q in enumerate(ids):
            if q in keep:
                spool.update(100 + i, q, [(0, "deferred", 2, time.time() + 3600, "421 busy")])
            else:
                spool.delete(100 + i, q)
        await done(spool, 40)
        for _ in range(2000):
            if len(list(seg_dir.iterdir())) <= 3:
                break
            await asyncio.sleep(0.005)
        return many, keep

    many, keep = asyncio.run(main())
    st = spool.stats()
    assert many >= 8 and len(list(seg_dir.iterdir())) <= 3, (many, st)
    assert st["segments_deleted"] >= many - 3 and st["messages_copied"] >= 1, st
    assert [e.queue_id for e in spool.list()] == keep
    for q in keep:
        i = int(spool.message_bytes(q).split(b"message ")[1].split(b"\r\n")[0])
        assert spool.message_bytes(q) == content(i, 3000)
        assert spool.get(q).recipients[0].attempts == 2
    spool.close()
    spool = Spool(str(tmp_path))
    assert [e.queue_id for e in spool.list()] == keep
    assert all(e.recipients[0].state == "deferred" and e.recipients[0].last_reply == "421 busy" for e in spool.list())
    assert [e.queue_id for e in SpoolReader(str(tmp_path)).list()] == keep
    spool.close()
