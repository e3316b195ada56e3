"""Fixtures that start the real `mta run` on loopback and talk SMTP to it.

Every server gets its own free port and a fresh spool under tmp_path; it is
stopped (SIGTERM, then SIGKILL) when the test ends. Nothing here mocks the
server: tests drive it with smtplib, raw sockets and swaks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def mta_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mta", *args]


@dataclass
class Server:
    """A running `mta run` process."""

    host: str
    port: int
    spool: Path
    proc: subprocess.Popen
    log_path: Path
    config: Path | None = None
    extra_env: dict = field(default_factory=dict)

    @property
    def addr(self) -> tuple[str, int]:
        return (self.host, self.port)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def queue(self) -> list[dict]:
        out = subprocess.run(
            mta_cmd("queue", "list", "--spool", str(self.spool), "--json"),
            capture_output=True, check=True, timeout=60,
        )
        return json.loads(out.stdout)

    def show(self, queue_id: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            mta_cmd("queue", "show", queue_id, "--spool", str(self.spool)),
            capture_output=True, timeout=60,
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_server(
    tmp_path: Path,
    *,
    config: str | None = None,
    args: tuple[str, ...] = (),
    env: dict | None = None,
    host: str = "127.0.0.1",
    spool: Path | None = None,
    port: int | None = None,
    wait: bool = True,
    deliver: bool = False,
) -> Server:
    """Start `mta run` on a free loopback port; wait until it accepts connections."""
    port = port or free_port(host)
    spool = spool or tmp_path / "spool"
    cfg_path = None
    cmd = ["run", "--listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
           "--spool", str(spool), "--hostname", "mx.example.test"]
    if config is not None:
        cfg_path = tmp_path / f"mta-{port}.toml"
        cfg_path.write_text(config)
        cmd += ["--config", str(cfg_path)]
    if not deliver:
        # Receive-path tests inspect the queue; nothing may leave it under them.
        cmd.append("--no-delivery")
    cmd += list(args)
    log_path = tmp_path / f"mta-{port}.log"
    full_env = dict(os.environ)
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(mta_cmd(*cmd), stdout=log, stderr=subprocess.STDOUT,
                                env=full_env, cwd=tmp_path)
    srv = Server(host, port, spool, proc, log_path, cfg_path, env or {})
    if wait:
        wait_listening(srv)
    return srv


def wait_listening(srv: Server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.proc.poll() is not None:
            raise RuntimeError(f"mta exited with {srv.proc.returncode}:\n{srv.log()}")
        try:
            with socket.create_connection(srv.addr, timeout=1) as s:
                s.settimeout(5)
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mta did not start listening:\n{srv.log()}")


@pytest.fixture
def server_factory(tmp_path):
    """Call it to start servers; all are stopped at teardown."""
    started: list[Server] = []

    def factory(**kw) -> Server:
        srv = start_server(tmp_path, **kw)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop()


@pytest.fixture
def server(server_factory) -> Server:
    """A server on the default configuration (mynetworks includes loopback)."""
    return server_factory()
