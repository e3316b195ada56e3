"""What a server session counts for /metrics (mta.smtp.counts), without sockets: replies by
verb and class, pipelined or not; the connection outcomes (accepted, refused by a limit or a hook, early
talker); the bytes of an accepted message. The counts add up to what the client saw."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from mta.smtp.counts import (
    ACCEPTED, BYTES, EARLY_TALKER, REFUSED_LIMIT, REFUSED_POLICY, VERB_BASE, VERBS, by_verb_counts, listener_counts,
)
from sessionkit import CLIENT_IP, TRUSTED_IP, scripted

BODY = b"From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: unit\r\n\r\nhello\r\n"


def counted(by_verb: list[int]) -> dict[tuple[str, str], int]:
    return {(verb, f"{d}xx"): by_verb[i * 10 + d] for i, verb in enumerate(VERBS) for d in range(10)
            if by_verb[i * 10 + d]}


def run(body, tmp_path, collaborators_plugins=(), **kw):
    async def main():
        replies, counts = by_verb_counts(), listener_counts()
        s = scripted(tmp_path, asyncio.get_running_loop(),
                     collaborators={"replies": replies, "counts": counts, "plugins": list(collaborators_plugins)},
                     **kw)
        try:
            return await body(s, replies, counts)
        finally:
            s.close()
            s.store.close()

    return asyncio.run(main())


def test_pipelined_replies_count_under_the_verbs_they_answer(tmp_path):
    async def body(s, replies, counts):
        s.replies()
        s.send(b"EHLO c.sender.test\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\n"
               b"RCPT TO:<x@elsewhere.test>\r\nDATA\r\n")
        s.send(BODY + b".\r\nRSET\r\nFOO\r\nMAIL FROM:<bad\r\nNOOP\r\nQUIT\r\n")
        await s.until_durable()
        await asyncio.sleep(0.05)
        assert counted(replies) == {
            ("connect", "2xx"): 1, ("ehlo", "2xx"): 1, ("mail", "2xx"): 1, ("rcpt", "2xx"): 1,
            ("rcpt", "5xx"): 1, ("data", "3xx"): 1, ("data", "2xx"): 1, ("rset", "2xx"): 1,
            ("other", "5xx"): 2, ("noop", "2xx"): 1, ("quit", "2xx"): 1,
        }
        assert counts[ACCEPTED] == 1
        assert counts[BYTES] == len(BODY)  # as received: without the headers mta adds

    run(body, tmp_path)


def test_early_talker_and_its_reply_under_connect(tmp_path):
    async def body(s, replies, counts):
        s.send(b"EHLO too.early.test\r\n")  # before the (delayed) greeting
        assert s.transport.closed
        assert counts[EARLY_TALKER] == 1 and counts[ACCEPTED] == 0
        assert counted(replies) == {("connect", "5xx"): 1}

    run(body, tmp_path, smtp__greeting_delay=5)


def test_refused_by_limit(tmp_path):
    async def body(s, replies, counts):
        s.replies()
        t2, _ = s.connect(CLIENT_IP)
        assert t2.closed and bytes(t2.written).startswith(b"421")
        assert counts[REFUSED_LIMIT] == 1 and counts[ACCEPTED] == 1
        assert counted(replies) == {("connect", "2xx"): 1, ("connect", "4xx"): 1}

    run(body, tmp_path, limits__max_connections_per_ip=1)


COMMANDS = [b"NOOP", b"RSET", b"HELP", b"VRFY x", b"MAIL FROM:<a@sender.test>", b"RCPT TO:<b@example.test>",
            b"FOO", b"HELO h.test", b"EHLO e.test", b"MAIL FROM:<", b"STARTTLS"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(COMMANDS), min_size=1, max_size=12), st.integers(1, 4))
def test_every_reply_is_counted_once_whatever_the_pipelining(tmp_path_factory, cmds, chunks):
    """The replies by verb add up to the replies written, however the commands are split
    into reads."""
    data = b"".join(c + b"\r\n" for c in cmds)
    step = max(1, len(data) // chunks)

    async def body(s, replies, counts):
        for i in range(0, len(data), step):
            s.send(data[i:i + step])
            await asyncio.sleep(0)
        lines = [x for x in s.replies() if x[3:4] == " "]  # the last line of each reply
        assert sum(replies) == len(lines)
        for d in "2345":
            assert sum(replies[i * 10 + int(d)] for i in range(len(VERBS))) == sum(x[0] == d for x in lines)
        assert sum(replies[VERB_BASE["NOOP"] + 48 + d] for d in range(10)) == sum(c == b"NOOP" for c in cmds)

    run(body, tmp_path_factory.mktemp("s"), peer_ip=TRUSTED_IP)


def test_refused_by_an_on_connect_hook(tmp_path):
    from mta.plugin import Reject
    from mta.policy.chain import Entry

    refuse = Entry("gate", {"on_connect": lambda conn: Reject(554, "5.7.1", "not here")})

    async def body(s, replies, counts):
        assert s.transport.closed and bytes(s.transport.written).startswith(b"554")
        assert counts[REFUSED_POLICY] == 1 and counts[ACCEPTED] == 0
        assert counted(replies) == {("connect", "5xx"): 1}

    run(body, tmp_path, collaborators_plugins=[refuse])
