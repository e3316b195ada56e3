"""Tests for mta.config: defaults, the documented example, docs ↔ schema
agreement (so the two cannot drift), and that every problem is reported at
once with the dotted key, the value and the expectation."""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from pathlib import Path

import pytest

from mta.config import schema as config
from mta.config.kinds import KiB, MiB
from mta.config.schema import load
from mta.errors import ConfigError, MtaError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
ROW = re.compile(r"^\| `([a-z_.]+)` \| ([^|]+?) \| `(.*?)` \| .+ \|$")


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    return str(path)


def errors_of(tmp_path: Path, text: str, overrides: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), overrides)
    return info.value.errors


def doc_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        if m := ROW.match(line):
            assert m[1] not in rows, f"{m[1]} documented twice"
            rows[m[1]] = (m[2].strip(), m[3])
    return rows


def doc_example() -> str:
    return DOCS.read_text().split("## A complete example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]


# --- defaults -----------------------------------------------------------------

def test_defaults_without_a_file():
    cfg = load(None)
    assert cfg.hostname == socket.gethostname().lower().removesuffix(".")
    assert cfg.listen == (("127.0.0.1", 2525),)
    assert cfg.mynetworks == (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    assert cfg.local_domains == frozenset() and cfg.relay_domains == frozenset()
    assert cfg.spool == config.SpoolConfig()
    assert cfg.spool.dir == config.DEFAULT_SPOOL_DIR == "./mta-spool"
    assert (cfg.spool.segment_size, cfg.spool.spill_threshold, cfg.spool.min_free_space) == (64 * MiB, MiB, 64 * MiB)
    assert cfg.spool.sync is True
    s = cfg.smtp
    assert (s.max_line_length, s.max_message_size, s.max_header_size) == (512, 50 * MiB, MiB)
    assert (s.max_recipients, s.max_errors, s.max_hops) == (1000, 20, 50)
    assert (s.idle_timeout, s.greeting_delay, s.reverse_dns_timeout) == (300.0, 1.0, 2.0)
    assert (s.bare_lf, s.reverse_dns, s.banner) == ("reject", True, "")
    assert cfg.log.level == "info"
    assert config.check(None) == []


def test_empty_file_equals_defaults(tmp_path):
    assert load(write(tmp_path, "")) == load(None)


def test_config_is_frozen():
    cfg = load(None)
    with pytest.raises(AttributeError):
        cfg.smtp.max_line_length = 1  # type: ignore[misc]


def test_bad_machine_hostname_is_reported_as_the_default(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "my_host")
    with pytest.raises(ConfigError) as info:
        load(None)
    assert "hostname:" in str(info.value) and "'my_host'" in str(info.value)
    assert "the default" in str(info.value)
    assert load(None, {"hostname": "mx.example.com"}).hostname == "mx.example.com"


# --- the documented example and docs/schema agreement ----------------------------

def test_documented_example_is_complete_and_valid(tmp_path):
    text = doc_example()
    cfg = load(write(tmp_path, text))
    assert cfg.hostname == "mx1.example.com"
    assert cfg.listen == (("0.0.0.0", 25), ("::", 25))
    assert ipaddress.ip_network("::1/128") in cfg.mynetworks
    assert cfg.local_domains == {"example.com", "example.org"}
    assert cfg.spool.dir == "/var/spool/mta" and cfg.spool.min_free_space == 1024 * MiB
    assert cfg.smtp.max_message_size == 35 * MiB and cfg.smtp.max_header_size == 512 * KiB
    assert cfg.smtp.idle_timeout == 300.0 and cfg.smtp.reverse_dns_timeout == 1.5
    # "complete": the example sets every key of the schema.
    data = tomllib.loads(text)
    keys = set(config.schema_keys())

    def set_keys(table: dict, prefix: str = "") -> set[str]:
        # A table that is a schema key (aliases, transport...) holds data, not keys.
        out = set()
        for k, v in table.items():
            name = prefix + k
            out |= set_keys(v, name + ".") if isinstance(v, dict) and name not in keys else {name}
        return out
    assert set_keys(data) == keys


def test_every_key_documented_with_its_default_and_type():
    rows = doc_rows()
    keys = {k.name: k for k in config.schema()}
    assert set(rows) - set(keys) == set(), "documented but not in the schema"
    assert set(keys) - set(rows) == set(), "in the schema but not documented"
    for name, key in keys.items():
        doc_type, doc_default = rows[name]
        assert doc_type == key.type, name
        assert doc_default == key.default_text, name


def test_documented_defaults_parse_to_the_schema_defaults(tmp_path):
    # Guards render(): a default written in the docs, fed back through the
    # loader, gives exactly the built-in default.
    for name, (default, _doc) in config.schema_keys().items():
        text = doc_rows()[name][1]
        if name == "hostname":
            assert text == "socket.gethostname()"
            continue
        table, _, leaf = name.rpartition(".")
        body = f"[{table}]\n{leaf} = {text}\n" if table else f"{leaf} = {text}\n"
        cfg = load(write(tmp_path, body))
        value = cfg
        for part in name.split("."):
            value = getattr(value, part)
        assert value == default, name


def test_schema_keys_shape():
    keys = config.schema_keys()
    assert keys["smtp.max_line_length"][0] == 512
    assert all(isinstance(doc, str) and doc for _, doc in keys.values())
    assert {"hostname", "workers", "spool.dir", "smtp.bare_lf", "log.level"} <= keys.keys()


# --- errors -------------------------------------------------------------------

def test_unknown_keys_with_suggestions(tmp_path):
    errs = errors_of(tmp_path, """
max_message_size = 10
smpt = {}
[smtp]
max_line_lenght = 1000
[spool]
frobnicate = 1
""")
    assert "max_message_size: unknown key (did you mean 'smtp.max_message_size'?)" in errs
    assert "smpt: unknown key (did you mean 'smtp'?)" in errs
    assert "smtp.max_line_lenght: unknown key (did you mean 'smtp.max_line_length'?)" in errs
    assert "spool.frobnicate: unknown key" in errs
    assert len(errs) == 4


def test_many_bad_values_reported_together(tmp_path):
    errs = errors_of(tmp_path, """
hostname = "not a host"
listen = ["127.0.0.1:25", "::1:25", 25]
mynetworks = ["10.1.2.3/8", "nonsense"]
local_domains = ["ok.example", "1.2.3.4"]
[spool]
sync = "yes"
[smtp]
max_message_size = -5
idle_timeout = 0
bare_lf = "fix"
banner = "hi\\r\\n250 injected"
[log]
level = "warn"
""")
    assert "smtp.max_message_size: expected a positive integer (bytes), got -5" in errs
    assert "listen[1]: expected HOST:PORT (IPv6 as [::1]:2525), got '::1:25'" in errs
    assert any(e.startswith("listen[2]: expected HOST:PORT") and e.endswith("got 25") for e in errs)
    assert any(e.startswith("hostname: expected a domain name") for e in errs)
    assert any(e.startswith("mynetworks[0]:") and "'10.0.0.0/8'" in e for e in errs)
    assert any(e.startswith("mynetworks[1]:") for e in errs)
    assert any(e.startswith("local_domains[1]:") for e in errs)
    assert "spool.sync: expected true or false, got 'yes'" in errs
    assert any(e.startswith("smtp.idle_timeout: expected a positive duration") for e in errs)
    assert any(e.startswith("smtp.bare_lf: expected one of 'reject', 'normalize'") for e in errs)
    assert any(e.startswith("smtp.banner:") for e in errs)
    assert any(e.startswith("log.level:") and "did you mean 'warning'" in e for e in errs)
    assert len(errs) == 12


def test_config_error_is_one_line_per_problem(tmp_path):
    path = write(tmp_path, "[smtp]\nmax_errors = 0\nmax_hops = -1\n")
    with pytest.raises(MtaError) as info:
        load(path)
    assert isinstance(info.value, ConfigError)
    assert str(info.value).splitlines() == info.value.errors
    assert len(info.value.errors) == 2
    assert config.check(path) == info.value.errors


def test_wrong_types(tmp_path):
    errs = errors_of(tmp_path, """
listen = "127.0.0.1:25"
smtp = 5
[spool]
segment_size = true
dir = ""
""")
    assert any(e.startswith("listen: expected a list of") for e in errs)
    assert "smtp: expected a table ([smtp]), got 5" in errs
    assert any(e.startswith("spool.segment_size: expected a size") and e.endswith("got True") for e in errs)
    assert "spool.dir: expected a non-empty string, got ''" in errs


def test_toml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, 'hostname = "a.example"\nlisten = [\n  "127.0.0.1:25",,\n]\n')
    (err,) = config.check(path)
    assert err.startswith(path + ": invalid TOML") and "line 3" in err


def test_unreadable_file(tmp_path):
    (err,) = config.check(str(tmp_path / "missing.toml"))
    assert "missing.toml: cannot read" in err


def test_cross_key_rules(tmp_path):
    (err,) = errors_of(tmp_path, """
local_domains = ["example.com"]
relay_domains = ["EXAMPLE.com."]
""")
    assert err == "relay_domains: expected no domain that is also in local_domains, got 'example.com'"


# --- overrides ------------------------------------------------------------------

def test_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, """
hostname = "file.example"
listen = ["127.0.0.1:25", "127.0.0.1:26"]
mynetworks = ["192.168.0.0/16"]
[spool]
dir = "/file"
""")
    cfg = load(path, {"listen": ["[::1]:2525"], "spool.dir": "/x", "hostname": "h",
                      "mynetworks": ["10.0.0.0/8"], "smtp.max_errors": None})
    assert cfg.listen == (("::1", 2525),)  # replaced, not merged
    assert cfg.spool.dir == "/x"
    assert cfg.hostname == "h"
    assert cfg.mynetworks == (ipaddress.ip_network("10.0.0.0/8"),)
    assert cfg.smtp.max_errors == 20  # None: flag not given


