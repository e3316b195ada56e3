"""_native.Headers: the plugins' header view over the Rust header index. Tables for every
read and edit, and hypothesis properties: byte-exact round trips, edits seen by later
reads, agreement with the email package (compat32) on simple ASCII fields."""

import email.parser
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta._native import Headers

BLOCK = (b"Received: from a\r\n\tby b\r\nSubject : Hello\r\nTo: x@y\r\n"
         b"subject: second\r\nX-Lf: one\n two\nX-8bit: caf\xc3\xa9 \xff\r\n")


def test_reads():
    h = Headers(BLOCK)
    assert len(h) == 6 and not h.changed and not h.readonly
    assert h.names() == ["Received", "Subject", "To", "subject", "X-Lf", "X-8bit"]
    assert h.get("SUBJECT") == "Hello" and h.get_all("subject") == ["Hello", "second"]
    assert h.get("received") == "from a\tby b"
    assert h.get_raw("Received") == b" from a\r\n\tby b"
    assert h.get("x-lf") == "one two" and h.get_raw("X-LF") == b" one\n two"
    assert h.get("x-8bit") == "café \ufffd"
    assert h.get_all_raw("Subject") == [b" Hello", b" second"]
    assert h.get("Cc") is None and h.get_raw("Cc") is None
    assert h.get_all("Cc") == [] and h.get_all_raw("Cc") == []
    assert "to" in h and "Cc" not in h and "" not in h
    assert h.items()[:3] == [("Received", "from a\tby b"), ("Subject", "Hello"), ("To", "x@y")]
    assert h.block() == BLOCK


# (block, edit, expected block, edit's return value)
EDITS = [
    (b"A: 1\r\n", lambda h: h.add("B", "2"), b"A: 1\r\nB: 2\r\n", None),
    (b"A: 1\n", lambda h: h.add("B", b"2"), b"A: 1\nB: 2\r\n", None),
    (b"A: 1", lambda h: h.add("B", "2"), b"A: 1\r\nB: 2\r\n", None),
    (b"", lambda h: h.add("B", "ü"), "B: ü\r\n".encode(), None),
    (b"A: 1\r\n", lambda h: h.add("B", "x\r\n\ty"), b"A: 1\r\nB: x\r\n\ty\r\n", None),
    (b"A: 1\r\n", lambda h: h.prepend("Received", "us"), b"Received: us\r\nA: 1\r\n", None),
    (b"A: 1\r\nb: 2\r\n\tx\r\nC: 3\nB : 4\r\n", lambda h: h.remove("B"), b"A: 1\r\nC: 3\n", 2),
    (b"A: 1\r\n", lambda h: h.remove("B"), b"A: 1\r\n", 0),
    (b"X: 0\r\nSUBJECT : a\r\n\tb\r\nSubject: c\r\n", lambda h: h.replace("subject", "new"),
     b"X: 0\r\nSUBJECT : new\r\nSubject: c\r\n", True),
    (b"X: 0\n", lambda h: h.replace("S", b"b"), b"X: 0\nS: b\r\n", False),
]


@pytest.mark.parametrize("block,edit,want,result", EDITS)
def test_edits(block, edit, want, result):
    h = Headers(block)
    assert edit(h) == result
    assert h.block() == want
    assert h.changed == (block != want)
    assert len(h) == len(Headers(want))


def test_edits_seen_by_later_reads():
    h = Headers(BLOCK)
    h.add("X-New", "last")
    h.prepend("X-New", b"first")
    assert h.get_all("x-new") == ["first", "last"] and h.names()[0] == "X-New"
    assert h.replace("X-NEW", "again") is True
    assert h.get_all("X-New") == ["again", "last"]
    assert h.remove("x-new") == 2 and h.get("X-New") is None
    assert h.block() == BLOCK and h.changed


