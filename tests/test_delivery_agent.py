"""The delivery agent (mta.delivery.agent): SMTP delivery in a child process,
against a real aiosmtpd peer. Byte-exact delivery and per-recipient results
through the process boundary, jobs of a killed agent deferred (never lost,
never bounced), a new agent for the next job, a clean close, and the agent's
death with the process that started it."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from mta.delivery import OutMessage, OutRcpt
from mta.delivery.agent import _MAX_FRAME, AgentDelivery, _Framed

from smtpkit import OPTS, Capture, aiosmtpd_peer, message, run, target


def test_delivers_byte_exact_with_per_recipient_results():
    h = Capture(rcpt_replies={"nobody": "550 5.1.1 no such user", "later": "451 4.2.0 try later"})
    octets = bytes(b for b in range(1, 256) if b not in (10, 13))
    data = b"Subject: agent\r\n\r\n" + b"\r\n".join([octets] * 40) + b"\r\n.dot line\r\n"

    async def go(port):
        d = AgentDelivery()
        try:
            msg = OutMessage("QA1", "from@src.test", (OutRcpt("a@dst.test", ("SUCCESS",), "rfc822;a@dst.test", 0),
                                                     OutRcpt("nobody@dst.test", index=1),
                                                     OutRcpt("later@dst.test", index=2)),
                             data, body="8BITMIME")
            res = await d.deliver("k", [target(port)], OPTS, msg)
            res2 = await d.deliver("k", [target(port)], OPTS, message("b@dst.test"))
            return res, res2, d.agents_started
        finally:
            await d.close()

    with aiosmtpd_peer(h) as port:
        res, res2, started = run(go(port))
    assert [(r.address, r.code, r.enhanced) for r in res] == [
        ("a@dst.test", 250, "2.0.0"), ("nobody@dst.test", 550, "5.1.1"), ("later@dst.test", 451, "4.2.0")]
    assert res[0].remote_ip == "127.0.0.1" and res[0].remote_host == "mx.test" and res[0].tls == "none"
    assert res2[0].code == 250
    assert started == 1  # one agent for both jobs
    first = h.envelopes[0]
    assert first["rcpt_tos"] == ["a@dst.test"]
    assert first["data"] == data  # 8-bit octets and the dot line through both processes


def test_killed_agent_defers_its_jobs_and_the_next_job_starts_a_new_one():
    h = Capture(data_delay=3.0)  # the first delivery is in flight when the agent is killed

    async def go(port):
        d = AgentDelivery()
        try:
            slow = asyncio.ensure_future(d.deliver("k", [target(port)], OPTS, message("a@dst.test")))
            for _ in range(200):  # until the peer is inside DATA
                if h.active:
                    break
                await asyncio.sleep(0.02)
            assert h.active, "the delivery never reached DATA"
            pid = d._proc.pid
            os.kill(pid, signal.SIGKILL)
            res = await asyncio.wait_for(slow, 10)
            h.data_delay = 0.0
            again = await d.deliver("k", [target(port)], OPTS, message("b@dst.test"))
            return res, again, d.agents_started, pid, d._proc.pid
        finally:
            await d.close()

    with aiosmtpd_peer(h) as port:
        res, again, started, old, new = run(go(port))
    assert (res[0].code, res[0].enhanced) == (451, "4.3.0")  # deferred: retried later, not bounced
    assert "agent died" in res[0].text
    assert again[0].code == 250
    assert started == 2 and old != new


def test_submit_runs_jobs_through_a_running_agent_and_defers_them_when_it_dies():
    """The queue's callback lane: `submit` declines before the agent runs and after
    close; in between each callback gets its results once, 451s if the agent dies."""
    h = Capture(data_delay=3.0)

    async def go(port):
        d = AgentDelivery()
        loop = asyncio.get_running_loop()
        got: dict[str, list] = {}

        def into(name):
            def done(res):
                assert name not in got, f"{name}: called twice"
                got[name] = res
            return done

        before = d.submit("k", [target(port)], OPTS, message("x@dst.test"), into("x"))
        h.data_delay = 0.0
        await d.deliver("k", [target(port)], OPTS, message("a@dst.test"))  # starts the agent
        ok = d.submit("k", [target(port)], OPTS, message("b@dst.test"), into("b"))
        while "b" not in got:
            await asyncio.sleep(0.01)
        h.data_delay = 3.0
        d.submit("k", [target(port)], OPTS, message("c@dst.test"), into("c"))
        while not h.active:
            await asyncio.sleep(0.01)
        os.kill(d._proc.pid, signal.SIGKILL)
        deadline = loop.time() + 10
        while "c" not in got and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await d.close()
        after = d.submit("k", [target(port)], OPTS, message("y@dst.test"), into("y"))
        return before, ok, after, got

    with aiosmtpd_peer(h) as port:
        before, ok, after, got = run(go(port))
    assert before is False and after is False and ok is True
    assert set(got) == {"b", "c"}  # nothing for the declined ones
    assert got["b"][0].code == 250 and got["b"][0].address == "b@dst.test"
    assert (got["c"][0].code, got["c"][0].enhanced) == (451, "4.3.0") and "agent died" in got["c"][0].text


def test_close_quits_pooled_connections_and_the_agent_exits():
    h = Capture()

    async def go(port):
        d = AgentDelivery()
        await d.deliver("k", [target(port)], OPTS, message("a@dst.test"))
        proc = d._proc
        await d.close()
        after = await d.deliver("k", [target(port)], OPTS, message("b@dst.test"))
        return proc.returncode, after

    with aiosmtpd_peer(h) as port:
        code, after = run(go(port))
    assert code == 0
    assert (after[0].code, after[0].enhanced) == (451, "4.3.2")  # after close: deferred, never sent
    assert len(h.envelopes) == 1


def test_an_empty_recipient_list_needs_no_agent():
    async def go():
        d = AgentDelivery()
        res = await d.deliver("k", [target(9)], OPTS, OutMessage("Q", "a@b", (), b"x\r\n"))
        await d.close()
        return res, d.agents_started

    assert run(go()) == ([], 0)


def test_agent_dies_with_the_process_that_started_it(tmp_path):
    """SIGKILL of the worker (here: a small script standing in for it) takes the agent along."""
    pidfile = tmp_path / "agent.pid"
    script = textwrap.dedent(f"""
        import asyncio, os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from mta.delivery.agent import AgentDelivery
        async def main():
            d = AgentDelivery()
            await d._start()
            open({str(pidfile)!r}, "w").write(str(d._proc.pid))
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    worker = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 30
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        agent = int(pidfile.read_text())
        os.kill(agent, 0)  # it runs
        worker.kill()
        worker.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(agent, 0)
            except ProcessLookupError:
                break
            try:  # a zombie until init reaps it: look at its state
                with open(f"/proc/{agent}/stat") as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"the agent (pid {agent}) outlived its worker")
    finally:
        if worker.poll() is None:
            worker.kill()


