"""Tests for mta.auth: scrypt hashes and the user file, the SASL exchange (also
driven through the real parser's take_line mode), the failure guard with a fake
clock, the sender-login map, Message-ID/Date, the [auth] config keys and the
`mta user` commands."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import stat
import subprocess
import sys
import threading

import pytest

from mta import _native
from mta.auth import passwords
from mta.auth import senders
from mta.auth import users as auth
from mta.auth.guard import AuthGuard
from mta.auth.headers import add_missing_headers
from mta.smtp.sasl import SaslExchange
from mta.auth.senders import check_sender
from mta.config import schema as config
from mta.errors import ConfigError

FAST = {"n": 1024, "r": 8, "p": 1}  # cheap parameters for tests; the format is the same


def b64(data: bytes | str) -> bytes:
    return base64.b64encode(data.encode() if isinstance(data, str) else data)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- hashes ---------------------------------------------------------------------

def test_hash_format_and_verification():
    h = passwords.hash_password("s3cret")
    assert re.fullmatch(r"\$scrypt\$n=16384,r=8,p=1\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", h)
    assert passwords.verify_password("s3cret", h)
    assert not passwords.verify_password("s3cret ", h)
    assert not passwords.verify_password("", h)
    assert passwords.hash_password("s3cret") != h  # salted


def test_non_ascii_password_and_cheap_parameters():
    h = passwords.hash_password("pässwörd", **FAST)
    assert h.startswith("$scrypt$n=1024,r=8,p=1$")
    assert passwords.verify_password("pässwörd", h) and not passwords.verify_password("passwort", h)


@pytest.mark.parametrize("bad", [
    "", "plain", "$scrypt$n=16384,r=8,p=1$c2FsdA", "$scrypt$n=1000,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,
    "$scrypt$n=4194304,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$" + "A" * 43,  # too costly: refused, not computed
    "$scrypt$n=16384,r=8,p=1$!!!$" + "A" * 43, "$argon2id$v=19$m=65536,t=3,p=4$x$y",
])
def test_malformed_hash_never_verifies(bad):
    assert passwords.verify_password("x", bad) is False


# --- the user file ------------------------------------------------------------------

def test_set_user_creates_0600_and_keeps_comments(tmp_path):
    path = str(tmp_path / "users")
    assert auth.set_user(path, "alice", passwords.hash_password("a", **FAST)) is True
    assert mode_of(path) == 0o600
    with open(path, "a") as f:
        f.write("# a comment\n\nbob@example.com:" + passwords.hash_password("b", **FAST) + "\n")
    assert auth.set_user(path, "alice", passwords.hash_password("a2", **FAST)) is False  # password changed
    lines = open(path).read().splitlines()
    assert lines[0].startswith("alice:") and lines[1] == "# a comment" and lines[3].startswith("bob@example.com:")
    assert mode_of(path) == 0o600
    db = auth.UserDB(path)
    assert db.users() == ["alice", "bob@example.com"]
    assert db.verify_sync("alice", "a2") and not db.verify_sync("alice", "a")
    assert auth.delete_user(path, "alice") is True and auth.delete_user(path, "alice") is False
    assert db.users() == ["bob@example.com"]
    assert os.listdir(tmp_path) == ["users"]  # no temporary or lock file left behind


@pytest.mark.parametrize("name", ["", "a b", "a:b", "#x", "tab\tx", "nl\n", "x" * 256])
def test_invalid_user_names(tmp_path, name):
    assert not auth.valid_user_name(name)
    with pytest.raises(ValueError):
        auth.set_user(str(tmp_path / "users"), name, passwords.hash_password("p", **FAST))


def test_verify_runs_in_a_thread_and_unknown_user_costs_a_hash(tmp_path, monkeypatch):
    path = str(tmp_path / "users")
    auth.set_user(path, "alice", passwords.hash_password("right", **FAST))
    calls = []
    real = passwords.verify_password

    def spy(password, encoded):
        calls.append((threading.get_ident(), encoded))
        return real(password, encoded)

    monkeypatch.setattr(auth, "verify_password", spy)
    db = auth.UserDB(path)

    async def main():
        return [await db.verify("alice", "right"), await db.verify("alice", "wrong"),
                await db.verify("nobody", "right"), await db.verify("ALICE", "right")]

    assert asyncio.run(main()) == [True, False, False, False]  # user names are case-sensitive
    loop_thread = threading.get_ident()
    assert len(calls) == 4 and all(tid != loop_thread for tid, _ in calls)
    assert calls[2][1] == passwords.DUMMY_HASH  # no shortcut for unknown users (timing)


def test_reload_when_the_file_changes(tmp_path):
    path = str(tmp_path / "users")
    auth.set_user(path, "alice", passwords.hash_password("a", **FAST))
    db = auth.UserDB(path)
    assert "alice" in db and "bob" not in db
    auth.set_user(path, "bob", passwords.hash_password("b", **FAST))  # rename: new inode
    assert "bob" in db and db.verify_sync("bob", "b")
    # Edited in place (same inode): the mtime/size change is noticed.
    text = open(path).read().replace("bob:", "carol:")
    with open(path, "w") as f:
        f.write(text + "# edited\n")
    assert db.users() == ["alice", "carol"]
    os.unlink(path)
    assert db.users() == []


def test_bad_lines_ignored_and_group_readable_file_warned(tmp_path, caplog):
    path = tmp_path / "users"
    good = passwords.hash_password("p", **FAST)
    path.write_text(f"alice:{good}\nbroken line\nbob:$scrypt$nope\n  # indented comment\ncarol:{good}\n")
    os.chmod(path, 0o644)
    with caplog.at_level(logging.WARNING, logger="mta.auth"):
        db = auth.UserDB(str(path))
        assert db.users() == ["alice", "carol"]
    text = caplog.text
    assert ":2: ignored" in text and ":3: ignored" in text
    assert "mode 644" in text and "chmod 600" in text
    assert good not in text  # hashes are not logged either


# --- SASL ---------------------------------------------------------------------------

def plain(authzid: str, authcid: str, password: str) -> bytes:
    return b64(f"{authzid}\0{authcid}\0{password}")


def run_exchange(arg: str, *lines: bytes) -> list:
    ex = SaslExchange()
    steps = [ex.start(arg)]
    for line in lines:
        steps.append(ex.feed(line))
    assert ex.done
    return steps


def test_plain_with_initial_response():
    (step,) = run_exchange("PLAIN " + plain("", "alice", "pw").decode())
    assert (step.kind, step.user, step.password) == ("verify", "alice", "pw")
    (step,) = run_exchange("plain " + plain("alice", "alice", "pw").decode())  # authzid == authcid is fine
    assert (step.kind, step.user) == ("verify", "alice")
    assert "pw" not in repr(step)


def test_plain_after_challenge():
    ex = SaslExchange()
    first = ex.start("PLAIN")
    assert (first.kind, first.reply, ex.done) == ("challenge", b"334 \r\n", False)
    step = ex.feed(plain("", "bob@example.com", "pä ss") + b"\r\n")
    assert (step.kind, step.user, step.password, ex.done) == ("verify", "bob@example.com", "pä ss", True)
    with pytest.raises(RuntimeError):
        ex.feed(b"x")


def test_login_flow_and_initial_response():
    first, second, third = run_exchange("LOGIN", b64("alice"), b64("pw"))
    assert first.reply == b"334 VXNlcm5hbWU6\r\n" and second.reply == b"334 UGFzc3dvcmQ6\r\n"
    assert (third.kind, third.user, third.password) == ("verify", "alice", "pw")
    first, second = run_exchange("LOGIN " + b64("alice").decode(), b64("pw"))
    assert first.reply == b"334 UGFzc3dvcmQ6\r\n" and (second.user, second.password) == ("alice", "pw")


@pytest.mark.parametrize("arg,lines,reply,failure", [
    ("PLAIN", [b"*"], b"501 5.0.0 Authentication cancelled\r\n", False),
    ("LOGIN", [b"*\r\n"], b"501 5.0.0 Authentication cancelled\r\n", False),
    ("LOGIN", [b64("alice"), b"*"], b"501 5.0.0 Authentication cancelled\r\n", False),
    ("PLAIN", [b"not base64!"], b"501 5.5.2 Cannot decode response\r\n", False),
    ("PLAIN %%%", [], b"501 5.5.2 Cannot decode response\r\n", False),
    ("LOGIN", [b"YWxpY2U"], b"501 5.5.2 Cannot decode response\r\n", False),  # bad padding
    ("LOGIN", [b64("alice"), b"@@"], b"501 5.5.2 Cannot decode response\r\n", False),
    ("PLAIN", [b64("no nul bytes")], b"501 5.5.2 Malformed authentication response\r\n", False),
    ("PLAIN", [b64(b"\0a\0\xff")], b"501 5.5.2 Malformed authentication response\r\n", False),
    ("PLAIN =", [], b"501 5.5.2 Malformed authentication response\r\n", False),
    ("PLAIN", [plain("bob", "alice", "pw")], b"535 5.7.8 Authentication credentials invalid\r\n", True),
    ("PLAIN", [plain("", "", "pw")], b"535 5.7.8 Authentication credentials invalid\r\n", True),
    ("PLAIN", [plain("", "alice", "")], b"535 5.7.8 Authentication credentials invalid\r\n", True),
    ("LOGIN", [b64("alice"), b"="], b"535 5.7.8 Authentication credentials invalid\r\n", True),
    ("CRAM-MD5", [], b"504 5.5.4 Unrecognized authentication type\r\n", False),
    ("", [], b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n", False),
    ("PLAIN a b", [], b"501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n", False),
])
def test_exchange_refusals(arg, lines, reply, failure):
    step = run_exchange(arg, *lines)[-1]
    assert (step.kind, step.reply, step.failure) == ("reply", reply, failure)


def test_authzid_mismatch_names_the_user_for_the_guard():
    (step,) = run_exchange("PLAIN " + plain("admin", "alice", "pw").decode())
    assert (step.kind, step.user, step.failure) == ("reply", "alice", True) and step.password == ""


def exchange_through_parser(stream: bytes, chunk: int) -> tuple[list, list]:
    """The session's loop, minus sockets: events from the parser, SASL over raw lines."""
    p = _native.SmtpParser()
    p.set_auth_pause(True)
    replies, seen, pending = [], [], []
    ex = None
    for i in range(0, len(stream), chunk):
        pending.extend(p.feed(stream[i:i + chunk]))
        while pending:
            ev = pending.pop(0)
            seen.append(ev[:2] if ev[0] == "cmd" else ev)
            if ev[0] == "cmd" and ev[1] == "AUTH":
                ex = SaslExchange()
                step = ex.start(ev[2])
            elif ev[0] == "line":
                step = ex.feed(ev[1])
            else:
                continue
            replies.append(step.reply if step.kind != "verify" else ("verify", step.user, step.password))
            pending.extend(p.take_line() if step.kind == "challenge" else p.resume())
    return seen, replies


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_sasl_over_the_parser_take_line(chunk):
    stream = (b"EHLO c\r\nAUTH PLAIN\r\n" + plain("", "alice", "pw") + b"\r\n"
              b"AUTH LOGIN\r\n" + b64("bob") + b"\r\n" + b64("pw2") + b"\r\n"
              b"AUTH LOGIN\r\n*\r\nAUTH PLAIN " + plain("", "carol", "x") + b"\r\nNOOP\r\n")
    seen, replies = exchange_through_parser(stream, chunk)
    assert replies == [b"334 \r\n", ("verify", "alice", "pw"),
                       b"334 VXNlcm5hbWU6\r\n", b"334 UGFzc3dvcmQ6\r\n", ("verify", "bob", "pw2"),
                       b"334 VXNlcm5hbWU6\r\n", b"501 5.0.0 Authentication cancelled\r\n",
                       ("verify", "carol", "x")]
    assert seen[-1] == ("cmd", "NOOP") and not any(ev[0] == "error" for ev in seen)


