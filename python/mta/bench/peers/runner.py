"""A started peer: prepared in its run directory, launched under the reaper, ready once it
greets with 220 on its port; its process tree's CPU and memory readable while it runs, and
stopped so that nothing of it is left (the next trial binds the same port)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from mta.bench.peers.base import Peer, PeerRun
from mta.bench.procs import terminate, tree_cpu_seconds, tree_memory_bytes, wait_greeting, wait_port_free


def _tail(log, lines: int = 12) -> str:
    try:
        log.flush()
        with open(log.name, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4096))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except (OSError, AttributeError, TypeError):
        return "(no log)"


class PeerProcess:
    def __init__(self, peer: Peer, run: PeerRun, log, ready_timeout: float = 60.0) -> None:
        self.peer, self.run = peer, run
        wait_port_free(run.port, time.monotonic() + 10)
        run.work.mkdir(parents=True, exist_ok=True)
        peer.prepare(run)
        argv = peer.command(run)
        import mta  # the reaper (and Python peers) must import this very package, from any cwd

        here = os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen([sys.executable, "-m", "mta.bench.peers.reaper", "--", *argv],
                                     start_new_session=True, stdout=log, stderr=subprocess.STDOUT,
                                     cwd=str(run.work), env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + ready_timeout
        while not wait_greeting(run.port, min(deadline, time.monotonic() + 0.5)):
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                why = "exited" if self.proc.poll() is not None else f"not ready within {ready_timeout:.0f} s"
                self.stop()
                raise RuntimeError(f"{peer.name}: {why}; its log ends:\n{_tail(log)}")

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)

    def memory(self) -> int:
        return tree_memory_bytes(self.pid)

    def drained(self) -> bool:
        return self.peer.drained(self.run)

    def stop(self) -> None:
        try:
            self.peer.stop(self.run)
        finally:
            terminate(self.proc, 40)
            self.peer.cleanup(self.run)
