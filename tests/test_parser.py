"""Tests of the Rust SMTP parser through its Python binding (mta._native.SmtpParser).

The property tests check the parser's central promise: any split of a byte stream
gives identical events and identical Message bytes. They read Message bytes back
with `Message.bytes()` (a test helper the real spool-backed Message keeps).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mta._native import MailArgs, Message, RcptArgs, SmtpParser, format_reply


def drive(chunks, **cfg):
    """Play a simple session: every third DATA refused, all else accepted.

    Reacts only to events, so the transcript must not depend on the chunking."""
    p = SmtpParser(**cfg)
    events, messages = [], []
    cur = None  # Message of the open DATA or BDAT transaction
    ndata = 0
    for c in chunks:
        pending = p.feed(c)
        while pending:
            batch, pending = pending, []
            for ev in batch:
                events.append(ev)
                if ev[0] == "data_end" or (ev[0] == "bdat_end" and ev[1]):
                    messages.append(cur.bytes())
                    cur = None
                elif ev[:2] == ("cmd", "DATA"):
                    ndata += 1
                    if ndata % 3 == 0:
                        pending += p.resume()
                    else:
                        if cur is not None:  # DATA during an open BDAT transaction
                            messages.append(cur.bytes())
                        cur = Message()
                        pending += p.start_data(cur)
                elif ev[:2] == ("cmd", "BDAT"):
                    if cur is None:
                        cur = Message()
                    pending += p.start_bdat(cur)
    if cur is not None:
        messages.append(cur.bytes())
    return events, messages


def split(data: bytes, cuts):
    cuts = sorted({min(c, len(data)) for c in cuts})
    out, prev = [], 0
    for c in cuts:
        out.append(data[prev:c])
        prev = c
    out.append(data[prev:])
    return out


def one(p: SmtpParser, line: bytes):
    evs = p.feed(line)
    assert len(evs) == 1, evs
    return evs[0]


# --------------------------------------------------------------------------- commands


def test_commands_and_args():
    p = SmtpParser()
    assert one(p, b"ehlo mx.example\r\n") == ("cmd", "EHLO", "mx.example")
    assert one(p, b"HELO [1.2.3.4]\r\n") == ("cmd", "HELO", "[1.2.3.4]")
    for verb in ("RSET", "QUIT", "STARTTLS"):
        assert one(p, verb.lower().encode() + b"\r\n") == ("cmd", verb, None)
    assert one(p, b"NOOP\r\n") == ("cmd", "NOOP", "")
    assert one(p, b"VRFY bob\r\n") == ("cmd", "VRFY", "bob")
    assert one(p, b"HELP\r\n") == ("cmd", "HELP", "")
    assert one(p, b"AUTH PLAIN x\r\n") == ("cmd", "AUTH", "PLAIN x")
    assert one(p, b"GET / HTTP/1.1\r\n") == ("cmd", "HTTP", "GET / HTTP/1.1")
    assert one(p, b"BDAT 0 LAST\r\n") == ("cmd", "BDAT", (0, True))
    assert p.start_bdat(None) == [("bdat_end", True, "ok")]
    assert one(p, b"XYZZY\r\n") == ("error", 500, "5.5.2", "command not recognized")
    assert one(p, b"BDAT x\r\n")[:3] == ("error", 501, "5.5.4")


def test_mail_and_rcpt_args():
    p = SmtpParser()
    ev = one(p, b"MAIL FROM: <a@b.example> SIZE=123 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x+2By\r\n")
    m = ev[2]
    assert ev[:2] == ("cmd", "MAIL") and isinstance(m, MailArgs)
    assert (m.address, m.size, m.body, m.smtputf8, m.ret, m.envid) == (
        "a@b.example", 123, "8BITMIME", True, "HDRS", "x+y")
    m = one(p, b"MAIL FROM:<>\r\n")[2]
    assert (m.address, m.size, m.body, m.smtputf8, m.ret, m.envid) == ("", None, None, False, None, None)
    r = one(p, b"RCPT TO:<c@d> NOTIFY=success,delay ORCPT=rfc822;c+40d\r\n")[2]
    assert isinstance(r, RcptArgs)
    assert (r.address, r.notify, r.orcpt) == ("c@d", ("SUCCESS", "DELAY"), "rfc822;c@d")
    assert one(p, b"RCPT TO:<Postmaster>\r\n")[2].address == "Postmaster"
    assert one(p, b"RCPT TO:<@a,@b:u@d>\r\n")[2].address == "u@d"
    with pytest.raises(AttributeError):
        r.address = "x"  # frozen


@pytest.mark.parametrize(
    "line, code, enhanced",
    [
        (b"MAIL FROM:a@b", 501, "5.1.7"),
        (b"MAIL FROM:<a@b> BODY=BINARYMIME", 555, "5.5.4"),
        (b"MAIL FROM:<a@b> FOO=1", 555, "5.5.4"),
        (b"MAIL FROM:<a@b> SIZE=1 SIZE=1", 501, "5.5.4"),
        ("MAIL FROM:<ö@b>".encode(), 553, "5.6.7"),
        ("RCPT TO:<ö@b>".encode(), 553, "5.6.7"),
        (b"RCPT TO:<>", 501, "5.1.3"),
        (b"RCPT TO:<a@b> NOTIFY=NEVER,DELAY", 501, "5.5.4"),
        (b"NOOP \x00", 501, "5.5.2"),
        (b"NOOP a\rb", 501, "5.5.2"),
        (b"NOOP " + b"x" * 600, 500, "5.5.2"),
    ],
)
def test_error_replies(line, code, enhanced):
    ev = one(SmtpParser(), line + b"\r\n")
    assert ev[0] == "error" and ev[1:3] == (code, enhanced) and isinstance(ev[3], str)


def test_smtputf8_for_rcpt_is_set_by_the_session():
    p = SmtpParser()
    assert one(p, "MAIL FROM:<ö@b> SMTPUTF8\r\n".encode())[2].address == "ö@b"
    assert one(p, "RCPT TO:<ü@b>\r\n".encode())[1] == 553
    p.set_smtputf8(True)
    assert one(p, "RCPT TO:<ü@b>\r\n".encode())[2].address == "ü@b"


def test_line_limit_at_and_past():
    p = SmtpParser(max_line=16)
    assert one(p, b"NOOP 123456789\r\n") == ("cmd", "NOOP", "123456789")
    assert one(p, b"NOOP 1234567890\r\n")[1:3] == (500, "5.5.2")
    for _ in range(100):
        assert p.feed(b"y" * 50) == []
        assert p.buffered < 16
    assert p.feed(b"\r\nQUIT\r\n") == [("error", 500, "5.5.2", "line too long"), ("cmd", "QUIT", None)]


def test_input_types():
    p = SmtpParser()
    assert p.feed(bytearray(b"NOOP a\r\n")) == [("cmd", "NOOP", "a")]
    assert p.feed(memoryview(b"xxNOOP b\r\n")[2:]) == [("cmd", "NOOP", "b")]
    with pytest.raises(TypeError):
        p.feed("NOOP\r\n")


def test_constructor_and_misuse():
    with pytest.raises(ValueError):
        SmtpParser(bare_lf="maybe")
    p = SmtpParser()
    with pytest.raises(ValueError):
        p.start_data(Message())
    with pytest.raises(ValueError):
        p.resume()
    p.feed(b"BDAT 1\r\n")
    with pytest.raises(ValueError):
        p.start_data(Message())
    assert p.feed(b"x") == []
    assert p.resume() == [("bdat_end", False, "ok")]


# --------------------------------------------------------------------------- DATA / BDAT


def test_data_pause_unstuff_and_end():
    p = SmtpParser()
    assert p.feed(b"DATA\r\n..a\r\nb\r\n.\r\nNOOP\r\n") == [("cmd", "DATA", None)]
    assert p.buffered == 17
    m = Message()
    assert p.start_data(m) == [("data_end", "ok"), ("cmd", "NOOP", "")]
    assert m.bytes() == b".a\r\nb\r\n"
    p.feed(b"DATA\r\n")
    m = Message()
    assert p.start_data(m) == []
    assert p.feed(b".\r\n") == [("data_end", "ok")]
    assert m.bytes() == b""


SMUGGLE = [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\n.\r", b"\r.\n",
           b"\r\n.\r\r\n", b"\r\n\x00.\r\n", b"\r\n.\r"]


@pytest.mark.parametrize("variant", SMUGGLE)
@pytest.mark.parametrize("policy", ["reject", "normalize"])
def test_smuggling_variants_never_end_data(variant, policy):
    stream = b"DATA\r\na" + variant + b"MAIL FROM:<evil@x>\r\n.\r\nQUIT\r\n"
    events, messages = drive([stream], bare_lf=policy)
    bare = policy == "reject" and b"\x00" not in variant
    assert events == [("cmd", "DATA", None), ("data_end", "bare_lf" if bare else "ok"), ("cmd", "QUIT", None)]
    if policy == "normalize":
        body = messages[0]
        assert b"MAIL FROM:<evil@x>" in body
        assert body.replace(b"\r\n", b"").count(b"\r") == 0 and body.replace(b"\r\n", b"").count(b"\n") == 0


def test_too_big_at_and_past():
    for size, want in ((10, "ok"), (11, "too_big")):
        p = SmtpParser(max_message_size=10)
        p.feed(b"DATA\r\n")
        m = Message()
        evs = p.start_data(m) + p.feed(b"x" * (size - 2) + b"\r\n.\r\n")
        assert evs == [("data_end", want)]
        assert len(m.bytes()) == 10


def test_bdat_chunks_and_status():
    p = SmtpParser()
    m = Message()
    assert p.feed(b"BDAT 3\r\nab\r") == [("cmd", "BDAT", (3, False))]
    assert p.start_bdat(m) == [("bdat_end", False, "ok")]
    assert p.feed(b"BDAT 2 LAST\r\n\nc") == [("cmd", "BDAT", (2, True))]
    assert p.start_bdat(m) == [("bdat_end", True, "ok")]
    assert m.bytes() == b"ab\r\nc"
    # bare LF: reported at that chunk and every later one of the transaction
    m = Message()
    p.feed(b"BDAT 2\r\na\n")
    assert p.start_bdat(m) == [("bdat_end", False, "bare_lf")]
    p.feed(b"BDAT 1 LAST\r\nb")
    assert p.start_bdat(m) == [("bdat_end", True, "bare_lf")]
    # a new Message starts a new transaction
    p.feed(b"BDAT 1 LAST\r\nb")
    assert p.start_bdat(Message()) == [("bdat_end", True, "ok")]


def test_format_reply():
    assert format_reply(250, "2.0.0", "Ok") == b"250 2.0.0 Ok\r\n"
    assert format_reply(250, None, ["mx", "SIZE 10", "8BITMIME"]) == b"250-mx\r\n250-SIZE 10\r\n250 8BITMIME\r\n"
    assert format_reply(550, "5.1.1", ["a", "b"]) == b"550-5.1.1 a\r\n550 5.1.1 b\r\n"
    for bad in ((250, None, "a\r\nb"), (99, None, "x"), (250, "5.0.0", "x")):
        with pytest.raises(ValueError):
            format_reply(*bad)


# --------------------------------------------------------------------------- properties

PIECES = [
    b"EHLO a\r\n", b"MAIL FROM:<a@b> SIZE=10\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n", b"QUIT\r\n",
    b"NOOP\n", b".\r\n", b"..x\r\n", b"line\r\n", b"\r\n", b"\r", b"\n", b".", b"BDAT 3\r\n",
    b"BDAT 0 LAST\r\n", b"BDAT 2 LAST\r\n", b"RSET\r\n", b"NOOP \x00\r\n", b"x" * 40, b"GET / HTTP/1.1\r\n",
] + SMUGGLE

streams = st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=8)), max_size=30).map(b"".join)
configs = st.fixed_dictionaries({
    "max_line": st.sampled_from([8, 16, 512]),
    "max_message_size": st.sampled_from([0, 5, 64, 10_000]),
    "bare_lf": st.sampled_from(["reject", "normalize"]),
})


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(stream=streams, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=6), cfg=configs)
def test_any_split_gives_same_events_and_bytes(stream, cuts, cfg):
    whole = drive([stream], **cfg)
    assert drive(split(stream, cuts), **cfg) == whole
    assert drive([stream[i:i + 1] for i in range(len(stream))], **cfg) == whole


@settings(max_examples=300, deadline=None)
@given(soup=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=5), cfg=configs)
def test_byte_soup_never_raises(soup, cuts, cfg):
    drive(split(soup, cuts), **cfg)
    # Until a DATA/BDAT pauses it, buffered input stays under the line limit.
    p = SmtpParser(**cfg)
    for c in split(soup, cuts):
        evs = p.feed(c)
        assert all(ev[0] in ("cmd", "error") for ev in evs)
        if any(ev[:2] in (("cmd", "DATA"), ("cmd", "BDAT")) for ev in evs):
            break
        assert p.buffered < cfg["max_line"]
