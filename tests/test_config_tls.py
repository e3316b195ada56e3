"""Config keys for TLS and listeners: [tls], [[listener]] and the derived
Config.listeners; every error names key, value and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mta.config.schema import Listener, load
from mta.errors import ConfigError

TLS = '[tls]\ncert = "/etc/mta/cert.pem"\nkey = "/etc/mta/key.pem"\n'


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    return str(path)


def errors_of(tmp_path: Path, text: str, overrides: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), overrides)
    return info.value.errors


def test_defaults():
    cfg = load(None)
    assert (cfg.tls.cert, cfg.tls.key, cfg.tls.min_version, cfg.tls.ciphers) == ("", "", "TLSv1.2", "")
    assert cfg.listener == ()
    assert cfg.listeners == (Listener("127.0.0.1", 2525, "mx", "none"),)


def test_listen_gets_starttls_when_tls_is_set(tmp_path):
    cfg = load(write(tmp_path, 'listen = ["127.0.0.1:25", "[::1]:25"]\n' + TLS))
    assert cfg.listeners == (Listener("127.0.0.1", 25, "mx", "starttls"), Listener("::1", 25, "mx", "starttls"))
    assert cfg.listeners[1].address == "[::1]:25"


def test_listener_tables(tmp_path):
    cfg = load(write(tmp_path, '''
listen = ["127.0.0.1:25"]
[[listener]]
address = "127.0.0.1:587"
profile = "submission"
[[listener]]
address = "[::1]:465"
profile = "SUBMISSION"
tls = "implicit"
[[listener]]
address = "127.0.0.1:2526"
tls = "none"
''' + TLS))
    assert cfg.listeners == (
        Listener("127.0.0.1", 25, "mx", "starttls"),
        Listener("127.0.0.1", 587, "submission", "starttls"),
        Listener("::1", 465, "submission", "implicit"),
        Listener("127.0.0.1", 2526, "mx", "none"),
    )


def test_listener_default_tls_without_certificate_is_none(tmp_path):
    cfg = load(write(tmp_path, '[[listener]]\naddress = "127.0.0.1:587"\nprofile = "submission"\n'))
    assert cfg.listeners[-1] == Listener("127.0.0.1", 587, "submission", "none")


def test_listen_may_be_empty_with_listener_tables(tmp_path):
    cfg = load(write(tmp_path, 'listen = []\n[[listener]]\naddress = "127.0.0.1:465"\ntls = "implicit"\n' + TLS))
    assert cfg.listeners == (Listener("127.0.0.1", 465, "mx", "implicit"),)
    assert errors_of(tmp_path, "listen = []") == ["listen: expected at least one HOST:PORT, got []"]


def test_implicit_and_starttls_need_a_certificate(tmp_path):
    errs = errors_of(tmp_path, '''
[[listener]]
address = "127.0.0.1:587"
[[listener]]
address = "127.0.0.1:465"
tls = "implicit"
[[listener]]
address = "127.0.0.1:588"
tls = "starttls"
''')
    assert errs == ["listener[1].tls: implicit needs tls.cert and tls.key",
                    "listener[2].tls: starttls needs tls.cert and tls.key"]


def test_cert_and_key_both_or_neither(tmp_path):
    assert errors_of(tmp_path, '[tls]\ncert = "/c.pem"\n') == [
        "tls.key: expected a PEM file path, since tls.cert is set (both or neither), got ''"]
    assert errors_of(tmp_path, '[tls]\nkey = "/k.pem"\n') == [
        "tls.cert: expected a PEM file path, since tls.key is set (both or neither), got ''"]


def test_bad_listener_values_reported_together(tmp_path):
    errs = errors_of(tmp_path, '''
[[listener]]
address = "mail.example.com:25"
profile = "submision"
tls = "ssl"
port = 5
[[listener]]
profile = "mx"
''')
    assert any(e.startswith("listener[0].address: expected HOST:PORT with HOST an IP address") for e in errs), errs
    assert any(e.startswith("listener[0].profile: expected one of 'mx', 'submission'")
               and "did you mean 'submission'" in e for e in errs), errs
    assert any(e.startswith("listener[0].tls: expected one of 'starttls', 'implicit', 'none'") for e in errs), errs
    assert "listener[0].port: unknown key" in errs
    assert any(e.startswith("listener[1].address: missing") for e in errs), errs
    assert len(errs) == 5, errs


def test_listener_must_be_an_array_of_tables(tmp_path):
    errs = errors_of(tmp_path, 'listener = ["127.0.0.1:25"]\n')
    assert len(errs) == 1 and errs[0].startswith("listener: expected an array of tables"), errs


def test_duplicate_address_across_listen_and_listener(tmp_path):
    errs = errors_of(tmp_path, '''
listen = ["127.0.0.1:25"]
[[listener]]
address = "127.0.0.1:25"
tls = "none"
[[listener]]
address = "127.0.0.1:26"
tls = "none"
[[listener]]
address = "127.0.0.1:26"
tls = "none"
''')
    assert errs == [
        "listener[0].address: expected each address once (it is also in listen), got '127.0.0.1:25'",
        "listener[2].address: expected each address once (it is also in listener[1]), got '127.0.0.1:26'",
    ]


def test_min_version_and_ciphers(tmp_path):
    openssl = 'engine = "openssl"\n'
    cfg = load(write(tmp_path, TLS + openssl + 'min_version = "tlsv1.3"\nciphers = "ECDHE+AESGCM"\n'))
    assert cfg.tls.min_version == "TLSv1.3" and cfg.tls.ciphers == "ECDHE+AESGCM"
    errs = errors_of(tmp_path, TLS + openssl + 'min_version = "TLSv1.1"\nciphers = "NO-SUCH-CIPHER"\n')
    assert errs[0] == "tls.min_version: expected one of 'TLSv1.2', 'TLSv1.3', got 'TLSv1.1'"
    assert errs[1] == ("tls.ciphers: expected an OpenSSL cipher string that selects at least one cipher, "
                       "got 'NO-SUCH-CIPHER'")


def test_engine_and_a_cipher_string_for_rustls(tmp_path):
    assert load(write(tmp_path, TLS)).tls.engine == "rustls"
    assert errors_of(tmp_path, TLS + 'engine = "gnutls"\n') == [
        "tls.engine: expected one of 'rustls', 'openssl' (did you mean 'rustls'?), got 'gnutls'"]
    assert errors_of(tmp_path, TLS + 'ciphers = "ECDHE+AESGCM"\n') == [
        'tls.ciphers: expected no cipher string with tls.engine = "rustls" (its suites are fixed: ECDHE with '
        'AES-GCM or ChaCha20-Poly1305); set tls.engine = "openssl" to choose OpenSSL ciphers, got \'ECDHE+AESGCM\'']


def test_unknown_tls_key_suggests(tmp_path):
    assert errors_of(tmp_path, '[tls]\ncrt = "/c.pem"\nkey = "/k.pem"\n') == [
        "tls.crt: unknown key (did you mean 'tls.cert'?)"]


def test_cli_listen_flag_keeps_working_with_listener_tables(tmp_path):
    text = '[[listener]]\naddress = "127.0.0.1:465"\ntls = "implicit"\n' + TLS
    cfg = load(write(tmp_path, text), {"listen": ["127.0.0.1:2600"]})
    assert [(lst.address, lst.tls) for lst in cfg.listeners] == [("127.0.0.1:2600", "starttls"),
                                                                 ("127.0.0.1:465", "implicit")]
