"""/api/admin's request parsers (table and property tests), its status rules, and the routes over
a real aiohttp server on loopback against a spool no server runs on (every change is a 503, the
reads still answer). The running server's side is tests/e2e/test_admin_http.py."""

from __future__ import annotations

import asyncio
import os

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from mta.app import admin, admin_http, control
from mta.app.admin_http import judge, parse_change, parse_summary, parse_target
from mta.app.httpauth import Gate
from mta.auth import tokens
from mta.auth.tokens import TokenDB

# --- parse_change ----------------------------------------------------------------------

@pytest.mark.parametrize("op, body, want", [
    ("hold", {"ids": ["A1", "b2"]}, (["A1", "b2"], False)),
    ("hold", {"all": True}, ([], True)),
    ("delete", {"ids": ["A1"], "all": False}, (["A1"], False)),
    ("flush", {}, ([], True)),  # as `mta queue flush` without ids
    ("flush", {"ids": ["Z" * 64]}, (["Z" * 64], False)),
    ("release", {"ids": ["A1", "A1"]}, (["A1", "A1"], False)),  # duplicates: admin.change drops them
])
def test_good_change_bodies(op, body, want):
    assert parse_change(op, body) == want


@pytest.mark.parametrize("op, body, field, text", [
    ("hold", {}, "ids", "give a list of queue ids, or all: true"),
    ("flush", {"all": False}, "ids", "give a list of queue ids"),
    ("hold", {"ids": []}, "ids", "non-empty list"),
    ("hold", {"ids": "A1"}, "ids", "non-empty list"),
    ("hold", {"ids": None, "all": 1}, "all", "true or false"),
    ("flush", {"ids": None}, "ids", "non-empty list"),  # null is not "absent": no flush of everything
    ("hold", {"ids": None, "all": True}, "ids", "not both"),
    ("hold", {"ids": ["A1"], "all": True}, "ids", "not both"),
    ("hold", {"ids": ["A1", "x/y"]}, "ids[1]", "bad queue id 'x/y'"),
    ("hold", {"ids": ["A" * 65]}, "ids[0]", "1-64 letters and digits"),
    ("hold", {"ids": [""]}, "ids[0]", "bad queue id"),
    ("hold", {"ids": [1]}, "ids[0]", "bad queue id"),
    ("hold", {"ids": ["A1"] * (admin_http.MAX_IDS + 1)}, "ids", f"at most {admin_http.MAX_IDS}"),
    ("hold", {"id": ["A1"]}, "id", "unknown field"),
    ("hold", ["A1"], "body", "JSON object"),
    ("hold", None, "body", "JSON object"),
])
def test_bad_change_bodies_name_the_field(op, body, field, text):
    with pytest.raises(admin.BadArgument) as e:
        parse_change(op, body)
    assert e.value.field == field and text in e.value.text and e.value.text.startswith(f"{field}: ")


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=10)
BODIES = st.one_of(JSON, st.dictionaries(st.sampled_from(["ids", "all", "x"]),
                                         JSON | st.lists(st.text("AB1/", max_size=3), max_size=3), max_size=3))


@given(st.sampled_from(admin.QUEUE_OPS), BODIES)
def test_any_change_body_parses_or_names_a_field(op, body):
    try:
        ids, every = parse_change(op, body)
    except admin.BadArgument as e:
        known = set(body) if isinstance(body, dict) else set()
        assert e.field in known | {"body", "ids", "all"} or e.field.startswith("ids[")
        return
    assert isinstance(body, dict) and set(body) <= {"ids", "all"}
    assert every == (not ids)
    assert ids == body.get("ids", [])
    assert all(isinstance(q, str) and q.isalnum() and q.isascii() for q in ids)


# --- parse_target, parse_summary ----------------------------------------------------------

@pytest.mark.parametrize("body, extra, want", [
    ({"domain": "Dest.TEST."}, (), {"domain": "dest.test"}),
    ({"site": "*.Mail.Example"}, (), {"site": "*.mail.example"}),
    ({"domain": "a.test", "duration": "5m"}, ("duration",), {"domain": "a.test"}),
])
def test_good_targets(body, extra, want):
    assert parse_target(body, extra)[0] == want


@pytest.mark.parametrize("body, field", [
    ({}, "domain"), ({"domain": "a.test", "site": "s"}, "domain"), ({"domain": "a b"}, "domain"),
    ({"domain": ["a.test"]}, "domain"), ({"site": ""}, "site"), ({"site": "s" * 256}, "site"),
    ({"site": "a\tb"}, "site"), ({"site": 3}, "site"), ({"domain": "a.test", "until": 1}, "until"),
])
def test_bad_targets_name_the_field(body, field):
    with pytest.raises(admin.BadArgument) as e:
        parse_target(body)
    assert e.value.field == field


