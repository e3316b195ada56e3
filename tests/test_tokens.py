"""The token file (mta.auth.tokens), `mta http token`, and the bearer gate (mta.app.httpauth)
over a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import os
import stat

import aiohttp
import pytest
from aiohttp import web
from click.testing import CliRunner

from mta.app.cli import main
from mta.app.httpauth import Gate, json_body
from mta.auth import tokens
from mta.auth.tokens import Token, TokenDB


def test_add_list_delete(tmp_path):
    path = str(tmp_path / "tok")
    secret = tokens.add_token(path, "app", ("inject",), ("@example.com",))
    assert secret.startswith("mta_") and len(secret) > 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    text = open(path).read()
    assert secret not in text and tokens.digest(secret) in text
    db = TokenDB(path)
    tok = db.lookup(secret)
    assert tok == Token("app", ("inject",), ("@example.com",), tokens.digest(secret))
    assert db.lookup(secret + "x") is None and db.lookup("") is None
    again = tokens.add_token(path, "app", ("admin",))  # replaces: the old secret stops working
    assert db.lookup(secret) is None and db.lookup(again).scopes == ("admin",)
    assert tokens.delete_token(path, "app") and not tokens.delete_token(path, "app")
    assert db.lookup(again) is None


def test_file_lines_that_are_not_tokens_are_ignored(tmp_path, caplog):
    path = tmp_path / "tok"
    good = tokens.Token("ok", ("admin",), (), tokens.digest("s")).line()
    path.write_text(f"# comment\n\nnot a token\n{good}\nok:admin:*:sha256:{'0' * 64}\n"
                    f"x:root:*:sha256:{'1' * 64}\n")
    db = TokenDB(str(path))
    assert [t.name for t in db.tokens()] == ["ok"]
    assert "listed again" in caplog.text and ":3: ignored" in caplog.text and ":6: ignored" in caplog.text


@pytest.mark.parametrize("text, want", [
    ("", ()), ("@Example.COM", ("@example.com",)), ("a@b.c, @d.e", ("a@b.c", "@d.e")),
])
def test_parse_senders(text, want):
    assert tokens.parse_senders(text) == want


@pytest.mark.parametrize("text", ["bob", "a@b@c", "@", "a b@c", "@x:y"])
def test_parse_senders_refuses(text):
    with pytest.raises(ValueError):
        tokens.parse_senders(text)


@pytest.mark.parametrize("text", ["", "root", "inject,root", ","])
def test_parse_scopes_refuses(text):
    with pytest.raises(ValueError):
        tokens.parse_scopes(text)


def test_allows_sender():
    t = Token("a", ("inject",), ("@example.com", "bob@x.org"))
    assert t.allows_sender("Alice@Example.com") and t.allows_sender("bob@x.org") and t.allows_sender("")
    assert not t.allows_sender("eve@x.org") and not t.allows_sender("a@sub.example.com")
    assert Token("b", ("inject",)).allows_sender("anyone@anywhere")


def test_cli_add_prints_the_token_alone_on_the_last_line(tmp_path):
    path = str(tmp_path / "tok")
    r = CliRunner().invoke(main, ["http", "token", "add", "app1", "--scope", "inject,admin",
                                  "--senders", "@example.com", "--tokens-file", path])
    assert r.exit_code == 0, r.output
    secret = r.output.splitlines()[-1]
    assert TokenDB(path).lookup(secret).name == "app1"
    r = CliRunner().invoke(main, ["http", "token", "list", "--tokens-file", path])
    assert r.output == "app1 inject,admin @example.com\n"
    r = CliRunner().invoke(main, ["http", "token", "del", "app1", "--tokens-file", path])
    assert r.exit_code == 0 and TokenDB(path).tokens() == []
    r = CliRunner().invoke(main, ["http", "token", "del", "app1", "--tokens-file", path])
    assert r.exit_code == 1 and "no token 'app1'" in r.output


@pytest.mark.parametrize("args, says", [
    (["bad name", "--scope", "inject"], "invalid token name"),
    (["app", "--scope", "root"], "scope 'root'"),
    (["app", "--scope", "inject", "--senders", "nobody"], "neither an address"),
])
def test_cli_add_refuses(tmp_path, args, says):
    r = CliRunner().invoke(main, ["http", "token", "add", *args, "--tokens-file", str(tmp_path / "t")])
    assert r.exit_code == 2 and says in r.output
    assert not (tmp_path / "t").exists()


def test_cli_reads_the_file_name_from_config(tmp_path):
    cfg = tmp_path / "mta.toml"
    cfg.write_text(f'[http]\ntokens_file = "{tmp_path / "from-config"}"\n')
    r = CliRunner().invoke(main, ["http", "token", "add", "a", "--scope", "admin", "--config", str(cfg)])
    assert r.exit_code == 0 and (tmp_path / "from-config").exists()


# --- the gate, over a real server -----------------------------------------------------


async def _serve(gate: Gate, max_body: int = 1024):
    async def echo(request, token):
        body = await json_body(request)
        if isinstance(body, web.Response):
            return body
        return web.json_response({"token": token.name, "body": body})

    app = web.Application(client_max_size=max_body)
    app.router.add_post("/inject", gate.guard("inject", echo))
    app.router.add_post("/admin", gate.guard("admin", echo))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp has no public accessor
    return runner, f"http://127.0.0.1:{port}"


def test_gate_statuses(tmp_path):
    path = str(tmp_path / "tok")
    inject = tokens.add_token(path, "app", ("inject",))
    admin = tokens.add_token(path, "ops", ("admin",))

    async def run():
        runner, base = await _serve(Gate(TokenDB(path)))
        try:
            async with aiohttp.ClientSession() as http:
                async def post(where, token=None, data=b'{"a": 1}', auth=None):
                    headers = {"Authorization": auth or f"Bearer {token}"} if (token or auth) else {}
                    async with http.post(base + where, data=data, headers=headers) as r:
                        return r.status, await r.json(), r.headers

                st, body, hdr = await post("/inject")
                assert st == 401 and "bearer token is required" in body["error"]
                assert hdr["WWW-Authenticate"].startswith("Bearer")
                assert (await post("/inject", auth="Basic abc"))[0] == 401
                st, body, _ = await post("/inject", token="mta_wrong")
                assert st == 401 and "unknown" in body["error"]
                st, body, _ = await post("/inject", token=admin)
                assert st == 403 and "lacks the 'inject' scope" in body["error"]
                st, body, _ = await post("/inject", token=inject)
                assert st == 200 and body == {"token": "app", "body": {"a": 1}}
                assert (await post("/admin", token=admin))[0] == 200
                st, body, _ = await post("/inject", token=inject, data=b"{not json")
                assert st == 400 and "invalid JSON" in body["error"]
                st, body, _ = await post("/inject", token=inject, data=b"[" + b"1," * 600 + b"1]")
                assert st == 413 and "http.max_body" in body["error"] and "1024" in body["error"]
                tokens.delete_token(path, "app")  # revoked while running: the next request sees it
                assert (await post("/inject", token=inject))[0] == 401
        finally:
            await runner.cleanup()

    asyncio.run(run())


def test_config_keys(tmp_path):
    from mta.config.schema import load
    from mta.errors import ConfigError

    cfg = load(None)
    assert (cfg.http.tokens_file, cfg.http.tls, cfg.http.max_body) == ("./mta-tokens", False, 10 * 1024 * 1024)
    p = tmp_path / "c.toml"
    p.write_text('[http]\ntls = true\nmax_body = "1k"\n')
    with pytest.raises(ConfigError) as info:
        load(str(p))
    assert any("http.tls" in e and "tls.cert" in e for e in info.value.errors)
    p.write_text('[http]\nmax_body = "lots"\n')
    with pytest.raises(ConfigError) as info:
        load(str(p))
    assert any("http.max_body" in e and "'lots'" in e for e in info.value.errors), info.value.errors
