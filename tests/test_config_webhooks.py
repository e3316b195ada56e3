"""The [[webhook]] tables: defaults, every key at its bounds and one past them, every error
naming the key, the value and what was expected, and unique names."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mta.config import load
from mta.config.kinds import Errors
from mta.config.webhooks import EVENTS, WebhookSpec, WebhookTables
from mta.errors import ConfigError

URL = 'url = "http://127.0.0.1:9000/events"\n'


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "mta.toml"
    path.write_text(text)
    return str(path)


def one_error(tmp_path: Path, body: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "[[webhook]]\n" + body))
    assert len(info.value.errors) == 1, info.value.errors
    return info.value.errors[0]


def test_defaults(tmp_path):
    cfg = load(write(tmp_path, "[[webhook]]\n" + URL))
    (w,) = cfg.webhook
    assert w == WebhookSpec("http://127.0.0.1:9000/events")
    assert (w.label, w.events, w.batch, w.max_backlog, w.timeout, w.headers, w.retry_min, w.retry_max) == (
        "http://127.0.0.1:9000/events", EVENTS, 100, 100_000, 10.0, {}, 1.0, 300.0)
    assert load(None).webhook == ()


def test_every_key_set(tmp_path):
    cfg = load(write(tmp_path, '[[webhook]]\nname = "a"\nurl = "https://h.example/x?y=1"\nevents = ["bounced", "bounced"]\n'
                               'batch = 10000\nmax_backlog = 1\ntimeout = "500ms"\nheaders = { Authorization = "Bearer x" }\n'
                               'retry_min = 0.1\nretry_max = "1m"\n'
                               '[[webhook]]\nname = "b"\nurl = "http://[::1]:80/"\nbatch = 1\n'))
    a, b = cfg.webhook
    assert (a.label, a.events, a.batch, a.max_backlog, a.timeout, a.headers, a.retry_min, a.retry_max) == (
        "a", ("bounced",), 10000, 1, 0.5, {"Authorization": "Bearer x"}, 0.1, 60.0)
    assert (b.label, b.batch) == ("b", 1)


@pytest.mark.parametrize("body, want", [
    ("", "webhook[0].url: missing"),
    ('url = "ftp://h/x"\n', "webhook[0].url: expected an http:// or https:// URL"),
    ('url = "http:///x"\n', "webhook[0].url: expected an http:// or https:// URL"),
    ('url = "http://h:x/"\n', "webhook[0].url: expected an http:// or https:// URL"),
    ("url = 5\n", "webhook[0].url: expected an http:// or https:// URL with a host, such as \"http://127.0.0.1:9000/events\", got 5"),
    (URL + "name = 3\n", "webhook[0].name: expected a string of at most 1024 bytes, no control characters, got 3"),
    (URL + 'events = ["delivered", "opened"]\n',
     "webhook[0].events: expected event names from ['delivered', 'deferred', 'bounced', 'accepted'] (unknown: 'opened'), "
     "got ['delivered', 'opened']"),
    (URL + "events = []\n", "webhook[0].events: expected a non-empty list of event names"),
    (URL + 'events = "delivered"\n', "webhook[0].events: expected a non-empty list"),
    (URL + "batch = 0\n", "webhook[0].batch: expected an integer from 1 to 10000, got 0"),
    (URL + "batch = 10001\n", "webhook[0].batch: expected an integer from 1 to 10000, got 10001"),
    (URL + "max_backlog = 0\n", "webhook[0].max_backlog: expected a positive integer, got 0"),
    (URL + 'timeout = "0s"\n', "webhook[0].timeout: expected a positive duration (seconds), got '0s'"),
    (URL + "timeout = 3601\n", "webhook[0].timeout: expected a duration of at most 3600 s, got 3601"),
    (URL + 'headers = "x"\n', "webhook[0].headers: expected a table of strings"),
    (URL + "headers = { X-A = 1 }\n", "webhook[0].headers.X-A: expected a string without CR, LF or NUL, got 1"),
    (URL + 'headers = { "Content-Type" = "text/plain" }\n', "webhook[0].headers.Content-Type: expected a header field name"),
    (URL + 'headers = { "a b" = "x" }\n', "webhook[0].headers.a b: expected a header field name"),
    (URL + 'headers = { X = "a\\nb" }\n', "webhook[0].headers.X: expected a string without CR, LF or NUL"),
    (URL + "retry_min = -1\n", "webhook[0].retry_min: expected a positive duration (seconds), got -1"),
    (URL + 'retry_max = "x"\n', "webhook[0].retry_max: expected a positive duration"),
    (URL + "retry_min = 10\nretry_max = 5\n", "webhook[0].retry_max: expected a duration of at least retry_min (10 s), got 5"),
    (URL + "bach = 5\n", "webhook[0].bach: unknown key (did you mean 'webhook[0].batch'?)"),
])
def test_errors_name_the_key(tmp_path, body, want):
    assert one_error(tmp_path, body).startswith(want)


def test_names_are_unique(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "[[webhook]]\n" + URL + "[[webhook]]\n" + URL))
    assert info.value.errors == ["webhook: expected distinct webhook names (set name = \"...\" on one of the two "
                                 "'http://127.0.0.1:9000/events'), got 'http://127.0.0.1:9000/events'"]
    with pytest.raises(ConfigError):
        load(write(tmp_path, "webhook = 3\n"))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["url", "name", "events", "batch", "max_backlog", "timeout", "headers",
                                        "retry_min", "retry_max", "other"]),
                       st.one_of(st.text(max_size=30), st.integers(-5, 20000), st.floats(allow_nan=True),
                                 st.lists(st.sampled_from(list(EVENTS) + ["x"]), max_size=5),
                                 st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))))
def test_any_table_parses_or_names_its_errors(table):
    errs = Errors()
    out = WebhookTables().parse("webhook", [table], errs)
    if errs.items:
        assert all(e.startswith("webhook") for e in errs.items), errs.items
    else:
        (w,) = out
        assert w.url.startswith(("http://", "https://")) and 1 <= w.batch <= 10000 and w.retry_min <= w.retry_max
        assert set(w.events) <= set(EVENTS)

