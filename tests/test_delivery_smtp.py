"""The outbound SMTP client against real peers on loopback: aiosmtpd, our own
`mta run` (CHUNKING, DSN), `mta bench sink` (STARTTLS), and small scripted servers
where a behaviour must be forced (pipelining, 421 greetings, silence).

Every test is bounded: the client's timeouts are shortened and each test's
coroutine runs under a deadline.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta import _native
from mta.delivery import OutMessage, OutRcpt
from mta.delivery.smtp.client import ReplyError, ReplyParser, SmtpOptions, wire_body
from smtpkit import (
    OPTS, Capture, Tap, aiosmtpd_peer, client, free_port, make_cert, message, mta_process, run, scripted_server,
    server_tls, target,
)


# ---------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------


def test_reply_parser_any_split_and_errors():
    wire = b"220 mx ESMTP\r\n250-mx\r\n250-SIZE 100\r\n250 8BITMIME\r\n550 5.1.1 no such user\n"
    whole = ReplyParser().feed(wire)
    assert [r.code for r in whole] == [220, 250, 550]
    assert whole[1].lines == ["mx", "SIZE 100", "8BITMIME"]
    assert whole[2].enhanced == "5.1.1" and whole[2].text == "no such user"
    assert whole[0].enhanced is None
    for cut in range(len(wire)):
        p = ReplyParser()
        assert p.feed(wire[:cut]) + p.feed(wire[cut:]) == whole
    for bad in (b"25 x\r\n", b"250-a\r\n251 b\r\n", b"250+a\r\n", b"650 x\r\n"):
        with pytest.raises(ReplyError):
            ReplyParser().feed(bad)
    with pytest.raises(ReplyError):
        ReplyParser(max_line=16).feed(b"250 " + b"x" * 40)
    assert ReplyParser().feed(b"451 2.0.0 wrong class\r\n")[0].enhanced is None


_REPLY_PIECES = [b"220 mx ESMTP\r\n", b"250-mx\r\n", b"250 8BITMIME\r\n", b"354 go\n", b"550 5.1.1 no\r\n",
                 b"251 x\r\n", b"250", b"-", b" ", b"\r", b"\n", b"x" * 30, b"\xc3\xa9", b"\xff", b"650 x\r\n"]


@settings(max_examples=300, deadline=None)
@given(wire=st.lists(st.one_of(st.sampled_from(_REPLY_PIECES), st.binary(max_size=6)), max_size=25).map(b"".join),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=5),
       max_line=st.sampled_from([8, 16, 8192]))
def test_reply_parser_same_replies_and_error_for_every_split(wire, cuts, max_line):
    def run(chunks):
        p, out = ReplyParser(max_line=max_line), []
        for c in chunks:
            try:
                out += p.feed(c)
            except ReplyError as e:
                return out + e.replies, "error"
        return out, p.buffered
    whole = run([wire])
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    assert run([wire[a:b] for a, b in zip(bounds, bounds[1:])]) == whole
    assert run([wire[i:i + 1] for i in range(len(wire))]) == whole


def test_wire_body_stuffs_and_never_leaves_bare_cr_or_lf():
    assert wire_body(b".a\r\nb\r\n.\r\n..c\r\n", dot_stuff=True) == b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"
    assert wire_body(b"a\nb\rc\r\n.d", dot_stuff=True) == b"a\r\nb\r\nc\r\n..d\r\n.\r\n"
    assert wire_body(b"", dot_stuff=True) == b".\r\n"
    assert wire_body(b".a\nb", dot_stuff=False) == b".a\r\nb\r\n"
    out = wire_body(b"x\r\r\ny\n\n\rz", dot_stuff=False)
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")


def _wire_body_reference(data: bytes, dot_stuff: bool) -> bytes:
    """The encoding as written in Python before it moved to Rust: the oracle."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if dot_stuff:
        data = data.replace(b"\r\n.", b"\r\n..")
        if data.startswith(b"."):
            data = b"." + data
        data += b".\r\n"
    return data


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"..", b"\x00", b"\xff", b"xyz"]), max_size=60),
       st.booleans())
