"""End-to-end tests of the abuse limits ([limits]): each at the limit and
one past it, from a client outside mynetworks (the server trusts only
10.0.0.0/8, so 127.0.0.1 is an outsider), with no greeting delay.
"""

from __future__ import annotations

import time


from helpers import check, connect, queue_by_id, queued_id, simple_message

OUTSIDE = ("--mynetworks", "10.0.0.0/8")
SENDER, RCPT = "s@example.test", "r@local.test"


def limits_config(limits: dict, smtp: dict | None = None, **top) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return repr(v)

    top = {"local_domains": ["local.test"], **top}
    smtp = {"greeting_delay": 0, "reverse_dns": False, **(smtp or {})}
    out = [f"{k} = {val(v)}" for k, v in top.items()]
    out.append("[smtp]")
    out += [f"{k} = {val(v)}" for k, v in smtp.items()]
    out.append("[limits]")
    out += [f"{k} = {val(v)}" for k, v in limits.items()]
    return "\n".join(out) + "\n"


def start(server_factory, limits: dict, *, smtp: dict | None = None, args=OUTSIDE, **top):
    srv = server_factory(config=limits_config(limits, smtp, **top), args=args)
    time.sleep(0.3)  # let the fixture's readiness probe end its session
    return srv


def refused_421(srv, enhanced: str = "4.7.0") -> None:
    """A connection that gets 421 instead of the greeting, then is closed."""
    with connect(srv) as c:
        check(c.reply(), 421, enhanced)
        c.assert_closed()


def greeted(srv):
    c = connect(srv)
    c.greeting()
    return c


# --- connections -----------------------------------------------------------------

def test_max_connections_per_ip(server_factory):
    srv = start(server_factory, {"max_connections_per_ip": 3, "max_connections": 0})
    clients = [greeted(srv) for _ in range(3)]  # at the limit
    try:
        refused_421(srv)  # one past it
        clients.pop().quit()
        time.sleep(0.2)
        clients.append(greeted(srv))  # a slot was freed
        clients[-1].ehlo()
    finally:
        for c in clients:
            c.close()
    assert "too many connections from 127.0.0.1" in srv.log()


def test_max_connections_total(server_factory):
    srv = start(server_factory, {"max_connections": 2, "max_connections_per_ip": 0})
    a, b = greeted(srv), greeted(srv)
    try:
        refused_421(srv)
        a.quit()
        time.sleep(0.2)
        greeted(srv).close()
    finally:
        a.close()
        b.close()


def test_connection_rate_per_ip(server_factory):
    srv = start(server_factory, {"connection_rate_per_ip": 3})
    # The fixture's readiness probe was the first connection of the minute.
    for _ in range(2):  # at the limit: three connections in the minute
        c = greeted(srv)
        c.quit()
    refused_421(srv)  # the fourth within the minute
    refused_421(srv)  # refused attempts count too


def test_connection_limits_spare_mynetworks_unless_asked(server_factory, tmp_path):
    # 127.0.0.1 is in the default mynetworks: not limited...
    srv = server_factory(config=limits_config({"max_connections_per_ip": 1}))
    a, b = greeted(srv), greeted(srv)
    a.close(), b.close()
    # ... unless apply_to_mynetworks = true.
    srv2 = server_factory(config=limits_config({"max_connections_per_ip": 1, "apply_to_mynetworks": True}),
                          spool=tmp_path / "spool2")
    time.sleep(0.3)
    a = greeted(srv2)
    try:
        refused_421(srv2)
    finally:
        a.close()


# --- per session -------------------------------------------------------------------

def test_max_messages_per_connection(server_factory):
    srv = start(server_factory, {"max_messages_per_connection": 2})
    with connect(srv) as c:
        c.start()
        ids = [c.send_message(SENDER, [RCPT], simple_message(f"m{i}")) for i in range(2)]  # at the limit
        check(c.cmd(f"MAIL FROM:<{SENDER}>"), 421, "4.7.0")  # one past it
        c.assert_closed()
    assert sorted(queue_by_id(srv)) == sorted(ids)
    # A new connection may send again.
    with connect(srv) as c:
        c.start()
        c.send_message(SENDER, [RCPT], simple_message("again"))
        c.quit()


def test_max_recipients_per_connection(server_factory):
    srv = start(server_factory, {"max_recipients_per_connection": 3})
    with connect(srv) as c:
        c.start()
        first = c.send_message(SENDER, ["a@local.test", "b@local.test"], simple_message())
        c.expect(f"MAIL FROM:<{SENDER}>", 250, "2.1.0")
        c.expect("RCPT TO:<c@local.test>", 250, "2.1.5")  # the third: at the limit
        c.expect("RCPT TO:<d@local.test>", 452, "4.5.3")  # the fourth: past it
        second = queued_id(c.data(simple_message()))  # what was accepted is delivered
        c.expect(f"MAIL FROM:<{SENDER}>", 250, "2.1.0")
        c.expect("RCPT TO:<e@local.test>", 452, "4.5.3")
        c.quit()
    q = queue_by_id(srv)
    assert [r["address"] for r in q[first]["recipients"]] == ["a@local.test", "b@local.test"]
    assert [r["address"] for r in q[second]["recipients"]] == ["c@local.test"]


