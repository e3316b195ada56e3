"""The `mta` command's contract: --version, --help of every command,
check-config exit codes, and the queue commands on an empty or missing spool."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mta


def mta_run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mta", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_version():
    out = mta_run("--version")
    assert out.returncode == 0
    assert mta.__version__ in out.stdout


@pytest.mark.parametrize("cmd", [(), ("run",), ("queue",), ("queue", "list"), ("queue", "show"), ("queue", "hold"),
                                 ("queue", "release"), ("queue", "delete"), ("queue", "flush"), ("check-config",),
                                 ("tls",), ("tls", "selfsigned"), ("user",), ("user", "add"), ("user", "del"),
                                 ("user", "list"), ("bench",), ("bench", "send"), ("bench", "sink"),
                                 ("bench", "compare"), ("bench", "peers"), ("bench", "peers", "list"),
                                 ("bench", "peers", "setup"), ("bench", "peers", "start"), ("bench", "peers", "stop"),
                                 ("plugins",), ("plugins", "list"), ("dkim",),
                                 ("dkim", "keygen")])
def test_every_command_has_help(cmd):
    out = mta_run(*cmd, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout
    assert len(out.stdout.splitlines()) > 3


def test_run_help_names_every_flag():
    out = mta_run("run", "--help").stdout
    for flag in ("--config", "--listen", "--spool", "--hostname", "--mynetworks", "--relay-to",
                 "--no-delivery", "--workers"):
        assert flag in out


def test_check_config_ok_and_bad(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('hostname = "mx.example.test"\nlisten = ["127.0.0.1:2600", "[::1]:2600"]\n')
    out = mta_run("check-config", str(good))
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('listen = ["nowhere"]\n[smtp]\nmax_line_length = 100\nmax_errorz = 3\n')
    out = mta_run("check-config", str(bad))
    assert out.returncode == 2
    # every problem is named, with its key and value
    assert "listen[0]" in out.stderr and "'nowhere'" in out.stderr
    assert "smtp.max_line_length" in out.stderr and "100" in out.stderr
    assert "smtp.max_errorz" in out.stderr and "max_errors" in out.stderr


def test_run_refuses_bad_config_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[spool]\nsegment_size = "huge"\n')
    out = mta_run("run", "--config", str(bad), "--spool", str(tmp_path / "s"))
    assert out.returncode == 2
    assert "spool.segment_size" in out.stderr and "'huge'" in out.stderr


def test_run_refuses_bad_listen_flag(tmp_path):
    out = mta_run("run", "--listen", "::1:25", "--spool", str(tmp_path / "s"))
    assert out.returncode == 2
    assert "listen" in out.stderr and "::1:25" in out.stderr


def test_queue_list_empty_spool_prints_empty_array(tmp_path):
    out = mta_run("queue", "list", "--spool", str(tmp_path / "nothing-here"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_queue_list_default_spool_is_cwd_relative(tmp_path):
    out = mta_run("queue", "list", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


def test_queue_show_unknown_id_exits_1(tmp_path):
    out = mta_run("queue", "show", "NOSUCHID", "--spool", str(tmp_path))
    assert out.returncode == 1
    assert "NOSUCHID" in out.stderr


@pytest.mark.parametrize("cmd", ["hold", "release", "delete", "flush"])
def test_queue_control_help_says_what_it_does(cmd):
    out = mta_run("queue", cmd, "--help").stdout
    assert "--spool" in out
    assert ("postsuper" in out) or ("postqueue" in out)
    assert "Exit 1 when no server runs" in " ".join(out.split())


@pytest.mark.parametrize("cmd", ["hold", "release", "delete"])
def test_queue_control_needs_ids_or_all(tmp_path, cmd):
    out = mta_run("queue", cmd, "--spool", str(tmp_path))
    assert out.returncode == 2 and "ALL" in out.stderr
    out = mta_run("queue", cmd, "ALL", "Q1", "--spool", str(tmp_path))
    assert out.returncode == 2 and "ALL stands alone" in out.stderr


@pytest.mark.parametrize("args", [("hold", "Q1"), ("release", "ALL"), ("delete", "Q1"), ("flush",)])
def test_queue_control_without_a_server_exits_1(tmp_path, args):
    out = mta_run("queue", *args, "--spool", str(tmp_path / "spool"))
    assert out.returncode == 1
    assert "no server is running" in out.stderr
