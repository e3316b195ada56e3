"""End-to-end TLS: STARTTLS (RFC 3207) and implicit TLS (RFC 8314) against
the real `mta run`, with a certificate from `mta tls selfsigned`.

Covers the CVE-2011-0411 class (commands pipelined behind STARTTLS are
never executed, the session starts over after the handshake), the Received
header (ESMTPS + version and cipher), TLS 1.2 minimum, and certificate
reload on SIGHUP without dropping sessions. Every read has a deadline.
"""

from __future__ import annotations

import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from cryptography import x509

from conftest import free_port, mta_cmd
from helpers import (
    HOSTNAME, Client, check, connect, queued_id, simple_message, stored_message, strip_received, swaks,
    swaks_path,
)


def selfsigned(out: Path, hostname: str = HOSTNAME) -> Path:
    p = subprocess.run(mta_cmd("tls", "selfsigned", "--out", str(out), "--hostname", hostname, "--days", "2"),
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return selfsigned(tmp_path_factory.mktemp("certs"))


def tls_config(cert_dir: Path, *, implicit_port: int | None = None, extra: str = "") -> str:
    out = [extra] if extra else []
    if implicit_port is not None:
        out += ["[[listener]]", f'address = "127.0.0.1:{implicit_port}"', 'profile = "submission"',
                'tls = "implicit"', ""]
    out += ["[tls]", f'cert = "{cert_dir / "cert.pem"}"', f'key = "{cert_dir / "key.pem"}"']
    return "\n".join(out) + "\n"


@pytest.fixture
def tls_server(server_factory, certs):
    """STARTTLS on the --listen port, implicit TLS on `srv.implicit_port`."""
    port = free_port()
    srv = server_factory(config=tls_config(certs, implicit_port=port))
    srv.implicit_port = port
    return srv


def client_ctx(cafile: Path | None = None) -> ssl.SSLContext:
    if cafile is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(cafile))


def starttls(c: Client, ctx: ssl.SSLContext | None = None) -> None:
    """Send STARTTLS (alone), expect 220, wrap the socket."""
    check(c.cmd("STARTTLS"), 220, "2.0.0")
    wrap(c, ctx)


def wrap(c: Client, ctx: ssl.SSLContext | None = None) -> None:
    assert c.buf == b"", f"plaintext after 220 Ready to start TLS: {c.buf!r}"
    c.sock.settimeout(15)
    c.sock = (ctx or client_ctx()).wrap_socket(c.sock, server_hostname=None)


