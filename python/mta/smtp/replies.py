"""Every reply the SMTP server session sends, each defined once, as wire bytes.
Constants for fixed replies; small functions for the few that carry a value."""

from __future__ import annotations

from typing import Iterable


def line(code: int, enhanced: str | None, text: str) -> bytes:
    """One reply line; also how the parser's error events and policy verdicts go out."""
    if enhanced:
        return f"{code} {enhanced} {text}\r\n".encode()
    return f"{code} {text}\r\n".encode()


# --- greeting and EHLO/HELO ---------------------------------------------------------

def greeting(hostname: str, banner: str = "") -> bytes:
    return f"220 {hostname} ESMTP{' ' + banner if banner else ''}\r\n".encode()


def helo(hostname: str) -> bytes:
    return f"250 {hostname}\r\n".encode()


def ehlo(hostname: str, max_message_size: int, starttls: bool = False, auth_mechs: Iterable[str] = ()) -> bytes:
    exts = [hostname, "PIPELINING", f"SIZE {max_message_size}", "8BITMIME", "SMTPUTF8",
            "ENHANCEDSTATUSCODES", "CHUNKING", "DSN"]
    if starttls:
        exts.append("STARTTLS")
    auth_mechs = tuple(auth_mechs)
    if auth_mechs:
        exts.append("AUTH " + " ".join(auth_mechs))
    out = [f"250-{e}\r\n" for e in exts[:-1]] + [f"250 {exts[-1]}\r\n"]
    return "".join(out).encode()


# --- the session's commands -------------------------------------------------------------

R_OK = line(250, "2.0.0", "Ok")
R_MAIL_OK = line(250, "2.1.0", "Ok")
R_RCPT_OK = line(250, "2.1.5", "Ok")
R_DATA_GO = line(354, None, "End data with <CR><LF>.<CR><LF>")
R_BYE = line(221, "2.0.0", "Bye")
R_VRFY = line(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")
R_HELP = line(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")
R_NOT_IMPL = line(502, "5.5.1", "Error: command not implemented")
R_HTTP = line(221, "2.7.0", "Error: this is an SMTP server, not a web server. Goodbye")
R_EARLY = line(554, "5.5.0", "Error: SMTP protocol synchronization (talking before the greeting)")
R_TOO_MANY_ERRORS = line(421, "4.7.0", "Error: too many errors")
R_IDLE = line(421, "4.4.2", "Error: timeout exceeded")
R_SHUTDOWN = line(421, "4.3.2", "Service shutting down, closing transmission channel")
R_NO_ROOM = line(452, "4.3.1", "Insufficient system storage")
R_TOO_MANY_RCPTS = line(452, "4.5.3", "Error: too many recipients")
R_SIZE_EXCEEDED = line(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
R_TOO_BIG = line(552, "5.3.4", "Error: message file too big")
R_HEADER_TOO_BIG = line(552, "5.3.4", "Error: message header too big")
R_BARE_LF = line(550, "5.5.2", "Error: bare <CR> or <LF> in message; lines must end with <CR><LF>")
R_HOPS = line(554, "5.4.0", "Error: too many hops")
R_STORE_FAILED = line(451, "4.3.0", "Error: queue file write error, try again later")
R_TLS_GO = line(220, "2.0.0", "Ready to start TLS")
R_TLS_ALREADY = line(503, "5.5.1", "Error: TLS already active")


def queued(queue_id: str) -> bytes:
    return f"250 2.0.0 Ok: queued as {queue_id}\r\n".encode()


def bdat_chunk(size: int) -> bytes:
    return f"250 2.0.0 Ok: {size} octets received\r\n".encode()


# 503 for a verb out of sequence, by the reason.
R_HELO_FIRST = line(503, "5.5.1", "Error: send HELO/EHLO first")
R_NESTED_MAIL = line(503, "5.5.1", "Error: nested MAIL command")
R_NEED_MAIL = line(503, "5.5.1", "Error: need MAIL command")
R_NEED_RCPT = line(503, "5.5.1", "Error: need RCPT command")
R_DATA_AFTER_BDAT = line(503, "5.5.1", "Error: DATA after BDAT in one transaction")
R_BAD_SEQUENCE = line(503, "5.5.1", "Error: bad sequence of commands")
SEQUENCE = {"MAIL": R_HELO_FIRST, "RCPT": R_NEED_MAIL, "DATA": R_NEED_RCPT, "BDAT": R_NEED_RCPT}

# --- abuse limits (mta.smtp.limits) -------------------------------------------------

R_TOO_MANY_MESSAGES = line(421, "4.7.0", "Error: too many messages in this session")
R_TOO_MANY_SESSION_RCPTS = line(452, "4.5.3", "Error: too many recipients in this session")
R_TOO_MANY_COMMANDS = line(421, "4.7.0", "Error: too many commands")
R_TOO_SLOW = line(421, "4.4.2", "Error: too slow, data rate below the minimum")
R_TOO_MANY_CONNECTIONS = line(421, "4.7.0", "Error: too many connections, try again later")


def too_fast_from(ip: str) -> bytes:
    return line(421, "4.7.0", f"Error: too many connections from {ip}, slow down")


def too_many_from(ip: str) -> bytes:
    return line(421, "4.7.0", f"Error: too many connections from {ip}")


# --- AUTH (mta.smtp.submission, mta.smtp.sasl) --------------------------------------

R_AUTH_OK = line(235, "2.7.0", "Authentication successful")
R_AUTH_FAILED = line(535, "5.7.8", "Authentication credentials invalid")
R_AUTH_CANCELLED = line(501, "5.0.0", "Authentication cancelled")
R_AUTH_BAD_B64 = line(501, "5.5.2", "Cannot decode response")
R_AUTH_MALFORMED = line(501, "5.5.2", "Malformed authentication response")
R_AUTH_SYNTAX = line(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
R_AUTH_MECH = line(504, "5.5.4", "Unrecognized authentication type")
R_AUTH_NEED_TLS = line(530, "5.7.0", "Must issue a STARTTLS command first")
R_AUTH_TWICE = line(503, "5.5.1", "Already authenticated")
R_AUTH_IN_TX = line(503, "5.5.1", "AUTH not permitted during a mail transaction")
R_AUTH_BLOCKED = line(421, "4.7.0", "Too many authentication failures, closing connection")
R_AUTH_TEMP = line(454, "4.7.0", "Temporary authentication failure")
R_AUTH_REQUIRED = line(530, "5.7.0", "Authentication required")
R_LOGIN_USER = b"334 VXNlcm5hbWU6\r\n"  # "Username:"
R_LOGIN_PASS = b"334 UGFzc3dvcmQ6\r\n"  # "Password:"
R_PLAIN_GO = b"334 \r\n"
