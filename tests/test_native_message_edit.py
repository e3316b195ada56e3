"""Message.replace_header_block and Message.discard through `_native.Spool`: what is stored
is byte for byte the prefix, the new header block and the client's rest, spilled or not."""

import select

import pytest

from mta._native import Headers, Message, Spool, SpoolError

HEAD = b"Subject: hello\r\nFrom: <a@x.test>\r\nX-Folded: one\r\n\ttwo\r\n"
BODY = b"\r\nline 1\r\n" + b"x" * 200_000 + b"\r\n"


def drain(spool: Spool, n: int) -> list:
    done: list = []
    while len(done) < n:
        select.select([spool.notify_fd], [], [], 10)
        done += spool.completions()
    return done


@pytest.mark.parametrize("spill_threshold", [1 << 30, 0, len(HEAD) // 2, len(HEAD) + 10])
def test_submit_edited_message_reads_back_exactly(tmp_path, spill_threshold):
    spool = Spool(str(tmp_path), spill_threshold=spill_threshold)
    msg = spool.new_message()
    spool.prepend(msg, b"Received: from us\r\n")
    msg.push(HEAD[:10])
    assert not msg.header_done
    with pytest.raises(ValueError, match="header block not complete"):
        msg.replace_header_block(b"X: 1\r\n")
    for k in range(10, len(HEAD + BODY), 4096):
        msg.push((HEAD + BODY)[k:k + 4096])
    assert msg.header_done and msg.header_block() == HEAD
    # a plugin's edits through the header view, applied to the message
    view = Headers(msg.header_block())
    view.replace("Subject", "edited")
    view.remove("X-Folded")
    view.add("X-Plugin", "yes")
    msg.replace_header_block(view.block())
    new_head = b"Subject: edited\r\nFrom: <a@x.test>\r\nX-Plugin: yes\r\n"
    assert msg.header_block() == new_head
    msg.replace_header_block(new_head)  # again: same result
    spool.prepend(msg, b"X-Top: 1\r\n")  # still goes in front of everything
    want = b"X-Top: 1\r\nReceived: from us\r\n" + new_head + BODY
    assert msg.size == len(new_head + BODY)
    assert msg.bytes() == want
    assert msg.spilled == (spill_threshold < len(HEAD + BODY))
    qid = spool.new_queue_id()
    spool.submit(1, qid, msg, sender="", recipients=[("a@b", None, None)])
    assert drain(spool, 1) == [(1, None)]
    assert spool.message_bytes(qid) == want
    assert spool.get(qid).size == len(want)
    spool.close()
    spool = Spool(str(tmp_path))
    assert spool.message_bytes(qid) == want and not spool.recovery_report[1:]
    spool.close()


def test_discarded_message_is_never_stored(tmp_path):
    spool = Spool(str(tmp_path), spill_threshold=0)
    msg = spool.new_message()
    msg.push(b"Received: a\r\n")
    assert not msg.discarded
    msg.discard()
    msg.push(b"Received: b\r\n\r\nbody\r\n")
    assert msg.discarded and msg.size == 34 and msg.received_count == 2 and msg.header_done
    with pytest.raises(SpoolError):
        msg.bytes()
    with pytest.raises(SpoolError):
        msg.header_block()
    spool.submit(1, spool.new_queue_id(), msg, sender="", recipients=[("a@b", None, None)])
    ((token, error),) = drain(spool, 1)
    assert token == 1 and "discarded" in error
    assert spool.list() == [] and spool.stats()["messages"] == 0
    assert list((tmp_path / "0" / "tmp").iterdir()) == []
    spool.close()


def test_memory_only_message_edit():
    msg = Message()
    msg.push(b"A: 1\nB: 2\n\nbody\n")
    msg.replace_header_block(b"C: 3\r\n")
    assert msg.bytes() == b"C: 3\r\n\nbody\n" and msg.size == 12 and msg.header_size == 10
    # only whole fields: the header/body boundary stays where the client put it
    for bad in (b"C: 3", b"C: 3\r\n\r\nD: 4\r\n", b" folded\r\n", b"not a field\r\n"):
        with pytest.raises(ValueError, match="whole header fields"):
            msg.replace_header_block(bad)
    assert msg.header_block() == b"C: 3\r\n"
    msg.replace_header_block(b"")
    assert msg.bytes() == b"\nbody\n" and msg.size == 6