@pytest.mark.parametrize("name,problem", [
    ("", "header name is empty"),
    ("A:B", "contains ':'"),
    ("A B", "contains a space"),
    ("Ä", "non-ASCII"),
    ("A\r\n", "control character"),
])
def test_bad_names(name, problem):
    h = Headers(b"A: 1\r\n")
    for edit in (h.add, h.prepend, h.replace):
        with pytest.raises(ValueError, match=problem):
            edit(name, "x")
    assert not h.changed


@pytest.mark.parametrize("value", ["a\rb", "a\nb", b"a\n b", "a\r\nb", "a\r\n", b"\r"])
def test_bare_line_breaks_refused(value):
    h = Headers(b"A: 1\r\n")
    for edit in (h.add, h.prepend, h.replace):
        with pytest.raises(ValueError, match="header value contains a bare CR or LF"):
            edit("A", value)
    with pytest.raises(ValueError, match="NUL"):
        h.add("A", "a\0b")
    with pytest.raises(TypeError):
        h.add("A", 7)
    assert h.block() == b"A: 1\r\n"


def test_read_only():
    h = Headers(BLOCK, readonly=True)
    for edit in (lambda: h.add("X", "1"), lambda: h.prepend("X", "1"), lambda: h.remove("To"),
                 lambda: h.replace("To", "z"), lambda: h.add("bad name", "1")):
        with pytest.raises(TypeError, match="read-only header view"):
            edit()
    assert h.readonly and not h.changed and h.block() == BLOCK and h.get("to") == "x@y"


# ---- properties

NAME = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1, max_size=12)
WORD = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=10)
SIMPLE = st.lists(WORD, min_size=0, max_size=4).map(" ".join)  # printable ASCII, single spaces
EOL = st.sampled_from([b"\r\n", b"\n"])


@st.composite
def field(draw, *, wsp_before_colon=True):
    """A valid field: name, maybe WSP before ':', a value folded over some lines, its line end."""
    name = draw(NAME).encode()
    wsp = draw(st.sampled_from([b"", b" ", b"\t "])) if wsp_before_colon else b""
    lines = draw(st.lists(SIMPLE, min_size=1, max_size=3))
    eol = draw(EOL)
    value = b" " + lines[0].encode()
    for more in lines[1:]:
        value += draw(EOL) + draw(st.sampled_from([b" ", b"\t"])) + more.encode()
    return name, name + wsp + b":" + value + eol


@settings(max_examples=150, deadline=None)
@given(st.lists(field(), max_size=8))
def test_block_round_trips_byte_for_byte(fields):
    block = b"".join(f for _, f in fields)
    h = Headers(block)
    assert h.block() == block
    assert len(h) == len(fields)
    assert h.names() == [n.decode() for n, _ in fields]


@settings(max_examples=150, deadline=None)
@given(st.lists(field(), max_size=6), NAME, SIMPLE, st.booleans())
def test_add_then_get_all_last_remove_then_none(fields, name, value, as_bytes):
    h = Headers(b"".join(f for _, f in fields))
    n = len(h)
    h.add(name, value.encode() if as_bytes else value)
    assert h.get_all(name)[-1] == value
    assert len(h) == n + 1 and len(Headers(h.block())) == n + 1
    h.prepend(name, value)
    assert h.get(name) == value
    h.remove(name)
    assert h.get(name) is None and name not in h
    assert len(Headers(h.block())) == len(h)


@settings(max_examples=150, deadline=None)
@given(st.lists(field(wsp_before_colon=False), min_size=1, max_size=8))
def test_get_agrees_with_the_email_package(fields):
    block = b"".join(f for _, f in fields)
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block + b"\r\n")
    h = Headers(block)
    for name, _ in fields:
        want = [re.sub(r"\r?\n(?=[ \t])", "", str(v)).strip(" \t") for v in parsed.get_all(name.decode())]
        assert h.get_all(name.decode()) == want
        assert h.get(name.decode()) == want[0]
