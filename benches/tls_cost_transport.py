"""The event-loop transport for benches/tls_cost.py: a uvloop server on loopback takes N messages
(kept connections, or one per connection) in plaintext and over TLS from a client in another
process; each process's own CPU per message. Invariant: the two processes share nothing but the socket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import statistics
import subprocess
import tempfile
import time

from mta.delivery.smtp.tlsclient import ResumingContext
from mta.bench.payload import build_message
from mta.bench.procs import fork_context, worker_setup

ACK = b"250 2.0.0 Ok\r\n"  # what the server answers to every whole message, as SMTP does
SESSIONS = 10


class _Server(asyncio.Protocol):
    def __init__(self, st: dict) -> None:
        self.st, self.got = st, 0

    def connection_made(self, transport) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        st = self.st
        self.got += len(data)
        while self.got >= st["size"]:
            self.got -= st["size"]
            st["count"] += 1
            if st["count"] == st["warmup"]:
                st["cpu0"], st["t0"] = time.process_time(), time.monotonic()
            self.t.write(ACK)
            if st["count"] == st["total"]:
                st["cpu1"], st["t1"] = time.process_time(), time.monotonic()
                st["done"].set()


def _serve(sock: socket.socket, ctx: ssl.SSLContext | None, size: int, warmup: int, total: int, out) -> None:
    worker_setup()
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        st = {"size": size, "warmup": warmup, "total": total, "count": 0, "done": asyncio.Event(),
              "cpu0": time.process_time(), "t0": time.monotonic()}
        srv = await loop.create_server(lambda: _Server(st), sock=sock, ssl=ctx, backlog=1024)
        out.send("ready")
        await asyncio.wait_for(st["done"].wait(), 120)
        out.send({"cpu_s": st["cpu1"] - st["cpu0"], "wall_s": st["t1"] - st["t0"], "messages": total - warmup})
        await loop.run_in_executor(None, out.poll, 60)  # until the client is done: no reset under it
        srv.close()

    try:
        uvloop.run(main())
    except BaseException as e:  # noqa: BLE001 - reported to the parent, not lost
        out.send({"failed": f"{type(e).__name__}: {e}"})


class _Client(asyncio.Protocol):
    """Kept: sends until the shared count runs out. One per connection: sends the one message
    its slot took before connecting (taken before, so no connection is opened for nothing)."""

    def __init__(self, msg: bytes, left: list[int] | None, done: asyncio.Future, ctx) -> None:
        self.msg, self.left, self.done, self.ctx = msg, left, done, ctx
        self.buf = b""

    def connection_made(self, transport) -> None:
        self.t = transport
        if not self._send():
            self.t.close()

    def _send(self) -> bool:
        if self.left is not None:
            if self.left[0] <= 0:
                return False
            self.left[0] -= 1
        self.t.write(self.msg)
        return True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.buf.startswith(ACK):
            self.buf = self.buf[len(ACK):]
            if isinstance(self.ctx, ResumingContext):
                self.ctx.keep(self.t.get_extra_info("ssl_object"))  # the ticket is in by the reply
            if self.left is None or not self._send():
                self.t.close()

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _load(port: int, ctx, size: int, total: int, per_conn: bool, out) -> None:
    worker_setup()
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        msg = build_message(size, "from@example.test", "to@example.test", 1, "client.example.test")
        left = [total]
        resumed = [0, 0]

        async def slot() -> None:
            while left[0] > 0:
                done = loop.create_future()
                if per_conn:
                    left[0] -= 1
                t, _ = await loop.create_connection(lambda done=done: _Client(msg, None if per_conn else left, done, ctx),
                                                    "127.0.0.1", port, ssl=ctx)
                obj = t.get_extra_info("ssl_object")
                if obj is not None:
                    resumed[obj.session_reused] += 1
                await done
                if not per_conn:
                    return

        cpu0 = time.process_time()
        await asyncio.gather(*(slot() for _ in range(SESSIONS)))
        out.send({"cpu_s": time.process_time() - cpu0, "full": resumed[0], "resumed": resumed[1]})

    try:
        uvloop.run(main())
    except BaseException as e:  # noqa: BLE001 - reported to the parent, not lost
        out.send({"failed": f"{type(e).__name__}: {e}"})


def one_run(sctx, cctx, size: int, n: int, warmup: int, per_conn: bool, perf_data: str | None = None) -> dict:
    """Server and client in processes of their own; the server's CPU over the counted messages
    (and, with perf_data, `perf record` of the server over the whole load)."""
    mp = fork_context()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    s_parent, s_child = mp.Pipe()
    c_parent, c_child = mp.Pipe()
    srv = mp.Process(target=_serve, args=(sock, sctx, size, warmup, warmup + n, s_child), daemon=True)
    srv.start()
    sock.close()
    procs = [srv]
    try:
        if not s_parent.poll(30) or s_parent.recv() != "ready":
            raise RuntimeError("transport server did not start")
        rec = None
        if perf_data:
            rec = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-g", "-o", perf_data, "-p", str(srv.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)  # attached before the load starts
        cli = mp.Process(target=_load, args=(port, cctx, size, warmup + n, per_conn, c_child), daemon=True)
        cli.start()
        procs.append(cli)
        if not s_parent.poll(180):
            raise RuntimeError("transport server did not finish")
        s = s_parent.recv()
        if rec is not None:
            rec.send_signal(signal.SIGINT)
            rec.wait(60)
        c = c_parent.recv() if c_parent.poll(30) else {"failed": "client did not report"}
        s_parent.send("stop")
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    for r in (s, c):
        if "failed" in r:
            raise RuntimeError(r["failed"])
    return {"server_us": s["cpu_s"] * 1e6 / s["messages"], "client_us": c["cpu_s"] * 1e6 / (warmup + n),
            "rate": s["messages"] / s["wall_s"] if s["wall_s"] > 0 else 0.0,
            "full": c["full"], "resumed": c["resumed"]}


def perf_groups(perf_data: str) -> dict | None:
    from tls_cost_profile import group_dso_report

    if not os.path.exists(perf_data):
        return None
    text = subprocess.run(["perf", "report", "-i", perf_data, "--no-children", "--sort", "dso", "--stdio", "-g", "none"],
                          capture_output=True, text=True, timeout=300, check=False).stdout
    return group_dso_report(text)


def measure_transport(sctx_factory, cctx_factory, sizes: tuple[int, ...], counts: dict, rounds: int,
                      say=lambda msg: None, perf: bool = False) -> list[dict]:
    """One row per (size, connection mode, security): medians over rounds. counts maps
    (size, per_conn) -> messages counted per round. With perf, one more round of each 1 KiB
    one-per-connection mode under `perf record` gives its samples by shared object."""
    rows = []
    tmp = tempfile.mkdtemp(prefix="mta-tls-cost-perf-")
    for size in sizes:
        for per_conn in (False, True):
            modes = [("plain", None, None), ("TLS", sctx_factory, cctx_factory)]
            if per_conn:
                modes.append(("TLS, client resumes", sctx_factory, lambda: cctx_factory(ResumingContext)))
            n = counts[(size, per_conn)]
            for label, sf, cf in modes:
                runs = []
                for _ in range(rounds):
                    # fresh contexts per round: the resuming client starts without a session
                    runs.append(one_run(sf() if sf else None, cf() if cf else None, size, n,
                                        max(SESSIONS, n // 10), per_conn))
                row = {"size": size, "connections": "one message per connection" if per_conn else "kept",
                       "security": label, "messages": n,
                       "server_us": round(statistics.median(r["server_us"] for r in runs), 1),
                       "client_us": round(statistics.median(r["client_us"] for r in runs), 1),
                       "server_rate": round(statistics.median(r["rate"] for r in runs), 1),
                       "resumed_share": round(sum(r["resumed"] for r in runs) /
                                              max(1, sum(r["full"] + r["resumed"] for r in runs)), 3)}
                if perf and size == 1024 and per_conn and label != "TLS, client resumes":
                    data = os.path.join(tmp, "perf.data")
                    # three times the count: a plaintext connection is brief, and perf samples at 999 Hz
                    one_run(sf() if sf else None, cf() if cf else None, size, 3 * n, max(SESSIONS, n // 10), per_conn,
                            data)
                    row["perf_dso_pct"] = perf_groups(data)
                    os.unlink(data)
                say(f"  transport {size // 1024} KiB {row['connections']}, {label}: server {row['server_us']} µs/msg")
                rows.append(row)
    os.rmdir(tmp)
    return rows

