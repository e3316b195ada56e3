"""What a server session counts for /metrics (mta.app.metrics), as indices into plain lists
it is handed: replies by verb and class, and per listener the connections' outcomes, the bytes
accepted and the TLS handshakes. Every bump is an index into a list made once: no lookup per reply."""

from __future__ import annotations

# A reply is counted under the last command dispatched before it: "connect" for the
# greeting and what refuses a connection before any command, "other" for unknown verbs
# and command lines the parser refused.
VERBS = ("connect", "ehlo", "helo", "mail", "rcpt", "data", "bdat", "rset", "noop", "quit",
         "vrfy", "help", "starttls", "auth", "other")
# by_verb[base + first byte of the reply]: the verb's row of ten classes (b"2" is 50).
VERB_BASE = {v.upper(): i * 10 - 48 for i, v in enumerate(VERBS)}
CONNECT_BASE = VERB_BASE["CONNECT"]
OTHER_BASE = VERB_BASE["OTHER"]


def by_verb_counts() -> list[int]:
    return [0] * (len(VERBS) * 10)


# A listener's counts: its connections' outcomes, then the message bytes accepted, then its
# TLS handshakes done (STARTTLS or implicit), full and resumed (mta_tls_handshakes_total).
OUTCOMES = ("accepted", "refused_limit", "refused_policy", "early_talker", "tls_failed")
ACCEPTED, REFUSED_LIMIT, REFUSED_POLICY, EARLY_TALKER, TLS_FAILED, BYTES, TLS_FULL, TLS_RESUMED = range(8)


def listener_counts() -> list[int]:
    return [0] * (len(OUTCOMES) + 3)