def test_wire_body_equals_the_reference_encoding(parts, dot_stuff):
    data = b"".join(parts)
    assert wire_body(data, dot_stuff=dot_stuff) == _wire_body_reference(data, dot_stuff)
    # The client sends a message in wire form as it is: exactly when encoding changes nothing.
    as_is = data + (b".\r\n" if dot_stuff else b"")
    assert _native.is_wire_form(data, dot_stuff=dot_stuff) == (_wire_body_reference(data, dot_stuff) == as_is)


# ---------------------------------------------------------------------------
# delivery
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_byte_exact_with_dots_and_8bit(loop):
    data = (b"Received: from x\r\n\tby y; now\r\nSubject: caf\xc3\xa9\r\n\r\n"
            b".leading dot\r\n..two dots\r\n.\r\nmiddle\r\n\xff\xfe 8-bit \x80\r\nlast line\r\n")
    h = Capture()

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], OPTS, message("a@dst.test", "b@dst.test", data=data,
                                                                    body="8BITMIME"))
        await d.close()
        return res

    with aiosmtpd_peer(h) as port:
        res = run(go(port), loop)
    assert [(r.code, r.enhanced, r.status) for r in res] == [(250, "2.0.0", "delivered")] * 2
    assert res[0].remote_host == "mx.test" and res[0].remote_ip == "127.0.0.1"
    [env] = h.envelopes
    assert env["data"] == data
    assert env["mail_from"] == "from@src.test" and env["rcpt_tos"] == ["a@dst.test", "b@dst.test"]
    assert "BODY=8BITMIME" in env["mail_options"] and f"SIZE={len(data)}" in env["mail_options"]


def test_bare_cr_lf_become_crlf_and_missing_final_crlf_added():
    h = Capture()

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], OPTS,
                              message("a@dst.test", data=b"Subject: x\n\nbare lf\nbare cr\r.x\r\nend"))
        await d.close()
        return res

    with aiosmtpd_peer(h) as port:
        res = run(go(port))
    assert res[0].code == 250
    assert h.envelopes[0]["data"] == b"Subject: x\r\n\r\nbare lf\r\nbare cr\r\n.x\r\nend\r\n"


def test_pipelining_sends_mail_rcpt_data_in_one_write():
    log: list[bytes] = []

    async def go():
        srv, port = await scripted_server(log, pipelining=True)
        d = client(mail=3, rcpt=3, data_init=3)
        res = await d.deliver("k", [target(port)], OPTS, message("a@dst.test", "b@dst.test", "c@dst.test"))
        await d.close()
        srv.close()
        return res

    res = run(go())
    assert [r.code for r in res] == [250, 250, 250]  # a lock-step client would have timed out
    batch = next(c for c in log if c.startswith(b"MAIL"))
    assert batch.count(b"\r\n") == 5 and batch.endswith(b"DATA\r\n")
    assert batch.count(b"RCPT TO:") == 3


def test_lock_step_without_pipelining():
    log: list[bytes] = []

    async def go():
        srv, port = await scripted_server(log, pipelining=False)
        d = client()
        res = await d.deliver("k", [target(port)], OPTS, message("a@dst.test", "b@dst.test"))
        await d.close()
        srv.close()
        return res

    res = run(go())
    assert [r.code for r in res] == [250, 250]
    cmds = log[1:log.index(b"DATA\r\n") + 1]
    assert [c.split(b":")[0] for c in cmds] == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA\r\n"]


def test_mixed_per_recipient_replies():
    h = Capture(rcpt_replies={"busy": "450 4.2.1 mailbox busy", "nobody": "550 5.1.1 no such user"})

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], OPTS,
                              message("ok@dst.test", "busy@dst.test", "nobody@dst.test", "ok2@dst.test"))
        await d.close()
        return res

    with aiosmtpd_peer(h) as port:
        res = run(go(port))
    assert [(r.address, r.code, r.enhanced, r.status) for r in res] == [
        ("ok@dst.test", 250, "2.0.0", "delivered"),
        ("busy@dst.test", 450, "4.2.1", "deferred"),
        ("nobody@dst.test", 550, "5.1.1", "bounced"),
        ("ok2@dst.test", 250, "2.0.0", "delivered"),
    ]
    assert res[2].text == "no such user"
    assert h.envelopes[0]["rcpt_tos"] == ["ok@dst.test", "ok2@dst.test"]


