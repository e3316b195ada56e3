"""The shaping admin commands (issue 22): the control requests' new fields, the suspend,
resume, flags and bounce ops against a real ControlServer over its socket with a real spool
and queue manager (a stand-in wire answers deliveries), and `mta queue summary`'s buckets."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time

import pytest
import uvloop

import mta
from click.testing import CliRunner
from dnsserver import dns_server  # noqa: F401  (the fixture)
from hypothesis import given, settings
from hypothesis import strategies as st
from mta.app import control, control_server, shaping_cli
from mta.app.cli import main as cli_main
from mta.app.control import MAX_SITE, Request, RequestError, parse_request
from mta.config import schema as config
from mta.delivery import RcptResult
from mta.delivery.deliverylog import DeliveryLog
from mta.delivery.mtasts import OutboundTls
from mta.delivery.mx import MxResolver
from mta.delivery.router import Router
from mta.delivery.transport import Maildir, Smtp, Transports
from mta.queue.manager import QueueManager
from mta.queue.store import SpoolService

BODY = b"From: <from@sender.test>\r\nTo: <a@dest.test>\r\nSubject: shaping admin\r\n\r\nhello\r\n"
SENDER = "from@sender.test"
# The mta package this test imported (the installed one, or the tree's with a built
# extension): the CLI processes must run the same one.
PYTHON = os.path.dirname(os.path.dirname(os.path.abspath(mta.__file__)))


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# --- the request line ------------------------------------------------------------------

@pytest.mark.parametrize("obj, want", [
    ({"op": "suspend", "domain": "Example.COM.", "until": 1700000000.5},
     Request("suspend", domain="example.com", until=1700000000.5)),
    ({"op": "suspend", "site": "*.Mail.Protection.Outlook.com", "until": 1700000000},
     Request("suspend", site="*.mail.protection.outlook.com", until=1700000000.0)),
    ({"op": "suspend", "site": "mx1.a.test,mx2.a.test", "until": 0}, Request("suspend", site="mx1.a.test,mx2.a.test",
                                                                            until=0.0)),
    ({"op": "suspend", "site": "s" * MAX_SITE, "until": 1}, Request("suspend", site="s" * MAX_SITE, until=1.0)),
    ({"op": "resume", "domain": "xn--bcher-kva.example"}, Request("resume", domain="xn--bcher-kva.example")),
    ({"op": "resume", "site": "[2001:db8::1]"}, Request("resume", site="[2001:db8::1]")),
    ({"op": "flags"}, Request("flags")),
    ({"op": "flags", "all": False}, Request("flags")),
    ({"op": "bounce", "domain": "dest.test"}, Request("bounce", domain="dest.test")),
    ({"op": "hold", "ids": ["Q1"]}, Request("hold", ("Q1",))),  # the old forms are unchanged
])
def test_good_shaping_requests(obj, want):
    assert parse_request(line(obj)) == want


@pytest.mark.parametrize("obj, message", [
    ({"op": "suspend", "until": 1}, "suspend needs either domain or site"),
    ({"op": "suspend", "domain": "a.test", "site": "s", "until": 1}, "suspend needs either domain or site"),
    ({"op": "suspend", "domain": "a.test"}, "suspend needs until"),
    ({"op": "resume"}, "resume needs either domain or site"),
    ({"op": "resume", "domain": "a.test", "until": 5}, "resume takes no until"),
    ({"op": "bounce"}, "bounce needs domain"),
    ({"op": "bounce", "site": "mx.a.test"}, "bounce takes no site"),
    ({"op": "bounce", "domain": "a.test", "until": 1}, "bounce takes no until"),
    ({"op": "flags", "domain": "a.test"}, "flags takes no domain"),
    ({"op": "flags", "all": True}, "flags takes no ids and no all"),
    ({"op": "suspend", "domain": "a.test", "until": 1, "ids": ["Q"]}, "suspend takes no ids and no all"),
    ({"op": "bounce", "domain": "a.test", "all": True}, "bounce takes no ids and no all"),
    ({"op": "hold", "ids": ["Q"], "domain": "a.test"}, "hold takes no domain"),
    ({"op": "ping", "site": "x"}, "ping takes no site"),
    ({"op": "flush", "all": True, "until": 3}, "flush takes no until"),
    ({"op": "bounce", "domain": "a b.test"}, "bad domain 'a b.test'"),
    ({"op": "bounce", "domain": ""}, "bad domain ''"),
    ({"op": "bounce", "domain": "192.0.2.1"}, "bad domain '192.0.2.1'"),
    ({"op": "bounce", "domain": 5}, "bad domain 5"),
    ({"op": "bounce", "domain": "x" * 300}, "bad domain"),
    ({"op": "bounce", "domain": "bücher.example"}, "IDNs as xn--"),
    ({"op": "resume", "site": ""}, "bad site ''"),
    ({"op": "resume", "site": "a b"}, "no spaces"),
    ({"op": "resume", "site": "a\tb"}, "printable"),
    ({"op": "resume", "site": "a\x00"}, "printable"),
    ({"op": "resume", "site": "s" * (MAX_SITE + 1)}, f"1-{MAX_SITE} printable characters"),
    ({"op": "resume", "site": ["mx.a.test"]}, "bad site"),
    ({"op": "suspend", "site": "s", "until": -1}, "bad until -1"),
    ({"op": "suspend", "site": "s", "until": "1700000000"}, "bad until '1700000000'"),
    ({"op": "suspend", "site": "s", "until": True}, "bad until True"),
    ({"op": "suspend", "site": "s", "until": None}, "bad until None"),
    ({"op": "suspend", "site": "s", "until": 2.0 ** 40}, "bad until"),
    ({"op": "suspend", "site": "s", "until": math.inf}, "bad until inf"),
    ({"op": "suspend", "site": "s", "until": math.nan}, "bad until nan"),
    ({"op": "suspend", "site": "s", "until": 1, "force": True}, "unknown request field(s): 'force'"),
    ({"op": "SUSPEND", "site": "s", "until": 1}, "op must be one of"),
])
def test_bad_shaping_requests_say_what_is_wrong(obj, message):
    with pytest.raises(RequestError) as e:
        parse_request(line(obj))
    assert message in str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["op", "ids", "all", "domain", "site", "until"]),
                       st.one_of(st.sampled_from(control.OPS), st.text(max_size=300), st.floats(),
                                 st.integers(), st.booleans(), st.none(), st.lists(st.text(max_size=5)))))
def test_any_request_object_parses_or_is_refused_with_a_request_error(obj):
    try:
        req = parse_request(line(obj))
    except RequestError:
        return
    assert req.op in control.OPS
    if req.site is not None:
        assert 0 < len(req.site) <= MAX_SITE and req.site.isprintable() and " " not in req.site
    if req.until is not None:
        assert math.isfinite(req.until) and req.until >= 0


@given(st.text(min_size=1, max_size=MAX_SITE))
def test_a_site_is_taken_exactly_when_printable_without_spaces(site):
    ok = site.isprintable() and " " not in site
    try:
        req = parse_request(line({"op": "resume", "site": site}))
    except RequestError:
        assert not ok
    else:
        assert ok and req.site == site.lower()


# --- a real ControlServer over its socket -------------------------------------------------

class MemThrottle:
    """The throttle interface (mta.delivery.shaping.throttle.Throttle), in memory: flags only."""

    def __init__(self) -> None:
        self._flags: dict[str, float] = {}
        self.stats: dict[str, int] = {}

    def take(self, key: str, interval: float, burst: int, n: int = 1) -> float:
        return 0.0

    async def acquire(self, key: str, limit: int) -> bool:
        return True

    def release(self, key: str) -> None:
        pass

    async def set_until(self, key: str, until: float) -> None:
        if until:
            self._flags[key] = until
        else:
            self._flags.pop(key, None)

    def until(self, key: str) -> float:
        t = self._flags.get(key, 0.0)
        return t if t > time.time() else 0.0

    def flags(self) -> dict[str, float]:
        now = time.time()
        return {k: t for k, t in self._flags.items() if t > now}

    async def close(self) -> None:
        pass


class Wire:
    """Stands in for the delivery agent (the smarthost route's peer): answers 250, or what
    the local part asks; while `gate` is clear an attempt waits for it (one in flight)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str], bytes]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.answers = {"later": (451, "4.3.0")}

    def _results(self, msg) -> list[RcptResult]:
        self.sent.append((msg.sender, [r.address for r in msg.recipients], bytes(msg.data)))
        return [RcptResult(r.address, *self.answers.get(r.address.split("@")[0], (250, "2.0.0")), "answer",
                           "peer.test", "127.0.0.1", "none") for r in msg.recipients]

    def submit(self, key, targets, opts, msg, done, log=None) -> bool:
        async def later():
            await self.gate.wait()
            done(self._results(msg))
        asyncio.get_running_loop().create_task(later())
        return True

    def submit_spooled(self, *args) -> bool:
        return False

    async def deliver(self, key, targets, opts, msg):
        await self.gate.wait()
        return self._results(msg)

    def prestart(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Shard:
    """Shard 0 of a spool in tmp: its store, a queue manager delivering to the Wire, and the
    ControlServer on <spool>/0/control.sock with a MemThrottle. Content first, then start()."""

    def __init__(self, tmp, throttle=True) -> None:
        self.tmp = str(tmp)
        self.root = os.path.join(self.tmp, "spool")
        self.cfg = config.load(None, {"listen": ["127.0.0.1:2525"], "spool.dir": self.root,
                                      "hostname": "mx.example.test",
                                      "delivery.log_file": os.path.join(self.tmp, "delivery.log"),
                                      "delivery.relay_to": "127.0.0.1:2626", "delivery.mta_sts": False,
                                      "delivery.retry_schedule": [3600], "delivery.retry_jitter": 0})
        self.wire = Wire()
        self.throttle = MemThrottle() if throttle else None

    async def __aenter__(self) -> "Shard":
        cfg = self.cfg
        self.store = SpoolService(cfg.spool, cfg.smtp.max_header_size, 0, cfg.hostname)
        self.store.attach(asyncio.get_running_loop())
        d = cfg.delivery
        smtp = Smtp(self.wire, MxResolver(None), OutboundTls(None, 0), d, cfg.hostname)
        self.queue = QueueManager(self.store, Router(cfg), Transports(smtp, Maildir(cfg.hostname)),
                                  DeliveryLog(d.log_file), d, cfg.hostname)
        self.control = control_server.ControlServer(self.store, self.queue, self.queue.dlog,
                                             control.socket_path(self.root, 0), 0, throttle=self.throttle)
        return self

    async def start(self) -> None:
        self.queue.start()
        await self.control.start()

    async def __aexit__(self, *exc) -> None:
        await self.control.stop()
        await self.queue.stop(grace=5)
        self.store.close()

    async def message(self, *rcpts: str, arrival: float | None = None, held_by: str | None = None,
                      deferred: bool = False) -> str:
        """Spool a message to `rcpts`; `held_by`: each recipient deferred as a suspension of
        that site holds it back (an hour from now); `deferred`: an ordinary deferral."""
        qid = self.store.new_queue_id()
        m = self.store.new_message()
        m.push(BODY)
        fut = asyncio.get_running_loop().create_future()
        self.store.submit(qid, m, lambda err: fut.set_result(err), sender=SENDER,
                          recipients=[(r, None, None) for r in rcpts], arrival=arrival)
        assert await fut is None
        later = time.time() + 3600
        if held_by is not None:
            reply = f"451 4.7.0 shaping: site suspended until {later:.0f}: {held_by}"
            await self.store.update(qid, [(i, "deferred", 0, later, reply) for i in range(len(rcpts))])
        elif deferred:
            await self.store.update(qid, [(i, "deferred", 1, later, "451 4.3.0 later") for i in range(len(rcpts))])
        return qid

    async def ask(self, request: dict) -> dict:
        """One request over the real socket (the client blocks: a thread)."""
        return await asyncio.to_thread(control.call, self.root, 0, request)

    async def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`mta queue ARGS --spool ROOT` as a process, while this loop serves its socket."""
        env = dict(os.environ, PYTHONPATH=PYTHON + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "mta", "queue", *args, "--spool", self.root]
        return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60, env=env)

    def log(self) -> list[dict]:
        path = os.path.join(self.tmp, "delivery.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(x) for x in f if x.strip()]

    async def until(self, what: str, pred, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while not (got := pred()):
            assert time.monotonic() < deadline, what
            await asyncio.sleep(0.02)
        return got


def run(coro):
    return uvloop.run(coro)


def test_suspend_flags_and_clear_over_the_socket(tmp_path):
    async def main():
        async with Shard(tmp_path) as s:
            await s.start()
            until = time.time() + 600
            out = [await s.ask({"op": "suspend", "domain": "Dest.Test", "until": until}),
                   await s.ask({"op": "suspend", "site": "*.yahoodns.net", "until": until + 60}),
                   await s.ask({"op": "flags"})]
            out.append(await s.ask({"op": "suspend", "site": "*.yahoodns.net", "until": 0}))
            out.append(await s.ask({"op": "flags"}))
            return until, out, s.throttle.until("suspend|@dest.test")

    until, out, flag = run(main())
    assert out[0] == {"ok": True, "key": "suspend|@dest.test", "until": until, "shard": 0}
    assert out[1]["key"] == "suspend|*.yahoodns.net"
    assert out[2] == {"ok": True, "flags": {"suspend|@dest.test": until, "suspend|*.yahoodns.net": until + 60},
                      "shard": 0}
    assert out[3]["until"] == 0.0
    assert out[4]["flags"] == {"suspend|@dest.test": until}
    assert flag == until


def test_without_a_throttle_the_shaping_ops_say_so(tmp_path):
    async def main():
        async with Shard(tmp_path, throttle=False) as s:
            await s.start()
            errors = []
            for req in ({"op": "flags"}, {"op": "suspend", "site": "x", "until": 1}, {"op": "resume", "site": "x"}):
                with pytest.raises(control.ControlError) as e:
                    await s.ask(req)
                errors.append(str(e.value))
            with pytest.raises(control.ControlError) as e:  # a bad field is refused before any op
                await s.ask({"op": "suspend", "site": "a b", "until": 1})
            errors.append(str(e.value))
            return errors

    errors = run(main())
    assert all("no shaping throttle" in e for e in errors[:3]), errors
    assert "no spaces" in errors[3]


def test_resume_clears_the_flag_and_makes_due_what_it_held(tmp_path):
    """Messages held by the domain's suspension are delivered at once after resume; those
    held by another site's, and ordinary deferrals, keep their times."""
    async def main():
        async with Shard(tmp_path) as s:
            held = await s.message("a@dest.test", "b@dest.test", held_by="@dest.test")
            other = await s.message("c@dest.test", held_by="mx.other.test")
            plain = await s.message("d@dest.test", deferred=True)
            await s.throttle.set_until("suspend|@dest.test", time.time() + 3600)
            await s.start()
            before = s.store.get(held).recipients[0].next_attempt
            reply = await s.ask({"op": "resume", "domain": "dest.test"})
            await s.until("the held message delivered", lambda: s.store.get(held) is None)
            left = {q: [(r.state, r.attempts, r.next_attempt) for r in s.store.get(q).recipients]
                    for q in (other, plain)}
            again = await s.ask({"op": "resume", "domain": "dest.test"})
            return held, before, reply, left, again, s.wire.sent, s.throttle.flags(), s.log()

    held, before, reply, left, again, sent, flags, log = run(main())
    assert reply["ok"] and reply["key"] == "suspend|@dest.test" and reply["was"] == pytest.approx(before, abs=1)
    assert reply["counts"] == {"due": 1, "active": 0}
    assert flags == {}
    assert [(snd, rcpts) for snd, rcpts, _ in sent] == [(SENDER, ["a@dest.test", "b@dest.test"])]
    assert [(r["queue_id"], r["status"], r["attempt"]) for r in log] == [(held, "delivered", 1)] * 2
    for states in left.values():
        assert states[0][0] == "deferred" and states[0][2] > time.time() + 3000
    assert again["counts"] == {"due": 0, "active": 0} and again["was"] == 0.0


def test_resume_of_a_site_matches_its_name_exactly(tmp_path):
    async def main():
        async with Shard(tmp_path) as s:
            a = await s.message("a@one.test", held_by="mx1.hoster.test,mx2.hoster.test")
            b = await s.message("b@two.test", held_by="mx1.hoster.test")
            await s.start()
            reply = await s.ask({"op": "resume", "site": "MX1.hoster.test,mx2.hoster.test"})
            await s.until("delivered", lambda: s.store.get(a) is None)
            return reply, s.store.get(b) is not None

    reply, b_left = run(main())
    assert reply["counts"]["due"] == 1 and b_left


def test_bounce_makes_a_dsn_and_bounced_records(tmp_path):
    """Every not-final recipient of the domain is bounced: the DSN (RFC 3464) to the sender,
    bounced records in the delivery log; other domains' recipients stay queued."""
    async def main():
        async with Shard(tmp_path) as s:
            both = await s.message("a@dest.test", "x@else.test", deferred=True)
            only = await s.message("b@DEST.test", held_by="@dest.test")
            other = await s.message("y@else.test", deferred=True)
            sub = await s.message("z@sub.dest.test", deferred=True)
            await s.start()
            reply = await s.ask({"op": "bounce", "domain": "dest.test"})
            await s.until("the DSN delivered", lambda: [m for m in s.wire.sent if m[0] == ""])
            states = {q: (None if (e := s.store.get(q)) is None else [(r.address, r.state) for r in e.recipients])
                      for q in (both, only, other, sub)}
            again = await s.ask({"op": "bounce", "domain": "dest.test"})
            return (both, only, other, sub), reply, states, again, s.wire.sent, s.log()

    (both, only, other, sub), reply, states, again, sent, log = run(main())
    assert reply == {"ok": True, "counts": {"bounced": 2}, "recipients": 2, "shard": 0}
    assert states[both] == [("a@dest.test", "bounced"), ("x@else.test", "deferred")]
    assert states[only] is None  # every recipient final: the message is gone
    assert states[other] == [("y@else.test", "deferred")]
    assert states[sub] == [("z@sub.dest.test", "deferred")]  # the domain itself, not its subdomains
    bounced = sorted((r["queue_id"], r["recipient"], r["status"]) for r in log if r["status"] == "bounced")
    assert bounced == sorted([(both, "a@dest.test", "bounced"), (only, "b@DEST.test", "bounced")])
    assert all("bounced by the administrator (mta queue bounce)" in json.dumps(r) for r in log
               if r["status"] == "bounced")
    dsns = [m for m in sent if m[0] == ""]
    assert len(dsns) == 2 and all(rcpts == [SENDER] for _, rcpts, _ in dsns)
    text = dsns[0][2].decode()
    assert "multipart/report; report-type=delivery-status" in text
    assert "Action: failed" in text and "Status: 5.0.0" in text
    assert "bounced by the administrator (mta queue bounce)" in text
    assert again["counts"] == {} and again["recipients"] == 0


def test_bounce_waits_for_an_attempt_in_flight(tmp_path):
    """A message being delivered is excluded, its attempt waited for (it defers), then
    bounced; the manager's own method says None while the attempt lasts past its wait."""
    async def main():
        async with Shard(tmp_path) as s:
            qid = await s.message("later@dest.test")
            s.wire.gate.clear()
            await s.start()
            await s.until("in flight", lambda: qid in s.queue.active)
            reply = RcptResult("", 550, "5.0.0", "test")
            busy = await s.queue.bounce_recipients(qid, [0], reply, wait=0.2)
            asked = asyncio.ensure_future(s.ask({"op": "bounce", "domain": "dest.test"}))
            await asyncio.sleep(0.3)
            s.wire.gate.set()
            out = await asyncio.wait_for(asked, 15)
            await s.until("the DSN delivered", lambda: [m for m in s.wire.sent if m[0] == ""])
            return qid, busy, out, s.log(), s.store.get(qid)

    qid, busy, out, log, env = run(main())
    assert busy is None
    assert out["counts"] == {"bounced": 1}
    assert [(r["status"], r["attempt"]) for r in log if r["queue_id"] == qid] == [("deferred", 1), ("bounced", 2)]
    assert env is None


# --- the CLI against the running ControlServer ---------------------------------------------

def test_the_commands_over_every_running_worker(tmp_path):
    async def main():
        async with Shard(tmp_path) as s:
            await s.message("a@dest.test", deferred=True)
            await s.message("b@dest.test", held_by="@dest.test")
            await s.start()
            out = {"suspend": await s.cli("suspend", "--domain", "dest.test", "--duration", "30m")}
            out["summary"] = await s.cli("summary")
            out["summary_json"] = await s.cli("summary", "--json")
            out["resume"] = await s.cli("resume", "--domain", "dest.test")
            out["bounce"] = await s.cli("bounce", "--domain", "dest.test")
            out["both"] = await s.cli("suspend", "--domain", "dest.test", "--site", "x")
            out["neither"] = await s.cli("resume")
            out["bad"] = await s.cli("suspend", "--site", "x", "--duration", "soon")
            return out

    out = run(main())
    r = out["suspend"]
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("domain dest.test suspended until ") and "(30m00s) in 1 worker(s)" in r.stdout
    assert "suspended: domain dest.test, 29m" in out["summary"].stdout
    flags = json.loads(out["summary_json"].stdout)["flags"]
    assert list(flags) == ["suspend|@dest.test"] and flags["suspend|@dest.test"] > time.time() + 1700
    assert out["resume"].returncode == 0
    assert out["resume"].stdout.startswith("domain dest.test resumed (was suspended): 1 message(s) due now")
    assert out["bounce"].returncode == 0, out["bounce"].stderr
    assert out["bounce"].stdout.strip().startswith("domain dest.test: ")
    assert "bounced in" in out["bounce"].stdout
    for k in ("both", "neither"):
        assert out[k].returncode == 2 and "either --domain or --site" in out[k].stderr
    assert out["bad"].returncode == 2 and "--duration" in out["bad"].stderr


def test_the_commands_without_a_server_exit_1(tmp_path):
    runner = CliRunner()
    (tmp_path / "0").mkdir()
    for args in (["suspend", "--site", "mx.a.test"], ["resume", "--domain", "a.test"], ["bounce", "--domain", "a.test"]):
        r = runner.invoke(cli_main, ["queue", *args, "--spool", str(tmp_path)])
        assert r.exit_code == 1 and "no server is running" in r.output, r.output
    r = runner.invoke(cli_main, ["queue", "bounce", "--domain", "not a domain", "--spool", str(tmp_path)])
    assert r.exit_code == 2 and "is not a domain name" in r.output
    for cmd in ("summary", "suspend", "resume", "bounce"):
        r = runner.invoke(cli_main, ["queue", cmd, "--help"])
        assert r.exit_code == 0 and "--spool" in r.output


# --- mta queue summary ----------------------------------------------------------------------

@pytest.mark.parametrize("minutes, column", [
    (0, 1), (4.99, 1), (5, 2), (9.9, 2), (10, 3), (39, 4), (40, 5), (1279.9, 9), (1280, 10), (10 ** 6, 10),
])
def test_age_columns(minutes, column):
    assert shaping_cli.bucket(minutes * 60) == column
    assert shaping_cli.LABELS[column] == (f"{shaping_cli.BUCKETS[column - 1]}" if column <= 9 else "1280+")


@given(st.floats(min_value=0, max_value=1e9), st.floats(min_value=0, max_value=1e9))
def test_age_columns_grow_with_age(a, b):
    lo, hi = sorted((a, b))
    assert 1 <= shaping_cli.bucket(lo) <= shaping_cli.bucket(hi) <= len(shaping_cli.LABELS) - 1


def _spool_with_ages(tmp_path, plan) -> str:
    """A spool (closed again) holding, per (recipients, age in minutes, delivered indices),
    one message; the spool directory."""
    async def main():
        s = Shard(tmp_path, throttle=False)
        async with s:
            now = time.time()
            for rcpts, age, done in plan:
                qid = await s.message(*rcpts, arrival=now - age * 60)
                if done:
                    await s.store.update(qid, [(i, "delivered", 1, None, "250 ok") for i in done])
        return s.root
    return run(main())


def test_summary_buckets_by_domain(tmp_path):
    root = _spool_with_ages(tmp_path, [
        (["a@big.test"], 1, ()),
        (["b@big.test", "c@big.test", "x@small.test"], 7, ()),  # once per domain
        (["d@big.test"], 30, ()),
        (["e@big.test", "y@small.test"], 100, (0,)),  # big.test's recipient delivered: small only
        (["f@big.test"], 2000, ()),
        (["g@gone.test"], 3, (0,)),  # nothing left to deliver: not counted
    ])
    runner = CliRunner()
    r = runner.invoke(cli_main, ["queue", "summary", "--spool", root, "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["buckets"] == ["T", "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"]
    assert got["total"] == 6 and got["ages"] == [1, 2, 0, 1, 0, 1, 0, 0, 0, 1]
    assert got["rows"] == [
        {"name": "big.test", "total": 4, "ages": [1, 1, 0, 1, 0, 0, 0, 0, 0, 1], "recipients": 5},
        {"name": "small.test", "total": 2, "ages": [0, 1, 0, 0, 0, 1, 0, 0, 0, 0], "recipients": 2},
    ]
    assert got["rest"] == {"count": 0, "total": 0, "ages": [0] * 10}
    assert got["flags"] is None and got["flags_note"] == "no server running: flags unknown"

    top = json.loads(runner.invoke(cli_main, ["queue", "summary", "--spool", root, "--json", "--top", "1"]).output)
    assert [row["name"] for row in top["rows"]] == ["big.test"] and top["rest"]["count"] == 1
    assert top["rest"]["ages"] == [0, 1, 0, 0, 0, 1, 0, 0, 0, 0]

    text = runner.invoke(cli_main, ["queue", "summary", "--spool", root]).output.splitlines()
    assert text[0].split() == got["buckets"]
    assert text[1].split() == ["TOTAL", "6", "1", "2", "0", "1", "0", "1", "0", "0", "0", "1"]
    assert text[2].split()[:3] == ["big.test", "4", "1"]
    assert text[-1] == "no server running: flags unknown"


def test_summary_by_site_groups_domains_hosted_together(tmp_path, dns_server):
    pytest.importorskip("mta.delivery.shaping.shaper", reason="site_name comes with the lead's shaping wiring")
    dns_server.add("one.test", [("MX", "10 mx1.hoster.test"), ("MX", "20 mx2.hoster.test")])
    dns_server.add("two.test", [("MX", "5 MX2.hoster.test"), ("MX", "10 mx1.hoster.test")])
    dns_server.add("three.test", [("A", "127.0.0.1")])  # no MX: the domain itself
    root = _spool_with_ages(tmp_path, [(["a@one.test"], 1, ()), (["b@two.test"], 1, ()), (["c@two.test"], 50, ()),
                                       (["d@three.test"], 1, ()), (["e@none.test"], 1, ()),
                                       (["f@relayed.test"], 1, ())])
    cfg = tmp_path / "mta.toml"
    cfg.write_text(f'[dns]\nnameservers = ["{dns_server.host}"]\nport = {dns_server.port}\n'
                   '[transport]\n"relayed.test" = "smarthost Relay.Hoster.test:2525"\n')
    r = CliRunner().invoke(cli_main, ["queue", "summary", "--spool", root, "--config", str(cfg), "--by", "site",
                                      "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: (row["total"], sorted(row["domains"])) for row in json.loads(r.output)["rows"]}
    assert rows == {"mx1.hoster.test,mx2.hoster.test": (3, ["one.test", "two.test"]),
                    "three.test": (1, ["three.test"]), "(no such domain)": (1, ["none.test"]),
                    "relay.hoster.test": (1, ["relayed.test"])}  # a smarthost route: the smarthost
