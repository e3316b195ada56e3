"""Big messages read from the spool a block at a time (`_native.StoredMessage`): the same
bytes for every block size, stored or in wire form; safe against compaction; a damaged
record fails before its last block; and every consumer (the SMTP client over DATA and
BDAT, Maildir, bounces, the agent's frame) gives what it gives for the bytes."""

from __future__ import annotations

import asyncio
import email
import email.policy
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta._native import Spool, SpoolError, StoredMessage, wire_body
from mta.delivery import OutMessage, OutRcpt, RcptResult
from mta.delivery.maildir import deliver_maildir
from mta.delivery.smtp.client import SmtpOptions
from mta.queue.bounce import make_dsn

from smtpkit import Capture, aiosmtpd_peer, client, target
from test_spool import completions, fill

lines = st.lists(st.sampled_from([b"", b".", b"..x", b"text", b"\xc3\xa9t\xc3\xa9", b"a\rb", b"a\nb", b"x" * 300]),
                 max_size=40)
endings = st.sampled_from([b"\r\n", b"\n", b"\r", b""])
messages = st.builds(lambda ls, end: end.join(ls) + (end if ls and end else b""), lines, endings)


def store(spool: Spool, data: bytes) -> StoredMessage:
    qid = spool.new_queue_id()
    spool.submit(1, qid, fill(spool, data), sender="a@example.test", recipients=[("b@example.test", None, None)])
    asyncio.run(completions(spool, 1))
    return spool.locate(qid)


def read_all(stored: StoredMessage, block: int, wire: bool | None = None) -> bytes:
    reader = stored.open(wire=wire)
    out = b""
    while piece := reader.read(block):
        out += piece
    assert reader.read(block) == b""  # and stays at its end
    return out


@pytest.fixture
def spool(tmp_path):
    s = Spool(str(tmp_path / "spool"), sync=False)
    yield s
    s.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=messages, block=st.integers(min_value=1, max_value=5000))
def test_every_block_size_gives_the_stored_bytes_and_their_wire_forms(spool, data, block):
    stored = store(spool, data)
    whole = spool.message_bytes(stored.queue_id)
    assert len(stored) == len(whole)
    assert read_all(stored, block) == whole
    for dot in (True, False):
        assert read_all(stored, block, wire=dot) == wire_body(whole, dot_stuff=dot)
        assert stored.wire_length(dot) == len(wire_body(whole, dot_stuff=dot))


def test_the_frame_form_round_trips_and_names_the_message(spool):
    stored = store(spool, b"Subject: x\r\n\r\nbody\r\n")
    assert StoredMessage(*stored.frame()) == stored
    assert stored.frame()[0] == "spool" and stored.frame()[4] == stored.queue_id
    with pytest.raises(ValueError):
        StoredMessage("bytes", *stored.frame()[1:])


def test_a_damaged_record_fails_before_its_last_block(spool, tmp_path):
    data = b"Subject: x\r\n\r\n" + b"y" * 100_000
    stored = store(spool, data)
    _, shard_dir, _, seq, _, _, _, data_offset, _ = stored.frame()
    [seg] = [p for p in (Path(shard_dir) / "segments").iterdir()]
    with open(seg, "r+b") as f:
        f.seek(data_offset + 50_000)
        f.write(b"z")
    reader = stored.open(wire=True)
    assert len(reader.read(40_000)) >= 40_000
    assert reader.read(40_000)
    with pytest.raises(SpoolError, match="CRC"):
        reader.read(40_000)


def test_a_message_moved_by_compaction_is_still_read(tmp_path):
    """Located before compaction copied it forward and unlinked its segment: opened after,
    it is found again; opened before, the open file still reads."""
    spool = Spool(str(tmp_path / "spool"), sync=False, segment_size=16384, copy_forward_percent=50)
    try:
        data = b"Subject: keep\r\n\r\n" + b"k" * 3000 + b"\r\n"
        keep = store(spool, data)
        held_open = keep.open()
        first_seq = keep.frame()[3]
        qids = []
        for i in range(40):  # fill segments, delete all but `keep`: compaction moves it
            qid = spool.new_queue_id()
            spool.submit(10 + i, qid, fill(spool, b"Subject: f\r\n\r\n" + b"f" * 4000),
                         sender="a@example.test", recipients=[("b@example.test", None, None)])
            qids.append(qid)
        asyncio.run(completions(spool, 40))
        for i, qid in enumerate(qids):
            spool.delete(100 + i, qid)
        asyncio.run(completions(spool, 40))
        for _ in range(200):  # compaction runs between the writer's batches
            if spool.locate(keep.queue_id).frame()[3] != first_seq:
                break
            qid = spool.new_queue_id()
            spool.submit(1000, qid, fill(spool, b"x\r\n"), sender="a@example.test",
                         recipients=[("b@example.test", None, None)])
            asyncio.run(completions(spool, 1))
            spool.delete(1001, qid)
            asyncio.run(completions(spool, 1))
        assert spool.locate(keep.queue_id).frame()[3] != first_seq, "compaction did not move the message"
        assert read_all(keep, 1000) == spool.message_bytes(keep.queue_id)
        out = b""
        while piece := held_open.read(777):
            out += piece
        assert out == spool.message_bytes(keep.queue_id)
    finally:
        spool.close()