def test_data_reply_applies_to_accepted_recipients_only():
    h = Capture(rcpt_replies={"nobody": "550 5.1.1 no such user"}, data_reply="554 5.7.1 spam")

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], OPTS, message("a@dst.test", "nobody@dst.test"))
        await d.close()
        return res

    with aiosmtpd_peer(h) as port:
        res = run(go(port))
    assert [(r.code, r.enhanced, r.text) for r in res] == [(554, "5.7.1", "spam"),
                                                           (550, "5.1.1", "no such user")]


def test_all_recipients_refused_sends_no_data():
    h = Capture(rcpt_replies={"x": "550 5.1.1 no", "y": "450 4.2.0 later"})

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], OPTS, message("x@dst.test", "y@dst.test"))
        res2 = await d.deliver("k", [target(port)], OPTS, message("ok@dst.test"))  # the connection is still usable
        await d.close()
        return res, res2, d.connections_opened

    with aiosmtpd_peer(h) as port:
        res, res2, opened = run(go(port))
    assert [r.code for r in res] == [550, 450]
    assert res2[0].code == 250 and opened == 1
    assert len(h.envelopes) == 1


def test_failover_when_first_target_refuses():
    h = Capture()
    closed = free_port()

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(closed, "mx1.test"), target(port, "mx2.test")], OPTS,
                              message("a@dst.test"))
        await d.close()
        return res

    with aiosmtpd_peer(h) as port:
        res = run(go(port))
    assert res[0].code == 250 and res[0].remote_host == "mx2.test"


@pytest.mark.parametrize("greeting", [b"421 4.3.2 too busy\r\n", b"554 5.7.1 go away\r\n", None])
def test_failover_on_bad_greeting_or_silence(greeting):
    h = Capture()

    async def bad(r, w):
        if greeting:
            w.write(greeting)
            await w.drain()
            w.close()
        else:
            await r.read()  # never greets

    async def go(port):
        srv = await asyncio.start_server(bad, "127.0.0.1", 0)
        first = srv.sockets[0].getsockname()[1]
        d = client(greeting=0.5)
        res = await d.deliver("k", [target(first, "mx1.test"), target(port, "mx2.test")], OPTS,
                              message("a@dst.test"))
        only_bad = await d.deliver("k2", [target(first, "mx1.test")], OPTS, message("a@dst.test"))
        await d.close()
        srv.close()
        return res, only_bad

    with aiosmtpd_peer(h) as port:
        res, only_bad = run(go(port))
    assert res[0].code == 250 and res[0].remote_host == "mx2.test"
    assert only_bad[0].code == 451 and only_bad[0].status == "deferred"  # even a 554 greeting defers


def test_all_targets_down_defers_every_recipient():
    a, b = free_port(), free_port()

    async def go():
        d = client()
        return await d.deliver("k", [target(a, "mx1.test"), target(b, "mx2.test")], OPTS,
                               message("a@dst.test", "b@dst.test"))

    res = run(go())
    assert [(r.code, r.enhanced, r.status) for r in res] == [(451, "4.4.1", "deferred")] * 2
    assert res[0].remote_host == "mx2.test" and res[0].remote_ip == "127.0.0.1"
    assert "refused" in res[0].text.lower() or "failed" in res[0].text.lower()
    assert run(client().deliver("k", [], OPTS, message("a@dst.test")))[0].code == 451