def test_parser_without_auth_pause_parses_the_response_as_a_command():
    p = _native.SmtpParser()
    evs = p.feed(b"AUTH PLAIN\r\n" + plain("", "a", "b") + b"\r\n")
    assert evs[0] == ("cmd", "AUTH", "PLAIN") and evs[1][:3] == ("error", 500, "5.5.2")
    with pytest.raises(ValueError):
        p.take_line()


# --- the failure guard ------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_guard_tarpit_grows_and_caps_then_blocks():
    clock = Clock()
    g = AuthGuard(max_failures=5, window=600, tarpit_max=8, clock=clock)
    assert g.delay("192.0.2.1", "alice") == 0 and not g.blocked("192.0.2.1")
    delays = []
    for _ in range(6):
        g.failed("192.0.2.1", "alice", "PLAIN")
        delays.append(g.delay("192.0.2.1", "alice"))
    assert delays == [1, 2, 4, 8, 8, 8]
    assert g.blocked("192.0.2.1") and not g.blocked("192.0.2.2")


def test_guard_block_at_the_limit_and_one_below():
    clock = Clock()
    g = AuthGuard(max_failures=3, window=60, clock=clock)
    g.failed("198.51.100.7", "u1")
    g.failed("198.51.100.7", "u2")
    assert not g.blocked("198.51.100.7")
    g.failed("198.51.100.7", "u3")
    assert g.blocked("198.51.100.7")


