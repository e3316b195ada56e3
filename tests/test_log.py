"""The server log's fast path (mta.log over _native.ServerLog): lines as logging's
"%(asctime)s mta[%(process)d]: %(message)s" makes them, one write per loop iteration."""

from __future__ import annotations

import asyncio
import datetime
import os
import re

import pytest

from mta import log

LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) mta\[(\d+)\]: (.*)$")


@pytest.fixture
def pipe(monkeypatch):
    r, w = os.pipe()
    os.set_blocking(r, False)
    monkeypatch.setattr(log, "_fd", w)
    monkeypatch.setattr(log, "_enabled", True)
    monkeypatch.setattr(log, "_loop", None)
    yield r, w
    log.flush()
    os.close(r)
    os.close(w)


def _read(r: int) -> str:
    try:
        return os.read(r, 1 << 16).decode()
    except BlockingIOError:
        return ""


def test_outside_a_loop_a_line_is_written_at_once_as_logging_formats_it(pipe):
    r, _ = pipe
    before = datetime.datetime.now().replace(microsecond=0)
    log.info("queued ABC from=<a@example.test>")
    after = datetime.datetime.now()
    lines = _read(r).splitlines()
    assert len(lines) == 1
    m = LINE.match(lines[0])
    assert m, lines[0]
    stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")  # local time, as logging's
    assert before <= stamp <= after
    assert int(m.group(3)) == os.getpid()
    assert m.group(4) == "queued ABC from=<a@example.test>"


def test_unicode_and_a_lone_surrogate(pipe):
    r, _ = pipe
    log.info("from=<jos\u00e9@example.test>")
    log.info("helo=bad\udcff")  # a str from surrogateescape'd bytes: written as backslashreplace does
    lines = _read(r).splitlines()
    assert [LINE.match(x).group(4) for x in lines] == ["from=<jos\u00e9@example.test>", "helo=bad\\udcff"]


def test_in_a_loop_lines_wait_for_the_end_of_the_iteration_and_go_out_in_one_write(pipe):
    r, _ = pipe

    async def main() -> tuple[str, str]:
        log.info("one")
        log.info("two")
        early = _read(r)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return early, _read(r)

    early, late = asyncio.run(main())
    assert early == ""
    assert [LINE.match(x).group(4) for x in late.splitlines()] == ["one", "two"]


def test_a_log_that_cannot_be_written_is_dropped_not_raised(pipe, monkeypatch):
    monkeypatch.setattr(log, "_fd", -1)
    log.info("lost")  # no loop: written (tried) at once
    assert len(log._lines) == 0


def test_disabled_below_info(pipe, monkeypatch):
    r, _ = pipe
    monkeypatch.setattr(log, "_enabled", False)
    log.info("quiet")
    assert _read(r) == "" and len(log._lines) == 0


def test_lines_from_another_thread_while_one_writes(pipe):
    """The write releases the GIL: a line added meanwhile by another thread neither
    fails nor is lost (the buffer is taken out before the write)."""
    import threading

    import select
    import time

    r, _ = pipe
    os.set_blocking(r, True)
    got = bytearray()

    def drain() -> None:
        # Until every line is in (or 10 s): a blocking read after the last line would wait for ever.
        deadline = time.monotonic() + 10
        while got.count(b"\n") < 2000 and time.monotonic() < deadline:
            if select.select([r], [], [], 0.1)[0]:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    return
                got.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def adder() -> None:
        for i in range(1000):
            log.info(f"other {i}")  # no loop in this thread: added and written at once

    t = threading.Thread(target=adder)
    t.start()
    for i in range(1000):
        log._lines.add(f"main {i}")
        log.flush()
    t.join()
    log.flush()
    reader.join(15)
    lines = [LINE.match(x).group(4) for x in got.decode().splitlines()]
    assert sorted(lines) == sorted([f"other {i}" for i in range(1000)] + [f"main {i}" for i in range(1000)])
