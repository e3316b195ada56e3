"""The hook chain and the plugin API without a server: verdict rules, stage semantics (order,
Accept, refusals), sync and async hooks (answered at once when they never wait), timeouts,
failures counted and logged, routing answers, outbound events, and loading errors."""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
import types

import pytest

from mta.config import schema as config
from mta.errors import ConfigError
from mta.plugin import Accept, Continue, Defer, Disconnect, Reject, Route
from mta.policy import loader
from mta.policy.chain import FAILED, Chain, Entry, RouteError, to_spec


def chain(*hook_sets, timeout=1.0) -> Chain:
    return Chain([Entry(f"p{i}", hooks, timeout=timeout) for i, hooks in enumerate(hook_sets)])


def settle(result):
    """A stage's answer, awaited if it is a task."""
    if isinstance(result, asyncio.Future):
        return asyncio.get_event_loop().run_until_complete(result)
    return result


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


# --- verdicts -----------------------------------------------------------------------------------

def test_verdicts_carry_exactly_the_reply_given():
    assert Reject(550, "5.7.1", "blocked by policy").reply == b"550 5.7.1 blocked by policy\r\n"
    assert Defer(450, "4.2.0", "greylisted").reply == b"450 4.2.0 greylisted\r\n"
    assert Disconnect(421, "4.7.0", "bye").reply == b"421 4.7.0 bye\r\n"
    assert Disconnect(554, "5.7.1", "go away").code == 554
    assert Reject() == Reject(550, "5.7.1", "Rejected by policy") and Defer().code == 451


@pytest.mark.parametrize("make", [
    lambda: Reject(450, "4.7.1", "x"),  # a 4xx is not a rejection
    lambda: Defer(550, "5.7.1", "x"),
    lambda: Reject(550, "4.7.1", "x"),  # the enhanced code's class must match
    lambda: Reject(550, "5.7", "x"),
    lambda: Reject(550, "5.7.1", "two\r\nlines"),  # no reply injection
    lambda: Reject(550, "5.7.1", ""),
    lambda: Reject("550", "5.7.1", "x"),
    lambda: Disconnect(250, "2.0.0", "x"),
    lambda: Reject(550, "5.7.1", "caf\u00e9"),
])
def test_a_verdict_outside_its_class_is_refused(make):
    with pytest.raises(ValueError):
        make()


def test_route_keeps_its_options_and_becomes_a_transport_spec():
    r = Route("smarthost 10.0.0.5:25", tls="required", connections=3, per_connection=50, auth=("u", "p"))
    assert r.text() == "smarthost 10.0.0.5:25 tls=required connections=3 per_connection=50 auth=u:p"
    spec = to_spec(r)
    assert (spec.kind, spec.host, spec.port, spec.tls, spec.connections, spec.auth) == (
        "smarthost", "10.0.0.5", 25, "required", 3, ("u", "p"))
    assert to_spec("lmtp unix:/run/dovecot/lmtp").host == "/run/dovecot/lmtp"
    assert to_spec("no such transport") is None and to_spec(42) is None
    with pytest.raises(ValueError, match="unknown option"):
        Route("mx", color="red")
    with pytest.raises(ValueError, match="starting with one of smarthost"):
        Route("smarthots 10.0.0.5:25")  # a typo shows where the Route is made


# --- inbound stages ---------------------------------------------------------------------------

def test_no_hook_means_no_call_and_go_on():
    c = chain({"on_mail": lambda tx, s: None})
    assert c.on_rcpt == () and c.run(c.on_rcpt, (None, "a@b")) is None
    assert len(c.on_mail) == 1


def test_hooks_run_in_order_and_the_first_refusal_answers():
    calls = []
    c = chain({"on_rcpt": lambda tx, a: calls.append(1)},
              {"on_rcpt": lambda tx, a: calls.append(2) or Reject(550, "5.1.1", "no such user")},
              {"on_rcpt": lambda tx, a: calls.append(3)})
    assert c.run(c.on_rcpt, (None, "x")) == Reject(550, "5.1.1", "no such user")
    assert calls == [1, 2]


def test_accept_skips_the_later_plugins_of_the_stage_only():
    calls = []
    c = chain({"on_rcpt": lambda tx, a: calls.append(1) or Accept(), "on_mail": lambda tx, s: Continue()},
              {"on_rcpt": lambda tx, a: calls.append(2) or Reject(), "on_mail": lambda tx, s: calls.append("m")})
    assert c.run(c.on_rcpt, (None, "x")) is None and calls == [1]
    assert c.run(c.on_mail, (None, "s")) is None and calls == [1, "m"]