def test_overrides_without_a_file_and_their_errors_are_marked():
    assert load(None, {"spool.dir": "/y"}).spool.dir == "/y"
    with pytest.raises(ConfigError) as info:
        load(None, {"listen": ["nope"], "spool.dirr": "/y"})
    assert info.value.errors == [
        "listen[0]: expected HOST:PORT (IPv6 as [::1]:2525), got 'nope' (from the command line)",
        "spool.dirr: unknown key (did you mean 'spool.dir'?) (from the command line)",
    ]


# --- value forms ----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ('"127.0.0.1:25"', ("127.0.0.1", 25)),
    ('"0.0.0.0:2525"', ("0.0.0.0", 2525)),
    ('"[::1]:2525"', ("::1", 2525)),
    ('"[::]:25"', ("::", 25)),
    ('"[2001:db8::5]:587"', ("2001:db8::5", 587)),
    ('"127.0.0.1:1"', ("127.0.0.1", 1)),
    ('"127.0.0.1:65535"', ("127.0.0.1", 65535)),
])
def test_listen_forms(tmp_path, text, expected):
    assert load(write(tmp_path, f"listen = [{text}]")).listen == (expected,)


@pytest.mark.parametrize("text", [
    "::1:25", "[::1]2525", "[::1]:", "[127.0.0.1]:25", "127.0.0.1", ":25", "localhost:25",
    "127.0.0.1:0", "127.0.0.1:65536", "[::1]:65536", "127.0.0.1:-1", "127.0.0.1:http",
])
def test_listen_refused(tmp_path, text):
    (err,) = errors_of(tmp_path, f'listen = ["{text}"]')
    assert err.startswith("listen[0]: expected ") and err.endswith(f"got {text!r}")


