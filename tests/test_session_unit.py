"""The server session without sockets (tests/sessionkit.py): greeting, EHLO, a message
through MAIL/RCPT/DATA or BDAT to the real spool and on_durable, relay refusals, RSET,
pipelining, sequence errors, the PROXY gate, AUTH, and the session limits at and one
past the limit."""

from __future__ import annotations

import asyncio
import base64
import re

import pytest

from mta import _native
from mta.auth.guard import AuthGuard
from mta.auth.passwords import hash_password
from mta.auth.senders import SenderLogin
from mta.auth.users import UserDB, set_user
from mta.config.listeners import Listener
from mta.smtp.proxy import ProxyGate
from sessionkit import CLIENT_IP, TRUSTED_IP, scripted

BODY = b"From: <a@sender.test>\r\nTo: <b@example.test>\r\nSubject: unit\r\n\r\nhello\r\n"
EHLO = [
    "250-mx.example.test", "250-PIPELINING", "250-SIZE 52428800", "250-8BITMIME", "250-SMTPUTF8",
    "250-ENHANCEDSTATUSCODES", "250-CHUNKING", "250 DSN",
]


def run(coro_fn, tmp_path, **kw):
    """Run `coro_fn(session)` on a scripted session; the store is closed afterwards."""

    async def main():
        s = scripted(tmp_path, asyncio.get_running_loop(), **kw)
        try:
            return await coro_fn(s)
        finally:
            s.close()
            s.store.close()

    return asyncio.run(main())


def greeted(s) -> None:
    assert s.replies() == ["220 mx.example.test ESMTP"]
    s.send(b"EHLO client.sender.test\r\n")
    assert s.replies() == EHLO


# --- greeting, EHLO, a message to the spool ---------------------------------------

def test_greeting_and_ehlo(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"HELO again.sender.test\r\n")
        assert s.replies() == ["250 mx.example.test"]
        s.send(b"QUIT\r\n")
        assert s.replies() == ["221 2.0.0 Bye"] and s.transport.closed
        assert s.sessions == set()  # unregistered at the loss

    run(body, tmp_path)


def test_banner_in_the_greeting(tmp_path):
    async def body(s):
        assert s.replies() == ["220 mx.example.test ESMTP hello there"]

    run(body, tmp_path, smtp__banner="hello there")


def test_message_durable_in_the_spool_then_on_durable(tmp_path):
    box = {}

    def on_durable(qid, final, notes):  # records whether the 250 was on the wire by then
        s = box["s"]
        box["250 first"] = f"queued as {qid}".encode() in s.transport.written
        s.durable.append((qid, final))

    async def body(s):
        box["s"] = s
        greeted(s)
        assert s.session in s.sessions
        s.send(b"MAIL FROM:<a@sender.test>\r\n")
        s.send(b"RCPT TO:<b@example.test>\r\n")
        s.send(b"DATA\r\n")
        assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
        s.send(BODY + b".\r\n")
        assert s.replies() == [] and s.durable == []  # nothing before the store says durable
        await s.until_durable()
        [reply] = s.replies()
        qid, final = s.durable[0]
        assert reply == f"250 2.0.0 Ok: queued as {qid}"
        assert final == [("b@example.test", None, None)]
        assert box["250 first"]
        return qid

    qid = run(body, tmp_path, collaborators={"on_durable": on_durable})
    # The store is closed: what it holds now is what a restart finds.
    reader = _native.SpoolReader(str(tmp_path / "spool"))
    env = reader.get(qid)
    assert env.sender == "a@sender.test" and [r.address for r in env.recipients] == ["b@example.test"]
    assert env.client_ip == CLIENT_IP and env.helo == "client.sender.test"
    data = reader.message_bytes(qid)
    assert data.startswith(b"Received: from client.sender.test") and data.endswith(BODY)
    assert f"id {qid}".encode() in data


def test_store_failure_is_a_451_and_nothing_durable(tmp_path):
    async def body(s):
        greeted(s)
        s.store.spool.inject_fault("write", 28)  # ENOSPC on the next write
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n" + BODY + b".\r\n")
        assert s.replies()[:3] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
        assert await s.next_replies() == ["451 4.3.0 Error: queue file write error, try again later"]
        assert s.durable == [] and s.session.tx is None
        s.store.spool.inject_fault(None)
        s.send(b"MAIL FROM:<a@sender.test>\r\n")
        assert s.replies() == ["250 2.1.0 Ok"]

    run(body, tmp_path)