@pytest.mark.parametrize("raw, want", [("30m", 1800.0), (60, 60.0), ("2h", 7200.0), (0.5, 0.5), ("1d", 86400.0)])
def test_durations(raw, want):
    assert admin.duration(raw) == want


@pytest.mark.parametrize("raw", ["soon", -1, 0, 10 ** 9, True, None, "5 parsecs"])
def test_bad_durations(raw):
    with pytest.raises(admin.BadArgument) as e:
        admin.duration(raw)
    assert e.value.field == "duration"


@pytest.mark.parametrize("query, want", [
    ({}, ("domain", admin.DEFAULT_TOP)), ({"by": "site"}, ("site", admin.DEFAULT_TOP)),
    ({"top": "0"}, ("domain", 0)), ({"by": "domain", "top": "7"}, ("domain", 7)),
])
def test_summary_queries(query, want):
    assert parse_summary(query) == want


@pytest.mark.parametrize("query, field", [
    ({"top": "-1"}, "top"), ({"top": ""}, "top"), ({"top": "1e3"}, "top"), ({"top": "٣"}, "top"),
    ({"top": "9" * 10}, "top"), ({"limit": "5"}, "limit"),
])
def test_bad_summary_queries(query, field):
    with pytest.raises(admin.BadArgument) as e:
        parse_summary(query)
    assert e.value.field == field


@given(st.dictionaries(st.sampled_from(["by", "top", "x"]), st.text(max_size=12), max_size=3))
def test_any_summary_query_parses_or_names_a_parameter(query):
    try:
        by, top = parse_summary(query)
    except admin.BadArgument as e:
        assert e.field in query
        return
    assert set(query) <= {"by", "top"} and top >= 0 and by == query.get("by", "domain")


# --- the status of a result --------------------------------------------------------------

def _r(q, status, ok=True):
    return {"id": q, "status": status, "ok": ok, "text": f"{q}: {status}"}


@pytest.mark.parametrize("done, want", [
    ({"results": [_r("A", "held")], "problems": [], "ok": True}, (200, None)),
    ({"results": [_r("A", "held")], "problems": ["shard 1: no reply within 10 s"], "ok": False},
     (503, "shard 1: no reply within 10 s")),
    ({"results": [_r("A", "held"), _r("B", "unknown", False)], "problems": [], "ok": False}, (404, "B: unknown")),
    ({"results": [_r("B", "unknown", False), _r("C", "no server", False)], "problems": [], "ok": False},
     (503, "C: no server")),
    ({"results": [_r("A", "busy", False)], "problems": [], "ok": False}, (409, "A: busy")),
    ({"op": "hold", "all": True, "counts": {"held": 3}, "untouched": [], "problems": [], "ok": True}, (200, None)),
    ({"op": "delete", "all": True, "counts": {"deleted": 2, "busy": 1}, "untouched": [], "problems": [], "ok": False},
     (409, "1 message(s): busy (see the server log; run the request again for busy ones)")),
    ({"op": "hold", "all": True, "counts": {}, "untouched": [{"shard": 1, "messages": 4}], "problems": [], "ok": False},
     (503, "shard 1 holds 4 message(s) but no server owns it: not touched")),
    ({"domain": "a.test", "counts": {"due": 1, "failed": 2}, "problems": [], "ok": False},
     (409, "2 message(s): failed (see the server log; run the request again for busy ones)")),
    ({"workers": 2, "shards": [{"shard": 0, "applied": True, "messages": []}], "problems": [], "ok": True},
     (200, None)),
    ({"workers": 2, "shards": [{"shard": 0, "applied": True, "messages": []},
                               {"shard": 1, "applied": False, "messages": ["delivery.retry: bad"]}],
      "problems": [], "ok": False},
     (409, "shard 1 refused the configuration (the running one stays): delivery.retry: bad")),
])
def test_judge(done, want):
    assert judge(done) == want


# --- the routes, with no server running on the spool -----------------------------------------