def test_an_async_hook_that_never_waits_is_answered_without_a_task():
    async def hook(tx, address):
        return Defer(450, "4.2.0", "greylisted")
    c = chain({"on_rcpt": hook})
    assert c.run(c.on_rcpt, (None, "x")) == Defer(450, "4.2.0", "greylisted")  # no loop was needed


def test_an_async_hook_that_waits_gives_a_task_then_the_rest_runs(loop):
    order = []

    async def slow(tx, address):
        await asyncio.sleep(0.01)
        order.append("slow")

    async def after(tx, address):
        await asyncio.sleep(0)
        order.append("after")
        return Reject(550, "5.7.1", "after the wait")

    c = chain({"on_rcpt": slow}, {"on_rcpt": lambda tx, a: order.append("sync")}, {"on_rcpt": after})

    async def main():
        r = c.run(c.on_rcpt, (None, "x"))
        assert isinstance(r, asyncio.Future)
        return await r
    assert loop.run_until_complete(main()) == Reject(550, "5.7.1", "after the wait")
    assert order == ["slow", "sync", "after"]


@pytest.mark.parametrize("hook, why", [
    (lambda tx, a: 1 / 0, "ZeroDivisionError"),
    (lambda tx, a: "550 nope", "not a verdict"),
    (lambda tx, a: Reject(450, "4.0.0", "x"), "ValueError"),  # a bad verdict raised inside the hook
])
def test_a_failing_hook_gives_451_430_and_is_logged_and_counted(hook, why, caplog):
    c = chain({"on_rcpt": hook})
    with caplog.at_level(logging.ERROR, logger="mta.plugin"):
        assert c.run(c.on_rcpt, (None, "x")) is FAILED
    assert FAILED.reply == b"451 4.3.0 Temporary policy failure, try again later\r\n"
    assert "plugin p0: hook on_rcpt failed" in caplog.text and why in caplog.text
    assert c.failure_counts() == {("p0", "on_rcpt"): 1}


def test_a_traceback_is_logged_for_a_raise(caplog):
    def broken(tx, a):
        raise RuntimeError("database is down")
    c = chain({"on_mail": broken})
    with caplog.at_level(logging.ERROR, logger="mta.plugin"):
        c.run(c.on_mail, (None, "s"))
    record = caplog.records[-1]
    assert record.exc_info is not None and "database is down" in caplog.text and "Traceback" in caplog.text


def test_async_hooks_overrunning_their_timeout_give_451(loop, caplog):
    async def sleeper(tx, a):
        await asyncio.sleep(5)
    c = chain({"on_rcpt": sleeper}, timeout=0.05)

    async def main():
        start = loop.time()
        v = await c.run(c.on_rcpt, (None, "x"))
        return v, loop.time() - start
    with caplog.at_level(logging.ERROR, logger="mta.plugin"):
        v, took = loop.run_until_complete(main())
    assert v is FAILED and took < 1.0 and "timed out (timeout 0.05s)" in caplog.text


def test_a_sync_hook_past_its_timeout_counts_as_timed_out():
    import time
    c = chain({"on_helo": lambda conn, name: time.sleep(0.06)}, timeout=0.05)
    assert c.run(c.on_helo, (None, "x")) is FAILED
    assert c.failure_counts() == {("p0", "on_helo"): 1}


def test_an_async_hook_failing_after_a_wait_is_a_failure_too(loop):
    async def late(tx, a):
        await asyncio.sleep(0)
        raise KeyError("gone")
    c = chain({"on_rcpt": late})

    async def main():
        return await c.run(c.on_rcpt, (None, "x"))
    assert loop.run_until_complete(main()) is FAILED


# --- routing and outbound events -------------------------------------------------------------

def test_route_first_answer_wins_none_falls_through(loop):
    c = chain({"route": lambda a, m: None}, {"route": lambda a, m: Route("smarthost 10.0.0.5:25", tls="none")},
              {"route": lambda a, m: "discard"})
    spec = c.route_now("a@b.test", None)
    assert spec.text() == "smarthost 10.0.0.5:25" and spec.tls == "none"
    assert chain({"route": lambda a, m: None}).route_now("a@b.test", None) is None


def test_route_failures_raise_route_error(loop):
    async def later(a, m):
        await asyncio.sleep(0)
        return 42
    with pytest.raises(RouteError, match="returned 42"):
        loop.run_until_complete(chain({"route": later}).route_now("a@b", None))
    with pytest.raises(RouteError, match="ValueError"):
        chain({"route": lambda a, m: int("x")}).route_now("a@b", None)