def test_an_agent_that_cannot_start_defers(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")

    async def go():
        d = AgentDelivery()
        res = await d.deliver("k", [target(9)], OPTS, message("a@dst.test"))
        await d.close()
        return res

    (r,) = run(go())
    assert (r.code, r.enhanced) == (451, "4.3.0") and "did not start" in r.text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=300), max_size=4), min_size=1, max_size=6),
       st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_frames_read_the_same_for_every_split(batches, cuts):
    """_Framed.data_received: whatever the reads cut, the same items in the same order,
    nothing left over, and a frame over the limit aborts."""
    import marshal

    wire = b"".join(len(p).to_bytes(4, "big") + p for p in (marshal.dumps([tuple(b)]) for b in batches))
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})

    async def read(chunks):
        got: list = []
        f = _Framed(got.extend, lambda exc: None)
        for c in chunks:
            f.data_received(c)
        return got, bytes(f._buf)

    whole = run(read([wire]))
    assert whole == ([tuple(b) for b in batches], b"")
    assert run(read([wire[a:b] for a, b in zip(bounds, bounds[1:])])) == whole
    assert run(read([wire[i:i + 1] for i in range(len(wire))])) == whole


def test_a_frame_over_the_limit_aborts_the_connection():
    class T:
        aborted = False

        def abort(self):
            self.aborted = True

    async def go():
        f = _Framed(lambda items: None, lambda exc: None)
        f.transport = t = T()
        f.data_received((_MAX_FRAME + 1).to_bytes(4, "big") + b"x")
        return t.aborted

    assert run(go())


def test_a_malformed_job_in_the_agents_first_read_is_answered():
    """Jobs sent before the agent was up come in its first read, which may run before
    create_unix_connection has returned to the agent (seen under load): a malformed one
    still gets its ("err", ...) answer through the agent's protocol, and the agent goes
    on serving. The early read is made certain here by delivering it from inside
    create_unix_connection."""
    import marshal
    import socket

    from mta.delivery.agent import _serve

    payload = marshal.dumps([("job", 7, "key", [], (), ("too", "short")), ("close", 0)])

    async def go():
        loop = asyncio.get_running_loop()
        real = loop.create_unix_connection

        async def early_read(factory, **kw):
            transport, protocol = await real(factory, **kw)
            protocol.data_received(len(payload).to_bytes(4, "big") + payload)
            return transport, protocol

        loop.create_unix_connection = early_read
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        await asyncio.wait_for(_serve(os.dup(theirs.fileno())), 30)
        theirs.close()
        ours.settimeout(5)
        got = b""
        while len(got) < 4 or len(got) < 4 + int.from_bytes(got[:4], "big"):
            chunk = ours.recv(65536)
            assert chunk, f"the agent closed without answering: {got!r}"
            got += chunk
        ours.close()
        return got

    got = run(go())
    items = marshal.loads(got[4:4 + int.from_bytes(got[:4], "big")])
    assert items[0][:2] == ("err", 7) and "SmtpOptions" in items[0][2], items


