"""CPU per message of the Python hot paths, with no sockets: what the orchestration
costs apart from the kernel and the machine's noise (a regression guard beside
benches/test_micro.py, which times the Rust parts).

  session   one SMTP session as smtp-source speaks it (EHLO, MAIL, RCPT, DATA, 1 KiB,
            QUIT) on an in-memory transport, through the real Server, parser, Received
            header and spool (fdatasync on, delivery off)
  queue     a spooled message through the queue manager: attempt, routing to a
            smarthost, an instant 250 from a stand-in transport, delivery log, DELETE
  client    SmtpDelivery's transaction against an in-memory peer that answers at once
  lane      the same through SmtpDelivery.submit (the callback lane) on pooled connections

Each figure is the event-loop thread's CPU time per message (time.thread_time), the
best of --repeats runs. Run: PYTHONPATH=python python benches/hotpaths.py [--messages N]
[--plugin MODULE] (a [[plugin]] for the server paths; benches/plugins/ is importable).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import tempfile
import time

import uvloop

from mta.config import schema as config
from mta import log as fastlog
from mta.delivery import OutMessage, OutRcpt, Target, results_for
from mta.delivery.smtp import client as client_mod
from mta.app.server import Server
from mta.testing import MemoryTransport

BODY = (b"From: <from@example.test>\r\nTo: <to@example.test>\r\nSubject: test\r\n\r\n"
        + (b"x" * 70 + b"\r\n") * 13)
CONVERSATION = (b"EHLO client.example.test\r\n", b"MAIL FROM:<from@example.test>\r\n",
                b"RCPT TO:<to@example.test>\r\n", b"DATA\r\n")


class _ServerSide(MemoryTransport):
    """What a Session writes to; `stored` completes at the 250 after the data."""

    def __init__(self, loop) -> None:
        super().__init__(("127.0.0.1", 40000))
        self.stored = loop.create_future()

    def write(self, data) -> None:
        if bytes(data[:9]) == b"250 2.0.0" and not self.stored.done():
            self.stored.set_result(None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _InstantTransport:
    """Stands in for the delivery agent: every recipient accepted on the next loop turn."""

    def __init__(self, loop) -> None:
        self.loop = loop

    def submit(self, key, targets, opts, msg, done, log=None) -> bool:
        self.loop.call_soon(done, self._results(msg))
        return True

    def submit_spooled(self, *args) -> bool:
        return False

    async def deliver(self, key, targets, opts, msg):
        return self._results(msg)

    @staticmethod
    def _results(msg):
        return results_for(msg, 250, "2.0.0", "Ok: queued as X", "127.0.0.1", "127.0.0.1", tls="none")

    async def close(self) -> None:
        pass


class _PeerSide(asyncio.Transport):
    """An SMTP server in memory: each command's reply is delivered on the next loop turn."""

    def __init__(self, proto, loop) -> None:
        super().__init__()
        self.proto, self.loop, self.in_data, self.closed = proto, loop, False, False

    def write(self, data) -> None:
        data = bytes(data)
        out = []
        if self.in_data:
            if data.endswith(b"\r\n.\r\n"):
                self.in_data = False
                out.append(b"250 2.0.0 Ok: queued as X\r\n")
        else:
            for line in data.split(b"\r\n")[:-1]:
                verb = line[:4].upper()
                if verb == b"EHLO":
                    out.append(b"250-peer\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    self.in_data = True
                    out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                elif verb == b"QUIT":
                    out.append(b"221 2.0.0 Bye\r\n")
                else:
                    out.append(b"250 2.0.0 Ok\r\n")
        if out:
            self.loop.call_soon(self.proto.data_received, b"".join(out))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_extra_info(self, name, default=None):
        return default


PLUGINS: list[str] = []  # --plugin


async def _measure(run, n: int, repeats: int) -> float:
    await run(min(n, 500))  # warm caches, pools and the spool
    best = float("inf")
    for _ in range(repeats):
        t = time.thread_time()
        await run(n)
        best = min(best, (time.thread_time() - t) / n)
    return best * 1e6


async def _server(tmp: str, **extra) -> Server:
    """The real server, started (bound to a free loopback port that nothing connects to)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plugins = [{"module": m} for m in PLUGINS]
    cfg = config.load(None, {"listen": [f"127.0.0.1:{port}"], "spool.dir": os.path.join(tmp, "spool"),
                             "hostname": "mx.example.test", "smtp.reverse_dns": False, "plugin": plugins, **extra})
    srv = Server(cfg)
    await srv.start()
    return srv


async def session_path(n: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        srv = await _server(tmp, **{"delivery.enabled": False})
        new_session = srv.session_factory(srv.cfg.listeners[0])
        loop = asyncio.get_running_loop()

        async def one() -> None:
            t = _ServerSide(loop)
            s = t.session = new_session()
            s.connection_made(t)
            for line in CONVERSATION:
                s.data_received(line)
            s.data_received(BODY + b".\r\n")
            await t.stored
            s.data_received(b"QUIT\r\n")

        async def run(count: int) -> None:
            for _ in range(0, count, 50):  # 50 sessions at once, as smtp-source -s 50
                await asyncio.gather(*(one() for _ in range(50)))

        us = await _measure(run, n, repeats)
        await srv.stop()
        return us


async def queue_path(n: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        srv = await _server(tmp, **{"delivery.relay_to": "127.0.0.1:2626"})
        q, sp = srv.queue, srv.spool
        q.transports.smtp.wire = _InstantTransport(asyncio.get_running_loop())

        def submit() -> None:
            qid = sp.new_queue_id()
            m = sp.new_message()
            m.push(BODY)
            sp.submit(qid, m, lambda err, qid=qid: q.on_durable(qid), sender="from@example.test",
                      recipients=[("to@example.test", None, None)], body=None, smtputf8=False, ret=None,
                      envid=None, helo="client.example.test", client_ip="127.0.0.1", arrival=time.time())

        async def run(count: int) -> None:
            for i in range(count):
                submit()
                if i % 50 == 49:
                    await asyncio.sleep(0)
                    while len(q.active) > 500:
                        await asyncio.sleep(0.001)
            while sp.next_due() is not None or q.active:
                await asyncio.sleep(0.001)

        us = await _measure(run, n, repeats)
        await srv.stop()
        return us


async def client_path(n: int, repeats: int, lane: bool = False) -> float:
    loop = asyncio.get_running_loop()
    d = client_mod.SmtpDelivery()

    async def open_in_memory(self, target, opts, *, use_tls):
        conn = client_mod.Connection(target, loop)
        conn.connection_made(_PeerSide(conn, loop))
        loop.call_soon(conn.data_received, b"220 peer ESMTP\r\n")
        await self._handshake(conn, opts, use_tls)
        return conn

    d._open = open_in_memory.__get__(d)
    opts = client_mod.SmtpOptions(helo="mx.example.test", tls="none")
    targets = [Target("127.0.0.1", "127.0.0.1", 2626)]
    data = b"Received: from client.example.test by mx.example.test; now\r\n" + BODY

    async def one(i: int) -> None:
        msg = OutMessage(f"Q{i}", "from@example.test", (OutRcpt("to@example.test", None, None, 0),),
                         data, None, False, None, None, time.time())
        if lane:
            fut = loop.create_future()
            if d.submit("relay", targets, opts, msg, fut.set_result, fut.set_exception):
                rows = await fut
                assert rows[0][1] == 250, rows
                return
        res = await d.deliver("relay", targets, opts, msg)
        assert res[0].code == 250, res

    async def run(count: int) -> None:
        for i in range(0, count, 50):
            await asyncio.gather(*(one(i + k) for k in range(50)))

    if lane:  # 50 pooled connections first, as the agent has under load
        opts = client_mod.SmtpOptions(helo="mx.example.test", tls="none", max_connections=50)
        await run(50)
    return await _measure(run, n, repeats)


async def lane_path(n: int, repeats: int) -> float:
    return await client_path(n, repeats, lane=True)


PATHS = {"session": session_path, "queue": queue_path, "client": client_path, "lane": lane_path}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000, help="messages per run (default 10000)")
    ap.add_argument("--repeats", type=int, default=5, help="runs per path; the best is kept (default 5)")
    ap.add_argument("--paths", default=",".join(PATHS), help="which of session,queue,client,lane (default all)")
    ap.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                    help="a plugin for the session and queue paths (repeatable), e.g. noop_sync")
    args = ap.parse_args(argv)
    PLUGINS.extend(args.plugin)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins"))
    fastlog.setup("INFO")  # logging and the delivery log on, as in `mta run`, into /dev/null:
    devnull = os.open(os.devnull, os.O_WRONLY)
    for name in args.paths.split(","):
        saved = os.dup(2)
        os.dup2(devnull, 2)
        try:
            us = uvloop.run(PATHS[name](args.messages, args.repeats))
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        print(f"{name:8s} {us:6.1f} us/msg  (event-loop thread CPU, best of {args.repeats})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
