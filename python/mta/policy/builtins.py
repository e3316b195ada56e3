"""The built-in policies as the first entries of the hook chain, so they are ordered, timed
and tested like plugins: relay control and the recipient check at RCPT, the sender-login map
at MAIL. No plugin verdict overrides them: a recipient they refuse never reaches a plugin."""

from __future__ import annotations

from typing import Callable, Iterable

from mta import log as fastlog
from mta.auth.senders import SenderLogin
from mta.auth.users import printable
from mta.plugin import Reject
from mta.policy.chain import Chain, Entry
from mta.policy.relay import RelayPolicy


def relay_control(policy: RelayPolicy) -> Entry:
    """Who may relay where: mynetworks and authenticated clients anywhere, others only to
    our domains (mta.policy.relay)."""
    check = policy.check_rcpt

    def on_rcpt(tx, address: str):
        conn = tx.conn
        return check(address, conn.trusted or conn.auth_user is not None)

    return Entry("relay", {"on_rcpt": on_rcpt}, module="mta.policy.relay", builtin=True)


def recipients(expand: Callable) -> Entry:
    """The address book: unknown local users are refused at RCPT; what a recipient expands
    to (aliases, virtual) is left in `tx.expansion` for the session and later plugins."""

    def on_rcpt(tx, address: str):
        refusal, final = expand(address)
        if refusal is not None:
            return refusal
        tx.expansion = final
        return None

    return Entry("recipients", {"on_rcpt": on_rcpt}, module="mta.delivery.router", builtin=True)


def sender_login(senders: SenderLogin) -> Entry:
    """An authenticated user may use only the envelope senders the map gives it."""
    check = senders.check

    def on_mail(tx, sender: str):
        user = tx.conn.auth_user
        if user is None or check(user, sender):
            return None
        shown = printable(user).encode("ascii", "replace").decode()
        fastlog.info(f"sender rejected from [{tx.conn.peer_ip}]: <{sender}> not owned by user {shown}")
        return Reject(553, "5.7.1", f"Sender address rejected: not owned by user {shown}")

    return Entry("sender_login", {"on_mail": on_mail}, module="mta.auth.senders", builtin=True)


def verifier(vcfg, lookup, hostname: str) -> Entry | None:
    """The message checks of `[verify]` (mta.policy.verify), DNS through `lookup`; None when off."""
    if not vcfg.enabled:
        return None
    from mta.policy import verify

    return verify.entry(verify.Verifier(lookup, authserv_id=vcfg.authserv_id or hostname, hostname=hostname,
                                        dmarc_reject=vcfg.dmarc_reject, timeout=vcfg.timeout))


def signer(dcfg) -> Entry | None:
    """The DKIM signer of `[[dkim.sign]]` (mta.policy.dkim); None without a usable key.
    Raises ConfigError for a key it cannot use (unless on_key_error = "send-unsigned")."""
    if not dcfg.sign:
        return None
    from mta.policy import dkim

    keyring = dkim.Keyring.from_config(dcfg)
    return dkim.entry(keyring) if keyring.signers else None


def pool_header(name: str) -> Entry | None:
    """`egress.pool_header`: the header naming a message's egress pool becomes
    tx.notes["pool"] and is removed (never relayed, never signed). Only trusted or
    authenticated clients choose a pool; from others the header is removed unread."""
    if not name:
        return None

    def on_message(tx, msg):
        headers = msg.headers
        values = headers.get_all(name)
        if not values:
            return None
        conn = tx.conn
        if conn is None or conn.trusted or conn.auth_user is not None:
            tx.notes["pool"] = values[-1].strip()
        headers.remove(name)
        return None

    return Entry("pool_header", {"on_message": on_message}, module="mta.delivery.shaping", builtin=True)


def chain(policy: RelayPolicy, expand: Callable, senders: SenderLogin | None = None,
          plugins: Iterable[Entry] = (), *, verify: Entry | None = None, sign: Entry | None = None,
          pool: Entry | None = None) -> Chain:
    """The server's chain: relay control, the recipient check, the sender-login map (with
    users to log in), the message checks (mta.policy.verify: their results are there for the
    plugins), then the plugins in order, and last the DKIM signer (mta.policy.dkim: it signs
    what the plugins made of the message)."""
    first = [relay_control(policy), recipients(expand)]
    if senders is not None:
        first.append(sender_login(senders))
    if verify is not None:
        first.append(verify)
    if pool is not None:
        first.append(pool)
    return Chain(first + list(plugins) + ([sign] if sign is not None else []))
