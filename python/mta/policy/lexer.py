"""RFC 5322 lexical pieces shared by the header readers of message authentication (the From:
reader in mta.policy.dmarc, the Authentication-Results reader in mta.policy.authres).
Invariant: never raises; an unterminated construct is reported, not guessed at."""

from __future__ import annotations


def comment_end(text: str, i: int) -> int:
    """The index just after the (nested, backslash-escaped) comment opening at text[i] ==
    "("; -1 when it never closes."""
    depth, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1
