"""DKIM signing end to end: mta with [[dkim.sign]] keys made by `mta dkim keygen` relays mail to
a sink, and what arrives verifies in two independent implementations, dkimpy (keys from a dict)
and OpenDKIM (keys over DNS on 127.0.0.153:53). Who gets signed, with which key, and a key
that cannot be used stopping check-config and start-up, are checked against the same server.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SmtpPeer, free_port, mta_cmd, start_server
from dkimkit import (
    Key,
    Unavailable,
    dkimpy_results,
    fields,
    mta_key,
    opendkim_for,
    port53_or_reason,
    publish,
    sig_tags,
)
from helpers import Client, queued_id
from test_submission import make_users, plain
from test_tls import selfsigned, starttls

OUTSIDE = "127.0.0.2"  # a client address outside mynetworks (127.0.0.1/32)
WAIT = 30.0
SIGNERS = {  # domain -> [(selector, algorithm)]; simple.example signs with simple/simple, x= a week on
    "example.com": [("rsa1", "rsa2048"), ("ed1", "ed25519")],
    "simple.example": [("srsa", "rsa2048"), ("sed", "ed25519")],
}


def keygen(out: Path, domain: str, selector: str, algorithm: str) -> Key:
    p = subprocess.run(mta_cmd("dkim", "keygen", "--domain", domain, "--selector", selector, "--out", str(out),
                               "--algorithm", algorithm), capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    return mta_key(out, domain, selector)


def sign_tables(keys: list[Key]) -> str:
    out = []
    for k in keys:
        simple = k.domain == "simple.example"
        out.append(f'[[dkim.sign]]\ndomain = "{k.domain}"\nselector = "{k.selector}"\nkey = "{k.path}"\n'
                   f'canonicalization = "{"simple/simple" if simple else "relaxed/relaxed"}"\n'
                   + ('expire = "7d"\n' if simple else ""))
    return "\n".join(out)


def server_config(keys: list[Key], sink_port: int, *, extra_dkim: str = "") -> str:
    return f"""mynetworks = ["127.0.0.1/32"]
relay_domains = ["relay.example"]

[smtp]
greeting_delay = 0
reverse_dns = false

[delivery]
relay_to = "127.0.0.1:{sink_port}"
tls = "none"
retry_schedule = ["1s"]
retry_jitter = 0

[dkim]
{extra_dkim}

