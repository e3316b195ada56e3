"""The delivery agent's job frames (one definition: rust/src/agent/frames.rs) made from
spool entries (Spool.encode_jobs) against the ones made from the queue's Python values
(AgentDelivery._send, through _native.encode_job) for the same messages: the same items,
value for value and type for type, for any envelope, a big message's location included;
the agent reads them back into the same message; entries that are not fresh (held, a
recipient attempted, gone) are left out and named."""

from __future__ import annotations

import asyncio
import marshal
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta._native import INLINE_MAX, Spool, StoredMessage
from mta.delivery import OutMessage, OutRcpt, Target
from mta.delivery.agent import AgentDelivery, read_job
from mta.delivery.smtp.client import SmtpOptions

from test_spool import completions, fill

OPTS = SmtpOptions(helo="mx.test", tls="none", max_connections=3)
TARGETS = (Target("relay.test", "192.0.2.7", 2525), Target("relay.test", "2001:db8::7", 2525))
KEY = "smarthost:relay.test:2525"

local = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters='<>@"\\ '),
                min_size=1, max_size=12)
address = st.builds(lambda a, d: f"{a}@{d}", local, st.sampled_from(["example.test", "bücher.test", "x.test"]))
rcpt = st.tuples(address,
                 st.one_of(st.none(), st.sampled_from([["NEVER"], ["SUCCESS"], ["SUCCESS", "FAILURE", "DELAY"],
                                                       ["DELAY", "FAILURE"]])),
                 st.one_of(st.none(), address.map(lambda a: "rfc822;" + a)))
envelope = st.fixed_dictionaries({
    "sender": st.one_of(st.just(""), address),
    "recipients": st.lists(rcpt, min_size=1, max_size=4),
    "body": st.sampled_from([None, "7BIT", "8BITMIME"]),
    "smtputf8": st.booleans(),
    "ret": st.sampled_from([None, "FULL", "HDRS"]),
    "envid": st.one_of(st.none(), st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20)),
    "arrival": st.floats(min_value=1e9, max_value=4e9),
})


class _Capture:
    """Stands in for the agent connection: keeps what AgentDelivery._send sends."""

    def __init__(self) -> None:
        self.items: list = []

    def send(self, item, size=0) -> None:
        self.items.append(item)


def python_item(spool: Spool, qid: str, job: int) -> tuple:
    """The item the Python path sends for this entry (as QueueManager._prepare reads it)."""
    env = spool.get(qid)
    rcpts = tuple(OutRcpt(r.address, r.notify, r.orcpt, i) for i, r in enumerate(env.recipients))
    data = spool.message_bytes(qid) if env.size <= INLINE_MAX else spool.locate(qid)
    msg = OutMessage(qid, env.sender, rcpts, data, env.body, env.smtputf8, env.ret, env.envid, env.arrival)
    d, cap = AgentDelivery(), _Capture()
    d._next = job
    d._send(cap, KEY, TARGETS, OPTS, msg, lambda res: None,
            log=(env.arrival, tuple(r.attempts + 1 for r in env.recipients)))
    return marshal.loads(cap.items[0])


def head() -> bytes:
    d = AgentDelivery()
    return b"".join(marshal.dumps(x, 2) for x in (KEY, d._form(TARGETS), d._form(OPTS)))


def typed(x):
    """A value with its type at every level (1 == 1.0 == True must not pass)."""
    if isinstance(x, (tuple, list)):
        return (type(x).__name__, [typed(v) for v in x])
    return (type(x).__name__, x)


def store(spool: Spool, envs: list[dict], data: bytes) -> list[str]:
    qids = []
    for i, e in enumerate(envs):
        qid = spool.new_queue_id()
        spool.submit(i + 1, qid, fill(spool, data), helo="client.test", client_ip="192.0.2.1", **e)
        qids.append(qid)
    asyncio.run(completions(spool, len(envs)))
    return qids


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(envs=st.lists(envelope, min_size=1, max_size=5),
       data=st.binary(min_size=0, max_size=3000).map(lambda b: b"Subject: t\r\n\r\n" + b),
       first_job=st.sampled_from([1, 2**31 - 2, 2**31, 2**40 + 5]), keep=st.booleans(), big=st.booleans())
