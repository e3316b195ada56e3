"""Server-side TLS session tickets (mta.smtp.tickets) in-process: real OpenSSL handshakes over
ssl.MemoryBIO pairs with an injected clock; rotation, sharing across "workers" and reloads,
the [tls] keys, and the handshake counts."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from mta.app.metrics import Metrics, render
from mta.config.reload import plan
from mta.config.schema import TlsConfig, load
from mta.errors import ConfigError
from mta.smtp import tickets
from mta.smtp.counts import TLS_FAILED, TLS_FULL, TLS_RESUMED, listener_counts
from mta.smtp.tls import TlsContext, build_context, build_contexts, selfsigned

HOUR = 3600.0
E = 480_000  # an epoch (hours since 1970) of the injected clock


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> TlsConfig:
    key, cert = selfsigned(str(tmp_path_factory.mktemp("certs")), "mx.example.test", 2)
    return TlsConfig(cert=cert, key=key)


class Clock:
    def __init__(self, epoch: int = E):
        self.now = epoch * HOUR + 10.0

    def __call__(self) -> float:
        return self.now


def client_ctx(version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = version
    return ctx


CLIENT13, CLIENT12 = client_ctx(), client_ctx(ssl.TLSVersion.TLSv1_2)


def handshake(server: ssl.SSLContext, session: ssl.SSLSession | None = None, client: ssl.SSLContext = CLIENT13):
    """A whole handshake between a client and `server` over memory BIOs; the client also
    reads what follows it (TLS 1.3 tickets). (client SSLObject, server SSLObject)."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname="mx.example.test", session=session)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, obj in enumerate((c, s)):
            if not done[i]:
                try:
                    obj.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            break
    assert all(done), "the handshake did not finish"
    with pytest.raises(ssl.SSLWantReadError):
        c.read(1)  # takes in the NewSessionTicket messages
    return c, s


def resumes(server: ssl.SSLContext, session: ssl.SSLSession, client: ssl.SSLContext = CLIENT13):
    """(resumed?, the session the client holds after it)."""
    c, s = handshake(server, session, client)
    assert c.session_reused == s.session_reused
    return s.session_reused, c.session


def test_keys_differ_by_epoch_and_secret_and_have_their_sizes():
    a, b, c = tickets.derive(b"a" * 32, 1), tickets.derive(b"a" * 32, 2), tickets.derive(b"b" * 32, 1)
    assert (len(a.name), len(a.hmac), len(a.aes)) == (16, 32, 32)
    assert len({a.name, b.name, c.name}) == 3 and len({a.aes, a.hmac, b.aes, c.aes}) == 4
    assert tickets.derive(b"a" * 32, 1) == a
    keys = tickets.TicketKeys(b"a" * 32, HOUR, clock=Clock(1))
    assert keys.opening(a.name) == (a, False)
    assert keys.opening(tickets.derive(b"a" * 32, 0).name)[1] is True
    assert keys.opening(tickets.derive(b"a" * 32, -1).name) is None


def test_rotation_current_previous_renewed_then_refused(cfg):
    clock = Clock()
    server = build_context(cfg, tickets.TicketKeys(b"k" * 32, HOUR, clock))
    c, s = handshake(server)
    assert not s.session_reused
    assert c.session.ticket_lifetime_hint == HOUR  # one rotation period
    assert server.num_tickets == 1
    sealed_e = c.session
    reused, fresh = resumes(server, sealed_e)  # epoch e
    # TLS 1.3: a new ticket after every resumption (one use each, RFC 8446 C.4; and it is
    # what the client's delayed ACK of its Finished rides on)
    assert reused and fresh.id != sealed_e.id
    clock.now += HOUR
    reused, renewed = resumes(server, sealed_e)  # epoch e + 1: the previous key still opens it
    assert reused
    clock.now += HOUR  # epoch e + 2: the e ticket is refused, the handshake is full and succeeds
    c, s = handshake(server, sealed_e)
    assert not s.session_reused and s.version() == "TLSv1.3"
    assert resumes(server, renewed)[0]  # the ticket handed out in e + 1 still opens


def test_previous_epoch_renews_a_tls12_ticket(cfg):
    clock = Clock()
    server = build_context(cfg, tickets.TicketKeys(b"k" * 32, HOUR, clock))
    c, _ = handshake(server, client=CLIENT12)
    old = c.session
    clock.now += HOUR
    reused, renewed = resumes(server, old, CLIENT12)
    assert reused and renewed.has_ticket
    clock.now += HOUR
    assert not resumes(server, old, CLIENT12)[0]
    assert resumes(server, renewed, CLIENT12)[0]


@pytest.mark.parametrize("client", [CLIENT13, CLIENT12], ids=["tls13", "tls12"])
def test_two_workers_with_one_secret_resume_each_other(cfg, client):
    clock = Clock()
    one = build_context(cfg, tickets.TicketKeys(b"w" * 32, HOUR, clock))
    two = build_context(cfg, tickets.TicketKeys(b"w" * 32, HOUR, clock))
    c, _ = handshake(one, client=client)
    reused, session = resumes(two, c.session, client)
    assert reused
    assert resumes(one, session, client)[0]


def test_another_secret_gets_a_full_handshake(cfg):
    clock = Clock()
    one = build_context(cfg, tickets.TicketKeys(b"w" * 32, HOUR, clock))
    other = build_context(cfg, tickets.TicketKeys(b"x" * 32, HOUR, clock))
    c, _ = handshake(one)
    assert not resumes(other, c.session)[0]


