#!/usr/bin/env python3
"""Inject rate over HTTP next to SMTP's, into the same `mta run` (fdatasync on, delivery off):
POST /api/inject/v1 with batches of 100 on kept-alive connections from a few concurrent aiohttp
clients, and `mta bench send` (pipelined SMTP on kept connections), in alternation
(SMTP HTTP SMTP HTTP ...), each trial counted only if the spool holds exactly what it was sent.

  python benches/inject_rate.py [--messages N] [--trials T] [--clients C] [--batch B]
                                [--sessions S] [--size BYTES] [--mode content|fields] [--json FILE]

Reports messages/s and the server's CPU per message (its process tree, from /proc) per
trial and the median of each; the generators run on the same cores as the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))
from mta.bench.procs import tree_cpu_seconds, wait_greeting  # noqa: E402

STATS_RE = re.compile(r"spool stats: messages=(\d+) batches=(\d+) syncs=(\d+)")
CONFIG = """\
mynetworks = ["127.0.0.0/8"]
[smtp]
reverse_dns = false
greeting_delay = 0
[delivery]
enabled = false
[http]
tokens_file = "{tokens}"
max_body = "64MiB"
"""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mta(*args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.path.join(ROOT, "python"),
                                                                  os.environ.get("PYTHONPATH", "")) if p))
    return subprocess.run([sys.executable, "-m", "mta", *args], env=env, **kw)


class Server:
    """One `mta run` on a fresh spool with SMTP and HTTP listeners; stopped by stop()."""

    def __init__(self, workdir: str, workers: int):
        self.dir = tempfile.mkdtemp(prefix="trial-", dir=workdir)
        self.smtp, self.http = free_port(), free_port()
        tokens = os.path.join(self.dir, "tokens")
        out = mta("http", "token", "add", "bench", "--scope", "inject", "--tokens-file", tokens,
                  capture_output=True, text=True, check=True, timeout=60)
        self.token = out.stdout.strip().splitlines()[-1]
        cfg = os.path.join(self.dir, "mta.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG.format(tokens=tokens))
        self.log = open(os.path.join(self.dir, "mta.log"), "w+")
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mta", "run", "--config", cfg, "--listen", f"127.0.0.1:{self.smtp}",
             "--http", f"127.0.0.1:{self.http}", "--spool", os.path.join(self.dir, "spool"),
             "--hostname", "bench.test", "--workers", str(workers)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        if not wait_greeting(self.smtp, time.monotonic() + 30):
            self.stop()
            raise SystemExit(f"mta did not start:\n{self.text()}")
        deadline = time.monotonic() + 10
        while self.text().count("http listening on") < workers and time.monotonic() < deadline:
            time.sleep(0.05)

    def text(self) -> str:
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid)

    def stop(self) -> int:
        """SIGTERM; the messages the spool stored (from its stop-time stats)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        stored = sum(int(m[1]) for m in STATS_RE.finditer(self.text()))
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return stored