def test_guard_sliding_window():
    clock = Clock()
    g = AuthGuard(max_failures=3, window=60, tarpit_max=8, clock=clock)
    g.failed("192.0.2.1", None)
    clock.t += 30
    g.failed("192.0.2.1", None)
    clock.t += 20
    g.failed("192.0.2.1", None)
    assert g.blocked("192.0.2.1")
    clock.t += 11  # the first failure left the window
    assert not g.blocked("192.0.2.1") and g.failures("192.0.2.1") == (2, 0)
    clock.t += 60
    assert g.failures("192.0.2.1") == (0, 0) and g.delay("192.0.2.1") == 0


def test_guard_per_user_slows_every_ip_but_never_blocks():
    clock = Clock()
    g = AuthGuard(max_failures=5, window=600, tarpit_max=8, clock=clock)
    for i in range(10):
        g.failed(f"203.0.113.{i}", "alice")
    assert g.delay("203.0.113.200", "alice") == 8  # a fresh IP guessing alice is slowed
    assert g.delay("203.0.113.200", "bob") == 0
    assert not g.blocked("203.0.113.200")
    g.succeeded("203.0.113.200", "alice")  # the real alice logs in: her count is cleared
    assert g.delay("203.0.113.200", "alice") == 0
    assert g.failures("203.0.113.1", "alice") == (1, 0)  # the IPs' counts stay