def big(spool: Spool, size: int = 400_000) -> tuple[StoredMessage, bytes]:
    body = b"".join(b".%d line with a leading dot\r\nplain \xc3\xa9 line\r\n" % i for i in range(size // 40))
    stored = store(spool, b"Subject: big\r\nFrom: a@example.test\r\n\r\n" + body)
    return stored, spool.message_bytes(stored.queue_id)


def out_message(data, ret: str | None = None) -> OutMessage:
    return OutMessage("Q1", "from@src.test", (OutRcpt("a@dst.test"),), data, body="8BITMIME", ret=ret)


def test_the_client_streams_a_stored_message_over_data(spool):
    stored, whole = big(spool)
    h = Capture()

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], SmtpOptions(helo="client.test"), out_message(stored))
        await d.close()
        return res

    with aiosmtpd_peer(h) as port:
        res = asyncio.run(go(port))
    assert [r.code for r in res] == [250]
    [env] = h.envelopes
    assert env["data"] == whole and f"SIZE={len(whole)}" in env["mail_options"]


class BdatPeer(asyncio.Protocol):
    """Offers CHUNKING; keeps what each BDAT carried."""

    def __init__(self, got: list) -> None:
        self.got, self.buf, self.want = got, b"", None

    def connection_made(self, transport):
        self.t = transport
        transport.write(b"220 bdat.test\r\n")

    def data_received(self, data):
        self.buf += data
        while True:
            if self.want is not None:
                if len(self.buf) < self.want:
                    return
                self.got.append(self.buf[:self.want])
                self.buf, self.want = self.buf[self.want:], None
                self.t.write(b"250 2.0.0 ok\r\n")
                continue
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                return
            self.buf = rest
            verb = line.split(b" ")[0].upper()
            if verb == b"EHLO":
                self.t.write(b"250-bdat.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n")
            elif verb == b"BDAT":
                self.want = int(line.split()[1])
            elif verb == b"QUIT":
                self.t.write(b"221 bye\r\n")
                self.t.close()
            else:
                self.t.write(b"250 ok\r\n")


def test_the_client_streams_a_stored_message_over_bdat(spool):
    stored, whole = big(spool)
    got: list = []

    async def go():
        srv = await asyncio.get_running_loop().create_server(lambda: BdatPeer(got), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        d = client()
        res = await d.deliver("k", [target(port)], SmtpOptions(helo="client.test"), out_message(stored))
        await d.close()
        srv.close()
        return res

    res = asyncio.run(go())
    assert [r.code for r in res] == [250], res
    assert got == [wire_body(whole, dot_stuff=False)] and got[0] == whole


def test_a_stored_message_gone_defers_without_an_end_of_data(spool, tmp_path):
    stored, _ = big(spool)
    f = stored.frame()
    gone = StoredMessage(*f[:3], 999, "NoSuchId", *f[5:])  # not in that segment, nor anywhere
    h = Capture()

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], SmtpOptions(helo="client.test"), out_message(gone))
        await d.close()
        return res

    with aiosmtpd_peer(h) as port:
        res = asyncio.run(go(port))
    assert [(r.code, r.enhanced) for r in res] == [(451, "4.3.0")]
    assert h.envelopes == []


def test_maildir_writes_a_stored_message_as_it_writes_its_bytes(spool, tmp_path):
    stored, whole = big(spool)
    for i, data in enumerate((whole, stored)):
        res = deliver_maildir(str(tmp_path / f"md{i}"), out_message(data), OutRcpt("a@dst.test"), "mx.test")
        assert res.code == 250
    files = [next((tmp_path / f"md{i}" / "new").iterdir()).read_bytes() for i in range(2)]
    assert files[0] == files[1] and b"\r\n" not in files[0]