def test_size_refusal_sends_nothing():
    h = Capture()

    async def go(port):
        d = client()
        return await d.deliver("k", [target(port)], OPTS, message("a@dst.test", "b@dst.test",
                                                                   data=b"x" * 5000 + b"\r\n"))

    with aiosmtpd_peer(h, data_size_limit=1000) as port:
        res = run(go(port))
    assert [(r.code, r.enhanced, r.status) for r in res] == [(552, "5.3.4", "bounced")] * 2
    assert h.envelopes == [] and h.peers  # connected, never sent


def test_smtputf8_needed_but_not_offered_bounces():
    h = Capture()

    async def go(port):
        d = client()
        return await d.deliver("k", [target(port)], OPTS, message("jos\u00e9@dst.test", smtputf8=True))

    with aiosmtpd_peer(h, enable_SMTPUTF8=False) as port:
        res = run(go(port))
    assert [(r.code, r.enhanced, r.status) for r in res] == [(550, "5.6.7", "bounced")]
    assert h.envelopes == []


def test_smtputf8_passed_when_offered():
    h = Capture()

    async def go(port):
        d = client()
        res = await d.deliver("k", [target(port)], OPTS,
                              message("jos\u00e9@dst.test", sender="r\u00e9my@src.test", smtputf8=True,
                                      data="Subject: \u00e9t\u00e9\r\n\r\nx\r\n".encode()))
        await d.close()
        return res

    with aiosmtpd_peer(h, enable_SMTPUTF8=True) as port:
        res = run(go(port))
    assert res[0].code == 250
    env = h.envelopes[0]
    assert "SMTPUTF8" in env["mail_options"] and env["rcpt_tos"] == ["jos\u00e9@dst.test"]
    assert env["mail_from"] == "r\u00e9my@src.test"


def test_bdat_and_dsn_to_mta_run(tmp_path):
    spool = tmp_path / "spool"
    data = b"Subject: chunk\r\n\r\n.dot line stays one dot\r\n\xe2\x82\xac\r\n"
    msg = OutMessage("Q1", "from@src.test",
                     (OutRcpt("a@dst.test", notify=("SUCCESS", "FAILURE"), orcpt="rfc822;orig+x@src.test"),
                      OutRcpt("b@dst.test", notify=("NEVER",))),
                     data, body="8BITMIME", ret="HDRS", envid="env id=1")

    async def go(port):
        tap = Tap(port)
        tport = await tap.start()
        d = client()
        res = await d.deliver("k", [target(tport)], OPTS, msg)
        await d.close()
        await asyncio.sleep(0.1)
        tap.close()
        return res, bytes(tap.streams[0])

    with mta_process("run", "--spool", str(spool), "--hostname", "mx.test", "--no-delivery") as port:
        res, sent = run(go(port))
        assert [r.code for r in res] == [250, 250], res
        assert b"BDAT " in sent and b"\r\nDATA\r\n" not in sent
        qid = res[0].text.split()[-1]
        from mta._native import SpoolReader

        reader = SpoolReader(str(spool))
        stored = reader.message_bytes(qid)
        env = reader.get(qid)
    assert stored.endswith(data) and stored.startswith(b"Received:")
    assert env.sender == "from@src.test" and env.body == "8BITMIME"
    assert env.ret == "HDRS" and env.envid == "env id=1"
    assert [(r.address, r.notify, r.orcpt) for r in env.recipients] == [
        ("a@dst.test", ("SUCCESS", "FAILURE"), "rfc822;orig+x@src.test"),
        ("b@dst.test", ("NEVER",), None),
    ]


