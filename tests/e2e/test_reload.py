"""End-to-end: a full configuration reload (SIGHUP, `mta reload`) of the real server under
load. A route moves from sink A to sink B and a plugin's option changes while smtplib
sessions run: every message gets its 250, and what arrives after the reload took the new way."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import mta_cmd, start_server
from helpers import connect, simple_message

# Tags every message with its `tag` option (the sinks see which generation took it) and
# logs its start and stop, with the option, to the file named by its `log` option.
PLUGIN = r'''
import json, os


class Plugin:
    def __init__(self, options):
        self.tag, self.log = options["tag"], options["log"]

    def record(self, what):
        with open(self.log, "a") as f:
            f.write(json.dumps({"what": what, "tag": self.tag, "pid": os.getpid()}) + "\n")

    def start(self):
        self.record("start")

    def stop(self):
        self.record("stop")

    def on_message(self, tx, msg):
        msg.headers.add("X-Reload-Tag", self.tag)
'''

RCPT = "someone@dest.test"


def write_config(path: Path, port: int, tag: str, log: Path, extra: str = "") -> None:
    path.write_text(
        f'transport = {{ "dest.test" = "smarthost 127.0.0.1:{port}" }}\n'
        f"{extra}\n"
        "[delivery]\nretry_schedule = [\"1s\"]\n"
        f'[[plugin]]\nmodule = "reloadprobe"\noptions = {{ tag = "{tag}", log = "{log}" }}\n'
        + _dns_of(path))


def _dns_of(path: Path) -> str:
    """The [dns] table start_server appended (the loopback resolver), kept on rewrites."""
    text = path.read_text() if path.exists() else ""
    i = text.find("\n[dns]")
    return text[i:] if i >= 0 else ""


def events(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def wait_for(cond, timeout: float = 20.0, what: str = "condition", srv=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"; the server's log:\n{srv.log()[-4000:]}" if srv else ""))


def tags(peer) -> list[str]:
    out = []
    for t in list(peer.txns):
        for line in t.data.split(b"\r\n"):
            if line.startswith(b"X-Reload-Tag:"):
                out.append(line.split(b":", 1)[1].strip().decode())
    return out


class Load:
    """smtplib sessions in a loop (a few messages each) until stopped; every refusal kept."""

    def __init__(self, addr, per_session: int = 3):
        self.addr, self.per_session = addr, per_session
        self.sent = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set() and n < 400:
            try:
                with smtplib.SMTP(*self.addr, timeout=20) as s:
                    s.ehlo("load.example.test")
                    for _ in range(self.per_session):
                        n += 1
                        refused = s.sendmail("load@sender.test", [RCPT], simple_message(f"load {n}"))
                        if refused:
                            self.errors.append(f"{n}: {refused}")
                        else:
                            self.sent += 1
            except (smtplib.SMTPException, OSError) as e:
                self.errors.append(f"{n}: {e!r}")


@pytest.fixture
def setup(tmp_path, peer_factory):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "reloadprobe.py").write_text(PLUGIN)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(plugins), os.environ.get("PYTHONPATH", "")) if p)}
    a, b = peer_factory(name="a.test"), peer_factory(name="b.test")
    return tmp_path, env, a, b


def start(tmp_path, env, a, log, args=(), extra=""):
    cfg = tmp_path / "initial.toml"
    write_config(cfg, a.port, "one", log, extra)
    srv = start_server(tmp_path, config=cfg.read_text(), env=env, deliver=True, args=args)
    wait_for(lambda: any(e["what"] == "start" for e in events(log)), what="the plugin's start")
    return srv


def reload_cli(srv) -> subprocess.CompletedProcess:
    return subprocess.run(mta_cmd("reload", "--spool", str(srv.spool)), capture_output=True, text=True,
                          timeout=60)


def send_one(srv, subject: str) -> None:
    with smtplib.SMTP(*srv.addr, timeout=20) as s:
        assert not s.sendmail("after@sender.test", [RCPT], simple_message(subject))


def test_sighup_moves_a_route_and_a_plugin_option_under_load(setup):
    tmp_path, env, a, b = setup
    log = tmp_path / "plugin.jsonl"
    srv = start(tmp_path, env, a, log)
    try:
        # A session that began under the old config, still open across the reload.
        old = connect(srv).connect()
        old.start("old.example.test")
        with Load(srv.addr) as load:
            wait_for(lambda: load.sent >= 10, what="load before the reload")
            write_config(srv.config, b.port, "two", log)
            srv.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload: applied" in srv.log(), what="the reload")
            before = load.sent
            wait_for(lambda: load.sent >= before + 10, what="load after the reload")
        assert load.errors == [], load.errors
        sent = load.sent
        assert "reload: applied (changed: transport, plugins)" in srv.log()
        # The old session finishes under the config it started with: the old plugin tags it.
        old.send_message("old@sender.test", [RCPT], simple_message("old session"))
        assert not [e for e in events(log) if e["what"] == "stop"], "stopped with its session open"
        old.quit()
        old.close()
        wait_for(lambda: [e for e in events(log) if e["what"] == "stop" and e["tag"] == "one"],
                 what="the old plugin's stop once its session ended")
        for i in range(5):
            send_one(srv, f"after {i}")
        total = sent + 6
        wait_for(lambda: len(a.txns) + len(b.txns) >= total, timeout=60, what="every message delivered")
        assert len(a.txns) + len(b.txns) == total
        # Mail that arrived after the reload took the new route and the new option.
        after = [t for t in b.txns if b"Subject: after" in t.data]
        assert len(after) == 5 and not [t for t in a.txns if b"Subject: after" in t.data]
        # (these five by their subject: the load's last messages, accepted in sessions begun
        # before the reload and so tagged "one", may reach b after them)
        assert [t.data.split(b"X-Reload-Tag: ", 1)[1][:3] for t in after] == [b"two"] * 5
        old_msg = [t for t in list(a.txns) + list(b.txns) if b"Subject: old session" in t.data]
        assert len(old_msg) == 1 and b"X-Reload-Tag: one" in old_msg[0].data
        assert set(tags(a)) <= {"one"}  # the old route only ever saw the old plugin's mail
        starts = [e["tag"] for e in events(log) if e["what"] == "start"]
        assert starts == ["one", "two"]
    finally:
        assert srv.stop() == 0
    assert [e["tag"] for e in events(log) if e["what"] == "stop"] == ["one", "two"]


def test_a_bad_config_is_refused_and_the_old_one_stays(setup):
    tmp_path, env, a, b = setup
    log = tmp_path / "plugin.jsonl"
    srv = start(tmp_path, env, a, log)
    try:
        write_config(srv.config, b.port, "two", log, extra="bogus_key = 1")
        srv.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload: refused" in srv.log(), what="the refusal")
        assert "reload: refused: bogus_key: unknown key" in srv.log()
        out = reload_cli(srv)
        assert out.returncode == 1, out
        assert "shard 0: refused" in out.stderr and "bogus_key: unknown key" in out.stderr
        # A plugin that cannot load is refused the same way.
        write_config(srv.config, b.port, "two", log)
        srv.config.write_text(srv.config.read_text().replace("reloadprobe", "no_such_plugin_module"))
        out = reload_cli(srv)
        assert out.returncode == 1 and "no_such_plugin_module" in out.stderr, out
        send_one(srv, "still old")
        wait_for(lambda: a.txns, what="delivery by the old route")
        assert not b.txns and tags(a) == ["one"]
        assert [e["tag"] for e in events(log) if e["what"] == "start"] == ["one"]
        # Fixed: `mta reload` applies it.
        write_config(srv.config, b.port, "two", log)
        out = reload_cli(srv)
        assert out.returncode == 0, out
        assert out.stdout.startswith("shard 0: ok") and "changed: transport, plugins" in out.stdout
        send_one(srv, "new")
        wait_for(lambda: b.txns, what="delivery by the new route")
        assert tags(b) == ["two"]
    finally:
        assert srv.stop() == 0


def test_restart_only_keys_are_logged_as_ignored(setup):
    tmp, env, a, b = setup
    log = tmp / "plugin.jsonl"
    srv = start(tmp, env, a, log, extra="workers = 1")
    try:
        spare = srv.port + 1 if srv.port < 65000 else srv.port - 1
        write_config(srv.config, a.port, "one", log,
                     extra=f'workers = 2\n[[listener]]\naddress = "127.0.0.1:{spare}"\n'
                           '[limits]\nmax_connections = 50')
        out = reload_cli(srv)
        assert out.returncode == 0, out
        text = srv.log()
        assert "reload: ignored until restart: workers (was 1, now 2)" in text
        assert "reload: ignored until restart: listener (was " in text
        assert "reload: applied (changed: limits)" in text
        # --listen, --spool and --hostname were applied again: not changes the file made
        for key in ("listen (", "spool.dir", "hostname"):
            assert f"ignored until restart: {key}" not in text, text
        assert text.count("ignored until restart") == 2
        assert "ignored until restart: workers (was 1, now 2)" in out.stdout
        with pytest.raises(OSError):  # not listening there until a restart
            socket.create_connection(("127.0.0.1", spare), timeout=2).close()
        assert [e["tag"] for e in events(log) if e["what"] == "start"] == ["one"]  # same plugins: kept
        send_one(srv, "still here")
        wait_for(lambda: a.txns, what="delivery")
    finally:
        assert srv.stop() == 0


def test_two_workers_reload_every_shard(setup):
    tmp_path, env, a, b = setup
    log = tmp_path / "plugin.jsonl"
    srv = start(tmp_path, env, a, log, args=("--workers", "2"))
    began = time.monotonic()
    try:
        wait_for(lambda: len({e["pid"] for e in events(log) if e["what"] == "start"}) == 2,
                 what="both workers' plugins")
        with Load(srv.addr, per_session=1) as load:
            wait_for(lambda: load.sent >= 10, what="load before the reload")
            write_config(srv.config, b.port, "two", log)
            srv.proc.send_signal(signal.SIGHUP)  # the supervisor: it re-reads, each worker reloads
            wait_for(lambda: srv.log().count("reload: applied") == 2, what="both workers' reloads")
            before = load.sent
            wait_for(lambda: load.sent >= before + 10, what="load after the reload")
        assert load.errors == [], load.errors
        starts = [e for e in events(log) if e["what"] == "start" and e["tag"] == "two"]
        assert len({e["pid"] for e in starts}) == 2
        # `mta reload` asks each shard over its control socket.
        out = reload_cli(srv)
        assert out.returncode == 0, out
        assert "shard 0: ok" in out.stdout and "shard 1: ok" in out.stdout
        assert out.stdout.count("changed: nothing") == 2
        n = len(b.txns)
        for i in range(20):  # connections spread over the workers by SO_REUSEPORT
            send_one(srv, f"after {i}")
        wait_for(lambda: len(b.txns) >= n + 20, timeout=60, what="mail after the reload at sink B")
        assert not [t for t in a.txns if b"Subject: after" in t.data]
        # A worker restarted after the reload starts with the new config (the supervisor re-read it).
        victim = starts[0]["pid"]
        time.sleep(max(0.0, began + 4 - time.monotonic()))  # younger than 3 s: a failed start, all stop
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: [e for e in events(log) if e["what"] == "start" and e["pid"] not in {x["pid"] for x in starts}],
                 timeout=30, what="the restarted worker's plugin", srv=srv)
        restarted = [e for e in events(log) if e["what"] == "start" and e["pid"] not in {x["pid"] for x in starts}]
        assert [e["tag"] for e in restarted] == ["two"]
    finally:
        assert srv.stop() in (0, 1)  # a worker was killed: the supervisor may report it