def test_max_commands(server_factory):
    srv = start(server_factory, {"max_commands": 5})
    with connect(srv) as c:
        c.greeting()
        c.ehlo()
        for _ in range(4):  # commands 2..5: at the limit
            c.expect("NOOP", 250, "2.0.0")
        check(c.cmd("NOOP"), 421, "4.7.0")  # the sixth
        c.assert_closed()


def test_max_commands_pipelined(server_factory):
    srv = start(server_factory, {"max_commands": 3})
    with connect(srv) as c:
        c.greeting()
        c.send(b"EHLO x\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
        check(c.reply(), 250)
        check(c.reply(), 250, "2.0.0")
        check(c.reply(), 250, "2.0.0")
        check(c.reply(), 421, "4.7.0")
        c.assert_closed()


# --- error tarpit --------------------------------------------------------------------

def timed(c, line: str):
    t = time.monotonic()
    r = c.cmd(line)
    return r, time.monotonic() - t


def test_error_tarpit_after_soft_limit(server_factory):
    srv = start(server_factory, {"soft_error_limit": 3, "error_tarpit": "1s"})
    with connect(srv) as c:
        c.start()
        for _ in range(3):  # errors 1..3: at the soft limit, answered at once
            r, took = timed(c, "BOGUS")
            check(r, 500, "5.5.2")
            assert took < 0.5, took
        r, took = timed(c, "BOGUS")  # the fourth error waits
        check(r, 500, "5.5.2")
        assert 0.9 <= took < 3, took
        # Good commands are not delayed; order is kept when an error is pipelined.
        r, took = timed(c, "NOOP")
        check(r, 250)
        assert took < 0.5, took
        t = time.monotonic()
        c.send(b"BOGUS\r\nNOOP\r\n")
        check(c.reply(), 500, "5.5.2")
        check(c.reply(), 250, "2.0.0")
        assert time.monotonic() - t >= 0.9
        c.quit()


def test_error_tarpit_does_not_block_other_sessions(server_factory):
    srv = start(server_factory, {"soft_error_limit": 0, "error_tarpit": "2s"})
    slow = connect(srv)
    slow.start()
    try:
        t = time.monotonic()
        slow.send(b"BOGUS\r\n")  # held for 2 s
        time.sleep(0.1)
        with connect(srv) as other:
            other.start()
            other.expect("NOOP", 250, "2.0.0")
            other.quit()
        assert time.monotonic() - t < 1.5, "another session waited for the tarpit"
        check(slow.reply(), 500, "5.5.2")
        assert time.monotonic() - t >= 1.9
    finally:
        slow.close()


def test_max_errors_still_disconnects(server_factory):
    srv = start(server_factory, {"soft_error_limit": 2, "error_tarpit": "200ms"}, smtp={"max_errors": 4})
    with connect(srv) as c:
        c.start()
        for _ in range(3):
            check(c.cmd("BOGUS"), 500, "5.5.2")
        check(c.cmd("BOGUS"), 500, "5.5.2")
        check(c.reply(), 421, "4.7.0")
        c.assert_closed()


def test_error_tarpit_spares_mynetworks(server_factory):
    srv = server_factory(config=limits_config({"soft_error_limit": 0, "error_tarpit": "2s"}))
    with connect(srv) as c:
        c.start()
        r, took = timed(c, "BOGUS")
        check(r, 500)
        assert took < 1


# --- minimum data rate ---------------------------------------------------------------

def test_min_data_rate_fast_enough(server_factory):
    srv = start(server_factory, {"min_data_rate": 1000, "data_rate_window": "1s"})
    with connect(srv) as c:
        c.start()
        c.mail_rcpt(SENDER, [RCPT])
        c.expect("DATA", 354)
        c.send(b"Subject: steady\r\n\r\n")
        for _ in range(7):  # 3.5 s at about 2000 bytes/s: above the minimum
            c.send(b"x" * 998 + b"\r\n")
            time.sleep(0.5)
        c.send(b".\r\n")
        queued_id(c.reply())
        c.quit()


def test_min_data_rate_too_slow(server_factory):
    srv = start(server_factory, {"min_data_rate": 1000, "data_rate_window": "1s"})
    with connect(srv) as c:
        c.start()
        c.mail_rcpt(SENDER, [RCPT])
        c.expect("DATA", 354)
        t = time.monotonic()
        got = None
        for _ in range(20):  # about 100 bytes/s
            try:
                c.send(b"y" * 48 + b"\r\n")
            except OSError:
                break
            time.sleep(0.5)
            c.sock.setblocking(False)
            try:
                data = c.sock.recv(4096)
            except BlockingIOError:
                data = None
            finally:
                c.sock.setblocking(True)
            if data is not None:
                got = data
                break
        assert got is not None and got.startswith(b"421 4.4.2"), got
        assert time.monotonic() - t < 4
    assert srv.queue() == []


def test_min_data_rate_bdat(server_factory):
    srv = start(server_factory, {"min_data_rate": 1000, "data_rate_window": "1s"})
    with connect(srv) as c:
        c.start()
        c.mail_rcpt(SENDER, [RCPT])
        c.send(b"BDAT 100000 LAST\r\n" + b"z" * 50)
        check(c.reply(timeout=5), 421, "4.4.2")
        c.assert_closed()


def test_idle_timeout_kept(server_factory):
    srv = start(server_factory, {}, smtp={"idle_timeout": "1s"})
    with connect(srv) as c:
        c.start()
        check(c.reply(timeout=5), 421, "4.4.2")
        c.assert_closed()