def test_relay_denied_from_outside_mynetworks(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@elsewhere.test>\r\nRCPT TO:<x%y@example.test>\r\n")
        assert s.replies() == ["250 2.1.0 Ok", "554 5.7.1 Relay access denied", "554 5.7.1 Relay access denied"]
        assert s.session.errors == 2

    run(body, tmp_path)


def test_relay_allowed_from_mynetworks(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@elsewhere.test>\r\n")
        assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok"]

    run(body, tmp_path, peer_ip=TRUSTED_IP)


def test_unknown_local_user_refused_by_the_recipient_check(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<nobody@example.test>\r\n")
        mail, rcpt = s.replies()
        assert mail == "250 2.1.0 Ok" and rcpt.startswith("550 5.1.1 ")

    def expand(address):
        from mta.plugin import Reject
        return Reject(550, "5.1.1", "Recipient address rejected: User unknown"), []

    run(body, tmp_path, collaborators={"expand": expand})


def test_rset_forgets_the_transaction(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nRSET\r\n")
        assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok"]
        assert s.session.tx is None
        s.send(b"RCPT TO:<b@example.test>\r\nDATA\r\n")
        assert s.replies() == ["503 5.5.1 Error: need MAIL command", "503 5.5.1 Error: need RCPT command"]
        s.send(b"MAIL FROM:<a@sender.test>\r\n")
        assert s.replies() == ["250 2.1.0 Ok"]

    run(body, tmp_path)


def test_pipelined_commands_answered_in_one_write(tmp_path):
    async def body(s):
        greeted(s)
        writes = s.transport.writes
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n")
        assert s.transport.writes == writes + 1
        assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok",
                               "354 End data with <CR><LF>.<CR><LF>"]
        # The message, the next transaction and QUIT in one read: the commands behind
        # the message wait for its 250, then run in order.
        s.send(BODY + b".\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\nQUIT\r\n")
        assert s.replies() == []
        await s.until_durable()
        qid = s.durable[0][0]
        assert s.replies() == [f"250 2.0.0 Ok: queued as {qid}", "250 2.1.0 Ok", "250 2.1.5 Ok", "221 2.0.0 Bye"]
        assert s.transport.closed and len(s.durable) == 1

    run(body, tmp_path)


def test_commands_out_of_sequence(tmp_path):
    async def body(s):
        s.replies()
        s.send(b"MAIL FROM:<a@sender.test>\r\n")
        assert s.replies() == ["503 5.5.1 Error: send HELO/EHLO first"]
        s.send(b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\nMAIL FROM:<a@sender.test>\r\nDATA\r\n")
        assert s.replies()[len(EHLO):] == ["250 2.1.0 Ok", "503 5.5.1 Error: nested MAIL command",
                                           "503 5.5.1 Error: need RCPT command"]
        s.send(b"STARTTLS\r\nAUTH PLAIN\r\nNOOP\r\nVRFY x\r\n")
        assert s.replies() == [
            "502 5.5.1 Error: command not implemented", "502 5.5.1 Error: command not implemented",
            "250 2.0.0 Ok", "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"]

    run(body, tmp_path, limits__soft_error_limit=10)  # no tarpit here (see test_error_tarpit)


def test_message_size_over_the_maximum(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test> SIZE=52428801\r\n")
        assert s.replies() == ["552 5.3.4 Error: message size exceeds fixed maximum message size"]

    run(body, tmp_path)


def test_talking_before_the_greeting(tmp_path):
    async def body(s):
        assert s.replies() == []  # the greeting waits (greeting_delay) for a stranger
        s.send(b"EHLO early\r\n")
        assert s.replies() == ["554 5.5.0 Error: SMTP protocol synchronization (talking before the greeting)"]
        assert s.transport.closed

    run(body, tmp_path, smtp__greeting_delay=5)


def test_too_many_errors_closes(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test>\r\n" + b"RCPT TO:<x@elsewhere.test>\r\n" * 3)
        assert s.replies() == ["250 2.1.0 Ok", "554 5.7.1 Relay access denied", "554 5.7.1 Relay access denied",
                               "421 4.7.0 Error: too many errors"]
        assert s.transport.closed

    run(body, tmp_path, smtp__max_errors=2)


def test_bdat_chunks(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nBDAT 12\r\nSubject: x\r\n")
        assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: 12 octets received"]
        s.send(b"DATA\r\n")
        assert s.replies() == ["503 5.5.1 Error: DATA after BDAT in one transaction"]
        s.send(b"BDAT 6 LAST\r\n\r\nhi\r\n")
        await s.until_durable()
        assert s.replies() == [f"250 2.0.0 Ok: queued as {s.durable[0][0]}"]
        return s.durable[0][0]

    qid = run(body, tmp_path)
    data = _native.SpoolReader(str(tmp_path / "spool")).message_bytes(qid)
    assert data.endswith(b"\r\nSubject: x\r\n\r\nhi\r\n") and b"with ESMTP id" in data


# --- the PROXY gate -----------------------------------------------------------------

PROXIED = Listener("127.0.0.1", 2525, "mx", "none", proxy=True)


def proxy_parts(cfg):
    return {"proxy_gate": ProxyGate(cfg)}


def test_proxy_header_gives_the_client_address(tmp_path):
    async def body(s):
        assert s.replies() == []  # nothing before the header
        s.send(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 25\r\nEHLO client.sender.test\r\n")
        assert s.replies() == ["220 mx.example.test ESMTP", *EHLO]
        assert (s.session.peer_ip, s.session.peer_port, s.session.trusted) == ("203.0.113.7", 5555, False)
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@elsewhere.test>\r\n")
        assert s.replies()[1] == "554 5.7.1 Relay access denied"  # the proxy's own address is trusted

    run(body, tmp_path, peer_ip=TRUSTED_IP, listener=PROXIED, collaborators=proxy_parts,
        proxy_from=["127.0.0.1/32"])


def test_proxy_header_from_a_stranger_closes_without_reply(tmp_path):
    async def body(s):
        assert s.transport.closed and s.transport.written == b""

    run(body, tmp_path, listener=PROXIED, collaborators=proxy_parts, proxy_from=["127.0.0.1/32"])


# --- AUTH on a submission listener --------------------------------------------------

SUBMISSION = Listener("127.0.0.1", 4650, "submission", "implicit")


def submission_parts(tmp_path):
    users_file = str(tmp_path / "users")
    set_user(users_file, "alice", hash_password("secret", n=1024, r=8, p=1))

    def parts(cfg):
        return {"users": UserDB(users_file), "auth_guard": AuthGuard(max_failures=3, tarpit_max=0),
                "sender_login": SenderLogin({"alice": ["alice@sender.test"]}),
                "tls": object()}  # implicit TLS: only whether a context exists matters here

    return parts


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


def test_submission_auth_then_a_fixed_up_message(tmp_path):
    async def body(s):
        assert s.replies() == ["220 mx.example.test ESMTP"]
        s.send(b"EHLO client.sender.test\r\n")
        assert s.replies()[-1] == "250 AUTH PLAIN LOGIN"
        s.send(b"MAIL FROM:<alice@sender.test>\r\n")
        assert s.replies() == ["530 5.7.0 Authentication required"]
        s.send(b"AUTH PLAIN " + plain("alice", "wrong") + b"\r\n")
        assert await s.next_replies() == ["535 5.7.8 Authentication credentials invalid"]
        s.send(b"AUTH PLAIN " + plain("alice", "secret") + b"\r\n")
        assert await s.next_replies() == ["235 2.7.0 Authentication successful"]
        assert s.session.user == "alice"
        s.send(b"MAIL FROM:<bob@sender.test>\r\n")
        assert s.replies() == ["553 5.7.1 Sender address rejected: not owned by user alice"]
        s.send(b"MAIL FROM:<alice@sender.test>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n")
        assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
        s.send(b"Subject: no id, no date\r\n\r\nhi\r\n.\r\n")
        await s.until_durable()
        return s.durable[0][0]

    qid = run(body, tmp_path, listener=SUBMISSION, collaborators=submission_parts(tmp_path))
    data = _native.SpoolReader(str(tmp_path / "spool")).message_bytes(qid).decode()
    fields = re.split(r"\r\n(?![ \t])", data)  # one per header field, folded lines kept
    received, message_id, date = fields[:3]  # Received first, then the fix-up
    assert received.startswith("Received: from client.sender.test")
    assert message_id.startswith("Message-ID: <") and message_id.endswith("@mx.example.test>")
    assert date.startswith("Date: ")
    assert "with ESMTPSA id " + qid in data


def test_auth_failures_end_in_421(tmp_path):
    async def body(s):
        s.replies()
        s.send(b"EHLO c\r\n")
        s.replies()
        for _ in range(2):
            s.send(b"AUTH PLAIN " + plain("alice", "wrong") + b"\r\n")
            assert await s.next_replies() == ["535 5.7.8 Authentication credentials invalid"]
        s.send(b"AUTH PLAIN " + plain("mallory", "x") + b"\r\n")
        assert await s.next_replies() == ["421 4.7.0 Too many authentication failures, closing connection"]
        assert s.transport.closed

    run(body, tmp_path, listener=SUBMISSION, collaborators=submission_parts(tmp_path))


# --- limits: at the limit, and one past it ---------------------------------------

def test_error_tarpit_after_the_soft_limit(tmp_path):
    async def body(s):
        s.replies()
        s.send(b"MAIL FROM:<a@sender.test>\r\n" * 2)
        assert s.replies() == ["503 5.5.1 Error: send HELO/EHLO first"] * 2  # at the limit: at once
        s.send(b"MAIL FROM:<a@sender.test>\r\nNOOP\r\n")
        assert s.replies() == [] and not s.transport.reading  # one past: held, and nothing read
        await asyncio.sleep(0.3)
        assert s.replies() == ["503 5.5.1 Error: send HELO/EHLO first", "250 2.0.0 Ok"]
        assert s.transport.reading

    run(body, tmp_path, limits__soft_error_limit=2, limits__error_tarpit=0.2)


def test_recipients_per_transaction(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test>\r\n" + b"RCPT TO:<b@example.test>\r\n" * 3)
        assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "452 4.5.3 Error: too many recipients"]

    run(body, tmp_path, smtp__max_recipients=2)


def test_commands_per_session(tmp_path):
    async def body(s):
        s.replies()
        s.send(b"NOOP\r\n" * 3)
        assert s.replies() == ["250 2.0.0 Ok"] * 3 and not s.transport.closed
        s.send(b"NOOP\r\n")
        assert s.replies() == ["421 4.7.0 Error: too many commands"] and s.transport.closed

    run(body, tmp_path, limits__max_commands=3)


def test_commands_limit_spares_mynetworks(tmp_path):
    async def body(s):
        s.replies()
        s.send(b"NOOP\r\n" * 4)
        assert s.replies() == ["250 2.0.0 Ok"] * 4

    run(body, tmp_path, peer_ip=TRUSTED_IP, limits__max_commands=3)


def test_recipients_per_session(tmp_path):
    async def body(s):
        greeted(s)
        s.send(b"MAIL FROM:<a@sender.test>\r\n" + b"RCPT TO:<b@example.test>\r\n" * 2 + b"RSET\r\n")
        s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\n")
        assert s.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok", "250 2.1.0 Ok",
                               "452 4.5.3 Error: too many recipients in this session"]

    run(body, tmp_path, limits__max_recipients_per_connection=2)


def test_messages_per_session(tmp_path):
    async def body(s):
        greeted(s)
        for n in (1, 2):
            s.send(b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n" + BODY + b".\r\n")
            await s.until_durable(n)
        assert s.replies()[-1].startswith("250 2.0.0 Ok: queued as ")
        s.send(b"MAIL FROM:<a@sender.test>\r\n")
        assert s.replies() == ["421 4.7.0 Error: too many messages in this session"] and s.transport.closed

    run(body, tmp_path, limits__max_messages_per_connection=2)


def test_connections_per_ip_across_sessions(tmp_path):
    async def body(s):
        s.replies()
        second, _ = s.connect(CLIENT_IP)
        assert second.written == b"220 mx.example.test ESMTP\r\n"
        third, _ = s.connect(CLIENT_IP)
        assert third.written == b"421 4.7.0 Error: too many connections from 192.0.2.10\r\n" and third.closed
        other, _ = s.connect("192.0.2.11")
        assert other.written.startswith(b"220 ")
        assert s.limits.per_ip == {CLIENT_IP: 2, "192.0.2.11": 1}
        second.close()  # one leaves: the next is admitted
        again, _ = s.connect(CLIENT_IP)
        assert again.written.startswith(b"220 ")
        for t in (again, other):
            t.close()

    run(body, tmp_path, limits__max_connections_per_ip=2)


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
