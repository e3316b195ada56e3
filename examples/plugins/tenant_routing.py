"""Route outgoing mail to a smarthost per tenant: by the message's `X-Tenant` header, else by
the sender's domain, from a TOML map that is re-read when the file changes.

Enable it (the directory holding this file must be on the server's PYTHONPATH, or copy the
file into a package of your own and name that module):

    [[plugin]]
    module = "tenant_routing"
    options = { map = "/etc/mta/routes.toml" }

The map (every table is optional; keys are matched in lower case):

    default = "smarthost 10.0.0.9:25"          # when nothing below matches (omit: fall through)

    [tenants]                                  # by the X-Tenant header (checked first)
    acme = "smarthost 10.0.0.5:25"
    globex = { transport = "smarthost relay.globex.example:587", tls = "required",
               auth = "mta:secret" }

    [senders]                                  # by the envelope sender's domain
    "acme.example" = "smarthost 10.0.0.5:25"
    "initech.example" = "lmtp unix:/run/dovecot/lmtp"

A value is a transport as the transport map writes it ("smarthost HOST:PORT",
"lmtp unix:/path", "maildir /var/mail/{user}", "discard", "mx"), or a table with `transport`
and the options of `mta.plugin.Route` (tls, connections, per_connection, auth). When nothing
matches the hook returns None and the server's own routing (transport map, relay_to, MX)
decides.

The map is checked at start-up (`mta check-config` too): a missing or broken file is a
configuration error. Later, each call compares the file's mtime, size and inode with the last
read (one stat(), no thread); a changed file is read again. If the new version is broken, the
old map stays in use and the error is logged once per change.

Trust: the X-Tenant header comes from whoever wrote the message. Let only your own clients set
it, e.g. strip or overwrite it in an `on_message` hook for untrusted clients (see
header_rewrite.py), or leave the [tenants] table out and route by sender domain only.
"""

from __future__ import annotations

import logging
import os
import tomllib

from mta.plugin import OptionsError, Route

log = logging.getLogger("mta.plugin.tenant_routing")

TRANSPORT_KINDS = ("smarthost", "lmtp", "maildir", "discard", "mx")

# Module-level state: a module-style plugin is one configuration per worker process. (To
# list the same routing logic twice with different options, write it as a class `Plugin`,
# as sqlite_recipients.py does.)
_path: str = ""
_stamp: tuple | None = None  # (mtime_ns, size, inode) of the version in use
_map: dict = {"default": None, "tenants": {}, "senders": {}}


def setup(options: dict) -> None:
    """Called once per worker before any mail, with the [[plugin]] options. Raising
    OptionsError makes it a configuration error that names this plugin."""
    global _path, _stamp, _map
    path = options.get("map")
    if not isinstance(path, str) or not path:
        raise OptionsError('options.map: the path of the routes file is required, e.g. '
                           'options = { map = "/etc/mta/routes.toml" }')
    _path = path
    try:
        _stamp = _stat(path)
        _map = load_map(path)
    except (OSError, ValueError) as e:
        raise OptionsError(f"options.map {path!r}: {e}") from None


def route(address: str, msg) -> Route | str | None:
    """Where `address` of `msg` goes: a Route (or transport string), or None to let the
    server's own routing decide. Called once per recipient of each message at delivery time.
    It is a plain (sync) function: it runs on the event loop, so it only does quick work."""
    _reload_if_changed()
    routes = _map
    if routes["tenants"]:  # read the header only when the map routes by tenant
        tenant = msg.headers.get("X-Tenant")
        if tenant:
            found = routes["tenants"].get(tenant.strip().lower())
            if found is not None:
                return found
    _local, at, domain = msg.sender.rpartition("@")  # msg.sender is "" for a bounce
    if at:
        found = routes["senders"].get(domain.lower())
        if found is not None:
            return found
    return routes["default"]


# --- the map file ------------------------------------------------------------------------

def load_map(path: str) -> dict:
    """Read and check the routes file; raises OSError or ValueError saying what is wrong."""
    with open(path, "rb") as f:
        try:
            raw = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"not valid TOML: {e}") from None
    unknown = sorted(set(raw) - {"default", "tenants", "senders"})
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; expected default, [tenants], [senders]")
    out: dict = {"default": None, "tenants": {}, "senders": {}}
    if "default" in raw:
        out["default"] = _to_route("default", raw["default"])
    for table in ("tenants", "senders"):
        entries = raw.get(table, {})
        if not isinstance(entries, dict):
            raise ValueError(f"[{table}] must be a table of name = transport")
        for key, value in entries.items():
            out[table][key.strip().lower()] = _to_route(f"{table}.{key}", value)
    return out


def _to_route(where: str, value) -> Route:
    """A map value as a Route: "smarthost 10.0.0.5:25" or { transport = "...", tls = ... }."""
    if isinstance(value, str):
        transport, options = value, {}
    elif isinstance(value, dict) and isinstance(value.get("transport"), str):
        options = {k: v for k, v in value.items() if k != "transport"}
        transport = value["transport"]
    else:
        raise ValueError(f"{where}: expected a transport string or a table with transport = \"...\", "
                         f"not {value!r}")
    words = transport.split()
    if not words or words[0].lower() not in TRANSPORT_KINDS:
        raise ValueError(f"{where}: {transport!r} is not a transport ({', '.join(TRANSPORT_KINDS)})")
    try:
        return Route(transport, **options)  # checks the option names
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _stat(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _reload_if_changed() -> None:
    """Read the file again if it changed since the version in use. An editor that saves by
    rename changes the inode; one that writes in place changes mtime and usually size."""
    global _stamp, _map
    try:
        stamp = _stat(_path)
    except OSError as e:
        if _stamp is not None:
            log.error("tenant_routing: cannot stat %s (%s); keeping the map read before", _path, e)
            _stamp = None  # logged once; the next successful stat reloads
        return
    if stamp == _stamp:
        return
    try:
        new = load_map(_path)
    except (OSError, ValueError) as e:
        log.error("tenant_routing: %s changed but cannot be used (%s); keeping the map read before", _path, e)
    else:
        _map = new
        log.info("tenant_routing: %s re-read (%d tenants, %d sender domains)", _path,
                 len(new["tenants"]), len(new["senders"]))
    _stamp = stamp  # a broken version is not retried until the file changes again