def test_a_delivered_job_with_its_log_context_is_logged_by_the_agent(tmp_path):
    """submit(..., log=(arrival, attempts)): when every recipient is delivered the agent
    writes the delivery-log records (through the fd it was given) and answers LOGGED;
    when one is not, the worker gets the results and nothing is written by the agent."""
    import json

    from mta.delivery.agent import LOGGED

    h = Capture(rcpt_replies={"nobody": "550 5.1.1 no such user"})
    path = tmp_path / "delivery.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.unlink(path)  # the agent writes through the worker's fd (as after a privilege drop), not by name

    async def go(port):
        d = AgentDelivery(log_fd=fd)
        await d.deliver("k", [target(port)], OPTS, message("first@dst.test"))  # starts the agent
        got: dict[str, object] = {}
        arrival = time.time() - 60
        ok = message("a@dst.test", "b@dst.test")._replace(queue_id="QOK", arrival=arrival)
        mixed = message("c@dst.test", "nobody@dst.test")._replace(queue_id="QMIX", arrival=arrival)
        assert d.submit("k", [target(port)], OPTS, ok, lambda res: got.setdefault("ok", res), log=(arrival, (1, 3)))
        assert d.submit("k", [target(port)], OPTS, mixed, lambda res: got.setdefault("mixed", res), log=(arrival, (1, 1)))
        while len(got) < 2:
            await asyncio.sleep(0.01)
        await d.close()  # the agent flushes its log as it exits
        return got

    with aiosmtpd_peer(h) as port:
        got = run(go(port))
    assert got["ok"] is LOGGED
    mixed = got["mixed"]
    assert [(r.address, r.code) for r in mixed] == [("c@dst.test", 250), ("nobody@dst.test", 550)]
    with open(f"/proc/self/fd/{fd}", "rb") as f:
        text = f.read().decode()
    os.close(fd)
    assert not path.exists()
    recs = [json.loads(line) for line in text.splitlines()]
    assert [(r["queue_id"], r["recipient"], r["status"], r["attempt"]) for r in recs] == [
        ("QOK", "a@dst.test", "delivered", 1), ("QOK", "b@dst.test", "delivered", 3)]
    assert all(60 <= r["delay_s"] < 90 and r["reply"].startswith("250") and r["remote_ip"] == "127.0.0.1"
               for r in recs), recs


def test_prestart_runs_the_agent_before_any_job_and_close_waits_for_a_start_under_way():
    h = Capture()

    async def go(port):
        d = AgentDelivery()
        d.prestart()
        d.prestart()  # a second call while it starts: still one agent
        try:
            for _ in range(300):  # up to 30 s: an interpreter starting on a loaded machine
                if d._proto is not None:
                    break
                await asyncio.sleep(0.1)
            up = d._proto is not None and d._proc.returncode is None
            # Its first job goes straight through the running agent (the callback form).
            got = asyncio.get_running_loop().create_future()
            took = d.submit("k", [target(port)], OPTS, message("a@dst.test"), got.set_result)
            res = await asyncio.wait_for(got, 30)
        finally:
            await d.close()
        # Closed while starting: close() waits for the start, then stops that agent.
        d2 = AgentDelivery()
        d2.prestart()
        await d2.close()
        return up, took, res, d.agents_started, d2._proc

    with aiosmtpd_peer(h) as port:
        up, took, res, started, proc2 = run(go(port))
    assert up and took
    assert [(r.address, r.code) for r in res] == [("a@dst.test", 250)]
    assert started == 1
    assert proc2 is None or proc2.returncode is not None  # no agent left running