def test_connection_reuse_and_limits():
    h = Capture()

    async def go(port):
        d = client()
        for _ in range(3):
            assert (await d.deliver("k", [target(port)], OPTS, message("a@dst.test")))[0].code == 250
        reused = len(h.peers)
        one = SmtpOptions(helo="client.test", max_messages_per_connection=1)
        for _ in range(2):
            assert (await d.deliver("k1", [target(port)], one, message("a@dst.test")))[0].code == 250
        after_limit = len(h.peers)
        short = SmtpOptions(helo="client.test", idle_timeout=0.2)
        await d.deliver("k2", [target(port)], short, message("a@dst.test"))
        await asyncio.sleep(0.5)
        await d.deliver("k2", [target(port)], short, message("a@dst.test"))
        after_idle = len(h.peers)
        for _ in range(6):  # used more often than idle_timeout: the one timer re-arms, no expiry
            await d.deliver("k2", [target(port)], short, message("a@dst.test"))
            await asyncio.sleep(0.08)
        kept_busy = len(h.peers)
        await d.close()
        return reused, after_limit, after_idle, kept_busy

    with aiosmtpd_peer(h) as port:
        reused, after_limit, after_idle, kept_busy = run(go(port))
    assert reused == 1  # three messages, one connection
    assert after_limit == reused + 2  # one message per connection
    assert after_idle == after_limit + 2  # the idle connection expired
    assert kept_busy == after_idle  # 0.48 s of use every 0.08 s outlived the 0.2 s timeout on one connection
    assert len(h.envelopes) == 13


@pytest.mark.parametrize("pipelining", [True, False])
def test_pooled_connection_dead_at_rset_is_replaced(pipelining):
    log: list[bytes] = []

    async def go():
        srv, port = await scripted_server(log, pipelining=pipelining, drop_at_rset=True)
        d = client()
        r1 = await d.deliver("k", [target(port)], OPTS, message("a@dst.test"))
        r2 = await d.deliver("k", [target(port)], OPTS, message("b@dst.test"))
        await d.close()
        srv.close()
        return r1, r2, d.connections_opened

    r1, r2, opened = run(go())
    assert r1[0].code == 250 and r2[0].code == 250
    assert opened == 2 and any(c.startswith(b"RSET") for c in log)


def test_max_connections_respected():
    h = Capture(data_delay=0.3)

    async def go(port):
        tap = Tap(port)
        tport = await tap.start()
        d = client()
        opts = SmtpOptions(helo="client.test", max_connections=2)
        res = await asyncio.gather(*(d.deliver("k", [target(tport)], opts, message(f"u{i}@dst.test"))
                                     for i in range(6)))
        await d.close()
        tap.close()
        assert d._gates == {} and d._idle == {}  # nothing kept per destination once idle
        return res, tap.peak, len(tap.streams)

    with aiosmtpd_peer(h) as port:
        res, peak, conns = run(go(port))
    assert all(r[0].code == 250 for r in res)
    assert peak <= 2 and conns == 2 and h.peak == 2


def test_starttls_opportunistic_against_bench_sink():
    async def go(port):
        tap = Tap(port)
        tport = await tap.start()
        d = client()
        res = await d.deliver("k", [target(tport, "sink.bench.test")], OPTS, message("a@dst.test"))
        await d.close()
        tap.close()
        return res, bytes(tap.streams[0])

    with mta_process("bench", "sink", "--workers", "1", "--quiet") as port:
        res, sent = run(go(port))
    assert res[0].code // 100 == 2, res
    assert b"STARTTLS\r\n" in sent and b"MAIL FROM" not in sent  # the transaction went encrypted


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_starttls_opportunistic_and_required(tmp_path, loop):
    cert, key = make_cert(tmp_path)
    h = Capture()

    async def go(port):
        d = client()
        opp = await d.deliver("k1", [target(port, "whatever.test")], OPTS, message("a@dst.test"))
        req = SmtpOptions(helo="client.test", tls="required", ca_file=cert)
        good = await d.deliver("k2", [target(port, "mx.test")], req, message("b@dst.test"))
        wrong = await d.deliver("k3", [target(port, "wrong.test")], req, message("c@dst.test"))
        untrusted = await d.deliver("k4", [target(port, "mx.test")],
                                    SmtpOptions(helo="client.test", tls="required"), message("d@dst.test"))
        await d.close()
        return opp, good, wrong, untrusted

    with aiosmtpd_peer(h, tls_context=server_tls(cert, key)) as port:
        opp, good, wrong, untrusted = run(go(port), loop)
    assert opp[0].code == 250 and good[0].code == 250
    assert [e["tls"] for e in h.envelopes] == [True, True]
    for res in (wrong, untrusted):
        assert (res[0].code, res[0].enhanced, res[0].status) == (451, "4.7.5", "deferred"), res
    assert [e["rcpt_tos"] for e in h.envelopes] == [["a@dst.test"], ["b@dst.test"]]


