"""Tests for mta.config.reload: which keys a reload applies, which it ignores until a restart
(naming the old and new values), what runs afterwards, and that the command line's flags
are applied again on every read."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mta.config import reload
from mta.config.reload import ConfigSource, plan, summary
from mta.config.schema import load
from mta.errors import ConfigError

BASE = 'hostname = "mx.example.test"\n'

# (what the new file adds to BASE, the keys a reload applies, the keys it ignores)
TABLE = [
    ('transport = { "a.test" = "smarthost 127.0.0.1:2526" }', ["transport"], []),
    ('aliases = { "info" = ["bob@b.test"] }', ["aliases"], []),
    ('local_domains = ["l.test"]\nrelay_domains = ["r.test"]', ["local_domains", "relay_domains"], []),
    ('mynetworks = ["10.0.0.0/8"]', ["mynetworks"], []),
    ('[[plugin]]\nmodule = "m"\noptions = { tag = "x" }', ["plugin"], []),
    ("[limits]\nmax_connections = 7", ["limits.max_connections"], []),
    ("[smtp]\nmax_message_size = 1000", ["smtp.max_message_size"], []),
    ('[delivery]\nrelay_to = "127.0.0.1:2600"\nmax_active = 5', ["delivery.relay_to", "delivery.max_active"], []),
    ("[shaping]\nmax_site_share = 20", ["shaping.max_site_share"], []),
    ('[auth]\nusers_file = "u"', ["auth.users_file"], []),
    ('listen = ["127.0.0.1:2999"]', [], ["listen"]),
    ('[[listener]]\naddress = "127.0.0.1:2998"', [], ["listener"]),
    ("workers = 3", [], ["workers"]),
    ('cpu_affinity = "auto"', [], ["cpu_affinity"]),
    ('[spool]\ndir = "/elsewhere"\nsync = false', [], ["spool.dir", "spool.sync"]),
    ('[http]\nlisten = ["127.0.0.1:8025"]', [], ["http.listen"]),
    ('[privileges]\nuser = "mail"', [], ["privileges.user"]),
    ('[throttle]\nbackend = "local"', [], []),  # the default: nothing changed
    ('hostname = "other.example.test"', [], ["hostname"]),
    ("[delivery]\nagent = false\nmax_active = 9", ["delivery.max_active"], ["delivery.agent"]),
    ('[dns]\nnameservers = ["127.0.0.1"]', [], ["dns.nameservers"]),
    ('[tls]\ncert = "c.pem"\nkey = "k.pem"', [], ["tls.cert"]),  # no [tls] before: the listeners change
]


def cfg_of(tmp_path: Path, text: str, name: str = "mta.toml", overrides: dict | None = None):
    path = tmp_path / name
    path.write_text(text)
    return load(str(path), overrides)


@pytest.mark.parametrize("extra, changed, ignored", TABLE)
def test_plan_table(tmp_path, extra, changed, ignored):
    old = cfg_of(tmp_path, BASE)
    text = extra if extra.startswith("hostname") else BASE + extra
    new = cfg_of(tmp_path, text, "new.toml")
    p = plan(old, new)
    assert p.changed == changed
    assert [i.key for i in p.ignored] == ignored
    for key in ignored:  # what runs keeps the running value
        assert reload.value(p.config, key) == reload.value(old, key)
    for key in changed:
        assert reload.value(p.config, key) == reload.value(new, key)
    assert p.config.listeners == old.listeners


def test_ignored_names_old_and_new_values(tmp_path):
    old = cfg_of(tmp_path, BASE + 'listen = ["127.0.0.1:2525"]\nworkers = 1')
    new = cfg_of(tmp_path, BASE + 'listen = ["127.0.0.1:2999"]\nworkers = 2', "new.toml")
    shown = [str(i) for i in plan(old, new).ignored]
    assert shown[0].startswith("listen (was ") and "2525" in shown[0] and "2999" in shown[0], shown
    assert shown[1] == "workers (was 1, now 2)"


def test_tls_files_reload_but_adding_tls_waits(tmp_path):
    with_tls = BASE + '[tls]\ncert = "a.pem"\nkey = "a.key"\n'
    old = cfg_of(tmp_path, with_tls)
    p = plan(old, cfg_of(tmp_path, BASE + '[tls]\ncert = "b.pem"\nkey = "b.key"\nmin_version = "TLSv1.3"\n', "n.toml"))
    assert p.changed == ["tls.cert", "tls.key", "tls.min_version"] and not p.ignored
    assert p.config.tls.cert == "b.pem"
    p = plan(old, cfg_of(tmp_path, BASE, "n2.toml"))  # removing [tls]: the listeners offer STARTTLS until restart
    assert [i.key for i in p.ignored] == ["tls.cert"] and p.changed == []
    assert p.config.tls == old.tls


def test_unchanged_file_changes_nothing(tmp_path):
    old = cfg_of(tmp_path, BASE + 'transport = { "a.test" = "discard" }')
    p = plan(old, cfg_of(tmp_path, BASE + 'transport = { "a.test" = "discard" }', "n.toml"))
    assert p == (p.config, [], []) and p.config == old
    assert summary(p.changed) == "nothing"


def test_summary_groups_sections_and_plugins():
    assert summary(["transport", "plugin", "delivery.route_hook", "limits.max_connections",
                    "limits.max_connections_per_ip", "aliases"]) == "transport, plugins, limits, aliases"


def test_source_applies_flags_on_every_read(tmp_path):
    path = tmp_path / "mta.toml"
    path.write_text(BASE + 'listen = ["127.0.0.1:2700"]\n[http]\nlisten = ["127.0.0.1:8025"]\n')
    src = ConfigSource(str(path), {"listen": ["127.0.0.1:2525"], "spool.dir": "/s"}, ("127.0.0.1:9100",))
    cfg = src.load()
    assert cfg.listen == (("127.0.0.1", 2525),) and cfg.spool.dir == "/s"
    assert cfg.http.listen == (("127.0.0.1", 8025), ("127.0.0.1", 9100))
    path.write_text(BASE + 'listen = ["127.0.0.1:2701"]\nworkers = 2\n[http]\nlisten = ["127.0.0.1:9100"]\n')
    again = src.load()
    assert again.listen == cfg.listen and again.workers == 2
    assert again.http.listen == (("127.0.0.1", 9100),)  # named twice: once
    assert [i.key for i in plan(cfg, again).ignored] == ["workers", "http.listen"]
    path.write_text(BASE + "bogus = 1\n")
    with pytest.raises(ConfigError) as info:
        src.load()
    assert "bogus" in str(info.value)


# Keys and a second value for each, to change any subset of them at once.
CHOICES = {
    "transport": 'transport = { "a.test" = "discard" }',
    "workers": "workers = 2",
    "mynetworks": 'mynetworks = ["10.0.0.0/8"]',
    "cpu_affinity": 'cpu_affinity = "auto"',
    "listen": 'listen = ["127.0.0.1:2999"]',
    "smtp.banner": '[smtp]\nbanner = "hi"',
    "spool.sync": "[spool]\nsync = false",
    "limits.max_connections": "[limits]\nmax_connections = 3",
    "delivery.agent": "[delivery]\nagent = false",
    "bounce.max_returned_size": '[bounce]\nmax_returned_size = "1KiB"',
}
_TOP = [k for k in CHOICES if "." not in k]


@settings(max_examples=60, deadline=None)
@given(st.sets(st.sampled_from(sorted(CHOICES))))
def test_plan_property_every_change_is_applied_or_ignored(tmp_path_factory, picked):
    tmp = tmp_path_factory.mktemp("plan")
    old = cfg_of(tmp, BASE)
    # top-level keys first: a table header would swallow them
    text = BASE + "".join(CHOICES[k] + "\n" for k in sorted(picked, key=lambda k: (k not in _TOP, k)))
    new = cfg_of(tmp, text, "new.toml")
    p = plan(old, new)
    assert set(p.changed) | {i.key for i in p.ignored} == picked
    assert not set(p.changed) & {i.key for i in p.ignored}
    assert {i.key for i in p.ignored} == {k for k in picked if reload.restart_only(k)}
    again = plan(p.config, new)  # a second reload of the same file: nothing left to apply
    assert again.changed == [] and {i.key for i in again.ignored} == {i.key for i in p.ignored}