def test_listen_needs_one_address_each_once(tmp_path):
    assert errors_of(tmp_path, "listen = []") == ["listen: expected at least one HOST:PORT, got []"]
    (err,) = errors_of(tmp_path, 'listen = ["127.0.0.1:25", "127.0.0.1:25"]')
    assert err.startswith("listen[1]: expected each address once")


def test_mynetworks_forms(tmp_path):
    cfg = load(write(tmp_path, 'mynetworks = ["10.0.0.0/8", "192.0.2.7", "::1", "2001:db8::/32"]'))
    assert [str(n) for n in cfg.mynetworks] == ["10.0.0.0/8", "192.0.2.7/32", "::1/128", "2001:db8::/32"]
    assert load(write(tmp_path, "mynetworks = []")).mynetworks == ()


def test_domains_are_normalized(tmp_path):
    cfg = load(write(tmp_path, 'hostname = "MX1.Example.COM."\nlocal_domains = ["Example.COM.", "xn--bcher-kva.example"]'))
    assert cfg.hostname == "mx1.example.com"
    assert cfg.local_domains == {"example.com", "xn--bcher-kva.example"}


@pytest.mark.parametrize("text, expected", [
    ("52428800", 52428800), ('"50M"', 50 * MiB), ('"50MiB"', 50 * MiB), ('"50MB"', 50 * MiB),
    ('"1MiB"', MiB), ('"64k"', 64 * KiB), ('"64K"', 64 * KiB), ('"64KiB"', 64 * KiB),
    ('"1G"', 1024 * MiB), ('"1000"', 1000), ('"512B"', 512), ('" 2 m "', 2 * MiB),
])
def test_sizes(tmp_path, text, expected):
    assert load(write(tmp_path, f"[smtp]\nmax_message_size = {text}")).smtp.max_message_size == expected


