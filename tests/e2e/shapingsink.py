"""An SMTP sink for the traffic-shaping tests: per connection the peer, EHLO name, open and
close times; per message its arrival and recipients; scripted replies per host or domain.
Invariant: a connection is open from its greeting to the client's QUIT, end of file or error."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "SIZE 104857600")
CLOSE = "close"  # a scripted answer: drop the connection without a reply

# `max_concurrent` and `max_at_opening` work on the connections' open intervals, over all of
# them or one host's (each sink address stands for a site) or one recipient domain's, in any
# span of time. Every read has a deadline; sessions and lines are bounded.


@dataclass
class Conn:
    peer_ip: str
    host: str  # the sink address it reached (one per "site")
    opened: float  # time.monotonic()
    closed: float | None = None
    ehlo: str | None = None
    domains: set = field(default_factory=set)  # recipient domains seen on it
    messages: int = 0


@dataclass
class Msg:
    conn: Conn
    sender: str
    rcpts: list
    data: bytes
    arrived: float  # time.monotonic() at the end of data

    @property
    def peer_ip(self) -> str:
        return self.conn.peer_ip


@dataclass
class Refusal:
    conn: Conn
    stage: str  # "MAIL" or "RCPT"
    arg: str  # the sender or recipient
    reply: str
    at: float


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


class ShapingSink:
    """Listens on `port` at every address of `hosts` (127.0.0.x: each address a site).
    `reply(key, stage, text)` scripts an answer to MAIL or RCPT for a sink host or a
    recipient domain (MAIL knows only the host); `text` None accepts again. An answer
    starting with 421 closes the connection after it, as RFC 5321 says."""

    def __init__(self, hosts, port: int = 0, name: str = "sink.test") -> None:
        self.hosts = list(hosts)
        self.port = port
        self.name = name
        self.conns: list[Conn] = []
        self.msgs: list[Msg] = []
        self.refusals: list[Refusal] = []
        self._replies: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle --
    def start(self) -> "ShapingSink":
        ready = threading.Event()
        err: list[BaseException] = []

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            servers = []
            try:
                for h in self.hosts:
                    s = loop.run_until_complete(asyncio.start_server(
                        self._session, h, self.port, limit=1 << 20, reuse_address=True, backlog=512))
                    self.port = s.sockets[0].getsockname()[1]  # the first fixes the port for the rest
                    servers.append(s)
            except BaseException as e:  # reported to start()
                err.append(e)
                for s in servers:
                    s.close()
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                for s in servers:
                    s.close()
                for t in asyncio.all_tasks(loop):
                    t.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, name="shaping-sink", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("sink did not start")
        if err:
            raise err[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> "ShapingSink":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- scripting --
    def reply(self, key: str, stage: str, text: str | None) -> None:
        with self._lock:
            if text is None:
                self._replies.pop((key.lower(), stage), None)
            else:
                self._replies[(key.lower(), stage)] = text

    def _scripted(self, stage: str, *keys: str) -> str | None:
        with self._lock:
            for k in keys:
                if (r := self._replies.get((k, stage))) is not None:
                    return r
        return None

    # -- inspection --
    def messages(self, domain: str | None = None, host: str | None = None, since: float = 0.0) -> list[Msg]:
        with self._lock:
            return [m for m in self.msgs if m.arrived >= since
                    and (domain is None or any(_domain(r) == domain for r in m.rcpts))
                    and (host is None or m.conn.host == host)]

    def connections(self, domain: str | None = None, host: str | None = None, since: float = 0.0) -> list[Conn]:
        with self._lock:
            return [c for c in self.conns if c.opened >= since
                    and (domain is None or domain in c.domains)
                    and (host is None or c.host == host)]

    def rcpt_count(self, domain: str) -> int:
        return sum(1 for m in self.messages(domain) for r in m.rcpts if _domain(r) == domain)

    def wait_rcpts(self, domain: str, n: int, timeout: float) -> None:
        """Until `n` recipients of `domain` arrived (AssertionError after `timeout`)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = sum(1 for m in self.msgs for r in m.rcpts if _domain(r) == domain)
                if got >= n:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"sink: {got} of {n} recipients of {domain} in {timeout}s")
                self._cond.wait(min(left, 0.5))

    def max_concurrent(self, domain: str | None = None, host: str | None = None,
                       start: float = float("-inf"), end: float = float("inf")) -> int:
        """The most connections open at once (to `host`, or carrying mail for `domain`)
        at any instant in [start, end]. A close and an open at the same instant: the
        close first."""
        events = []
        for c in self.connections(domain, host):
            closed = c.closed if c.closed is not None else float("inf")
            if closed < start or c.opened > end:
                continue
            events.append((max(c.opened, start), 1))
            events.append((closed, -1))
        events.sort()
        n = peak = 0
        for _t, d in events:
            n += d
            peak = max(peak, n)
        return peak

    def max_at_opening(self, host: str, since: float) -> int:
        """The most connections to `host` open at once (itself included) as one opened
        after `since`: what a new connection found, whatever was open before."""
        conns = self.connections(host=host)
        best = 0
        for c in conns:
            if c.opened > since:
                best = max(best, sum(1 for o in conns if o.opened <= c.opened
                                     and (o.closed is None or o.closed > c.opened)))
        return best

    def max_in_window(self, domain: str, window: float, start: float = float("-inf")) -> int:
        """The most recipients of `domain` arriving within any `window` seconds."""
        times = sorted(m.arrived for m in self.messages(domain) if m.arrived >= start
                       for r in m.rcpts if _domain(r) == domain)
        best, j = 0, 0
        for i, t in enumerate(times):
            while times[j] < t - window:
                j += 1
            best = max(best, i - j + 1)
        return best

    # -- the protocol --
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Let the loop run what already arrived on other connections (a QUIT or end of file
        # the client sent before it connected again) before this one counts as open: the
        # sink's order of events is then the client's.
        for _ in range(3):
            await asyncio.sleep(0)
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        conn = Conn(peer[0], sock[0], time.monotonic())
        with self._lock:
            self.conns.append(conn)

        def say(text: str) -> None:
            writer.write(text.encode() + b"\r\n")

        def end() -> None:
            if conn.closed is None:
                conn.closed = time.monotonic()

        sender, rcpts = None, []
        try:
            say(f"220 {self.name} ESMTP shaping sink")
            for _ in range(100_000):
                raw = await asyncio.wait_for(reader.readline(), 30)
                if not raw:
                    return
                cmd = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("EHLO", "HELO"):
                    conn.ehlo = cmd.partition(" ")[2].strip()
                    if verb == "HELO":
                        say(f"250 {self.name}")
                    else:
                        lines = [self.name, *EXTENSIONS]
                        for x in lines[:-1]:
                            say(f"250-{x}")
                        say(f"250 {lines[-1]}")
                elif verb == "MAIL":
                    addr = cmd[10:].partition(">")[0].lstrip("<")
                    sender, rcpts = None, []
                    r = self._scripted("MAIL", conn.host)
                    if r is not None and self._refuse(conn, writer, "MAIL", addr, r):
                        return
                    if r is None:
                        sender = addr
                        say("250 2.1.0 Ok")
                elif verb == "RCPT":
                    addr = cmd[8:].partition(">")[0].lstrip("<")
                    with self._lock:
                        conn.domains.add(_domain(addr))
                    r = self._scripted("RCPT", _domain(addr), conn.host)
                    if r is not None and self._refuse(conn, writer, "RCPT", addr, r):
                        return
                    if r is None:
                        rcpts.append(addr)
                        say("250 2.1.5 Ok")
                elif verb == "DATA":
                    if sender is None or not rcpts:
                        say("554 5.5.1 no valid recipients")
                        continue
                    say("354 go ahead")
                    await writer.drain()
                    chunks = []
                    for _ in range(10_000_000):
                        dl = await asyncio.wait_for(reader.readline(), 30)
                        if not dl:
                            return
                        if dl == b".\r\n":
                            break
                        chunks.append(dl[1:] if dl.startswith(b".") else dl)
                    with self._cond:
                        conn.messages += 1
                        self.msgs.append(Msg(conn, sender, list(rcpts), b"".join(chunks), time.monotonic()))
                        self._cond.notify_all()
                    say("250 2.0.0 Ok: queued")
                    sender, rcpts = None, []
                elif verb == "RSET":
                    sender, rcpts = None, []
                    say("250 2.0.0 Ok")
                elif verb == "NOOP":
                    say("250 2.0.0 Ok")
                elif verb == "QUIT":
                    end()
                    say("221 2.0.0 Bye")
                    await writer.drain()
                    return
                else:
                    say("502 5.5.2 command not implemented")
                await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            return
        finally:
            end()
            writer.close()

    def _refuse(self, conn: Conn, writer: asyncio.StreamWriter, stage: str, arg: str, reply: str) -> bool:
        """Answer a scripted refusal; True when the connection is to end with it."""
        with self._lock:
            self.refusals.append(Refusal(conn, stage, arg, reply, time.monotonic()))
        if reply == CLOSE:
            return True
        writer.write(reply.encode() + b"\r\n")
        return reply.startswith("421")