def test_maildir_joins_a_crlf_cut_between_blocks(spool, tmp_path):
    data = b"Subject: x\r\n\r\n" + b"a" * (256 * 1024 - 15) + b"\r\nlast\r\n"  # a CR ends the first block
    stored = store(spool, data)
    deliver_maildir(str(tmp_path / "md"), out_message(stored), OutRcpt("a@dst.test"), "mx.test")
    got = next((tmp_path / "md" / "new").iterdir()).read_bytes()
    assert got.endswith(b"a\nlast\n") and b"\r" not in got


def dsn_parts(data, **kw) -> list:
    fail = RcptResult("a@dst.test", 550, "5.1.1", "no such user", "mx.dst.test", "192.0.2.1")
    raw = make_dsn(out_message(data, ret="FULL"), [(OutRcpt("a@dst.test"), fail)], reporting_mta="mx.test",
                   now=1_700_000_000.0, **kw)
    return email.message_from_bytes(raw, policy=email.policy.default).get_payload(), raw


@pytest.mark.parametrize("limit", [0, 100, 50 * 1024, 10 << 20])
def test_a_bounce_of_a_stored_message_is_the_bounce_of_its_bytes(spool, limit):
    stored, whole = big(spool)
    (a, _), (b, raw_b) = dsn_parts(whole, max_returned=limit), dsn_parts(stored, max_returned=limit)
    assert [p.get_content_type() for p in a] == [p.get_content_type() for p in b]
    assert a[2].get_payload(decode=True) == b[2].get_payload(decode=True) if limit < len(whole) else True
    assert a[0].get_content() == b[0].get_content()
    headers = whole.split(b"\r\n\r\n")[0] + b"\r\n"
    if limit >= len(whole):
        assert a[2].get_content_type() == "message/rfc822" and whole in raw_b
    else:
        returned = b[2].get_payload(decode=True)
        assert b[2].get_content_type() == "text/rfc822-headers"
        assert returned.startswith(headers) and len(returned) <= len(headers) + 2 + limit
        assert "too big to return whole" in b[0].get_content()
        assert len(raw_b) < len(headers) + limit + 10_000


def test_a_bounce_reads_no_more_than_it_returns(spool, monkeypatch):
    """Headers only (no RET=FULL): the reader stops at the end of the header section."""
    stored, whole = big(spool, 3_000_000)
    reads: list[int] = []
    real_open = StoredMessage.open

    class Counting:
        def __init__(self, r):
            self.r = r

        def read(self, n=256 * 1024):
            piece = self.r.read(n)
            reads.append(len(piece))
            return piece

    fail = RcptResult("a@dst.test", 550, "5.1.1", "no such user")
    msg = OutMessage("Q1", "from@src.test", (OutRcpt("a@dst.test"),), _Wrapped(stored, lambda: Counting(real_open(stored))))
    raw = make_dsn(msg, [(OutRcpt("a@dst.test"), fail)], reporting_mta="mx.test")
    assert b"Subject: big" in raw
    assert sum(reads) <= 64 * 1024
    reads.clear()
    make_dsn(msg._replace(ret="FULL"), [(OutRcpt("a@dst.test"), fail)], reporting_mta="mx.test")
    assert 50 * 1024 < sum(reads) <= 2 * 64 * 1024


class _Wrapped:
    """A StoredMessage whose reader counts what is read."""

    def __init__(self, stored, opener):
        self.stored, self.opener = stored, opener

    def __len__(self):
        return len(self.stored)

    def open(self, wire=None):
        return self.opener()


def test_a_location_is_absolute_for_a_relative_spool(tmp_path, monkeypatch):
    """The delivery agent opens it, and its working directory need not be the worker's."""
    monkeypatch.chdir(tmp_path)
    spool = Spool("rel-spool", sync=False)
    try:
        stored = store(spool, b"Subject: x\r\n\r\nbody\r\n")
        assert Path(stored.frame()[1]).is_absolute()
        whole = spool.message_bytes(stored.queue_id)
        monkeypatch.chdir("/")
        assert read_all(stored, 4) == whole
    finally:
        spool.close()


def test_a_bounce_of_a_message_without_an_empty_line_reads_a_bounded_head(spool):
    data = b"".join(b"X-Header-%d: value\r\n" % i for i in range(200_000))  # about 4 MiB, all header
    stored = store(spool, data)
    fail = RcptResult("a@dst.test", 550, "5.1.1", "no such user")
    for ret in (None, "FULL"):
        raw = make_dsn(out_message(stored, ret=ret), [(OutRcpt("a@dst.test"), fail)], reporting_mta="mx.test")
        assert b"X-Header-0: value" in raw and b"X-Header-199999" not in raw
        assert (1 << 20) < len(raw) < (1 << 20) + 300 * 1024
