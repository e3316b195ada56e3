"""End-to-end SMTP AUTH on submission listeners (RFC 4954, RFC 8314) against
the real `mta run`: swaks --auth PLAIN/LOGIN over STARTTLS and implicit TLS,
smtplib SMTP_SSL + login, AUTH never offered or accepted before TLS, the
failure tarpit and the 421 block, MAIL without AUTH, the sender-login map,
relaying after AUTH, Message-ID/Date fix-up, ESMTPSA, and no password in
the log. Loopback is outside mynetworks here: only AUTH allows relaying.
Every read has a deadline.
"""

from __future__ import annotations

import base64
import re
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, mta_cmd
from helpers import HOSTNAME, Client, check, connect, stored_message, strip_received, swaks_path
from test_tls import client_ctx, selfsigned, starttls

PASSWORD = "s3cret-Pa55word!"
USER = "alice"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return selfsigned(tmp_path_factory.mktemp("sub-certs"))


def make_users(path: Path, user: str = USER, password: str = PASSWORD) -> Path:
    p = subprocess.run(mta_cmd("user", "add", user, "--users-file", str(path), "--password-stdin"),
                       input=(password + "\n").encode(), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return path


def sub_config(certs: Path, users: Path, starttls_port: int, implicit_port: int, *,
               max_failures: int = 3, tarpit_max: str = "1s") -> str:
    return f"""
[[listener]]
address = "127.0.0.1:{starttls_port}"
profile = "submission"
tls = "starttls"

[[listener]]
address = "127.0.0.1:{implicit_port}"
profile = "submission"
tls = "implicit"

[tls]
cert = "{certs / 'cert.pem'}"
key = "{certs / 'key.pem'}"

[auth]
users_file = "{users}"
max_failures = {max_failures}
tarpit_max = "{tarpit_max}"
sender_login = {{ {USER} = ["alice@example.com"] }}
"""


@pytest.fixture
def sub(server_factory, certs, tmp_path):
    """The --listen port is a plain mx listener; `sub.sub_port` (STARTTLS) and
    `sub.tls_port` (implicit TLS) are submission listeners."""
    users = make_users(tmp_path / "users")
    sp, ip = free_port(), free_port()
    srv = server_factory(config=sub_config(certs, users, sp, ip), args=("--mynetworks", "10.0.0.0/8"))
    srv.sub_port, srv.tls_port = sp, ip
    return srv


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str = USER, password: str = PASSWORD) -> str:
    return b64(f"\0{user}\0{password}")


def swaks_run(port: int, *args: str) -> str:
    p = subprocess.run(
        [swaks_path(), "--server", f"127.0.0.1:{port}", "--ehlo", "client.example.test", "--timeout", "20",
         *args], capture_output=True, timeout=60)
    return p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")


def qid_of(out: str) -> str:
    ids = re.findall(r"<~ +250 2\.0\.0 Ok: queued as (\S+)", out)
    assert len(ids) == 1, out
    return ids[0]


def received_and_rest(srv, qid: str) -> tuple[str, bytes]:
    field, rest = strip_received(stored_message(srv, qid))
    return " ".join(ln.strip() for ln in field.decode().split("\r\n")), rest


def tls_client(srv):
    """Connected to the STARTTLS submission port, TLS up, EHLO sent; returns (client, ehlo)."""
    c = Client(("127.0.0.1", srv.sub_port))
    c.start()
    starttls(c)
    return c, c.ehlo()


# --- swaks -----------------------------------------------------------------------


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth(sub, mech):
    out = swaks_run(sub.sub_port, "--tls", "--auth", mech, "--auth-user", USER, "--auth-password", PASSWORD,
                    "--from", "alice@example.com", "--to", "bob@far-away.example",
                    "--header", "Subject: via swaks")
    assert "235 2.7.0 Authentication successful" in out, out
    qid = qid_of(out)
    text, rest = received_and_rest(sub, qid)
    assert "with ESMTPSA" in text and "TLSv1." in text, text
    env = {e["id"]: e for e in sub.queue()}[qid]
    assert env["sender"] == "alice@example.com"
    # swaks writes its own Date and Message-Id: none added
    head = rest.split(b"\r\n\r\n", 1)[0]
    assert len(re.findall(rb"(?im)^message-id:", head)) == 1, head
    assert len(re.findall(rb"(?im)^date:", head)) == 1, head


def test_swaks_implicit_tls_auth_plain(sub):
    out = swaks_run(sub.tls_port, "--tlsc", "--auth", "PLAIN", "--auth-user", USER, "--auth-password", PASSWORD,
                    "--from", "alice@example.com", "--to", "carol@elsewhere.example")
    assert out.index("TLS started") < out.index("220 " + HOSTNAME), out
    assert "250-AUTH PLAIN LOGIN" in out or "250 AUTH PLAIN LOGIN" in out, out
    assert "235 2.7.0" in out, out
    text, _ = received_and_rest(sub, qid_of(out))
    assert "with ESMTPSA" in text, text