def test_guard_tarpit_zero_disables_and_memory_is_bounded():
    g = AuthGuard(max_failures=2, tarpit_max=0, clock=Clock(), max_keys=100)
    for i in range(1000):
        g.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert len(g._ips) <= 100 and len(g._users) <= 100
    g.failed("10.0.3.231", "user999")
    assert g.delay("10.0.3.231", "user999") == 0 and g.blocked("10.0.3.231")


def test_failures_are_logged_without_the_password(caplog):
    g = AuthGuard(clock=Clock())
    ex = SaslExchange()
    ex.start("LOGIN")
    ex.feed(b64("alice\x1b[31m"))
    step = ex.feed(b64("hunter2-secret"))
    with caplog.at_level(logging.INFO, logger="mta.auth"):
        g.failed("192.0.2.9", step.user, ex.mechanism)
    assert "192.0.2.9" in caplog.text and "alice?[31m" in caplog.text and "LOGIN" in caplog.text
    assert "hunter2" not in caplog.text and "\x1b" not in caplog.text


# --- sender-login map -------------------------------------------------------------------

SENDERS = {"alice": ("alice@example.com", "@example.org"), "bob@example.com": ("bob@example.com",)}


@pytest.mark.parametrize("user,sender,default,ok", [
    ("alice", "alice@example.com", "none", True),
    ("alice", "ALICE@Example.COM", "none", True),
    ("alice", "anyone@example.org", "none", True),
    ("alice", "x@sub.example.org", "none", False),  # "@domain" is that domain only
    ("alice", "bob@example.com", "none", False),
    ("alice", '"x@example.org"@evil.test', "none", False),  # the domain is after the last @
    ("alice", "", "none", True),  # <> always
    ("bob@example.com", "bob@example.com", "none", True),
    ("bob@example.com", "alice@example.com", "none", False),
    ("carol@example.com", "carol@example.com", "none", False),  # not in the map: nothing
    ("carol@example.com", "carol@example.com", "self", True),
    ("carol@example.com", "Carol@Example.com", "self", True),
    ("carol@example.com", "alice@example.com", "self", False),
    ("carol", "carol", "self", False),  # a user name without @ is not an address
    ("carol", "anything@anywhere.test", "any", True),
    ("Alice", "alice@example.com", "none", False),  # user names are case-sensitive
])
def test_check_sender(user, sender, default, ok):
    assert check_sender(user, sender, SENDERS, default) is ok
    assert senders.SenderLogin(SENDERS, default).check(user, sender) is ok