@pytest.mark.parametrize("text", ['"1.5M"', '"50X"', '"M"', '"-1M"', "1.5", "0", '"0k"', "-5", "[]"])
def test_sizes_refused(tmp_path, text):
    (err,) = errors_of(tmp_path, f"[smtp]\nmax_message_size = {text}")
    assert err.startswith("smtp.max_message_size: expected ")


def test_zero_size_where_zero_disables(tmp_path):
    assert load(write(tmp_path, "[spool]\nmin_free_space = 0")).spool.min_free_space == 0


@pytest.mark.parametrize("text, expected", [
    ("300", 300.0), ("2.5", 2.5), ('"300s"', 300.0), ('"5m"', 300.0), ('"1h"', 3600.0), ('"2d"', 172800.0),
    ('"500ms"', 0.5), ('"10"', 10.0), ('"1.5m"', 90.0),
])
def test_durations(tmp_path, text, expected):
    assert load(write(tmp_path, f"[smtp]\nidle_timeout = {text}")).smtp.idle_timeout == expected


@pytest.mark.parametrize("text", ["0", '"0s"', "-1", '"5 minutes"', '"5w"', "nan", "inf", "true"])
def test_durations_refused(tmp_path, text):
    (err,) = errors_of(tmp_path, f"[smtp]\nidle_timeout = {text}")
    assert err.startswith("smtp.idle_timeout: expected a positive duration")


def test_greeting_delay_zero_disables(tmp_path):
    assert load(write(tmp_path, "[smtp]\ngreeting_delay = 0")).smtp.greeting_delay == 0.0
    (err,) = errors_of(tmp_path, "[smtp]\ngreeting_delay = -1")
    assert err.startswith("smtp.greeting_delay: expected a non-negative duration")


# --- limits at and past their bounds ----------------------------------------------

def test_max_line_length_bound(tmp_path):
    assert load(write(tmp_path, "[smtp]\nmax_line_length = 512")).smtp.max_line_length == 512
    (err,) = errors_of(tmp_path, "[smtp]\nmax_line_length = 511")
    assert err == "smtp.max_line_length: expected an integer >= 512 (octets, RFC 5321 minimum 512), got 511"


