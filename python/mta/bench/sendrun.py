"""`mta bench send` as a program: N messages (or S seconds) split over forked worker
processes, each one uvloop loop running its share of the sessions (client.Client), all
released together by a barrier; their results (counts, errors, raw latencies) merged here.
"""

from __future__ import annotations

import asyncio
import os
import queue as _queue
import time

from mta.bench.client import S_DONE, S_PARK, Client, Shared
from mta.bench.payload import build_message
from mta.bench.procs import fork_context, worker_setup
from mta.bench.sinkrun import parse_hostport
from mta.bench.stats import latency_cdf, latency_summary

_VARIANTS = 8  # distinct messages per worker: bodies differ, so a swapped buffer shows


def _split(n: int, parts: int, i: int) -> int:
    return n // parts + (1 if i < n % parts else 0)


def _recipients(to: str, n: int) -> list[str]:
    if n <= 1:
        return [to]
    local, _, domain = to.rpartition("@")
    return [to] + [f"{local}+{k}@{domain}" for k in range(1, n)]


async def _run_worker(idx: int, o: dict, barrier, progress) -> dict:
    loop = asyncio.get_running_loop()
    host, port = parse_hostport(o["target"])
    msgs = [build_message(o["size"], o["sender"], o["to"], idx * 100 + v, o["helo"]) for v in range(_VARIANTS)]
    ssl_ctx = None
    if o["starttls"]:
        from mta.delivery.smtp.tlsclient import ResumingContext
        from mta.bench.tlsutil import client_context

        ssl_ctx = client_context(ResumingContext) if o["tls_resume"] else client_context()
    g = Shared(total=o["w_total"], warmup=o["w_warmup"], messages=msgs, sender=o["sender"],
               recipients=_recipients(o["to"], o["recipients"]), helo=o["helo"],
               per_connection=o["per_connection"], starttls=o["starttls"], bdat=o["bdat"],
               ssl_ctx=ssl_ctx, timeout=o["timeout"], duration=o["duration"])
    g.rate = o["w_rate"]
    ips = o["source_ips"]
    conn_no = [idx]

    async def slot() -> None:
        while True:
            fut = loop.create_future()
            t = g.request(lambda x: fut.done() or fut.set_result(x))
            if t is None:
                t = await fut
            if t < 0:
                return
            done = loop.create_future()
            kw = {}
            if ips:
                kw["local_addr"] = (ips[conn_no[0] % len(ips)], 0)
                conn_no[0] += 1
            try:
                await loop.create_connection(lambda: Client(g, t, done), host, port, **kw)
            except OSError:
                g.error("connect")
                await asyncio.sleep(0.01)  # a refused port is not a reason to spin
                continue
            await done

    async def watchdog() -> None:
        base = idx * 3
        while True:
            await asyncio.sleep(0.1)
            progress[base], progress[base + 1], progress[base + 2] = g.ok, sum(g.errors.values()), g.warm_ok
            now = time.monotonic()
            if int(now * 10) % 10 == 0:
                for c in list(g.live):
                    if c.state not in (S_PARK, S_DONE) and now - c.t_last > g.timeout:
                        c.abort("timeout")

    barrier.wait(60)
    g.t_start = time.monotonic()
    wd = asyncio.ensure_future(watchdog())
    await asyncio.gather(*(slot() for _ in range(o["w_sessions"])))
    t_finish = time.monotonic()
    wd.cancel()
    progress[idx * 3], progress[idx * 3 + 1], progress[idx * 3 + 2] = g.ok, sum(g.errors.values()), g.warm_ok
    return {"ok": g.ok, "warm_ok": g.warm_ok, "errors": g.errors, "latencies": g.latencies.tobytes(),
            "t0": g.t0 or g.t_start, "t_finish": t_finish, "late": g.late, "max_lag": g.max_lag,
            "issued": g.next_ticket, "tls_full": g.tls_full, "tls_resumed": g.tls_resumed}


def _worker(idx: int, o: dict, barrier, progress, results) -> None:
    worker_setup()
    import uvloop

    try:
        res = uvloop.run(_run_worker(idx, o, barrier, progress))
    except BaseException as e:  # reported, not lost: the parent says which worker failed and why
        res = {"failed": f"{type(e).__name__}: {e}"}
    results.put((idx, res))


