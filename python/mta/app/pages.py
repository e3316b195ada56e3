"""The queue a page at a time from every shard, for the streaming queue tools: a shard whose server
runs is asked through its control socket (its in-memory index), one no server owns is read from its
files; at most one page per shard is held at once, whatever the size of the queue."""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterator

from mta.app import control
from mta.app.control_pages import MAX_PAGE
from mta.counters import add_row

PAGE_ENV = "MTA_QUEUE_PAGE"  # messages per page (1..MAX_PAGE); tests force small pages with it
DEFAULT_PAGE = 5000


def page_size() -> int:
    """Messages per page: $MTA_QUEUE_PAGE, else DEFAULT_PAGE; ValueError when it is malformed."""
    raw = os.environ.get(PAGE_ENV, "").strip()
    if not raw:
        return DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_PAGE:
        raise ValueError(f"expected a whole number 1..{MAX_PAGE} (messages per page), not {raw[:40]!r}")
    return int(raw)


class Online:
    """A shard's pages from its running server (the ops "page", "shape", "ids")."""

    def __init__(self, root: str, shard: int):
        self.root, self.shard = root, shard

    def _ask(self, request: dict) -> tuple[dict, bytes]:
        return control.fetch(self.root, self.shard, request)

    def page(self, cursor: int, limit: int, form: str) -> tuple[bytes, int, int | None]:
        reply, data = self._ask({"op": "page", "cursor": cursor, "limit": limit, "form": form})
        return data, reply["count"], reply["next"]

    def shape(self, cursor: int, limit: int, now: float, buckets) -> tuple[dict, dict, int | None]:
        reply, _ = self._ask({"op": "shape", "cursor": cursor, "limit": limit, "now": now, "buckets": list(buckets)})
        return reply["table"], reply["rcpts"], reply["next"]

    def ids(self, cursor: int, limit: int) -> tuple[list[str], int | None]:
        reply, _ = self._ask({"op": "ids", "cursor": cursor, "limit": limit})
        return reply["ids"], reply["next"]


class Offline:
    """A shard's pages read from its files (native SpoolReader: the shard scanned once, at the
    first page; the pages walk that scan)."""

    def __init__(self, reader, shard: int):
        self.reader, self.shard = reader, shard

    def page(self, cursor: int, limit: int, form: str):
        return self.reader.page(self.shard, cursor, limit, form)

    def shape(self, cursor: int, limit: int, now: float, buckets):
        return self.reader.shape(self.shard, cursor, limit, now, list(buckets))

    def ids(self, cursor: int, limit: int):
        return self.reader.ids(self.shard, cursor, limit)


def sources(root: str, online: bool = True, ping: float = control.DEFAULT_PING_TIMEOUT) -> list[Online | Offline]:
    """A source per shard under `root`, in shard order: Online where a server answers "ping"
    within `ping` seconds (unless not `online`), else Offline (one SpoolReader for them all). A
    missing directory: none. Raises the native SpoolError when the files cannot be read."""
    from mta import _native

    if not os.path.isdir(root):
        return []
    out: list[Online | Offline] = []
    reader, readable = None, ()
    for shard in control.shards(root):
        if online:
            try:
                control.call(root, shard, {"op": "ping"}, timeout=ping)
                out.append(Online(root, shard))
                continue
            except (control.NoServer, control.ControlError):
                pass  # no server (or one we may not ask): its files are read, as they always were
        if reader is None:
            reader = _native.SpoolReader(root)
            readable = set(reader.shards())
        if shard in readable:
            out.append(Offline(reader, shard))
    return out


def walk(fetch: Callable, *args, limit: int) -> Iterator[tuple]:
    """Every page of one source: `fetch(cursor, limit, *args)` from cursor 0 until its cursor is None."""
    cursor: int | None = 0
    while cursor is not None:
        got = fetch(cursor, limit, *args)
        cursor = got[-1]
        yield got


def first_arrival(data: bytes, form: str) -> bytes:
    """The arrival (RFC 3339, sortable as bytes) of a page's first message, from its own form."""
    if form == "json":
        at = data.find(b'"arrival": "') + len(b'"arrival": "')
        return data[at:at + 20]
    fields = data[:256].split(None, 3)  # id, size, arrival, sender...
    return fields[2] if len(fields) > 2 else b""


def pages(srcs: list, form: str, limit: int) -> Iterator[tuple[bytes, int]]:
    """(data, messages) of every non-empty page of `srcs`, form "json" or "text" (native
    Spool.page). Each shard's pages come in log order (about arrival order); across shards they
    are merged by the arrival of each page's first message, so the listing keeps about arrival
    order while holding one page per shard."""
    streams = [((d, n) for d, n, _ in walk(s.page, form, limit=limit) if n) for s in srcs]
    if len(streams) == 1:
        yield from streams[0]
        return
    heap: list = []

    def push(i: int) -> None:
        got = next(streams[i], None)
        if got is not None:
            heapq.heappush(heap, (first_arrival(got[0], form), i, got))

    for i in range(len(streams)):
        push(i)
    while heap:
        _, i, got = heapq.heappop(heap)
        yield got
        push(i)


def shape(srcs: list, now: float, buckets, limit: int) -> tuple[dict[str, list[int]], dict[str, int]]:
    """The qshape counters of every shard added up (as mta.app.admin.shape counts them), a page
    at a time: only the counters are held, never an envelope."""
    table: dict[str, list[int]] = {}
    rcpts: dict[str, int] = {}
    for src in srcs:
        for part, counts, _ in walk(src.shape, now, buckets, limit=limit):
            for domain, row in part.items():
                add_row(table, domain, row)
            for domain, n in counts.items():
                rcpts[domain] = rcpts.get(domain, 0) + n
    return table, rcpts


def ids(src, limit: int) -> Iterator[str]:
    """Every queue id of one source, in log order."""
    for chunk, _ in walk(src.ids, limit=limit):
        yield from chunk