@pytest.mark.parametrize("key", ["max_recipients", "max_errors", "max_hops"])
def test_counts_must_be_positive(tmp_path, key):
    assert getattr(load(write(tmp_path, f"[smtp]\n{key} = 1")).smtp, key) == 1
    (err,) = errors_of(tmp_path, f"[smtp]\n{key} = 0")
    assert err == f"smtp.{key}: expected a positive integer, got 0"
    (err,) = errors_of(tmp_path, f"[smtp]\n{key} = 1.0")
    assert err == f"smtp.{key}: expected a positive integer, got 1.0"


def test_banner_limits(tmp_path):
    ok = "x" * 200
    assert load(write(tmp_path, f'[smtp]\nbanner = "{ok}"')).smtp.banner == ok
    (err,) = errors_of(tmp_path, f'[smtp]\nbanner = "{ok}x"')
    assert err.startswith("smtp.banner: expected a string of printable ASCII")


def test_choices_are_case_insensitive(tmp_path):
    cfg = load(write(tmp_path, '[log]\nlevel = "DEBUG"\n[smtp]\nbare_lf = "Normalize"'))
    assert (cfg.log.level, cfg.smtp.bare_lf) == ("debug", "normalize")


# --- routing and delivery keys ------------------------------------------------

def test_transport_map_and_address_maps(tmp_path):
    cfg = load(write(tmp_path, """
local_domains = ["example.com"]
local_recipients = ["alice", "bob@example.com"]
[aliases]
root = "alice@example.com"
[virtual]
"sales@example.com" = ["alice@example.com", "carol@example.net"]
[transport]
"example.net" = "smarthost [2001:db8::1]:2525 tls=required auth=u:p connections=3 per_connection=7"
"lists.example.com" = "lmtp unix:/run/lmtp"
"*" = "discard"
[delivery]
relay_to = "smart.example.net:587"
max_lifetime = "2d"
"""))
    spec = cfg.transport["example.net"]
    assert (spec.kind, spec.host, spec.port, spec.tls, spec.auth, spec.connections, spec.per_connection) == (
        "smarthost", "2001:db8::1", 2525, "required", ("u", "p"), 3, 7)
    assert cfg.transport["lists.example.com"].host == "/run/lmtp" and cfg.transport["lists.example.com"].port == 0
    assert cfg.transport["*"].kind == "discard"
    assert cfg.aliases == {"root": ("alice@example.com",)}
    assert cfg.virtual["sales@example.com"] == ("alice@example.com", "carol@example.net")
    assert cfg.local_recipients == {"alice", "bob@example.com"}
    assert cfg.delivery.relay_to == "smart.example.net:587" and cfg.delivery.max_lifetime == 172800.0


def test_bad_routing_values_are_all_named(tmp_path):
    errs = errors_of(tmp_path, """
local_recipients = ["no spaces allowed"]
[aliases]
"a@b" = "x@example.com"
root = "not-an-address"
[transport]
"example.net" = "smarthost nowhere"
"bad domain" = "mx"
"x.example" = "smarthost h.example:25 tls=sometimes"
[delivery]
relay_to = "host-without-port"
retry_schedule = []
[dns]
nameservers = ["dns.example"]
""")
    text = "\n".join(errs)
    for key in ('local_recipients[0]', 'aliases."a@b"', 'aliases."root"', 'transport."example.net"',
                'transport.bad domain', 'transport."x.example"', "delivery.relay_to",
                "delivery.retry_schedule", "dns.nameservers[0]"):
        assert key in text, key


def test_cpu_affinity(tmp_path):
    assert load(None).cpu_affinity == "none"
    assert load(write(tmp_path, 'cpu_affinity = "AUTO"\n')).cpu_affinity == "auto"
    errs = errors_of(tmp_path, 'cpu_affinity = "pinned"\n')
    assert any(e.startswith("cpu_affinity: expected one of 'none', 'auto'") and e.endswith("got 'pinned'") for e in errs)