def message(i: int, size: int) -> str:
    head = (f"From: <bench@sender.test>\r\nTo: <r{i}@dest.test>\r\nSubject: inject bench {i}\r\n"
            f"Message-ID: <{i}.{time.time_ns()}@sender.test>\r\nDate: Sat, 05 Dec 2026 10:00:00 +0000\r\n\r\n")
    line = "x" * 76 + "\r\n"
    body = (line * (max(size - len(head), 0) // len(line) + 1))[:max(size - len(head) - 2, 0)] + "\r\n"
    return head + body


def document(first: int, n: int, size: int, mode: str) -> bytes:
    msgs = []
    for i in range(first, first + n):
        m = {"envelope_sender": "bench@sender.test", "recipients": [f"r{i}@dest.test"]}
        if mode == "content":
            m["content"] = message(i, size)
        else:
            m.update({"from": "Bench <bench@sender.test>", "subject": f"inject bench {i}",
                      "text_body": message(i, size).split("\r\n\r\n", 1)[1]})
        msgs.append(m)
    return json.dumps({"messages": msgs}).encode()


async def http_load(port: int, token: str, total: int, clients: int, batch: int, size: int, mode: str) -> dict:
    import aiohttp

    # Built before the clock starts: the generator's JSON encoding is not the server's cost.
    docs = [document(i, min(batch, total - i), size, mode) for i in range(0, total, batch)]
    url = f"http://127.0.0.1:{port}/api/inject/v1"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    latencies: list[float] = []
    stored = 0
    errors: dict[str, int] = {}
    queue = list(reversed(docs))

    async def client() -> None:
        nonlocal stored
        conn = aiohttp.TCPConnector(limit=1)  # one kept-alive connection per client
        async with aiohttp.ClientSession(connector=conn) as s:
            while queue:
                doc = queue.pop()
                t = time.monotonic()
                async with s.post(url, data=doc, headers=headers) as r:
                    body = await r.json()
                latencies.append(time.monotonic() - t)
                if r.status == 200:
                    stored += body["success_count"]
                else:
                    errors[str(r.status)] = errors.get(str(r.status), 0) + 1

    t0 = time.monotonic()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.monotonic() - t0
    latencies.sort()
    return {"messages": stored, "elapsed_s": elapsed, "messages_per_s": stored / elapsed, "errors": errors,
            "request_ms": {"p50": 1000 * latencies[len(latencies) // 2],
                           "p99": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]}}


def smtp_load(port: int, total: int, sessions: int, size: int) -> dict:
    per = max(total // sessions, 1)
    out = mta("bench", "send", "--target", f"127.0.0.1:{port}", "--messages", str(total), "--size", str(size),
              "--sessions", str(sessions), "--per-connection", str(per), "--from", "bench@sender.test",
              "--to", "r@dest.test", "--json", "-", "--quiet", capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"mta bench send failed:\n{out.stderr}")
    r = json.loads(out.stdout)
    return {"messages": r["messages"], "elapsed_s": r["elapsed_s"], "messages_per_s": r["messages_per_s"],
            "errors": r["errors"], "latency_ms": r["latency_ms"]}


def trial(kind: str, o: argparse.Namespace, workdir: str) -> dict:
    srv = Server(workdir, o.workers)
    try:
        cpu0 = srv.cpu()
        if kind == "smtp":
            r = smtp_load(srv.smtp, o.messages, o.sessions, o.size)
        else:
            r = asyncio.run(http_load(srv.http, srv.token, o.messages, o.clients, o.batch, o.size, o.mode))
        r["server_cpu_us_per_msg"] = 1e6 * (srv.cpu() - cpu0) / max(r["messages"], 1)
    finally:
        stored = srv.stop()
    r["stored"] = stored
    r["valid"] = stored == o.messages == r["messages"]
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients (one kept connection each)")
    ap.add_argument("--batch", type=int, default=100, help="messages per POST")
    ap.add_argument("--sessions", type=int, default=50, help="concurrent SMTP sessions")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--mode", choices=("content", "fields"), default="content")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", default=None)
    o = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="inject-bench-")
    results: dict[str, list[dict]] = {"smtp": [], "http": []}
    try:
        for t in range(o.trials):
            for kind in ("smtp", "http"):
                r = trial(kind, o, workdir)
                results[kind].append(r)
                print(f"trial {t + 1} {kind:4}: {r['messages_per_s']:8.0f} msgs/s  "
                      f"server CPU {r['server_cpu_us_per_msg']:6.0f} us/msg  stored {r['stored']}"
                      f"{'' if r['valid'] else '  (INVALID: stored != sent)'}  errors {r['errors']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {}
    for kind, rs in results.items():
        ok = [r for r in rs if r["valid"]] or rs
        summary[kind] = {"messages_per_s": statistics.median(r["messages_per_s"] for r in ok),
                         "server_cpu_us_per_msg": statistics.median(r["server_cpu_us_per_msg"] for r in ok),
                         "valid_trials": sum(r["valid"] for r in rs)}
    ratio = summary["http"]["messages_per_s"] / summary["smtp"]["messages_per_s"]
    print(f"\nmedian of {o.trials}: SMTP {summary['smtp']['messages_per_s']:.0f} msgs/s "
          f"({summary['smtp']['server_cpu_us_per_msg']:.0f} us CPU/msg), HTTP inject "
          f"{summary['http']['messages_per_s']:.0f} msgs/s ({summary['http']['server_cpu_us_per_msg']:.0f} us "
          f"CPU/msg); HTTP/SMTP = {ratio:.2f}")
    print(f"({o.messages} messages of {o.size} B per trial; HTTP: {o.clients} clients, batches of {o.batch}, "
          f"{o.mode} mode, keep-alive; SMTP: {o.sessions} sessions, pipelined, kept connections; "
          f"{o.workers} worker(s); fdatasync on; delivery off; 2 vCPU shared with the generators)")
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"params": vars(o), "trials": results, "summary": summary, "http_over_smtp": ratio}, f, indent=1)


if __name__ == "__main__":
    main()