def test_observers_are_told_and_their_failures_do_not_spread(loop):
    seen = []

    async def slow_observer(event):
        await asyncio.sleep(0.01)
        seen.append(("async", event))

    def broken(event):
        raise RuntimeError("webhook down")
    c = chain({"on_delivered": broken}, {"on_delivered": lambda e: seen.append(("sync", e))},
              {"on_delivered": slow_observer})

    async def main():
        c.notify(c.on_delivered, "ev")
        assert seen == [("sync", "ev")]
        await asyncio.sleep(0.05)
    loop.run_until_complete(main())
    assert seen == [("sync", "ev"), ("async", "ev")]
    assert c.failure_counts() == {("p0", "on_delivered"): 1}


def test_on_deferred_may_choose_the_next_route(loop):
    c = chain({"on_deferred": lambda e: None}, {"on_deferred": lambda e: Route("smarthost 10.0.0.6:25")})
    assert loop.run_until_complete(c.deferred("ev")).full_text() == "smarthost 10.0.0.6:25"
    bad = chain({"on_deferred": lambda e: "not a transport"})
    assert loop.run_until_complete(bad.deferred("ev")) is None


def test_start_and_stop_in_order_and_a_failing_setup_is_a_config_error(loop):
    calls = []
    c = Chain([Entry("a", {}, setup=lambda: calls.append("a+"), stop=lambda: calls.append("a-")),
               Entry("b", {}, setup=lambda: calls.append("b+"), stop=lambda: calls.append("b-"))])
    loop.run_until_complete(c.start())
    loop.run_until_complete(c.stop())
    assert calls == ["a+", "b+", "b-", "a-"]

    def bad():
        raise ValueError("options: 'map' is required")
    calls.clear()
    failing = Chain([Entry("a", {}, setup=lambda: calls.append("a+"), stop=lambda: calls.append("a-")),
                     Entry("x", {}, setup=bad, stop=lambda: calls.append("x-")),
                     Entry("c", {}, setup=lambda: calls.append("c+"), stop=lambda: calls.append("c-"))])
    with pytest.raises(ConfigError, match=r"plugin x \(x\): setup failed: ValueError: options: 'map' is required"):
        loop.run_until_complete(failing.start())
    assert calls == ["a+", "a-"]  # the one started is stopped; the failed and the later ones never ran


# --- loading --------------------------------------------------------------------------------------