def serial_of(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def file_serial(cert_dir: Path) -> int:
    return x509.load_pem_x509_certificate((cert_dir / "cert.pem").read_bytes()).serial_number


def received_text(srv, qid: str) -> str:
    field, _ = strip_received(stored_message(srv, qid))
    return " ".join(ln.strip() for ln in field.decode().split("\r\n"))


def wait_log(srv, text: str, count: int = 1, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if srv.log().count(text) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged {count} time(s):\n{srv.log()[-3000:]}")


# --- mta tls selfsigned ---------------------------------------------------------


def test_selfsigned_writes_private_key_and_certificate(tmp_path):
    out = selfsigned(tmp_path / "new" / "dir", hostname="mail.example.org")
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "mail.example.org" in names.get_values_for_type(x509.DNSName)
    # the pair loads as a server context
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(out / "cert.pem", out / "key.pem")
    # a second run overwrites and keeps the key private
    (out / "key.pem").chmod(0o644)
    selfsigned(out)
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    assert file_serial(out) != cert.serial_number


# --- swaks ---------------------------------------------------------------------


def test_swaks_starttls(tls_server):
    p = swaks(tls_server, "--tls", "--to", "a@example.test", "--from", "b@example.test")
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out + p.stderr.decode(errors="replace")
    assert "250 STARTTLS" in out
    assert "220 2.0.0 Ready to start TLS" in out
    assert "TLS started with cipher" in out
    text = received_text(tls_server, swaks_qid(out))
    assert "with ESMTPS" in text and "TLSv1." in text, text


def swaks_qid(out: str) -> str:
    ids = re.findall(r"<~ +250 2\.0\.0 Ok: queued as (\S+)", out)
    assert len(ids) == 1, out
    return ids[0]


def test_swaks_implicit_tls(tls_server):
    p = subprocess.run(
        [swaks_path(), "--server", f"127.0.0.1:{tls_server.implicit_port}", "--tlsc", "--ehlo", "client.example.test",
         "--timeout", "20", "--to", "a@example.test", "--from", "b@example.test"],
        capture_output=True, timeout=60)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out + p.stderr.decode(errors="replace")
    # the greeting came over TLS, after the handshake
    assert out.index("TLS started") < out.index("220 " + HOSTNAME)
    assert "STARTTLS" not in out  # not offered again over TLS
    qid = swaks_qid(out)
    assert "with ESMTPS" in received_text(tls_server, qid)


# --- smtplib -------------------------------------------------------------------


def test_smtplib_starttls_verified(tls_server, certs):
    with smtplib.SMTP(*tls_server.addr, local_hostname="client.example.test", timeout=15) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=client_ctx(certs / "cert.pem"))  # verifies chain and 127.0.0.1
        assert code == 220
        s.ehlo()
        assert not s.has_extn("starttls")
        refused = s.sendmail("b@example.test", ["a@example.test"], simple_message("starttls"))
        assert refused == {}
    log_text = tls_server.log()
    assert "TLS established from" in log_text
    wait_log(tls_server, "tls=TLSv1.")  # the disconnect line names the TLS version


def test_smtplib_smtp_ssl(tls_server, certs):
    with smtplib.SMTP_SSL("127.0.0.1", tls_server.implicit_port, local_hostname="client.example.test",
                          timeout=15, context=client_ctx(certs / "cert.pem")) as s:
        code, _ = s.ehlo()
        assert code == 250 and not s.has_extn("starttls")
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        code, _ = s.docmd("STARTTLS")
        assert code == 503
        assert s.sendmail("b@example.test", ["a@example.test"], simple_message("implicit")) == {}


# --- the session starts over: STARTTLS injection and forgotten state ------------


@pytest.mark.parametrize("injected", [b"NOOP\r\n", b"MAIL FROM:<a@b.example>\r\n",
                                      b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"])
def test_commands_pipelined_behind_starttls_are_discarded(tls_server, injected):
    with connect(tls_server) as c:
        c.start()
        c.send(b"STARTTLS\r\n" + injected)  # one write: one read on the server
        check(c.reply(), 220, "2.0.0")
        time.sleep(0.2)  # anything the server would answer in plaintext has arrived by now
        c.sock.setblocking(False)
        try:
            stray = c.sock.recv(4096)
        except BlockingIOError:
            stray = b""
        c.sock.setblocking(True)
        assert stray == b"", f"plaintext reply to an injected command: {stray!r}"
        wrap(c)
        # Not executed: no reply to the injected command arrives over TLS, and
        # MAIL is refused because the session is back before EHLO.
        check(c.cmd("MAIL FROM:<x@example.test>"), 503, "5.5.1")
        check(c.cmd("RCPT TO:<a@example.test>"), 503, "5.5.1")
        ehlo = c.ehlo()
        assert "STARTTLS" not in ehlo.lines
        # and no transaction survived: RCPT needs a MAIL first
        check(c.cmd("RCPT TO:<a@example.test>"), 503, "5.5.1")
        check(c.cmd("NOOP"), 250)
        c.quit()


def test_mail_before_starttls_is_forgotten(tls_server):
    with connect(tls_server) as c:
        c.start()
        c.expect("MAIL FROM:<early@example.test>", 250, "2.1.0")
        starttls(c)
        check(c.cmd("RCPT TO:<a@example.test>"), 503, "5.5.1")  # before EHLO
        c.ehlo()
        check(c.cmd("RCPT TO:<a@example.test>"), 503, "5.5.1")  # the MAIL is gone
        qid = c.send_message("late@example.test", ["a@example.test"], simple_message("after"))
        c.quit()
    env = {e["id"]: e for e in tls_server.queue()}[qid]
    assert env["sender"] == "late@example.test"
    text = received_text(tls_server, qid)
    assert text.startswith("Received: from client.example.test"), text
    assert "with ESMTPS" in text and "TLSv1." in text, text


def test_starttls_replies(tls_server, server_factory, tmp_path):
    with connect(tls_server) as c:
        c.start()
        check(c.cmd("STARTTLS now"), 501, "5.5.4")
        starttls(c)
        c.ehlo()
        check(c.cmd("STARTTLS"), 503, "5.5.1")
        c.quit()
    plain = server_factory(spool=tmp_path / "plain-spool")  # no [tls]: not offered, not implemented
    with connect(plain) as c:
        c.greeting()
        assert "STARTTLS" not in c.ehlo().lines
        check(c.cmd("STARTTLS"), 502, "5.5.1")
        c.quit()


def test_received_utf8smtps(tls_server):
    with connect(tls_server) as c:
        c.start()
        starttls(c)
        c.ehlo()
        qid = c.send_message("b@example.test", ["a@example.test"], simple_message("u"), mail_params="SMTPUTF8")
        c.quit()
    text = received_text(tls_server, qid)
    assert "with UTF8SMTPS" in text, text
    assert "TLSv1.3" in text or "TLSv1.2" in text, text


def test_helo_over_tls_records_tls(tls_server):
    with connect(tls_server) as c:
        c.start()
        starttls(c)
        c.expect("HELO client.example.test", 250)
        qid = c.send_message("b@example.test", ["a@example.test"], simple_message("helo"))
        c.quit()
    text = received_text(tls_server, qid)
    assert "TLSv1." in text, text


# --- versions and failures --------------------------------------------------------


def test_tls_1_1_client_refused(tls_server):
    ctx = client_ctx()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_1
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as e:
        pytest.skip(f"this OpenSSL cannot make a TLS 1.1 client: {e}")
    with connect(tls_server) as c:
        c.start()
        check(c.cmd("STARTTLS"), 220, "2.0.0")
        with pytest.raises(ssl.SSLError) as info:
            wrap(c, ctx)
        if "NO_PROTOCOLS_AVAILABLE" in str(info.value) or "no protocols available" in str(info.value):
            pytest.skip(f"this OpenSSL cannot offer TLS 1.1: {info.value}")
    wait_log(tls_server, "TLS handshake failed")
    # the server goes on serving TLS 1.2+
    with smtplib.SMTP_SSL("127.0.0.1", tls_server.implicit_port, timeout=15, context=client_ctx()) as s:
        assert s.noop()[0] == 250


def test_min_version_tls13(server_factory, certs):
    srv = server_factory(config=tls_config(certs, extra='') .replace("[tls]\n", '[tls]\nmin_version = "TLSv1.3"\n'))
    ctx = client_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with connect(srv) as c:
        c.start()
        check(c.cmd("STARTTLS"), 220, "2.0.0")
        with pytest.raises((ssl.SSLError, ConnectionError)):
            wrap(c, ctx)
    with connect(srv) as c:
        c.start()
        starttls(c)
        assert c.sock.version() == "TLSv1.3"


def test_garbage_handshake_closes_the_connection(tls_server):
    with connect(tls_server) as c:
        c.start()
        check(c.cmd("STARTTLS"), 220, "2.0.0")
        c.send(b"EHLO this is not a ClientHello\r\n" * 4)
        rest = c.read_to_close()
        assert b"250" not in rest
    wait_log(tls_server, "TLS handshake failed")
    with smtplib.SMTP(*tls_server.addr, timeout=15) as s:  # still serving
        s.starttls(context=client_ctx())
        assert s.ehlo()[0] == 250


def test_implicit_listener_plaintext_client_gets_nothing(tls_server):
    with Client(("127.0.0.1", tls_server.implicit_port)) as c:
        c.send(b"EHLO client.example.test\r\n")
        rest = c.read_to_close()
        assert not rest.startswith(b"220") and b"250" not in rest
    wait_log(tls_server, "implicit TLS handshake failed")


def test_bad_certificate_at_start_up(tmp_path):
    cfg = tmp_path / "bad.toml"
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    cfg.write_text(tls_config(tmp_path))
    p = subprocess.run(mta_cmd("run", "--config", str(cfg), "--listen", f"127.0.0.1:{free_port()}",
                               "--spool", str(tmp_path / "spool"), "--hostname", HOSTNAME),
                       capture_output=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 1
    assert b"tls" in p.stderr and b"key.pem" in p.stderr, p.stderr


# --- reload on SIGHUP -------------------------------------------------------------


def _replace_cert(live: Path, new: Path) -> None:
    # Write whole files then rename over: what certbot-style tools do.
    for name in ("cert.pem", "key.pem"):
        tmp = live / (name + ".new")
        shutil.copyfile(new / name, tmp)
        tmp.replace(live / name)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_certificate_without_dropping_sessions(server_factory, tmp_path, workers):
    live = selfsigned(tmp_path / "live")
    old_serial = file_serial(live)
    port = free_port()
    srv = server_factory(config=tls_config(live, implicit_port=port, extra=f"workers = {workers}"))
    srv.implicit_port = port
    if workers > 1:
        wait_log(srv, "listening on", count=2 * workers)
    # a session opened before the reload, in the middle of a transaction
    before = connect(srv)
    before.start()
    starttls(before)
    assert serial_of(before.sock) == old_serial
    before.ehlo()
    before.mail_rcpt("b@example.test", ["a@example.test"])

    fresh = selfsigned(tmp_path / "fresh")
    _replace_cert(live, fresh)
    new_serial = file_serial(live)
    assert new_serial != old_serial
    srv.proc.send_signal(signal.SIGHUP)
    wait_log(srv, "tls: reloaded certificate", count=workers)

    for _ in range(2 * workers):  # with workers, each connection may land on either
        with connect(srv) as c:
            c.start()
            starttls(c)
            assert serial_of(c.sock) == new_serial
            c.quit()
        with socket.create_connection(("127.0.0.1", srv.implicit_port), timeout=15) as raw:
            with client_ctx().wrap_socket(raw) as s:
                assert serial_of(s) == new_serial
                assert s.recv(512).startswith(b"220 ")
    # the old session goes on, still with the old certificate
    qid = queued_id(before.data(simple_message("across reload")))
    assert serial_of(before.sock) == old_serial
    before.quit()
    before.close()
    assert qid in {e["id"] for e in srv.queue()}
    assert srv.proc.poll() is None


def test_sighup_with_bad_files_keeps_the_old_certificate(server_factory, tmp_path, certs):
    live = selfsigned(tmp_path / "live")
    old_serial = file_serial(live)
    port = free_port()
    srv = server_factory(config=tls_config(live, implicit_port=port))
    (live / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    srv.proc.send_signal(signal.SIGHUP)
    wait_log(srv, "keeping the certificate loaded before")
    # a key that does not match the certificate is refused too
    shutil.copyfile(certs / "cert.pem", live / "cert.pem")
    srv.proc.send_signal(signal.SIGHUP)
    wait_log(srv, "keeping the certificate loaded before", count=2)
    with connect(srv) as c:
        c.start()
        starttls(c)
        assert serial_of(c.sock) == old_serial
        c.ehlo()
        c.quit()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as raw:
        with client_ctx().wrap_socket(raw) as s:
            assert serial_of(s) == old_serial
            assert s.recv(512).startswith(b"220 ")
    assert srv.proc.poll() is None
