"""Transaction notes and per-recipient next routes through the spool's Python API:
stored with the message / its STATE records, read back after a restart and by SpoolReader."""

import json
import select

import pytest

from mta._native import Spool, SpoolReader

NOTES = json.dumps({"spam": {"score": 2.5}, "tag": "ü"})


def drain(spool: Spool, n: int) -> dict:
    done: dict = {}
    while len(done) < n:
        select.select([spool.notify_fd], [], [], 10)
        done.update(spool.completions())
    return done


def submit(spool: Spool, token: int, **kw) -> str:
    msg = spool.new_message()
    msg.push(b"Subject: x\r\n\r\nbody\r\n")
    qid = spool.new_queue_id()
    spool.submit(token, qid, msg, sender="a@x.test", recipients=[("b@y.test", None, None), ("c@y.test", None, None)], **kw)
    return qid


def test_notes_and_routes_roundtrip_and_restart(tmp_path):
    spool = Spool(str(tmp_path))
    qid = submit(spool, 1, notes=NOTES)
    plain = submit(spool, 2)
    assert drain(spool, 2) == {1: None, 2: None}
    assert spool.get(qid).notes == NOTES and spool.get(plain).notes is None
    assert [r.route for r in spool.get(qid).recipients] == [None, None]
    # 5-tuples as before (route None), 6-tuples with the route last
    spool.update(3, qid, [(0, "deferred", 1, 2e9, "451 later", "smarthost 10.0.0.5:25"),
                          (1, "deferred", 1, 2e9, "451 later")])
    assert drain(spool, 1) == {3: None}
    assert [r.route for r in spool.get(qid).recipients] == ["smarthost 10.0.0.5:25", None]
    spool.update(4, qid, [(1, "deferred", 2, 2e9, "451 again", "lmtp /run/lmtp")])
    assert drain(spool, 1) == {4: None}
    spool.close()
    for view in (SpoolReader(str(tmp_path)), Spool(str(tmp_path))):
        e = view.get(qid)
        assert e.notes == NOTES
        assert [(r.route, r.attempts, r.last_reply) for r in e.recipients] == [
            ("smarthost 10.0.0.5:25", 1, "451 later"), ("lmtp /run/lmtp", 2, "451 again")]
        assert view.get(plain).notes is None
        if isinstance(view, Spool):
            # a change without a route clears it
            view.update(5, qid, [(0, "deferred", 2, 2e9, "451 x", None)])
            assert drain(view, 1) == {5: None}
            assert [r.route for r in view.get(qid).recipients] == [None, "lmtp /run/lmtp"]
            view.close()


def test_notes_cap_and_bad_changes(tmp_path):
    spool = Spool(str(tmp_path))
    msg = spool.new_message()
    msg.push(b"Subject: x\r\n\r\n")
    with pytest.raises(ValueError, match="transaction notes exceed 65536 bytes"):
        spool.submit(1, spool.new_queue_id(), msg, sender="", recipients=[("a@b", None, None)], notes="x" * 65537)
    # refused before the spool took the message: it is still usable
    spool.submit(1, spool.new_queue_id(), msg, sender="", recipients=[("a@b", None, None)], notes="é" * 32768)
    assert drain(spool, 1) == {1: None}
    (e,) = spool.list()
    assert len(e.notes.encode()) == 65536
    with pytest.raises(ValueError, match="not 4 items"):
        spool.update(2, e.queue_id, [(0, "deferred", 1, None)])
    with pytest.raises(TypeError):
        spool.update(2, e.queue_id, [(0, "deferred", 1, None, None, 7)])
    spool.close()