def test_spooled_jobs_are_made_from_the_spool_and_answered_once_each(tmp_path):
    """submit_spooled: the job is made from the spool entry (Rust), delivered byte-exact;
    a message that is not fresh is answered UNSENT without anything sent; a job in flight
    when the agent dies is answered Deferred (the caller makes the 451s)."""
    from mta._native import Spool
    from mta.delivery.agent import UNSENT, Deferred, LOGGED

    from test_spool import completions, fill

    h = Capture(rcpt_replies={"nobody": "550 5.1.1 no such user"})
    spool = Spool(str(tmp_path / "spool"), sync=False)
    data = b"Subject: spooled\r\n\r\n" + bytes(b for b in range(32, 256)) + b"\r\n.dot\r\n"

    def store(*rcpts):
        qid = spool.new_queue_id()
        spool.submit(len(rcpts) * 100 + ord(rcpts[0][0]), qid, fill(spool, data), sender="from@src.test",
                     recipients=[(r, None, None) for r in rcpts], body="8BITMIME")
        return qid

    ok, mixed, attempted, slow = store("a@dst.test"), store("b@dst.test", "nobody@dst.test"), \
        store("c@dst.test"), store("d@dst.test")
    asyncio.run(completions(spool, 4))
    spool.update(9, attempted, [(0, "deferred", 1, time.time() + 60, "451 4.0.0 later")])
    asyncio.run(completions(spool, 1))

    async def go(port):
        d = AgentDelivery(log_fd=os.open(os.devnull, os.O_WRONLY), encode=spool.encode_jobs)
        d.prestart()
        for _ in range(300):
            if d._proto is not None:
                break
            await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        futs = {q: loop.create_future() for q in (ok, mixed, attempted)}
        try:
            def logged(ids):  # delivered and logged by the agent: by queue id, to `logged`
                for i in ids:
                    futs[i].set_result((i, LOGGED))

            for q, f in futs.items():
                assert d.submit_spooled("k", [target(port)], OPTS, q, lambda qid, out, f=f: f.set_result((qid, out)),
                                        logged)
            got = {q: await asyncio.wait_for(f, 30) for q, f in futs.items()}
            assert all(qid == q for q, (qid, _) in got.items())
            got = {q: out for q, (_, out) in got.items()}
            # The LOGGED ones of one answer frame come to `logged` in one call, as a list of
            # queue ids; everything else to `done`.
            batched: list = []
            more = [store("e@dst.test"), store("f@dst.test"), store("g@dst.test", "nobody@dst.test")]
            await completions(spool, 3)
            other = loop.create_future()
            for q in more:
                assert d.submit_spooled("k", [target(port)], OPTS, q,
                                        lambda qid, out: other.set_result((qid, out)), batched.extend)
            qid, out = await asyncio.wait_for(other, 30)
            assert qid == more[2] and [(r.address, r.code) for r in out] == [
                ("g@dst.test", 250), ("nobody@dst.test", 550)]
            for _ in range(300):
                if len(batched) == 2:
                    break
                await asyncio.sleep(0.02)
            assert sorted(batched) == sorted(more[:2])
            # With SmtpOptions.report (on_delivered hooks): the rows come with the logged ids.
            reported = loop.create_future()
            q = store("h@dst.test")
            await completions(spool, 1)
            assert d.submit_spooled("k", [target(port)], dataclasses.replace(OPTS, report=True), q,
                                    lambda qid, out: reported.set_result(out),
                                    lambda ids, rows=None: reported.set_result((ids, rows)))
            ids, rows = await asyncio.wait_for(reported, 30)
            assert ids == [q] and [(r[0], r[1]) for r in rows[q]] == [("h@dst.test", 250)]
            h.data_delay = 3.0
            dying = loop.create_future()
            assert d.submit_spooled("k", [target(port)], OPTS, slow, lambda qid, out: dying.set_result(out),
                                    batched.extend)
            for _ in range(200):  # until the peer is inside DATA
                if h.active:
                    break
                await asyncio.sleep(0.02)
            os.kill(d._proc.pid, signal.SIGKILL)
            got[slow] = await asyncio.wait_for(dying, 10)
        finally:
            await d.close()
        return got

    try:
        with aiosmtpd_peer(h) as port:
            got = run(go(port))
    finally:
        spool.close()
    assert got[ok] is LOGGED
    assert [(r.address, r.code, r.enhanced) for r in got[mixed]] == [
        ("b@dst.test", 250, "2.0.0"), ("nobody@dst.test", 550, "5.1.1")]
    assert got[attempted] is UNSENT
    assert got[slow] == Deferred("4.3.0", "delivery agent died; will retry")
    delivered = [e for e in h.envelopes if e["rcpt_tos"] == ["a@dst.test"]]
    assert len(delivered) == 1 and delivered[0]["data"] == data
    assert not any("c@dst.test" in e["rcpt_tos"] for e in h.envelopes)  # nothing sent for it


def test_spooled_jobs_that_cannot_be_made_are_handed_back_not_lost():
    """A failing encoder (a bug) sends nothing and names every job left out, so the queue
    takes their general path instead of waiting on answers that never come."""
    async def go():
        left: list = []

        def broken(jobs):
            raise RuntimeError("boom")

        f = _Framed(lambda items: None, lambda exc: None, broken, left.extend)
        f.send_spooled((7, "Q7", b"N"))
        f.send_spooled((8, "Q8", b"N"))
        f.flush()
        return left

    assert run(go()) == [7, 8]