# --- smtplib ---------------------------------------------------------------------


def test_smtplib_smtp_ssl_login(sub, certs):
    with smtplib.SMTP_SSL("127.0.0.1", sub.tls_port, local_hostname="client.example.test", timeout=15,
                          context=client_ctx(certs / "cert.pem")) as s:
        s.ehlo()
        assert s.has_extn("auth") and set(s.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        code, _ = s.login(USER, PASSWORD)
        assert code == 235
        assert s.sendmail("alice@example.com", ["dave@far-away.example"],
                          b"From: alice@example.com\r\nSubject: smtplib\r\n\r\nhi\r\n") == {}


def test_message_id_and_date_added_when_missing(sub):
    c, _ = tls_client(sub)
    with c:
        c.expect("AUTH PLAIN " + plain(), 235, "2.7.0")
        qid = c.send_message("alice@example.com", ["bob@far-away.example"],
                             b"From: alice@example.com\r\nSubject: bare\r\n\r\nbody\r\n", mail_params="SMTPUTF8")
        c.quit()
    text, rest = received_and_rest(sub, qid)
    assert "with UTF8SMTPSA" in text, text
    head, body = rest.split(b"\r\n\r\n", 1)
    assert re.search(rb"(?m)\AMessage-ID: <\d{14}\.[0-9a-f]{16}@" + HOSTNAME.encode() + rb">\r\n", head), head
    assert re.search(rb"(?m)^Date: \w{3}, \d{1,2} \w{3} \d{4} ", head), head
    assert head.endswith(b"From: alice@example.com\r\nSubject: bare") and body == b"body\r\n"


# --- AUTH before TLS and without AUTH -------------------------------------------------


def test_auth_not_offered_before_starttls(sub):
    with Client(("127.0.0.1", sub.sub_port)) as c:
        c.greeting()
        ehlo = c.ehlo()
        assert "STARTTLS" in ehlo.lines and not any(ln.startswith("AUTH") for ln in ehlo.lines), ehlo
        check(c.cmd("AUTH PLAIN " + plain()), 530, "5.7.0")
        check(c.cmd("AUTH LOGIN"), 530, "5.7.0")
        check(c.cmd("MAIL FROM:<alice@example.com>"), 530, "5.7.0")
        starttls(c)
        ehlo = c.ehlo()
        assert "AUTH PLAIN LOGIN" in ehlo.lines and "STARTTLS" not in ehlo.lines, ehlo
        c.quit()
    # the mx listener (--listen) never offers AUTH, even over TLS
    with connect(sub) as c:
        c.start()
        starttls(c)
        assert not any(ln.startswith("AUTH") for ln in c.ehlo().lines)
        check(c.cmd("AUTH PLAIN " + plain()), 502, "5.5.1")
        c.quit()


def test_mail_without_auth_is_refused_and_relay_needs_auth(sub):
    c, ehlo = tls_client(sub)
    with c:
        assert "AUTH PLAIN LOGIN" in ehlo.lines
        check(c.cmd("MAIL FROM:<alice@example.com>"), 530, "5.7.0")
        c.expect("AUTH LOGIN", 334)
        c.expect(b64(USER), 334)
        c.expect(b64(PASSWORD), 235, "2.7.0")
        check(c.cmd("AUTH PLAIN " + plain()), 503, "5.5.1")  # already authenticated
        c.expect("MAIL FROM:<alice@example.com>", 250, "2.1.0")
        c.expect("RCPT TO:<someone@anywhere.example>", 250, "2.1.5")
        c.quit()
    # without AUTH, the same client may not relay through the mx listener either
    with connect(sub) as c:
        c.start()
        c.expect("MAIL FROM:<alice@example.com>", 250)
        check(c.cmd("RCPT TO:<someone@anywhere.example>"), 554, "5.7.1")
        c.quit()


def test_sender_login_mismatch(sub):
    c, _ = tls_client(sub)
    with c:
        c.expect("AUTH PLAIN " + plain(), 235, "2.7.0")
        r = check(c.cmd("MAIL FROM:<bob@example.com>"), 553, "5.7.1")
        assert "not owned by user alice" in r.text, r
        c.expect("MAIL FROM:<>", 250, "2.1.0")  # the null sender claims nobody
        c.expect("RSET", 250)
        c.expect("MAIL FROM:<ALICE@Example.COM>", 250, "2.1.0")
        c.quit()


def test_after_starttls_plain_exchange_and_cancel(sub):
    c, _ = tls_client(sub)
    with c:
        check(c.cmd("AUTH CRAM-MD5"), 504, "5.5.4")
        c.expect("AUTH PLAIN", 334)
        check(c.cmd("*"), 501, "5.0.0")
        c.expect("AUTH PLAIN", 334)
        c.expect(plain(), 235, "2.7.0")
        c.quit()


def test_pipelined_auth_and_long_sasl_line(sub):
    c, _ = tls_client(sub)
    with c:
        # a response line longer than the command-line limit ends the exchange with 500
        c.expect("AUTH LOGIN", 334)
        check(c.cmd("A" * 2000), 500, "5.5.2")
        c.expect("NOOP", 250)  # back to commands
        # AUTH with its initial response pipelined with the transaction (the MAIL waits
        # for the password check; the SASL lines are never parsed as commands)
        c.send(("AUTH PLAIN " + plain() + "\r\nMAIL FROM:<alice@example.com>\r\n"
                "RCPT TO:<x@far-away.example>\r\n").encode())
        check(c.reply(), 235, "2.7.0")
        check(c.reply(), 250, "2.1.0")
        check(c.reply(), 250, "2.1.5")
        c.expect("RSET", 250)
        c.quit()
    c, _ = tls_client(sub)
    with c:
        # "MAIL FROM" sent as a SASL response is base64 garbage, not a command
        c.expect("AUTH LOGIN", 334)
        check(c.cmd("MAIL FROM:<alice@example.com>"), 501, "5.5.2")
        check(c.cmd("MAIL FROM:<alice@example.com>"), 530, "5.7.0")
        c.quit()


# --- failures: tarpit, block, no password in the log -------------------------------------


def test_wrong_password_tarpit_then_block(sub):
    c, _ = tls_client(sub)
    with c:
        for i in range(2):
            t0 = time.monotonic()
            r = c.cmd("AUTH PLAIN " + plain(password=f"wrong-{i}"), timeout=30)
            elapsed = time.monotonic() - t0
            check(r, 535, "5.7.8")
            assert 0.5 < elapsed < 10, elapsed
        c.expect("AUTH LOGIN", 334)
        c.expect(b64(USER), 334)
        t0 = time.monotonic()
        check(c.cmd(b64("wrong-2"), timeout=30), 421, "4.7.0")  # the third failure
        assert time.monotonic() - t0 > 0.5
        c.assert_closed()
    # a new connection from the same IP: blocked at once, even with the right password
    c, _ = tls_client(sub)
    with c:
        check(c.cmd("AUTH PLAIN " + plain()), 421, "4.7.0")
        c.assert_closed()
    log_text = sub.log()
    assert "authentication failed" in log_text
    for secret in (PASSWORD, "wrong-0", "wrong-1", "wrong-2", plain(), plain(password="wrong-0"), b64("wrong-2")):
        assert secret not in log_text, secret


def test_password_not_logged_on_success(sub):
    out = swaks_run(sub.sub_port, "--tls", "--auth", "LOGIN", "--auth-user", USER, "--auth-password", PASSWORD,
                    "--from", "alice@example.com", "--to", "bob@far-away.example")
    assert "235 2.7.0" in out, out
    qid_of(out)
    log_text = sub.log()
    assert "authenticated: ip=127.0.0.1 user='alice'" in log_text, log_text[-2000:]
    for secret in (PASSWORD, b64(PASSWORD), plain()):
        assert secret not in log_text


# --- Postfix as a SASL + TLS client relaying through mta (issue 6 §6) ---------------------


def test_postfix_relays_through_mta_with_sasl_and_tls(sub, tmp_path):
    from postfix_peer import PostfixPeer

    class PostfixClient(PostfixPeer):
        """The private Postfix, relaying everything not its own to mta's
        submission port: STARTTLS required, then AUTH as alice."""

        def _main_cf(self) -> str:
            relay = f"[127.0.0.1]:{sub.sub_port}"
            return super()._main_cf() + "".join(f"{k} = {v}\n" for k, v in {
                "relayhost": relay,
                "smtp_tls_security_level": "encrypt",
                "smtp_sasl_auth_enable": "yes",
                "smtp_sasl_password_maps": f"inline:{{ {relay}={USER}:{PASSWORD} }}",
                "smtp_sasl_security_options": "noanonymous",
                "smtp_sasl_tls_security_options": "noanonymous",
            }.items())

    with PostfixClient(tmp_path / "pf", domain="dest.test") as pf:
        with smtplib.SMTP("127.0.0.1", pf.port, local_hostname="client.example.test", timeout=15) as s:
            assert s.sendmail("alice@example.com", ["bob@far-away.example"],
                              b"From: alice@example.com\r\nSubject: via postfix\r\n\r\nrelayed\r\n") == {}
        deadline = time.monotonic() + 60
        entries = []
        while time.monotonic() < deadline and not entries:
            entries = [e for e in sub.queue() if e["sender"] == "alice@example.com"]
            time.sleep(0.2)
        assert entries, f"nothing arrived from Postfix; its log:\n{pf.log()[-4000:]}\nmta log:\n{sub.log()[-3000:]}"
        text, rest = received_and_rest(sub, entries[0]["id"])
        assert text.startswith("Received: from postfix.dest.test"), text  # Postfix's EHLO name
        assert "with ESMTPSA" in text and "TLSv1." in text, text
        assert b"Subject: via postfix" in rest
    assert PASSWORD not in sub.log()
