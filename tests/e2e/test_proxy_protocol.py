"""End-to-end PROXY protocol: a header from an allowed address sets the
client IP for everything (mynetworks, limits, Received, the spool); a
connection from elsewhere, or a bad header, is closed without a reply; the
greeting comes only after the header."""

from __future__ import annotations

import ipaddress
import socket
import struct
import time

import pytest

from conftest import start_server
from helpers import Client, body_of, check, queued_id, simple_message

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_inet(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 25) -> bytes:
    body = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!HH", sport, dport)
    return SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


V2_LOCAL = SIG + bytes([0x20, 0x00, 0, 0])


def proxy_config(proxy_from: list[str], limits: str = "") -> str:
    nets = ", ".join(f'"{n}"' for n in proxy_from)
    return (f"proxy_protocol = true\nproxy_from = [{nets}]\nlocal_domains = [\"local.test\"]\n"
            f"[smtp]\ngreeting_delay = 0\nreverse_dns = false\n{limits}")


def start(tmp_path, proxy_from, *, mynetworks="10.0.0.0/8", limits="", started=None):
    srv = start_server(tmp_path, config=proxy_config(proxy_from, limits), args=("--mynetworks", mynetworks),
                       wait=False)
    if started is not None:
        started.append(srv)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # no greeting without a header: wait for the log line
        if "listening on" in srv.log():
            return srv
        assert srv.proc.poll() is None, srv.log()
        time.sleep(0.05)
    raise RuntimeError(srv.log())


def silent_for(c: Client, seconds: float) -> bool:
    """True if the server sends nothing (and keeps the connection) for `seconds`."""
    c.sock.settimeout(seconds)
    try:
        c.sock.recv(100)
        return False
    except socket.timeout:
        return True
    finally:
        c.sock.settimeout(c.timeout)


@pytest.fixture
def started():
    out = []
    yield out
    for s in out:
        s.stop()


def test_v1_header_sets_the_client_ip(tmp_path, started):
    srv = start(tmp_path, ["127.0.0.1"], started=started)
    with Client(srv.addr) as c:
        assert silent_for(c, 0.5), "greeting sent before the PROXY header"
        c.send(b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 25\r\n")
        c.start()
        # 192.0.2.9 is outside mynetworks: relaying is refused, local mail accepted.
        c.expect("MAIL FROM:<s@example.test>", 250)
        check(c.cmd("RCPT TO:<r@elsewhere.test>"), 554, "5.7.1")
        c.expect("RCPT TO:<r@local.test>", 250, "2.1.5")
        qid = queued_id(c.data(simple_message()))
        c.quit()
    body_of(srv, qid, ip="192.0.2.9", rcpt="r@local.test")
    assert b"client: client.example.test [192.0.2.9]" in srv.show(qid).stdout


def test_v2_header_trusted_source_may_relay(tmp_path, started):
    srv = start(tmp_path, ["127.0.0.0/8"], started=started)
    with Client(srv.addr) as c:
        c.send(v2_inet("10.1.2.3", 5555))
        c.start()
        c.expect("MAIL FROM:<s@example.test>", 250)
        c.expect("RCPT TO:<r@elsewhere.test>", 250, "2.1.5")  # 10.1.2.3 is in mynetworks
        c.quit()


def test_header_split_byte_by_byte(tmp_path, started):
    srv = start(tmp_path, ["127.0.0.1"], started=started)
    with Client(srv.addr) as c:
        c.send_slowly(v2_inet("192.0.2.10", 1), pause=0.01)
        c.start()
        c.quit()


def test_local_command_keeps_the_real_address(tmp_path, started):
    srv = start(tmp_path, ["127.0.0.1"], mynetworks="127.0.0.1/32", started=started)
    with Client(srv.addr) as c:
        c.send(V2_LOCAL)
        c.start()
        c.expect("MAIL FROM:<s@example.test>", 250)
        c.expect("RCPT TO:<r@elsewhere.test>", 250, "2.1.5")  # 127.0.0.1 is trusted
        c.quit()
    with Client(srv.addr) as c:
        c.send(b"PROXY UNKNOWN\r\n")
        c.start()
        c.quit()


def test_disallowed_proxy_address_is_closed(tmp_path, started):
    srv = start(tmp_path, ["127.0.0.2"], started=started)
    with Client(srv.addr) as c:
        c.send(b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 25\r\n")
        assert c.read_to_close() == b""
    assert "not in proxy_from" in srv.log()


def test_bad_header_is_closed(tmp_path, started):
    srv = start(tmp_path, ["127.0.0.1"], started=started)
    for bad in (b"EHLO client.example.test\r\n", b"PROXY TCP4 192.0.2.999 127.0.0.1 1 2\r\n",
                b"PROXY UNKNOWN " + b"x" * 120, SIG + bytes([0x21, 0x31, 0, 0])):
        with Client(srv.addr) as c:
            c.send(bad)
            assert c.read_to_close() == b"", bad
    assert "bad header" in srv.log()
    assert srv.queue() == []


def test_limits_count_the_proxied_ip(tmp_path, started):
    srv = start(tmp_path, ["127.0.0.1"], limits="[limits]\nmax_connections_per_ip = 1\n", started=started)
    a, b, c = Client(srv.addr), Client(srv.addr), Client(srv.addr)
    try:
        a.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 1 25\r\n")
        a.greeting()
        b.send(b"PROXY TCP4 192.0.2.2 127.0.0.1 1 25\r\n")
        b.greeting()  # another client IP behind the same proxy
        c.send(b"PROXY TCP4 192.0.2.1 127.0.0.1 2 25\r\n")
        check(c.reply(), 421, "4.7.0")  # the same client IP again
        c.assert_closed()
    finally:
        a.close(), b.close(), c.close()


def test_proxy_protocol_per_listener(tmp_path, started):
    """A [[listener]] may expect the header while the plain `listen` address does not."""
    from conftest import free_port

    proxied = free_port()
    cfg = (f'proxy_from = ["127.0.0.1"]\nlocal_domains = ["local.test"]\n'
           f'[[listener]]\naddress = "127.0.0.1:{proxied}"\nproxy_protocol = true\n'
           f"[smtp]\ngreeting_delay = 0\nreverse_dns = false\n")
    srv = start_server(tmp_path, config=cfg, args=("--mynetworks", "10.0.0.0/8"))
    started.append(srv)
    # the `listen` address greets at once: no header expected there
    with socket.create_connection(srv.addr, timeout=10) as s:
        assert s.recv(512).startswith(b"220")
    # the proxied listener waits for the header, then greets and uses its address
    with socket.create_connection(("127.0.0.1", proxied), timeout=10) as s:
        s.settimeout(1.0)
        try:
            early = s.recv(512)
        except socket.timeout:
            early = b""
        assert early == b""
        s.settimeout(10)
        s.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n")
        assert s.recv(512).startswith(b"220")
    # the line is written at the end of the server's loop iteration, maybe after the 220
    deadline = time.monotonic() + 10
    while "192.0.2.7" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "192.0.2.7" in srv.log()
