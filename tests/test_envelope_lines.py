"""The SMTP client's MAIL FROM and RCPT TO lines, made in Rust (`_native.envelope_lines`,
rust/src/smtp/envelope.rs): the same bytes as the Python that made them before, for any
envelope and any set of offered extensions, and a ValueError (nothing to send) for a CR or
LF where it would end a command early."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta import _native
from mta.delivery import OutMessage, OutRcpt


# --- the reference: the client's Python before the lines moved to Rust ---------------

def xtext(s: str) -> str:
    return "".join(chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}" for b in s.encode("utf-8"))


def _line(cmd: str, params: list[str]) -> bytes:
    s = " ".join([cmd, *params]) + "\r\n"
    if "\r" in s[:-2] or "\n" in s[:-2]:
        raise ValueError("CR or LF in an envelope address or parameter")
    return s.encode("utf-8")


def mail_line(msg: OutMessage, ext: dict[str, str], utf8: bool) -> bytes:
    params = []
    if "SIZE" in ext:
        params.append(f"SIZE={len(msg.data)}")
    if msg.body and "8BITMIME" in ext:
        params.append(f"BODY={msg.body}")
    if utf8:
        params.append("SMTPUTF8")
    if "DSN" in ext:
        if msg.ret:
            params.append(f"RET={msg.ret}")
        if msg.envid:
            params.append(f"ENVID={xtext(msg.envid)}")
    return _line(f"MAIL FROM:<{msg.sender}>", params)


def rcpt_line(r: OutRcpt, ext: dict[str, str]) -> bytes:
    params = []
    if "DSN" in ext:
        if r.notify:
            params.append("NOTIFY=" + ",".join(r.notify))
        if r.orcpt:
            kind, _, addr = r.orcpt.partition(";")
            params.append(f"ORCPT={kind};{xtext(addr)}")
    return _line(f"RCPT TO:<{r.address}>", params)


def native(msg: OutMessage, ext: dict[str, str], utf8: bool):
    return _native.envelope_lines(msg.sender, msg.recipients, len(msg.data) if "SIZE" in ext else None,
                                  msg.body if "8BITMIME" in ext else None, utf8, msg.ret, msg.envid, "DSN" in ext)


# No lone surrogates: neither side can encode them (both raise, with different types).
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24)
_rcpt = st.builds(OutRcpt, _text, st.none() | st.tuples() | st.lists(st.sampled_from(
    ["NEVER", "SUCCESS", "FAILURE", "DELAY", "X\r\n"]), max_size=3).map(tuple),
    st.none() | _text | st.builds(lambda k, a: f"{k};{a}", _text, _text))
_ext = st.sets(st.sampled_from(["SIZE", "8BITMIME", "DSN", "PIPELINING"])).map(lambda s: {k: "" for k in s})


@settings(max_examples=500, deadline=None)
@given(sender=_text, rcpts=st.lists(_rcpt, min_size=1, max_size=3), data=st.binary(max_size=64),
       body=st.none() | st.sampled_from(["", "7BIT", "8BITMIME"]), ret=st.none() | st.sampled_from(["", "FULL", "HDRS"]),
       envid=st.none() | _text, ext=_ext, utf8=st.booleans())
def test_the_lines_are_the_reference_ones_or_both_refuse(sender, rcpts, data, body, ret, envid, ext, utf8):
    msg = OutMessage("Q", sender, tuple(rcpts), data, body, False, ret, envid)
    try:
        want = (mail_line(msg, ext, utf8), [rcpt_line(r, ext) for r in msg.recipients])
    except ValueError as e:
        with pytest.raises(ValueError, match="CR or LF"):
            native(msg, ext, utf8)
        assert "CR or LF" in str(e)
        return
    got = native(msg, ext, utf8)
    assert (got[0], list(got[1])) == want


def test_examples_and_a_smuggling_attempt():
    rcpts = (OutRcpt("r@b.test", ("SUCCESS", "FAILURE"), "rfc822;r+x@b.test"), OutRcpt("s@b.test"))
    msg = OutMessage("Q", "a@b.test", rcpts, b"x" * 10, "8BITMIME", False, "HDRS", "id 1")
    mail, lines = native(msg, {"SIZE": "", "8BITMIME": "", "DSN": ""}, False)
    assert mail == b"MAIL FROM:<a@b.test> SIZE=10 BODY=8BITMIME RET=HDRS ENVID=id+201\r\n"
    assert lines == [b"RCPT TO:<r@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r+2Bx@b.test\r\n",
                     b"RCPT TO:<s@b.test>\r\n"]
    assert native(msg, {}, True) == (b"MAIL FROM:<a@b.test> SMTPUTF8\r\n",
                                     [b"RCPT TO:<r@b.test>\r\n", b"RCPT TO:<s@b.test>\r\n"])
    evil = OutMessage("Q", "a@b.test>\r\nRCPT TO:<victim@c.test", rcpts, b"")
    with pytest.raises(ValueError, match="CR or LF"):
        native(evil, {}, False)
