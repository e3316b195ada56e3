"""The delivery agent on its own: the worker's side (`AgentDelivery`) hands N relay jobs
of 1 KiB, at most --inflight at once, to a real agent process, which delivers them into
Postfix's `smtp-sink -c` on loopback. Prints the rate and the CPU per message of the
worker's side (this process), of the agent and of the sink: what relaying costs apart
from accepting. A benchmark, not a test (needs the Debian postfix package).

  PYTHONPATH=python python benches/agent.py [--messages 20000] [--inflight 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import time

import uvloop

from mta.delivery import OutMessage, OutRcpt, Target
from mta.delivery.agent import AgentDelivery
from mta.delivery.smtp.client import SmtpOptions

DATA = b"Received: from x by y; now\r\nSubject: t\r\n\r\n" + (b"x" * 70 + b"\r\n") * 13


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        v = f.read().rsplit(")", 1)[1].split()
    return (int(v[11]) + int(v[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(n: int, inflight: int, port: int, sink: int) -> str:
    ad = AgentDelivery()
    opts = SmtpOptions(helo="mx.example.test", tls="none")
    targets = [Target("127.0.0.1", "127.0.0.1", port)]
    key = f"relay:127.0.0.1:{port}"

    def msg(i: int) -> OutMessage:
        return OutMessage(f"Q{i}", "from@example.test", (OutRcpt("to@example.test", None, None, 0),), DATA,
                          None, False, None, None, time.time())

    assert (await ad.deliver(key, targets, opts, msg(0)))[0].code == 250  # starts the agent
    agent = ad._proc.pid
    r0, a0, s0, t0 = resource.getrusage(resource.RUSAGE_SELF), cpu_of(agent), cpu_of(sink), time.monotonic()
    gate = asyncio.Semaphore(inflight)
    refused = 0

    async def one(i: int) -> None:
        nonlocal refused
        async with gate:
            if (await asyncio.wait_for(ad.deliver(key, targets, opts, msg(i)), 60))[0].code != 250:
                refused += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    t1, r1, a1, s1 = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF), cpu_of(agent), cpu_of(sink)
    worker = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    await ad.close()
    return (f"{n / (t1 - t0):7.0f}/s  worker side {worker * 1e6 / n:5.1f}  agent {(a1 - a0) * 1e6 / n:5.1f}"
            f"  sink {(s1 - s0) * 1e6 / n:5.1f} us/msg  not delivered: {refused}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--inflight", type=int, default=20, help="jobs handed to the agent at once (default 20)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    port = free_port()
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-c", "-u", "postfix", f"127.0.0.1:{port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        for _ in range(args.runs):
            print(uvloop.run(run(args.messages, args.inflight, port, sink.pid)), flush=True)
    finally:
        sink.terminate()
        sink.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