async def _serve(tmp_path):
    path = str(tmp_path / "tokens")
    secret = tokens.add_token(path, "ops", ("admin",))
    app = web.Application()
    admin_http.add_routes(app, Gate(TokenDB(path)), str(tmp_path / "spool"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp has no public accessor
    return runner, f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {secret}"}


def test_without_a_server_changes_are_503_and_reads_answer(tmp_path):
    os.makedirs(tmp_path / "spool" / "0")  # a shard, but no socket: no server

    async def run():
        runner, base, auth = await _serve(tmp_path)
        out = {}
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                for name, method, path, body in (
                        ("list", "GET", "/api/admin/queue", None),
                        ("show", "GET", "/api/admin/queue/Q1", None),
                        ("summary", "GET", "/api/admin/queue/summary", None),
                        ("hold", "POST", "/api/admin/queue/hold", {"ids": ["Q1"]}),
                        ("flush", "POST", "/api/admin/queue/flush", None),
                        ("suspend", "POST", "/api/admin/suspend", {"site": "mx.a.test"}),
                        ("bounce", "POST", "/api/admin/bounce", {"domain": "a.test"}),
                        ("reload", "POST", "/api/admin/reload", None),
                        ("reload-bad", "POST", "/api/admin/reload", {"force": True})):
                    async with http.request(method, base + path, json=body) as r:
                        out[name] = (r.status, await r.json())
        finally:
            await runner.cleanup()
        return out

    out = asyncio.run(run())
    assert out["list"] == (200, [])
    assert out["show"] == (404, {"error": "no message with queue id 'Q1'", "id": "Q1"})
    status, summary = out["summary"]
    assert status == 200 and summary["total"] == 0 and summary["flags_note"] == "no server running: flags unknown"
    for name in ("hold", "flush", "suspend", "bounce"):
        status, body = out[name]
        assert status == 503 and body["error"].startswith("no server is running on the spool"), (name, body)
        assert body["problems"] == []
    assert out["reload-bad"][0] == 400 and out["reload-bad"][1]["field"] == "force"
    status, body = out["reload"]
    assert status == (503 if "reload" in control.OPS else 501), body


def test_admin_errors_carry_their_status():
    assert (admin.BadArgument("x", "y").status, admin.NoSuchMessage("Q").status,
            admin.NotRunning("/s", "hold", []).status, admin.SpoolUnreadable("r").status) == (400, 404, 503, 500)
    with pytest.raises(admin.BadArgument) as e:
        admin.change("/nonexistent", "explode", ["Q1"])
    assert e.value.field == "op"
    with pytest.raises(admin.NotRunning) as e:
        admin.change("/nonexistent", "hold", ["Q1"])
    assert "no server is running on the spool /nonexistent" in e.value.text


def test_the_list_streams_and_a_failure_after_the_first_page_cuts_it_short(tmp_path, monkeypatch, caplog):
    """GET /api/admin/queue writes admin.list_pages's pages as they come: the bytes of one JSON
    array. A failure before the first page is its status; after it the reply can only be cut
    short (the chunked body never ends), and the server says why in its log."""
    os.makedirs(tmp_path / "spool" / "0")
    pages = {"ok": [(b'{"id": "A"}', 1), (b'{"id": "B"}, {"id": "C"}', 2)], "late": [(b'{"id": "A"}', 1)]}

    def fake_pages(root, form):
        assert form == "json"
        mode = fake_pages.mode
        if mode == "early":
            raise admin.ShardFailed("listing the queue failed: shard 0: no reply within 2 s")
        yield from pages[mode]
        if mode == "late":
            raise admin.ShardFailed("listing the queue failed: shard 1: no reply within 2 s")

    monkeypatch.setattr(admin, "list_pages", fake_pages)

    async def get(http, base) -> tuple[int, bytes | str]:
        try:
            async with http.get(base + "/api/admin/queue") as r:
                return r.status, await r.read()
        except aiohttp.ClientPayloadError as e:
            return -1, type(e).__name__

    async def run():
        runner, base, auth = await _serve(tmp_path)
        out = {}
        try:
            async with aiohttp.ClientSession(headers=auth) as http:
                for mode in ("ok", "early", "late"):
                    fake_pages.mode = mode
                    out[mode] = await get(http, base)
        finally:
            await runner.cleanup()
        return out

    with caplog.at_level("WARNING", logger="mta.http"):
        out = asyncio.run(run())
    assert out["ok"] == (200, b'[{"id": "A"}, {"id": "B"}, {"id": "C"}]')
    status, body = out["early"]
    assert status == admin.ShardFailed.status and b"shard 0: no reply" in body
    assert out["late"] == (-1, "ClientPayloadError")
    assert "cut short after a page was sent: listing the queue failed: shard 1" in caplog.text
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text, caplog.text