@pytest.fixture
def modules(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        sys.modules.pop(name, None)
        return name
    yield write


def specs(*tables):
    return config.load(None, {"plugin": list(tables)}).plugin


def test_a_module_plugin_loads_its_hooks_sync_and_async(modules):
    name = modules("plug_ok", """
        seen = {}
        def setup(options):
            seen["options"] = options
        def on_mail(tx, sender): pass
        async def on_rcpt(tx, address): pass
        def helper_not_a_hook(x): pass
    """)
    (entry,) = loader.load(specs({"module": name, "options": {"k": 1}, "timeout": "2s"}))
    assert set(entry.hooks) == {"on_mail", "on_rcpt"} and entry.timeout == 2.0
    assert entry.kinds() == {"on_mail": "sync", "on_rcpt": "async"}
    entry.setup()
    assert sys.modules[name].seen == {"options": {"k": 1}}


def test_a_package_may_import_its_hooks_from_its_modules(modules):
    impl = modules("plug_impl", "def on_mail(tx, sender):\n    return None\nimport os\n")
    name = modules("plug_pkg", f"from {impl} import on_mail\nfrom os.path import join as on_rcpt_helper_not\n")
    (entry,) = loader.load(specs({"module": name}))
    assert set(entry.hooks) == {"on_mail"}  # imported hook found; imported non-hook names ignored


def test_a_plugin_class_is_made_once_with_its_options(modules):
    name = modules("plug_cls", """
        class Plugin:
            def __init__(self, options):
                self.table = options["table"]
            def start(self): pass
            def stop(self): pass
            def route(self, address, msg):
                return self.table.get(address)
    """)
    (entry,) = loader.load(specs({"module": name, "options": {"table": {"a@b": "discard"}}}))
    assert entry.hooks["route"]("a@b", None) == "discard" and entry.setup is not None and entry.stop is not None


@pytest.mark.parametrize("source, message", [
    ("def on_rcp(tx, address): pass", "unknown hook 'on_rcp' (did you mean 'on_rcpt'?)"),
    ("def on_rcpt(tx): pass", "hook on_rcpt(tx) has the wrong signature: it is called as on_rcpt(tx, address)"),
    ("import no_such_dependency_xyz", "import failed: ModuleNotFoundError"),
    ("raise RuntimeError('boom at import')", "import failed: RuntimeError: boom at import"),
    ("class Plugin:\n    def __init__(self, options):\n        raise ValueError('need url')",
     "Plugin(options) failed: ValueError: need url"),
    ("x = 1", "defines no hook"),
    ("class Plugin:\n    def on_mail(self, tx): pass", "wrong signature"),
])
def test_loading_errors_name_the_plugin_and_the_problem(modules, source, message):
    name = modules("plug_bad", source)
    with pytest.raises(ConfigError) as e:
        loader.load(specs({"module": name}))
    assert e.value.errors[0].startswith(f"plugin[0] {name} ({name}): ")
    assert message in e.value.errors[0]


def test_a_missing_module_and_every_problem_at_once(modules):
    good = modules("plug_fine", "def on_mail(tx, s): pass")
    with pytest.raises(ConfigError) as e:
        loader.load(specs({"module": "no_such_plugin_abc"}, {"module": good}, {"module": "also_missing_q"}))
    assert len(e.value.errors) == 2
    assert "no module named 'no_such_plugin_abc' and no entry point of that name" in e.value.errors[0]
    assert e.value.errors[1].startswith("plugin[2] also_missing_q")


def test_an_entry_point_plugin_loads_by_name(tmp_path, monkeypatch):
    pkg = tmp_path / "acme_ep_impl.py"
    pkg.write_text("def on_connect(conn):\n    return None\n")
    dist = tmp_path / "acme_ep-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ep\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mta.plugins]\nacme = acme_ep_impl\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (entry,) = loader.load(specs({"module": "acme"}))
    assert set(entry.hooks) == {"on_connect"} and entry.name == "acme"


def test_plugin_tables_are_checked_for_shape():
    with pytest.raises(ConfigError) as e:
        config.load(None, {"plugin": [{"modul": "x"}, {"module": "a b"}, {"module": "m", "timeout": "soon"},
                                      {"module": "m", "options": 3}]})
    text = "\n".join(e.value.errors)
    assert "plugin[0].modul: unknown key (did you mean 'plugin[0].module'?)" in text
    assert "plugin[0].module: missing" in text
    assert "plugin[1].module: expected a module name" in text
    assert "plugin[2].timeout: expected a positive duration" in text
    assert "plugin[3].options: expected a table" in text
    with pytest.raises(ConfigError, match="distinct plugin names"):
        config.load(None, {"plugin": [{"module": "m"}, {"module": "m"}]})
    assert config.load(None, {"plugin": [{"module": "m"}]}).plugin[0].timeout == 5.0


def test_the_deprecated_route_hook_is_a_one_hook_plugin(modules, caplog):
    name = modules("old_hook", "def pick(address, ctx):\n    return 'discard'\n")
    with caplog.at_level(logging.WARNING, logger="mta.plugin"):
        (entry,) = loader.load((), route_hook=f"{name}:pick")
    assert set(entry.hooks) == {"route"} and "delivery.route_hook is deprecated" in caplog.text
    with pytest.raises(ConfigError, match="has no callable 'nope'"):
        loader.load((), route_hook=f"{name}:nope")


def test_objects_modules_and_classes_all_make_entries():
    mod = types.ModuleType("inline_mod")
    exec("def on_helo(conn, name):\n    return None\n", mod.__dict__)
    mod.on_helo.__module__ = "inline_mod"

    class Plugin:
        def __init__(self, options):
            self.options = options

        def on_auth(self, conn, user):
            return None
    assert set(loader.entry_for(mod, "m").hooks) == {"on_helo"}
    assert set(loader.entry_for(Plugin, "c", {"a": 1}).hooks) == {"on_auth"}
    assert loader.entry_for(Plugin, "c", {"a": 1}).obj.options == {"a": 1}


def test_hook_stats_count_calls_time_and_failures_of_hooks_that_ran(loop):
    def slow_ok(tx, address):
        return None

    async def waits(tx, address):
        await asyncio.sleep(0.01)
        return None

    def broken(tx, address):
        raise RuntimeError("boom")

    c = chain({"on_rcpt": slow_ok, "on_mail": broken}, {"on_rcpt": waits})

    async def main():
        for _ in range(3):
            r = c.run(c.on_rcpt, (None, "a@b.test"))
            assert (await r if isinstance(r, asyncio.Future) else r) is None
        assert c.run(c.on_mail, (None, "a@b.test")) is FAILED

    loop.run_until_complete(main())
    stats = {(p, h): (n, secs, f) for p, h, n, secs, f in c.hook_stats()}
    assert stats.keys() == {("p0", "on_rcpt"), ("p0", "on_mail"), ("p1", "on_rcpt")}  # only hooks that exist
    assert stats[("p0", "on_rcpt")][0] == 3 and stats[("p0", "on_rcpt")][2] == 0
    assert stats[("p0", "on_mail")][0] == 1 and stats[("p0", "on_mail")][2] == 1
    n, secs, failures = stats[("p1", "on_rcpt")]
    assert n == 3 and secs >= 0.03 and failures == 0  # an async hook's waits are its time
