"""Fixtures that start the real `mta run` on loopback and talk SMTP to it.

Every server gets its own free port and a fresh spool under tmp_path; it is
stopped (SIGTERM, then SIGKILL) when the test ends. Nothing here mocks the
server: tests drive it with smtplib, raw sockets and swaks. Every server asks
the session's empty loopback DNS server unless its config has a [dns] table:
no test waits on real DNS.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dnsserver import DNSServer
from smtpkit import wait_greeting

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


_session_dns: list[DNSServer] = []


def loopback_dns() -> DNSServer:
    """The session's DNS server: an empty zone, so every name is NXDOMAIN at once."""
    if not _session_dns:
        _session_dns.append(DNSServer().start())
    return _session_dns[0]


@pytest.fixture(scope="session", autouse=True)
def _stop_loopback_dns():
    yield
    while _session_dns:
        _session_dns.pop().stop()


def with_loopback_dns(config: str | None) -> str:
    """The config with a [dns] table naming the loopback server appended, unless it sets
    [dns] itself (or is not TOML at all: a test of a bad config gets it unchanged).
    Mail from outside mynetworks is verified (SPF, DKIM, DMARC): without this every such
    test would ask the system's resolver about names of example domains."""
    try:
        if "dns" in tomllib.loads(config or ""):
            return config
    except tomllib.TOMLDecodeError:
        return config
    srv = loopback_dns()
    return f'{config or ""}\n[dns]\nnameservers = ["{srv.host}"]\nport = {srv.port}\n'


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
    cmd = ["run", "--listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
           "--spool", str(spool), "--hostname", "mx.example.test"]
    cfg_path = tmp_path / f"mta-{port}.toml"
    cfg_path.write_text(with_loopback_dns(config))
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
    try:
        wait_greeting(srv.port, srv.proc, timeout, host=srv.host)
    except RuntimeError as e:
        raise RuntimeError(f"mta {e}:\n{srv.log()}") from None


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
def server(request, server_factory):
    """A server on the default configuration (mynetworks includes loopback): a fresh one, or in
    a module marked `pytestmark = pytest.mark.shared_server` the module's shared one (a start and
    a stop per test cost ~0.4 s), for tests that need no configuration of their own and do not
    stop it (a test that does starts its server with server_factory)."""
    if request.node.get_closest_marker("shared_server"):
        return request.getfixturevalue("shared_server")
    return server_factory()


class SharedView:
    """A module's shared server as one test sees it: the same process, port and spool, but
    queue() lists only the messages that arrived since the test began, so "the queue holds
    exactly this" reads as on a server of the test's own. A test may not stop it."""

    def __init__(self, srv: Server):
        from mta import _native

        self.server = srv
        self.before = {e.queue_id for e in _native.SpoolReader(str(srv.spool)).list()}

    def __getattr__(self, name: str):
        return getattr(self.server, name)

    def queue(self) -> list[dict]:
        return [e for e in self.server.queue() if e["id"] not in self.before]

    def stop(self, *args, **kw) -> int:
        raise AssertionError("a shared server is not stopped by a test: start one with server_factory")


@pytest.fixture(scope="module")
def module_servers(tmp_path_factory):
    """The servers `shared_server` started for this module (a new one only if a test killed the last)."""
    started: list[Server] = []
    yield started, tmp_path_factory
    for srv in started:
        srv.stop()


@pytest.fixture
def shared_server(module_servers) -> SharedView:
    """The module's default-configuration server, shared by its tests (see `server`). A test it
    died under fails; the next gets a new one."""
    started, factory = module_servers
    if not started or started[-1].proc.poll() is not None:
        started.append(start_server(factory.mktemp("shared-server")))
    srv = started[-1]
    yield SharedView(srv)
    assert srv.proc.poll() is None, f"the module's shared server died during this test:\n{srv.log()[-3000:]}"


# ---------------------------------------------------------------------------
# Scriptable SMTP / LMTP peers for the delivery tests (appended for issue 5)
# ---------------------------------------------------------------------------

@dataclass
class PeerTxn:
    """One completed DATA transaction a peer received."""

    sender: str
    mail_params: list[str]
    rcpts: list[str]  # the recipients the peer accepted at RCPT
    data: bytes  # the message as sent, un-dot-stuffed, CRLF line ends
    local_ip: str  # the peer address mta connected to
    replies: dict = field(default_factory=dict)  # rcpt -> final reply (LMTP: per recipient)