def test_opportunistic_tls_failure_falls_back_to_clear():
    log: list[bytes] = []

    async def go():
        srv, port = await scripted_server(log, pipelining=True, broken_tls=True)
        d = client()
        res = await d.deliver("k", [target(port)], OPTS, message("a@dst.test"))
        req = await d.deliver("k2", [target(port)], SmtpOptions(helo="c.test", tls="required"),
                              message("a@dst.test"))
        await d.close()
        srv.close()
        return res, req, d.connections_opened

    res, req, opened = run(go())
    assert res[0].code == 250 and opened == 3  # TLS attempt, clear retry; then the required attempt
    assert log.count(b"STARTTLS\r\n") == 2
    assert (req[0].code, req[0].enhanced) == (451, "4.7.5")


def test_required_tls_without_starttls_defers_and_none_skips_tls():
    h = Capture()

    async def go(port):
        d = client()
        req = await d.deliver("k1", [target(port)], SmtpOptions(helo="c.test", tls="required"),
                              message("a@dst.test"))
        plain = await d.deliver("k2", [target(port)], SmtpOptions(helo="c.test", tls="none"),
                                message("b@dst.test"))
        await d.close()
        return req, plain

    with aiosmtpd_peer(h) as port:
        req, plain = run(go(port))
    assert (req[0].code, req[0].enhanced) == (451, "4.7.5")
    assert plain[0].code == 250 and h.envelopes[0]["tls"] is False


def test_auth_plain_over_tls_and_never_in_clear(tmp_path):
    cert, key = make_cert(tmp_path)
    seen = []

    class Auth:
        def __call__(self, server, session, envelope, mechanism, auth_data):
            from aiosmtpd.smtp import AuthResult
            seen.append((mechanism, auth_data.login, auth_data.password))
            return AuthResult(success=auth_data.password == b"secret", handled=False)

    h = Capture()
    kw = dict(authenticator=Auth(), auth_require_tls=True, tls_context=server_tls(cert, key))

    async def go(port):
        d = client()
        ok = await d.deliver("k1", [target(port)], SmtpOptions(helo="c.test", auth=("u", "secret")),
                             message("a@dst.test"))
        bad = await d.deliver("k2", [target(port)], SmtpOptions(helo="c.test", auth=("u", "nope")),
                              message("b@dst.test"))
        await d.close()
        return ok, bad

    with aiosmtpd_peer(h, **kw) as port:
        ok, bad = run(go(port))
    assert ok[0].code == 250
    assert bad[0].status == "deferred" and bad[0].enhanced.startswith("4.7")
    assert seen == [("PLAIN", b"u", b"secret"), ("PLAIN", b"u", b"nope")]

    async def clear(port):  # a peer without STARTTLS never sees the credentials
        d = client()
        return await d.deliver("k", [target(port)], SmtpOptions(helo="c.test", auth=("u", "secret")),
                               message("c@dst.test"))

    seen.clear()
    with aiosmtpd_peer(h, authenticator=Auth(), auth_require_tls=False) as port:
        res = run(clear(port))
    assert res[0].status == "deferred" and seen == []


def test_helo_fallback_when_ehlo_refused():
    log = []

    async def handle(r, w):
        w.write(b"220 old SMTP\r\n")
        while line := await r.readline():
            log.append(line)
            verb = line[:4].upper()
            if verb == b"EHLO":
                w.write(b"502 5.5.1 EHLO not implemented\r\n")
            elif verb == b"DATA":
                w.write(b"354 go\r\n")
                while (body := await r.readline()) != b".\r\n":
                    log.append(body)
                w.write(b"250 ok\r\n")
            elif verb == b"QUIT":
                w.write(b"221 bye\r\n")
                break
            else:
                w.write(b"250 ok\r\n")
        w.close()

    async def go():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        d = client()
        res = await d.deliver("k", [target(srv.sockets[0].getsockname()[1])], OPTS,
                              message("a@dst.test", data=b"x\r\n", body="8BITMIME"))
        await d.close()
        srv.close()
        return res

    res = run(go())
    assert res[0].code == 250
    assert log[1].startswith(b"HELO client.test")
    mail = next(x for x in log if x.startswith(b"MAIL"))
    assert mail == b"MAIL FROM:<from@src.test>\r\n"  # no ESMTP parameters after HELO