def test_encoded_jobs_are_the_python_paths_items(tmp_path_factory, envs, data, first_job, keep, big):
    if big:  # past INLINE_MAX: the job carries where the message is, not its bytes
        data += b"z" * (INLINE_MAX + 1 - len(data)) + b"\r\n"
    spool = Spool(str(tmp_path_factory.mktemp("spool")), sync=False)
    try:
        spool.keep_fresh(keep)  # the bytes from memory (just made durable) or read back
        qids = store(spool, envs, data)
        jobs = [(first_job + i, qid, head()) for i, qid in enumerate(qids)]
        payload, left = spool.encode_jobs(jobs)
        assert left == []
        items = marshal.loads(payload)
        assert len(items) == len(qids)
        for (job, qid, _), item in zip(jobs, items):
            assert typed(item) == typed(python_item(spool, qid, job))
            # ... and the agent reads back the message the queue would have sent
            _, key, targets, opts, msg = read_job(item, {})
            env = spool.get(qid)
            assert (key, tuple(targets), opts) == (KEY, TARGETS, OPTS)
            assert (msg.queue_id, msg.sender, msg.body, msg.smtputf8, msg.ret, msg.envid) == \
                (qid, env.sender, env.body, env.smtputf8, env.ret, env.envid)
            assert [(r.address, r.notify, r.orcpt, r.index) for r in msg.recipients] == \
                [(r.address, r.notify, r.orcpt, i) for i, r in enumerate(env.recipients)]
            if big:
                assert msg.data == spool.locate(qid)
                reader, got = msg.data.open(), b""
                while piece := reader.read():
                    got += piece
                assert got == spool.message_bytes(qid)
            else:
                assert msg.data == spool.message_bytes(qid)
    finally:
        spool.close()


def test_with_keep_fresh_new_messages_bytes_come_from_memory_once(tmp_path):
    """keep_fresh: a message just made durable goes into its job from memory (so a
    segment that can no longer be read does not matter), once; a message past 256 KiB
    is not kept and goes as its spool location (the agent reads it)."""
    spool = Spool(str(tmp_path / "spool"), sync=False)
    try:
        spool.keep_fresh(True)
        env = {"sender": "a@example.test", "recipients": [("b@example.test", None, None)]}
        small = store(spool, [env] * 3, b"Subject: t\r\n\r\n" + b"x" * 2000)
        [big] = store(spool, [env], b"Subject: t\r\n\r\n" + b"y" * (300 << 10))
        want = {qid: typed(python_item(spool, qid, i + 1)) for i, qid in enumerate(small)}
        want[big] = typed(python_item(spool, big, 9))
        for f in (tmp_path / "spool" / "0" / "segments").iterdir():  # shard 0
            with open(f, "r+b") as seg:
                seg.truncate(0)  # what is read back from here now fails
        jobs = [(i + 1, qid, head()) for i, qid in enumerate(small)] + [(9, big, head())]
        payload, left = spool.encode_jobs(jobs)
        assert left == []
        items = marshal.loads(payload)
        assert [typed(item) for item in items] == [want[qid] for qid in small + [big]]
        assert StoredMessage(*items[-1][5][3]) == spool.locate(big) and len(spool.locate(big)) > INLINE_MAX
        _, left = spool.encode_jobs(jobs[:1])
        assert left == [1], "taken once: the second job reads the segment"
    finally:
        spool.close()


def test_entries_not_fresh_are_left_out_and_named(tmp_path):
    spool = Spool(str(tmp_path / "spool"), sync=False)
    try:
        env = {"sender": "a@example.test", "recipients": [("b@example.test", None, None), ("c@x.test", None, None)]}
        fresh, attempted, held, deleted = store(spool, [env] * 4, b"Subject: t\r\n\r\nbody\r\n")
        spool.update(10, attempted, [(1, "deferred", 1, time.time() + 60, "451 4.0.0 later")])
        spool.hold(11, held, True)
        spool.delete(12, deleted)
        asyncio.run(completions(spool, 3))
        jobs = [(1, fresh, head()), (2, attempted, head()), (3, held, head()), (4, deleted, head()),
                (5, "NoSuchId00", head())]
        payload, left = spool.encode_jobs(jobs)
        assert sorted(left) == [2, 3, 4, 5]
        [item] = marshal.loads(payload)
        assert item[1] == 1 and item[5][0] == fresh
        assert typed(item) == typed(python_item(spool, fresh, 1))
        assert spool.encode_jobs([]) == (marshal.dumps([], 2), [])
    finally:
        spool.close()


def test_a_destination_head_is_made_once_for_equal_target_lists():
    """A smarthost's name answers from the DNS cache as a new tuple of the same targets
    for each message: one head for all of them; other targets or options get their own."""
    async def go():
        d = AgentDelivery(encode=lambda jobs: (marshal.dumps([], 2), []))

        class Proto:
            transport = object()

            def send_spooled(self, entry):
                sent.append(entry)
        sent: list = []
        d._proto = Proto()
        for _ in range(3):
            assert d.submit_spooled(KEY, tuple(list(TARGETS)), OPTS, "Q1", lambda q, out: None, lambda ids: None)  # equal, not the same
        assert d.submit_spooled(KEY, TARGETS[:1], OPTS, "Q2", lambda q, out: None, lambda ids: None)
        other = SmtpOptions(helo="mx.test", tls="none", max_connections=4)
        assert d.submit_spooled(KEY, TARGETS, other, "Q3", lambda q, out: None, lambda ids: None)
        return d, sent

    d, sent = asyncio.run(go())
    assert len(d._heads) == 3
    assert sent[0][2] is sent[1][2] is sent[2][2] == head()
    assert sent[3][2] != sent[0][2] and sent[4][2] != sent[0][2]