class SmtpPeer:
    """A small real SMTP (or LMTP) server in a background thread, on a loopback
    TCP address or a unix socket, whose replies the test scripts:

    rcpt(address, n, peer) -> reply line or None (250): n counts RCPTs of that
        address so far (1 the first time);
    data(txn, n, peer) -> reply line or None (250) at end of data; n counts
        data phases so far (1 the first time);
    lmtp_rcpt(address, n, peer) -> reply line or None, one per accepted
        recipient after the data (LMTP only; n counts those replies for it).
    A transaction is recorded in `txns` once its final reply has been written.

    Every read has a deadline; sessions and lines are bounded."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, unix: str | None = None,
                 lmtp: bool = False, name: str = "peer.test", rcpt=None, data=None,
                 lmtp_rcpt=None, delay: float = 0.0, extensions=("PIPELINING", "8BITMIME", "SMTPUTF8",
                                             "ENHANCEDSTATUSCODES", "SIZE 104857600")):
        import threading
        self.host, self.port, self.unix, self.lmtp, self.name = host, port, unix, lmtp, name
        self.rcpt_fn, self.data_fn, self.lmtp_fn = rcpt, data, lmtp_rcpt
        self.delay = delay  # seconds before each end-of-data reply (a slow peer)
        self.extensions = list(extensions)
        self.txns: list[PeerTxn] = []
        self.rcpt_seen: dict[str, int] = {}
        self.lmtp_seen: dict[str, int] = {}
        self.data_seen = 0
        self.connections = 0
        self.commands: list[str] = []
        self._cond = threading.Condition()
        self._loop = None
        self._server = None
        self._thread = None

    # -- life cycle -------------------------------------------------------------
    def start(self) -> "SmtpPeer":
        import asyncio
        import threading
        ready = threading.Event()
        err: list[BaseException] = []

        def run():
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                if self.unix:
                    srv = loop.run_until_complete(asyncio.start_unix_server(
                        self._session, path=self.unix, limit=1 << 20))
                else:
                    srv = loop.run_until_complete(asyncio.start_server(
                        self._session, self.host, self.port, limit=1 << 20, reuse_address=True))
                    self.port = srv.sockets[0].getsockname()[1]
                self._server = srv
            except BaseException as e:  # reported to start()
                err.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                srv.close()
                loop.run_until_complete(srv.wait_closed())
                for t in asyncio.all_tasks(loop):
                    t.cancel()
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, name=f"peer-{self.host}:{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("peer did not start")
        if err:
            raise err[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- inspection ---------------------------------------------------------------
    def wait_txns(self, n: int, timeout: float = 20) -> list[PeerTxn]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.txns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"peer {self.host}:{self.port}{self.unix or ''} got "
                                         f"{len(self.txns)} of {n} messages in {timeout}s")
                self._cond.wait(min(left, 0.5))
            return list(self.txns)

    # -- the protocol ---------------------------------------------------------------
    async def _session(self, reader, writer) -> None:
        import asyncio
        self.connections += 1
        sock = writer.get_extra_info("sockname")
        local_ip = sock[0] if isinstance(sock, tuple) else "unix"

        async def line(timeout: float = 30) -> bytes:
            return await asyncio.wait_for(reader.readline(), timeout)

        def say(text: str) -> None:
            writer.write(text.encode() + b"\r\n")

        sender, params, rcpts = None, [], []
        try:
            say(f"220 {self.name} {'LMTP' if self.lmtp else 'ESMTP'} test peer")
            for _ in range(100_000):
                raw = await line()
                if not raw:
                    return
                cmd = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
                verb = cmd.split(" ", 1)[0].upper()
                self.commands.append(cmd)
                if verb in ("EHLO", "LHLO", "HELO"):
                    if (verb == "LHLO") != self.lmtp:
                        say("500 5.5.1 wrong greeting for this protocol")
                    elif verb == "HELO":
                        say(f"250 {self.name}")
                    else:
                        lines = [self.name, *self.extensions]
                        for x in lines[:-1]:
                            say(f"250-{x}")
                        say(f"250 {lines[-1]}")
                elif verb == "MAIL":
                    m = cmd[10:] if cmd[:10].upper() == "MAIL FROM:" else ""
                    addr, _, rest = m.partition(">")
                    sender, params, rcpts = addr.lstrip("<"), rest.split(), []
                    say("250 2.1.0 Ok")
                elif verb == "RCPT":
                    addr = cmd[8:].split(">", 1)[0].lstrip("<")
                    with self._cond:
                        n = self.rcpt_seen[addr] = self.rcpt_seen.get(addr, 0) + 1
                    reply = (self.rcpt_fn(addr, n, self) if self.rcpt_fn else None) or "250 2.1.5 Ok"
                    if reply.startswith("2"):
                        rcpts.append(addr)
                    say(reply)
                elif verb == "DATA":
                    if sender is None or not rcpts:
                        say("554 5.5.1 no valid recipients")
                        continue
                    say("354 go ahead")
                    await writer.drain()
                    chunks = []
                    for _ in range(10_000_000):
                        dl = await line()
                        if not dl:
                            return
                        if dl == b".\r\n":
                            break
                        chunks.append(dl[1:] if dl.startswith(b".") else dl)
                    txn = PeerTxn(sender, params, list(rcpts), b"".join(chunks), local_ip)
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    with self._cond:
                        self.data_seen += 1
                        n = self.data_seen
                    if self.lmtp:
                        for r in rcpts:
                            with self._cond:
                                k = self.lmtp_seen[r] = self.lmtp_seen.get(r, 0) + 1
                            reply = (self.lmtp_fn(r, k, self) if self.lmtp_fn else None) or "250 2.0.0 Ok"
                            txn.replies[r] = reply
                            say(reply)
                    else:
                        reply = (self.data_fn(txn, n, self) if self.data_fn else None) or "250 2.0.0 Ok: queued"
                        txn.replies = {r: reply for r in rcpts}
                        say(reply)
                    await writer.drain()
                    with self._cond:
                        self.txns.append(txn)
                        self._cond.notify_all()
                    sender, params, rcpts = None, [], []
                elif verb == "RSET":
                    sender, params, rcpts = None, [], []
                    say("250 2.0.0 Ok")
                elif verb == "NOOP":
                    say("250 2.0.0 Ok")
                elif verb == "QUIT":
                    say("221 2.0.0 Bye")
                    await writer.drain()
                    return
                else:
                    say("502 5.5.2 command not implemented")
                await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):
            return
        finally:
            writer.close()


@pytest.fixture
def peer_factory():
    """Call it (SmtpPeer's arguments) to start scriptable peers; all stop at teardown."""
    peers: list[SmtpPeer] = []

    def factory(**kw) -> SmtpPeer:
        p = SmtpPeer(**kw).start()
        peers.append(p)
        return p

    yield factory
    for p in peers:
        p.stop()
