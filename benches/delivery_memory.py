"""Delivery memory: how much a relayed (or bounced) big message grows the peak RSS
(VmHWM) of the server's processes (main, worker, delivery agent), against a warmed-up
baseline. A real `mta run` on loopback relays to Postfix's smtp-sink.

    python benches/delivery_memory.py [--scenario relay|bounce|concurrent|all] [--mta-python DIR]

Each scenario starts a fresh server and sink; the figures are per process and summed.
tests/e2e/test_delivery_memory.py runs the same scenarios with the issue's bounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20
SENDER = "alice@sender.test"

# name -> (message size, messages sent at once, the sink rejects the data with 550)
SCENARIOS = {
    "relay": (40 * MiB, 1, False),
    "bounce": (40 * MiB, 1, True),
    "concurrent": (10 * MiB, 20, False),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    seen, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return seen


def status(pid: int) -> tuple[str, int]:
    """(the process's command line, its VmHWM in KiB)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return cmd, int(line.split()[1])
    except OSError:
        pass
    return "", 0


def role(cmd: str) -> str:
    return "agent" if "mta.delivery.agent" in cmd else "worker"


@dataclass
class Figures:
    scenario: str
    size: int
    count: int
    seconds: float = 0.0
    baseline: dict[int, tuple[str, int]] = field(default_factory=dict)
    after: dict[int, tuple[str, int]] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)

    def growth(self) -> dict[int, int]:
        """Bytes each process's peak RSS grew by."""
        return {p: max(0, kb - self.baseline.get(p, ("", 0))[1]) * 1024 for p, (_, kb) in self.after.items()}

    @property
    def total(self) -> int:
        return sum(self.growth().values())

    def lines(self) -> list[str]:
        out = [f"{self.scenario}: {self.count} x {self.size // MiB} MiB, {self.seconds:.1f} s, outcomes {self.outcomes}"]
        for p, g in sorted(self.growth().items()):
            cmd, kb = self.after[p]
            out.append(f"  {role(cmd):6} pid {p}: peak {kb / 1024:7.1f} MiB, +{g / MiB:5.1f} MiB")
        out.append(f"  summed peak RSS growth: {self.total / MiB:.1f} MiB")
        return out


class Run:
    """smtp-sink and `mta run` relaying to it, in a temporary directory."""

    def __init__(self, work: Path, reject: bool, mta_python: Path = ROOT / "python") -> None:
        self.work = work
        self.sink_port, self.port = free_port(), free_port()
        sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        args = [sink, "-u", "nobody"] if os.geteuid() == 0 else [sink]
        if reject:
            args += ["-f", "."]  # 550 at the end of the data: the message was read and sent whole
        self.sink = subprocess.Popen(args + [f"127.0.0.1:{self.sink_port}", "256"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.log = work / "delivery.log"
        cfg = work / "mta.toml"
        cfg.write_text(f"""local_domains = ["sender.test"]
[spool]
sync = false
[delivery]
relay_to = "127.0.0.1:{self.sink_port}"
log_file = "{self.log}"
local_transport = "maildir {work}/mail/{{domain}}/{{user}}"
retry_schedule = ["1m"]
max_connections = 20
[log]
level = "warning"
""")
        env = {**os.environ, "PYTHONPATH": str(mta_python)}
        self.out = open(work / "mta.out", "ab")
        self.mta = subprocess.Popen([sys.executable, "-m", "mta", "run", "--listen", f"127.0.0.1:{self.port}",
                                     "--spool", str(work / "spool"), "--hostname", "mx.example.test",
                                     "--config", str(cfg)], stdout=self.out, stderr=subprocess.STDOUT,
                                    env=env, cwd=work)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        break
            except OSError:
                pass
            if self.mta.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mta did not start:\n" + (work / "mta.out").read_text(errors="replace"))
            time.sleep(0.05)

    def send(self, size: int, ret_full: bool = False) -> str:
        """One message of `size` bytes over SMTP; its queue id."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=120) as s:
            f = s.makefile("rb")

            def reply() -> bytes:
                while True:
                    line = f.readline()
                    if not line:
                        raise RuntimeError("connection closed")
                    if line[3:4] != b"-":
                        return line

            def cmd(line: bytes, want: bytes) -> bytes:
                s.sendall(line)
                r = reply()
                if not r.startswith(want):
                    raise RuntimeError(f"{line!r}: {r!r}")
                return r

            reply()
            cmd(b"EHLO client.test\r\n", b"250")
            cmd(b"MAIL FROM:<%s>%s\r\n" % (SENDER.encode(), b" RET=FULL" if ret_full else b""), b"250")
            cmd(b"RCPT TO:<bob@dest.test>\r\n", b"250")
            cmd(b"DATA\r\n", b"354")
            head = b"From: <%s>\r\nTo: <bob@dest.test>\r\nSubject: %d bytes\r\n\r\n" % (SENDER.encode(), size)
            line = b"x" * 76 + b"\r\n"
            block = line * (MiB // len(line))
            s.sendall(head)
            left = size - len(head)
            while left > 0:
                piece = block[:left] if left < len(block) else block
                s.sendall(piece)
                left -= len(piece)
            r = cmd(b"\r\n.\r\n", b"250")
            s.sendall(b"QUIT\r\n")
            return r.split()[-1].decode()

    def outcomes(self, qids: set[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        try:
            for line in self.log.read_text().splitlines():
                rec = json.loads(line)
                if rec.get("queue_id") in qids:
                    found[rec["queue_id"]] = rec.get("status", "?")
        except (OSError, ValueError):
            pass
        return found

    def wait(self, qids: set[str], timeout: float = 300) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.outcomes(qids)
            if len(found) == len(qids):
                return found
            if time.monotonic() > deadline:
                raise RuntimeError(f"no outcome for {qids - set(found)} after {timeout} s")
            time.sleep(0.1)

    def peaks(self) -> dict[int, tuple[str, int]]:
        return {p: status(p) for p in process_tree(self.mta.pid)}

    def close(self) -> None:
        for proc in (self.mta, self.sink):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.out.close()


def measure(scenario: str, mta_python: Path = ROOT / "python", work: Path | None = None) -> Figures:
    size, count, reject = SCENARIOS[scenario]
    with tempfile.TemporaryDirectory(prefix="mta-memory-") as tmp:
        run = Run(Path(work or tmp), reject, mta_python)
        try:
            # Warm up: the agent and its imports, a connection to the sink, the block path.
            run.wait({run.send(1024), run.send(300 * 1024, ret_full=reject)})
            fig = Figures(scenario, size, count, baseline=run.peaks())
            start = time.monotonic()
            qids: list[str] = []
            errors: list[BaseException] = []

            def one() -> None:
                try:
                    qids.append(run.send(size, ret_full=reject))
                except BaseException as e:  # reported below
                    errors.append(e)
            threads = [threading.Thread(target=one) for _ in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            found = run.wait(set(qids))
            if reject:  # the DSN to the (local) sender is delivered too
                time.sleep(0.5)
            fig.seconds = time.monotonic() - start
            fig.after = run.peaks()
            for st in found.values():
                fig.outcomes[st] = fig.outcomes.get(st, 0) + 1
            return fig
        finally:
            run.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    ap.add_argument("--mta-python", type=Path, default=ROOT / "python",
                    help="the directory holding the mta package to run (another build, for a before/after)")
    a = ap.parse_args(argv)
    for name in SCENARIOS if a.scenario == "all" else [a.scenario]:
        print("\n".join(measure(name, a.mta_python).lines()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
