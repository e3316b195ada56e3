"""`mta bench sink` as a program: a listening socket shared by forked worker processes
(each one uvloop loop of SinkProtocol), counters merged through shared memory, a live
line while it runs, and the report (table and JSON) when it stops.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

from mta.bench.procs import fork_context, worker_setup
from mta.bench.sink import SinkConfig, SinkCounters, SinkProtocol

_FIELDS = SinkCounters.__slots__
_FLUSH_S = 0.05


def parse_fail_rate(spec: str | None) -> tuple[float, float]:
    """'4xx:0.1,5xx:0.05' -> (0.1, 0.05); probabilities per message."""
    p4 = p5 = 0.0
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        kind, _, p = part.partition(":")
        try:
            val = float(p)
        except ValueError:
            raise ValueError(f"--fail-rate: {part!r} is not CLASS:PROBABILITY (e.g. 4xx:0.1)") from None
        if not 0 <= val <= 1:
            raise ValueError(f"--fail-rate: {val} is not a probability between 0 and 1")
        if kind.lower() == "4xx":
            p4 = val
        elif kind.lower() == "5xx":
            p5 = val
        else:
            raise ValueError(f"--fail-rate: unknown class {kind!r} (4xx or 5xx)")
    if p4 + p5 > 1:
        raise ValueError("--fail-rate: the probabilities add up to more than 1")
    return p4, p5


def parse_hostport(s: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep:
        host, port = default_host, s
    host = host.strip("[]") or default_host
    return host, int(port)


def _listen(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(4096)
    s.setblocking(False)
    return s


def _worker(idx: int, sock, opts: dict, shared) -> None:
    worker_setup()
    import uvloop

    uvloop.run(_serve(idx, sock, opts, shared))


async def _serve(idx: int, sock, opts: dict, shared) -> None:
    from mta.bench.tlsutil import server_context

    loop = asyncio.get_running_loop()
    ctx = None
    if opts["starttls"]:
        try:
            ctx = server_context(opts.get("tls_cert"), opts.get("tls_key"))
        except Exception as e:  # no cryptography and no openssl: serve without STARTTLS
            print(f"mta bench sink: no STARTTLS ({e})", flush=True)
    seed = None if opts.get("seed") is None else opts["seed"] + idx
    cfg = SinkConfig(opts["hostname"], opts["reply_delay_ms"], opts["fail_4xx"], opts["fail_5xx"], ctx, seed)
    server = await loop.create_server(lambda: SinkProtocol(cfg), sock=sock, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    base = idx * len(_FIELDS)
    c = cfg.counters

    def flush() -> None:
        for k, name in enumerate(_FIELDS):
            shared[base + k] = getattr(c, name)

    async def flusher() -> None:
        while True:
            flush()
            await asyncio.sleep(_FLUSH_S)

    task = asyncio.ensure_future(flusher())
    await stop.wait()
    task.cancel()
    flush()
    server.close()


def _merge(shared, workers: int) -> dict:
    n = len(_FIELDS)
    tot = {name: 0.0 for name in _FIELDS}
    firsts, lasts = [], []
    for w in range(workers):
        for k, name in enumerate(_FIELDS):
            v = shared[w * n + k]
            if name == "first_t":
                if v:
                    firsts.append(v)
            elif name == "last_t":
                if v:
                    lasts.append(v)
            else:
                tot[name] += v
    first = min(firsts) if firsts else 0.0
    last = max(lasts) if lasts else 0.0
    elapsed = max(0.0, last - first) if first and last else 0.0
    msgs = int(tot["messages"])
    rejected = {}
    if tot["rejected_4xx"]:
        rejected["451"] = int(tot["rejected_4xx"])
    if tot["rejected_5xx"]:
        rejected["554"] = int(tot["rejected_5xx"])
    return {
        "messages": msgs,
        "messages_per_s": round(msgs / elapsed, 1) if elapsed > 0 else 0.0,
        "elapsed_s": round(elapsed, 4),
        "bytes": int(tot["bytes"]),
        "connections": int(tot["connections"]),
        "tls_sessions": int(tot["tls_sessions"]),
        "integrity_errors": int(tot["integrity_errors"]),
        "unchecked": int(tot["unchecked"]),
        "rejected": rejected,
        "first_connection_at": first,
        "last_message_at": last,
    }


def run_sink(listen: str, *, workers: int = 0, hostname: str = "sink.bench.test", reply_delay_ms: float = 0.0,
             fail_rate: str | None = None, starttls: bool = True, tls_cert: str | None = None,
             tls_key: str | None = None, count: int | None = None, duration: float | None = None,
             seed: int | None = None, progress=None, ready=None) -> dict:
    """Serve until SIGTERM/SIGINT, `count` messages or `duration` seconds; return the report.

    `progress(report)` is called a few times a second; `ready()` once the port listens.
    """
    import multiprocessing as mp

    p4, p5 = parse_fail_rate(fail_rate)
    host, port = parse_hostport(listen)
    workers = workers or min(2, os.cpu_count() or 1)
    sock = _listen(host, port)
    opts = dict(hostname=hostname, reply_delay_ms=reply_delay_ms, fail_4xx=p4, fail_5xx=p5,
                starttls=starttls, tls_cert=tls_cert, tls_key=tls_key, seed=seed)
    if starttls and not tls_cert:
        from mta.bench.tlsutil import throwaway_certificate

        try:  # once here, so the workers share one certificate instead of making one each
            opts["tls_cert"], opts["tls_key"] = throwaway_certificate(hostname)
        except Exception:
            pass
    shared = mp.RawArray("d", workers * len(_FIELDS))
    ctx = fork_context()
    procs = [ctx.Process(target=_worker, args=(i, sock, opts, shared), daemon=True) for i in range(workers)]
    for p in procs:
        p.start()
    sock.close()
    stopping = []

    def on_term(*_):
        stopping.append(1)

    old = signal.signal(signal.SIGTERM, on_term)
    if ready:
        ready()
    t_start = time.monotonic()
    try:
        while not stopping:
            time.sleep(0.1)
            rep = _merge(shared, workers)
            if progress:
                progress(rep)
            if count and rep["messages"] + sum(rep["rejected"].values()) >= count:
                break
            if duration and time.monotonic() - t_start >= duration:
                break
            if not any(p.is_alive() for p in procs):
                break
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    return _merge(shared, workers)
