"""Where a connection's time goes under load: one probe session does what smtp-source
does (connect, greeting, EHLO, MAIL, RCPT, DATA, 1 KiB, QUIT), over and over for
--seconds, and prints the median and 90th percentile of each step. Run it next to a
load (`smtp-source -s 49 ...` against the same port) to see which step a server's
clients wait on; alone, it shows the unloaded round trips. Blocking sockets, one
step at a time: the probe measures what a client sees, its own scheduling included.

  python benches/latency.py --port 3525 [--host 127.0.0.1] [--seconds 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

STEPS = ("connect", "greeting", "EHLO", "MAIL", "RCPT", "DATA", "data", "QUIT")
MESSAGE = (b"From: <from@example.test>\r\nTo: <to@example.test>\r\nSubject: probe\r\n\r\n"
           + b"x" * 900 + b"\r\n.\r\n")
COMMANDS = (("EHLO", b"EHLO probe.example.test\r\n"), ("MAIL", b"MAIL FROM:<from@example.test>\r\n"),
            ("RCPT", b"RCPT TO:<to@example.test>\r\n"), ("DATA", b"DATA\r\n"), ("data", MESSAGE),
            ("QUIT", b"QUIT\r\n"))
_EXPECT = {"greeting": b"2", "EHLO": b"2", "MAIL": b"2", "RCPT": b"2", "DATA": b"3", "data": b"2", "QUIT": b"2"}


def _reply(s: socket.socket, step: str) -> None:
    """Read one whole (possibly multi-line) reply; raise unless it is the one expected."""
    buf = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed waiting for the reply to {step}")
        buf += chunk
        lines = buf.split(b"\r\n")
        if len(lines) >= 2 and lines[-2][3:4] == b" ":
            if not buf.startswith(_EXPECT[step]):
                raise ConnectionError(f"{step}: {buf[:80]!r}")
            return


def probe(host: str, port: int, seconds: float, timeout: float = 10.0) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in STEPS}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t1 = time.perf_counter()
            _reply(s, "greeting")
            t2 = time.perf_counter()
            times["connect"].append(t1 - t0)
            times["greeting"].append(t2 - t1)
            for step, line in COMMANDS:
                a = time.perf_counter()
                s.sendall(line)
                _reply(s, step)
                times[step].append(time.perf_counter() - a)
    return times


def summary(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for step, v in times.items():
        v = sorted(v)
        if v:
            out[step] = {"p50_ms": v[len(v) // 2] * 1e3, "p90_ms": v[int(len(v) * 0.9)] * 1e3, "n": len(v)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--seconds", type=float, default=6.0, help="how long to probe (default 6)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    s = summary(probe(args.host, args.port, args.seconds))
    if args.json:
        print(json.dumps(s))
        return 0
    print(f"probe sessions: {s['QUIT']['n'] if 'QUIT' in s else 0}")
    for step, v in s.items():
        print(f"{step:9s} p50 {v['p50_ms']:6.2f} ms   p90 {v['p90_ms']:6.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
