"""Rewrite headers before a message is accepted: set `X-Tenant` on every message, and strip
the internal headers (`X-Internal-*`) from mail that leaves for the Internet.

Enable it (the directory holding this file must be on the server's PYTHONPATH):

    [[plugin]]
    module = "header_rewrite"
    options = { tenant = "acme", internal_domains = ["acme.example", "corp.acme.example"] }

Options (all optional):
- tenant: the X-Tenant value to set. A plugin earlier in the list may set a per-message
  tenant in `tx.notes["tenant"]` (e.g. from the login in `on_mail`); that one wins.
- internal_domains: mail whose recipients are all in these domains stays inside: its internal
  headers are kept. As soon as one recipient is elsewhere the message "leaves for the
  Internet" and every X-Internal-* header is removed (the one stored copy goes to every
  recipient, so the most exposed recipient decides).
- strip_prefixes: header name prefixes to strip, default ["X-Internal-"] (case-insensitive).

The edits are made in `on_message`, before the server says 250: they are stored with the
message (durable with the 250, kept across a restart) and every next hop receives the edited
bytes. Fields that are not edited keep their bytes exactly.

The tenant from the options or the notes replaces any X-Tenant the client wrote, so a client
cannot pick its own tenant (which tenant_routing.py routes by). With no tenant known, a
client's X-Tenant is removed unless the client is trusted (in mynetworks) or logged in.
"""

from __future__ import annotations

from mta.plugin import OptionsError

_tenant: str | None = None
_internal: frozenset[str] = frozenset()
_prefixes: tuple[str, ...] = ("x-internal-",)


def setup(options: dict) -> None:
    """Check and keep the options (once per worker, before any mail)."""
    global _tenant, _internal, _prefixes
    tenant = options.get("tenant")
    if tenant is not None and (not isinstance(tenant, str) or not tenant.strip()):
        raise OptionsError("options.tenant: a non-empty string")
    internal = options.get("internal_domains", [])
    if not isinstance(internal, list) or not all(isinstance(d, str) for d in internal):
        raise OptionsError('options.internal_domains: a list of domains, e.g. ["acme.example"]')
    prefixes = options.get("strip_prefixes", ["X-Internal-"])
    if not isinstance(prefixes, list) or not all(isinstance(p, str) and p for p in prefixes):
        raise OptionsError('options.strip_prefixes: a list of header name prefixes, e.g. ["X-Internal-"]')
    _tenant = tenant.strip() if tenant else None
    _internal = frozenset(d.strip().lower() for d in internal)
    _prefixes = tuple(p.lower() for p in prefixes)


def on_message(tx, msg):
    """The whole message is in, the 250 not yet sent. Returning None accepts it (with the
    edits); a Reject/Defer here would refuse it and nothing would be stored."""
    headers = msg.headers  # add, remove, replace, prepend; get, get_all, items, names
    tenant = tx.notes.get("tenant") or _tenant
    if tenant:
        headers.remove("X-Tenant")  # every copy the client wrote, then ours
        headers.add("X-Tenant", str(tenant))
    elif "X-Tenant" in headers and not (tx.conn.trusted or tx.conn.auth_user):
        headers.remove("X-Tenant")
    if leaves_for_internet(tx.recipients):
        for name in {n.lower() for n in headers.names() if n.lower().startswith(_prefixes)}:
            headers.remove(name)
    return None


def leaves_for_internet(recipients: list[str]) -> bool:
    """Some recipient's domain is not one of internal_domains."""
    for address in recipients:
        _local, at, domain = address.rpartition("@")
        if at and domain.lower() not in _internal:
            return True
    return False
