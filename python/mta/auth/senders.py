"""The sender-login map: which envelope senders an authenticated user may use."""

from __future__ import annotations

from typing import Iterable, Mapping

SENDER_DEFAULTS = ("none", "self", "any")


def check_sender(user: str, mail_from: str, sender_login: Mapping[str, Iterable[str]],
                 default: str = "none") -> bool:
    """May `user` (authenticated) use MAIL FROM:<mail_from>?
    - "" (the null sender <>) is always allowed: it claims no identity, and mail
      programs send MDNs and auto-replies with it;
    - an entry "user@domain" allows that address; "@domain" allows every address
      in exactly that domain (not its subdomains); comparison ignores case;
    - a user absent from the map (or with no matching entry) falls back to `default`:
      "none" (nothing more), "self" (its own login name, when that is an address),
      "any" (everything: trusted submission only)."""
    if mail_from == "":
        return True
    addr = mail_from.lower()
    domain = "@" + addr.rpartition("@")[2] if "@" in addr else None
    for entry in sender_login.get(user, ()):
        e = entry.lower()
        if e == addr or (e.startswith("@") and e == domain):
            return True
    if default == "any":
        return True
    if default == "self":
        return "@" in user and user.lower() == addr
    return False


class SenderLogin:
    """check_sender bound to the [auth] config section."""

    def __init__(self, sender_login: Mapping[str, Iterable[str]], default: str = "none") -> None:
        if default not in SENDER_DEFAULTS:
            raise ValueError(f"sender_login_default must be one of {SENDER_DEFAULTS}")
        self.map = {k: tuple(v) for k, v in sender_login.items()}
        self.default = default

    @classmethod
    def from_config(cls, auth_cfg) -> SenderLogin:
        return cls(auth_cfg.sender_login, auth_cfg.sender_login_default)

    def check(self, user: str, mail_from: str) -> bool:
        return check_sender(user, mail_from, self.map, self.default)