@pytest.mark.parametrize("client", [CLIENT13, CLIENT12], ids=["tls13", "tls12"])
def test_session_tickets_false_never_resumes(cfg, client):
    off = TlsConfig(cert=cfg.cert, key=cfg.key, session_tickets=False)
    server = build_context(off)
    assert server.options & ssl.OP_NO_TICKET and server.num_tickets == 0
    c, _ = handshake(server, client=client)
    for _ in range(2):
        assert not resumes(server, c.session, client)[0]  # neither a ticket nor the session-id cache


def test_a_reloaded_context_resumes_the_tickets_of_the_old_one(cfg):
    tls = TlsContext(cfg, tickets.TicketKeys(b"r" * 32, HOUR, Clock()))
    old = tls.current
    c, _ = handshake(old)
    assert tls.reload() and tls.current is not old
    assert resumes(tls.current, c.session)[0]
    tls.use(cfg, build_contexts(cfg, tls.keys))  # as the server's reload does
    assert resumes(tls.current, c.session)[0]


def test_the_process_keys_are_shared_by_every_context_built(cfg):
    c, _ = handshake(build_context(cfg))  # tickets.shared(cfg.ticket_rotation)
    assert resumes(build_context(cfg), c.session)[0]
    assert tickets.shared(cfg.ticket_rotation).secret == tickets.process_secret()


def test_implicit_front_counts_full_and_resumed_handshakes(cfg):
    tls = TlsContext(cfg, tickets.TicketKeys(b"i" * 32, HOUR, Clock()))
    counts = listener_counts()
    front = tls.implicit_front(counts)
    c, _ = handshake(front)
    assert resumes(front, c.session)[0]
    # a ticket of the STARTTLS context opens on the implicit-TLS front too, and back
    c2, _ = handshake(tls.current)
    assert resumes(front, c2.session)[0]
    assert (counts[TLS_FULL], counts[TLS_RESUMED], counts[TLS_FAILED]) == (1, 2, 0)
    assert resumes(tls.current, c.session)[0]


def test_a_failing_key_callback_leaves_the_handshake_whole(cfg):
    # A fault a real peer cannot cause: the clock the keys read raises, in the callback.
    clock = Clock()
    keys = tickets.TicketKeys(b"f" * 32, HOUR, clock)
    server = build_context(cfg, keys)
    c, _ = handshake(server)
    good = c.session

    def broken() -> float:
        raise RuntimeError("clock gone")
    keys.clock = broken
    c, s = handshake(server, good)  # opening fails: a full handshake, and no ticket sealed
    assert not s.session_reused and s.version() == "TLSv1.3"
    assert not c.session.has_ticket
    keys.clock = clock
    assert resumes(server, good)[0]


def test_without_libssl_one_warning_and_openssls_own_tickets(cfg, monkeypatch, caplog):
    # A fault this machine cannot show for real: libssl or a symbol not found.
    monkeypatch.setattr(tickets, "_openssl", lambda: None)
    monkeypatch.setattr(tickets, "_lib_error", "no libssl here")
    monkeypatch.setattr(tickets, "_warned", False)
    keys = tickets.TicketKeys(b"n" * 32, HOUR, Clock())
    with caplog.at_level("WARNING", logger="mta.tls"):
        one, two = build_context(cfg, keys), build_context(cfg, keys)
    assert [r.getMessage() for r in caplog.records] == [
        ("tls: session tickets stay per worker and per reload (OpenSSL's own key): "
         "libssl not usable through ctypes: no libssl here")]
    c, _ = handshake(one)
    assert resumes(one, c.session)[0]  # within one context, with OpenSSL's key
    assert not resumes(two, c.session)[0]


def test_config_keys_and_their_bounds(tmp_path):
    assert (TlsConfig().session_tickets, TlsConfig().ticket_rotation) == (True, 3600.0)
    path = tmp_path / "mta.toml"
    path.write_text('[tls]\nsession_tickets = false\nticket_rotation = "15m"\n')
    cfg = load(str(path))
    assert (cfg.tls.session_tickets, cfg.tls.ticket_rotation) == (False, 900.0)
    for bad in ("30s", "25h"):
        path.write_text(f'[tls]\nticket_rotation = "{bad}"\n')
        with pytest.raises(ConfigError) as info:
            load(str(path))
        assert info.value.errors == [
            f"tls.ticket_rotation: expected a duration from 60 s to 86400 s (1m to 24h), got '{bad}'"]


def test_ticket_keys_wait_for_a_restart(tmp_path):
    # The implicit-TLS listeners' front contexts, made once, seal and open the tickets.
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text('[tls]\ncert = "/c.pem"\nkey = "/k.pem"\n')
    new.write_text('[tls]\ncert = "/c2.pem"\nkey = "/k.pem"\nticket_rotation = "2h"\nsession_tickets = false\n')
    p = plan(load(str(old)), load(str(new)))
    assert p.changed == ["tls.cert"]
    assert {i.key for i in p.ignored} == {"tls.session_tickets", "tls.ticket_rotation"}
    assert (p.config.tls.session_tickets, p.config.tls.ticket_rotation) == (True, 3600.0)


def test_handshake_metric_sums_the_listeners():
    m = Metrics([("127.0.0.1:25", "mx"), ("127.0.0.1:465", "submission")])
    m.listener_counts[0][TLS_FULL], m.listener_counts[0][TLS_RESUMED] = 3, 4
    m.listener_counts[1][TLS_FULL], m.listener_counts[1][TLS_RESUMED] = 1, 2
    text = render(m.series()).decode()
    assert 'mta_tls_handshakes_total{direction="in",resumed="no"} 4.0' in text
    assert 'mta_tls_handshakes_total{direction="in",resumed="yes"} 6.0' in text


def test_docs_name_the_metric():
    assert "`mta_tls_handshakes_total`" in (Path(__file__).resolve().parent.parent / "docs" / "http.md").read_text()
