"""The [[dkim.sign]] tables and the [verify] section: shapes, defaults, and errors that name
the key, the value and what was expected (the key files themselves: tests/test_dkim_sign.py)."""

import pytest

from mta.config import load
from mta.config.dkim import SignSpec
from mta.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "mta.toml"
    p.write_text(text)
    return str(p)


def errors(tmp_path, text) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    return info.value.errors


def test_defaults():
    cfg = load(None)
    assert cfg.dkim.sign == () and cfg.dkim.default_domain == "" and not cfg.dkim.sign_untrusted
    assert cfg.dkim.on_key_error == "refuse"
    v = cfg.verify
    assert v.enabled and v.authserv_id == "" and v.dmarc_reject == "tag" and v.timeout == 10.0


def test_sign_tables(tmp_path):
    cfg = load(write(tmp_path, '''
[dkim]
default_domain = "Example.COM"
[[dkim.sign]]
domain = "Example.COM."
selector = "s2026"
key = "/k/rsa.pem"
[[dkim.sign]]
domain = "example.com"
selector = "e2026"
key = "/k/ed.pem"
headers = ["from", "Subject", "X-Custom"]
canonicalization = "Simple/Simple"
expire = "7d"
'''))
    assert cfg.dkim.sign == (
        SignSpec("example.com", "s2026", "/k/rsa.pem"),
        SignSpec("example.com", "e2026", "/k/ed.pem", ("from", "Subject", "X-Custom"), "simple/simple", 7 * 86400.0),
    )
    assert cfg.dkim.sign[0].label == "s2026._domainkey.example.com (/k/rsa.pem)"


def test_sign_table_errors_name_key_value_and_expectation(tmp_path):
    errs = errors(tmp_path, '''
[[dkim.sign]]
domain = "not a domain"
selector = "bad_selector!"
key = ""
headers = ["Subject"]
canonicalization = "loose"
expire = "soon"
keyfile = "/x"
[[dkim.sign]]
selector = "s1"
''')
    text = "\n".join(errs)
    assert "dkim.sign[0].domain" in text and "'not a domain'" in text
    assert "dkim.sign[0].selector" in text and "bad_selector!" in text
    assert "dkim.sign[0].key" in text and "PEM private key" in text
    assert "dkim.sign[0].headers" in text and '"From"' in text
    assert "dkim.sign[0].canonicalization" in text and "relaxed/relaxed" in text
    assert "dkim.sign[0].expire" in text and "duration" in text
    assert "dkim.sign[0].keyfile" in text and "dkim.sign[0].key" in text  # unknown, with a suggestion
    assert "dkim.sign[1].domain: missing" in text and "dkim.sign[1].key: missing" in text


def test_one_table_per_domain_and_selector(tmp_path):
    errs = errors(tmp_path, '''
[[dkim.sign]]
domain = "example.com"
selector = "s1"
key = "/a"
[[dkim.sign]]
domain = "EXAMPLE.com"
selector = "S1"
key = "/b"
''')
    assert any("dkim.sign" in e and "s1._domainkey.example.com" in e for e in errs)


def test_sign_must_be_tables(tmp_path):
    errs = errors(tmp_path, 'dkim = { sign = "example.com" }\n')
    assert any(e.startswith("dkim.sign") and "[[dkim.sign]]" in e for e in errs)


def test_default_domain_must_have_a_key(tmp_path):
    errs = errors(tmp_path, '''
[dkim]
default_domain = "example.org"
[[dkim.sign]]
domain = "example.com"
selector = "s1"
key = "/a"
''')
    assert any("dkim.default_domain" in e and "example.org" in e for e in errs)


@pytest.mark.parametrize("text,key", [
    ('[verify]\ndmarc_reject = "drop"\n', "verify.dmarc_reject"),
    ('[verify]\nenabled = "yes"\n', "verify.enabled"),
    ('[verify]\ntimeout = 0\n', "verify.timeout"),
    ('[verify]\nauthserv_id = "mx.example.com; x"\n', "verify.authserv_id"),
    ('[dkim]\non_key_error = "ignore"\n', "dkim.on_key_error"),
])
def test_verify_and_dkim_values(tmp_path, text, key):
    assert any(e.startswith(key) for e in errors(tmp_path, text))


def test_verify_values(tmp_path):
    v = load(write(tmp_path, '[verify]\nenabled = false\nauthserv_id = "mx.example.net"\n'
                             'dmarc_reject = "Quarantine"\ntimeout = "3s"\n')).verify
    assert (v.enabled, v.authserv_id, v.dmarc_reject, v.timeout) == (False, "mx.example.net", "quarantine", 3.0)