def run_send(target: str, *, messages: int | None = None, size: int = 1024, sessions: int = 50,
             per_connection: int = 1, rate: float | None = None, duration: float | None = None,
             warmup: int = 0, sender: str = "from@example.test", to: str = "to@example.test",
             helo: str = "client.example.test", source_ips: list[str] | None = None,
             starttls: bool = False, bdat: bool = False, recipients: int = 1, workers: int = 0,
             timeout: float = 60.0, tls_resume: bool = False, progress=None) -> dict:
    """Run the load and return the report (the JSON figures). `progress(ok, errors)` is
    called a few times a second. `tls_resume`: each generator process offers the last
    session it kept on its next STARTTLS (a sending MTA's session cache)."""
    from array import array

    if messages is None and duration is None:
        messages = 1000
    big = 1 << 62
    n_total = messages if messages is not None else big
    workers = workers or min(2, os.cpu_count() or 1)
    workers = max(1, min(workers, sessions))
    if rate:
        workers = 1 if rate < 2000 else workers  # one clock keeps the arrivals evenly spaced
    ctx = fork_context()
    barrier = ctx.Barrier(workers)
    prog = ctx.RawArray("d", workers * 3)
    results = ctx.Queue()
    procs = []
    for i in range(workers):
        o = dict(target=target, size=size, sender=sender, to=to, helo=helo, starttls=starttls, bdat=bdat,
                 tls_resume=tls_resume,
                 recipients=recipients, per_connection=max(1, per_connection), timeout=timeout,
                 duration=duration, source_ips=source_ips or [],
                 w_total=(_split(n_total, workers, i) if n_total != big else big) + _split(warmup, workers, i),
                 w_warmup=_split(warmup, workers, i), w_sessions=_split(sessions, workers, i),
                 w_rate=(rate / workers) if rate else 0.0)
        p = ctx.Process(target=_worker, args=(i, o, barrier, prog, results), daemon=True)
        p.start()
        procs.append(p)
    got: dict[int, dict] = {}
    try:
        while len(got) < workers:
            try:
                idx, res = results.get(timeout=0.2)
                got[idx] = res
            except _queue.Empty:
                if progress:
                    ok = sum(prog[i * 3] for i in range(workers))
                    err = sum(prog[i * 3 + 1] for i in range(workers))
                    progress(int(ok), int(err))
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
    finally:
        for p in procs:
            p.join(2)
            if p.is_alive():
                p.kill()
    failed = [f"worker {i}: {r['failed']}" for i, r in got.items() if "failed" in r]
    if failed or len(got) < workers:
        raise RuntimeError("; ".join(failed) or "a worker died without a report")
    lat = array("d")
    errors: dict[str, int] = {}
    for r in got.values():
        lat.frombytes(r["latencies"])
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    ok = sum(r["ok"] for r in got.values())
    t0 = min(r["t0"] for r in got.values())
    elapsed = max(r["t_finish"] for r in got.values()) - t0
    report = {
        "messages": ok,
        "elapsed_s": round(elapsed, 4),
        "messages_per_s": round(ok / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": latency_summary(lat),
        "latency_cdf_ms": latency_cdf(lat),
        "errors": dict(sorted(errors.items())),
        "attempted": sum(r["issued"] for r in got.values()) - warmup,
        "warmup": warmup,
        "target": target, "size": size, "sessions": sessions, "per_connection": per_connection,
        "recipients": recipients, "starttls": starttls, "bdat": bdat, "workers": workers,
    }
    if starttls:  # every handshake, warm-up included; resumed ones only with tls_resume
        report["tls_resume"] = tls_resume
        report["tls_handshakes"] = {"full": sum(r["tls_full"] for r in got.values()),
                                    "resumed": sum(r["tls_resumed"] for r in got.values())}
    if rate:
        report["open_loop"] = {"rate": rate, "late_starts": sum(r["late"] for r in got.values()),
                               "max_start_lag_ms": round(max(r["max_lag"] for r in got.values()) * 1000, 3)}
    return report