def test_timeout_mid_transaction_defers():
    async def handle(r, w):
        w.write(b"220 slow ESMTP\r\n")
        await r.readline()
        w.write(b"250 slow\r\n")
        await r.readline()  # MAIL: never answered
        await r.read()

    async def go():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        d = client(mail=0.3)
        res = await d.deliver("k", [target(srv.sockets[0].getsockname()[1])], OPTS,
                              message("a@dst.test", "b@dst.test"))
        srv.close()
        return res

    res = run(go())
    assert [(r.code, r.enhanced) for r in res] == [(451, "4.4.2")] * 2
    assert "timed out" in res[0].text


def test_reply_timer_rearms_for_a_longer_wait():
    """One timer per connection watches every reply wait: armed by the short
    greeting wait, it fires during the longer EHLO wait, which must not time out
    early; the MAIL wait after it still times out on its own deadline."""
    async def handle(r, w):
        w.write(b"220 slow ESMTP\r\n")
        await r.readline()
        await asyncio.sleep(0.5)  # past the greeting's 0.2 s, within EHLO's 3 s
        w.write(b"250 slow\r\n")
        await r.readline()  # MAIL: never answered
        await r.read()

    async def go():
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        d = client(greeting=0.2, helo=3.0, mail=0.4)
        t0 = time.monotonic()
        res = await d.deliver("k", [target(srv.sockets[0].getsockname()[1])], OPTS, message("a@dst.test"))
        srv.close()
        return res, time.monotonic() - t0

    res, took = run(go())
    assert (res[0].code, res[0].enhanced) == (451, "4.4.2")
    assert "waiting for the reply to MAIL FROM" in res[0].text  # not the EHLO: that reply came in time
    assert 0.8 <= took < 3.0


def test_cancelled_waiter_gives_up_its_place():
    """Deliveries beyond max_connections wait in order; one cancelled while it
    waits, or just after it was given its place, does not block those behind it."""
    h = Capture(data_delay=0.2)

    async def go(port):
        d = client()
        opts = SmtpOptions(helo="client.test", max_connections=1)
        first = asyncio.ensure_future(d.deliver("k", [target(port)], opts, message("a@dst.test")))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(d.deliver("k", [target(port)], opts, message("b@dst.test")))
        third = asyncio.ensure_future(d.deliver("k", [target(port)], opts, message("c@dst.test")))
        await asyncio.sleep(0.05)
        second.cancel()
        r1, r3 = await asyncio.wait_for(asyncio.gather(first, third), 10)
        fourth = asyncio.ensure_future(d.deliver("k", [target(port)], opts, message("d@dst.test")))
        fifth = asyncio.ensure_future(d.deliver("k", [target(port)], opts, message("e@dst.test")))
        await asyncio.sleep(0)
        fut = d._gates["k"].waiting[0]
        while not fut.done():  # cancel the fifth right after it is handed the place
            await asyncio.sleep(0.01)
        fifth.cancel()
        r4 = await asyncio.wait_for(fourth, 10)
        with pytest.raises(asyncio.CancelledError):
            await fifth
        sixth = await asyncio.wait_for(d.deliver("k", [target(port)], opts, message("f@dst.test")), 10)
        await d.close()
        assert d._gates == {}
        return r1, r3, r4, sixth

    with aiosmtpd_peer(h) as port:
        r1, r3, r4, r6 = run(go(port))
    assert [r[0].code for r in (r1, r3, r4, r6)] == [250] * 4