def test_sender_login_from_config(tmp_path):
    path = tmp_path / "mta.toml"
    path.write_text('[auth]\nusers_file = "/etc/mta/users"\nsender_login_default = "self"\n'
                    '[auth.sender_login]\nalice = ["Alice@Example.com", "@example.org"]\nbob = "bob@example.net"\n')
    cfg = config.load(str(path))
    assert cfg.auth.users_file == "/etc/mta/users"
    assert cfg.auth.sender_login == {"alice": ("alice@example.com", "@example.org"), "bob": ("bob@example.net",)}
    s = senders.SenderLogin.from_config(cfg.auth)
    assert s.check("alice", "x@example.org") and s.check("bob", "bob@example.net") and not s.check("bob", "x@y.test")
    d = config.load(None).auth
    assert (d.users_file, d.sender_login, d.sender_login_default) == ("", {}, "none")
    assert (d.max_failures, d.failure_window, d.tarpit_max) == (5, 600.0, 8.0)


def test_auth_config_errors_are_all_reported(tmp_path):
    path = tmp_path / "mta.toml"
    path.write_text('[auth]\nmax_failures = 0\nfailure_window = "soon"\ntarpit_max = -1\n'
                    'sender_login_default = "everyone"\n'
                    '[auth.sender_login]\n"a b" = ["a@b.example"]\nalice = ["not-an-address", "@"]\nbob = 3\n')
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    text = str(info.value)
    for key in ("auth.max_failures", "auth.failure_window", "auth.tarpit_max", "auth.sender_login_default",
                'auth.sender_login."a b"', 'auth.sender_login."alice"', 'auth.sender_login."bob"'):
        assert key in text, key
    path.write_text("[auth]\ntarpit_max = 0\n")
    assert config.load(str(path)).auth.tarpit_max == 0.0


# --- Message-ID and Date -----------------------------------------------------------------

NOW = 1_700_000_000.0


def test_both_headers_added_when_missing():
    out = add_missing_headers(b"From: a@example.com\r\nSubject: hi\r\n", hostname="mx.example.com", now=NOW)
    lines = out.decode().split("\r\n")
    assert re.fullmatch(r"Message-ID: <20231114221320\.[0-9a-f]{16}@mx\.example\.com>", lines[0])
    assert re.fullmatch(r"Date: Tue, 14 Nov 2023 \d\d:\d\d:20 [+-]\d{4}", lines[1])
    assert lines[2] == "" and len(lines) == 3
    other = add_missing_headers(b"", hostname="mx.example.com", now=NOW)
    assert other.split(b"\r\n")[0] != lines[0].encode()  # random part


@pytest.mark.parametrize("block,expect", [
    (b"message-id: <x@y>\r\nDATE: Tue, 14 Nov 2023 22:13:20 +0000\r\n", []),
    (b"Message-Id:<x@y>\r\n", ["Date"]),
    (b"Date : Tue, 14 Nov 2023 22:13:20 +0000\n", ["Message-ID"]),  # LF-only, WSP before the colon
    (b"Subject: x\r\n Message-ID: <folded@y>\r\n\tDate: no\r\n", ["Message-ID", "Date"]),  # continuations
    (b"X-Message-ID: <x@y>\r\nResent-Date: now\r\n", ["Message-ID", "Date"]),
    (b"", ["Message-ID", "Date"]),
])
def test_present_headers_are_recognised(block, expect):
    out = add_missing_headers(block, hostname="h.example", now=NOW).decode()
    assert [line.split(":")[0] for line in out.split("\r\n") if line] == expect