{sign_tables(keys)}
"""


class OutsideClient(Client):
    def connect(self):
        self.sock = socket.create_connection(self.addr, timeout=self.timeout, source_address=(OUTSIDE, 0))
        return self


# -- the module's server, sink, keys and verifiers ----------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> list[Key]:
    d = tmp_path_factory.mktemp("dkim-keys")
    return [keygen(d / domain, domain, sel, alg) for domain, pairs in SIGNERS.items() for sel, alg in pairs]


@pytest.fixture(scope="module")
def sink():
    peer = SmtpPeer(name="sink.test").start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return selfsigned(tmp_path_factory.mktemp("sign-certs"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory, keys, sink, certs):
    tmp = tmp_path_factory.mktemp("signer")
    users = make_users(tmp / "users")
    sub_port = free_port()
    extra = (f'\n[[listener]]\naddress = "127.0.0.1:{sub_port}"\nprofile = "submission"\ntls = "starttls"\n\n'
             f'[tls]\ncert = "{certs / "cert.pem"}"\nkey = "{certs / "key.pem"}"\n\n'
             f'[auth]\nusers_file = "{users}"\nsender_login = {{ alice = ["alice@example.com"] }}\n')
    s = start_server(tmp, config=server_config(keys, sink.port) + extra, deliver=True)
    s.sub_port = sub_port
    yield s
    s.stop()


@pytest.fixture(scope="module")
def odk(keys, tmp_path_factory):
    """OpenDKIM with the keys published on 127.0.0.153:53 (or a stand-in that skips)."""
    dns = port53_or_reason()
    if isinstance(dns, str):
        yield Unavailable(dns)
        return
    publish(dns, *keys)
    yield opendkim_for(dns, tmp_path_factory.mktemp("opendkim"))
    dns.stop()


def message(subject: str, from_addr: str = "alice@example.com", body: bytes = b"Hello,  world \r\n",
            extra: bytes = b"") -> bytes:
    return (f"From: Alice <{from_addr}>\r\nTo: Bob <bob@dest.example>\r\nSubject: {subject}\r\n"
            f"Date: Sat, 05 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@example.com>\r\n"
            ).encode() + extra + b"\r\n" + body


def send(srv, content: bytes, *, sender: str = "alice@example.com", rcpt: str = "bob@dest.example",
         client=Client) -> str:
    with client(srv.addr) as c:
        c.start()
        qid = c.send_message(sender, [rcpt], content)
        c.quit()
    return qid


def arrival(sink: SmtpPeer, subject: str, srv) -> bytes:
    """The message with this Subject as the sink received it."""
    deadline = time.monotonic() + WAIT
    marker = f"\r\nSubject: {subject}\r\n".encode()
    while time.monotonic() < deadline:
        found = [t.data for t in list(sink.txns) if marker in t.data]
        if found:
            assert len(found) == 1, f"{subject!r} arrived {len(found)} times"
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"{subject!r} did not reach the sink in {WAIT}s\n{srv.log()[-4000:]}")


def signatures(data: bytes) -> list[dict[str, str]]:
    return [sig_tags(v) for n, v in fields(data) if n.lower() == "dkim-signature"]


def selectors(keys: list[Key], domain: str) -> set[tuple[str, str]]:
    return {(k.selector, k.algorithm) for k in keys if k.domain == domain}


# -- signed, and verified by dkimpy and OpenDKIM --------------------------------------------

@pytest.mark.parametrize("domain, canon", [("example.com", "relaxed/relaxed"), ("simple.example", "simple/simple")])
def test_dual_signed_relay_verifies_in_dkimpy_and_opendkim(srv, sink, keys, odk, domain, canon):
    subject = f"dual {canon}"
    send(srv, message(subject, f"alice@{domain}", b"Hello,  world \r\n\r\n\r\nlast line  \r\n"),
         sender=f"alice@{domain}")
    data = arrival(sink, subject, srv)
    sigs = signatures(data)
    assert {(s["s"], s["a"]) for s in sigs} == selectors(keys, domain), sigs
    for s in sigs:
        assert (s["d"], s["c"]) == (domain, canon), s
        h = [x.strip().lower() for x in s["h"].split(":")]
        assert h.count("from") >= 2 and {"to", "subject", "date", "message-id"} <= set(h), s  # From over-signed
        assert "l" not in s, s
        if domain == "simple.example":
            assert int(s["x"]) - int(s["t"]) == 7 * 86400, s
        else:
            assert "x" not in s, s
    assert [ok for _d, _s, ok in dkimpy_results(data, keys)] == [True, True]
    results = odk.results(data)
    assert sorted((r["result"], r["d"], r["s"], r["a"]) for r in results) == \
        sorted(("pass", domain, s["s"], s["a"]) for s in sigs), results
    # ...and a changed body byte, or a changed signed header, fails in both
    for changed in (data.replace(b"last line", b"last linE"), data.replace(b"Subject: dual", b"Subject: Dual")):
        assert [ok for _d, _s, ok in dkimpy_results(changed, keys)] == [False, False]
        assert {r["result"] for r in odk.results(changed)} == {"fail"}


def test_one_mib_message_is_signed_and_verifies(srv, sink, keys, odk):
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    body = line * ((1 << 20) // len(line) + 1)
    send(srv, message("one mebibyte", body=body))
    data = arrival(sink, "one mebibyte", srv)
    assert len(data) > 1 << 20 and data.endswith(body)
    assert [ok for _d, _s, ok in dkimpy_results(data, keys)] == [True, True]
    ok, detail = odk.verify(data)
    assert ok, detail


def test_subdomain_signed_with_the_parents_keys(srv, sink, keys, odk):
    send(srv, message("subdomain", "carol@mail.example.com"), sender="carol@mail.example.com")
    data = arrival(sink, "subdomain", srv)
    sigs = signatures(data)
    assert {(s["d"], s["s"]) for s in sigs} == {("example.com", "rsa1"), ("example.com", "ed1")}, sigs
    assert all(ok for _d, _s, ok in dkimpy_results(data, keys))
    assert odk.verify(data)[0]


def test_from_domain_without_key_is_not_signed(srv, sink):
    send(srv, message("no key", "dave@unsigned.example"), sender="dave@unsigned.example")
    assert signatures(arrival(sink, "no key", srv)) == []


def test_untrusted_client_to_relay_domain_is_not_signed(srv, sink):
    send(srv, message("untrusted"), rcpt="eve@relay.example", client=OutsideClient)
    data = arrival(sink, "untrusted", srv)
    assert signatures(data) == []
    # it came from outside: checked instead, against the (empty) loopback DNS
    assert any(n.lower() == "authentication-results" for n, _v in fields(data))


def test_submission_message_id_and_date_added_are_signed(srv, sink, keys, odk):
    with OutsideClient(("127.0.0.1", srv.sub_port)) as c:
        c.start()
        starttls(c)
        c.ehlo()
        c.expect("AUTH PLAIN " + plain(), 235, "2.7.0")
        content = b"From: alice@example.com\r\nTo: bob@dest.example\r\nSubject: submitted bare\r\n\r\nbody\r\n"
        c.mail_rcpt("alice@example.com", ["bob@dest.example"])
        queued_id(c.data(content))
        c.quit()
    data = arrival(sink, "submitted bare", srv)
    names = [n.lower() for n, _v in fields(data)]
    assert "message-id" in names and "date" in names, names
    for s in signatures(data):
        h = [x.strip().lower() for x in s["h"].split(":")]
        assert "message-id" in h and "date" in h, s
    assert [ok for _d, _s, ok in dkimpy_results(data, keys)] == [True, True]
    assert odk.verify(data)[0]


def test_default_domain_and_sign_untrusted(tmp_path, keys, sink, odk):
    """default_domain signs trusted mail whose From: has no key; sign_untrusted signs mail
    from outside with its From: domain's key, but never with the default domain's."""
    mine = [k for k in keys if k.domain == "example.com"]
    cfg = server_config(mine, sink.port, extra_dkim='default_domain = "example.com"\nsign_untrusted = true')
    s = start_server(tmp_path, config=cfg, deliver=True)
    try:
        send(s, message("default domain", "frank@other.example"), sender="frank@other.example")
        send(s, message("default untrusted", "frank@other.example"), sender="frank@other.example",
             rcpt="x@relay.example", client=OutsideClient)
        send(s, message("untrusted own key"), rcpt="x@relay.example", client=OutsideClient)
        data = arrival(sink, "default domain", s)
        assert signatures(arrival(sink, "default untrusted", s)) == []
        outside = arrival(sink, "untrusted own key", s)
    finally:
        s.stop()
    for got in (data, outside):
        assert {(sg["d"], sg["s"]) for sg in signatures(got)} == {("example.com", "rsa1"), ("example.com", "ed1")}
        assert all(ok for _d, _s, ok in dkimpy_results(got, keys))
        assert odk.verify(got)[0]


# -- a key that cannot be used stops check-config and start-up --------------------------------

@pytest.mark.parametrize("problem", ["missing", "not a key"])
def test_bad_key_file_is_a_config_error(tmp_path, problem):
    key = tmp_path / "bad" / "s9.private"
    if problem != "missing":
        key.parent.mkdir()
        key.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
        key.chmod(0o600)
    cfg = f'[[dkim.sign]]\ndomain = "broken.example"\nselector = "s9"\nkey = "{key}"\n'
    path = tmp_path / "check.toml"
    path.write_text(cfg)
    p = subprocess.run(mta_cmd("check-config", str(path)), capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert str(key) in p.stderr and "broken.example" in p.stderr, p.stderr
    s = start_server(tmp_path, config=cfg, wait=False)
    try:
        rc = s.proc.wait(30)
    finally:
        s.stop()
    log = s.log()
    assert rc == 2, (rc, log)
    assert str(key) in log and "broken.example" in log, log
    assert "Traceback" not in log, log


def test_bad_key_with_send_unsigned_starts_and_sends_unsigned(tmp_path, keys, sink):
    """on_key_error = "send-unsigned": the unusable key is skipped (not a config error), the
    usable ones still sign, and mail for the broken domain goes out unsigned."""
    bad = tmp_path / "broken.private"
    bad.write_text("not a key\n")
    bad.chmod(0o600)
    mine = [k for k in keys if k.domain == "example.com"]
    cfg = server_config(mine, sink.port, extra_dkim='on_key_error = "send-unsigned"') + \
        f'\n[[dkim.sign]]\ndomain = "broken.example"\nselector = "s9"\nkey = "{bad}"\n'
    path = tmp_path / "check.toml"
    path.write_text(cfg)
    p = subprocess.run(mta_cmd("check-config", str(path)), capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0, (p.returncode, p.stderr)
    s = start_server(tmp_path, config=cfg, deliver=True)
    try:
        send(s, message("broken unsigned", "gina@broken.example"), sender="gina@broken.example")
        send(s, message("still signed"))
        unsigned = arrival(sink, "broken unsigned", s)
        signed = arrival(sink, "still signed", s)
        log = s.log()
    finally:
        s.stop()
    assert signatures(unsigned) == []
    assert {sg["s"] for sg in signatures(signed)} == {"rsa1", "ed1"}
    assert str(bad) in log, log[-3000:]
