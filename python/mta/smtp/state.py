"""The server session's states, shared by the session and its mixins (stages, STARTTLS):
a state enum, and its members as plain module names (read on every command)."""

from __future__ import annotations

import enum


class State(enum.IntEnum):
    GREETING = 0  # connected, greeting not sent yet (early-talker window)
    FRESH = 1  # greeted, no EHLO/HELO yet
    READY = 2  # EHLO/HELO done, no transaction
    MAIL = 3  # MAIL accepted, no recipient yet
    RCPT = 4  # at least one recipient
    BDAT = 5  # BDAT chunks being received
    CLOSED = 6


# Plain names for the states: `State.X` costs about 170 ns per access (the enum
# class's attribute lookup), a module global 20 ns, and the session tests its
# state on every command.
GREETING, FRESH, READY, MAIL_GIVEN, RCPT_GIVEN, BDAT_OPEN, CLOSED = State