def test_header_block_of_a_message_feeds_the_fix_up():
    m = _native.Message()
    m.push(b"Subject: x\r\nmessage-id: <a@b>\r\n\r\nbody\r\nDate: not a header\r\n")
    assert m.header_block() == b"Subject: x\r\nmessage-id: <a@b>\r\n"
    out = add_missing_headers(m.header_block(), hostname="h.example", now=NOW)
    assert out.startswith(b"Date: ") and b"Message-ID" not in out


def test_header_block_of_a_spilled_message(tmp_path):
    spool = _native.Spool(str(tmp_path / "spool"), spill_threshold=64)
    try:
        m = spool.new_message()
        spool.prepend(m, b"Received: by us\r\n")
        head = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"v" * 40) for i in range(20))
        for i in range(0, len(head + b"\r\n" + b"z" * 10000), 100):
            m.push((head + b"\r\n" + b"z" * 10000)[i:i + 100])
        assert m.spilled and m.header_block() == head
    finally:
        spool.close()


# --- mta user ----------------------------------------------------------------------------

def mta(*args: str, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "mta", *args], input=stdin, capture_output=True, text=True,
                          timeout=60, cwd=cwd, env=env)


def test_cli_user_add_list_del(tmp_path):
    users = str(tmp_path / "users")
    out = mta("user", "add", "alice", "--users-file", users, "--password-stdin", stdin="first pw\n")
    assert out.returncode == 0, out.stderr
    assert "added alice" in out.stdout and "first pw" not in out.stdout + out.stderr
    assert mode_of(users) == 0o600
    assert auth.UserDB(users).verify_sync("alice", "first pw")
    out = mta("user", "add", "bob@example.com", "--users-file", users, "--password-stdin", stdin="pw2\n")
    assert out.returncode == 0, out.stderr
    out = mta("user", "add", "alice", "--users-file", users, "--password-stdin", stdin="second\n")
    assert out.returncode == 0 and "changed the password of alice" in out.stdout
    db = auth.UserDB(users)
    assert db.verify_sync("alice", "second") and not db.verify_sync("alice", "first pw")
    out = mta("user", "list", "--users-file", users)
    assert out.returncode == 0 and out.stdout.split() == ["alice", "bob@example.com"]
    assert "$scrypt$" not in out.stdout
    out = mta("user", "del", "alice", "--users-file", users)
    assert out.returncode == 0, out.stderr
    out = mta("user", "del", "alice", "--users-file", users)
    assert out.returncode == 1 and "no user 'alice'" in out.stderr
    assert mta("user", "list", "--users-file", users).stdout.split() == ["bob@example.com"]
    assert sorted(os.listdir(tmp_path)) == ["users"]


def test_cli_user_refusals_and_default_file(tmp_path):
    out = mta("user", "add", "a:b", "--password-stdin", stdin="pw\n", cwd=tmp_path)
    assert out.returncode == 2 and "invalid user name" in out.stderr
    out = mta("user", "add", "alice", "--password-stdin", stdin="\n", cwd=tmp_path)
    assert out.returncode == 2 and "empty password" in out.stderr
    assert not (tmp_path / "mta-users").exists()
    out = mta("user", "add", "alice", "--password-stdin", stdin="pw\n", cwd=tmp_path)
    assert out.returncode == 0 and (tmp_path / "mta-users").exists()  # ./mta-users by default


def test_cli_user_file_from_config(tmp_path):
    users = tmp_path / "from-config"
    cfg = tmp_path / "mta.toml"
    cfg.write_text(f'[auth]\nusers_file = "{users}"\n')
    out = mta("user", "add", "carol", "--config", str(cfg), "--password-stdin", stdin="pw\n", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert users.exists() and mode_of(users) == 0o600
    assert mta("user", "list", "--config", str(cfg)).stdout.split() == ["carol"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[auth]\nmax_failures = 0\n")
    out = mta("user", "list", "--config", str(bad))
    assert out.returncode == 2 and "auth.max_failures" in out.stderr


@pytest.mark.parametrize("cmd", [("user",), ("user", "add"), ("user", "del"), ("user", "list")])
def test_user_commands_have_help(cmd):
    out = mta(*cmd, "--help")
    assert out.returncode == 0 and "Usage:" in out.stdout
