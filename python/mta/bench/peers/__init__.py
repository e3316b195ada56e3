"""Ready-made peers for `mta bench`: each MTA (or sink) runs from a private directory with its
own config, spool and port, as a relay into the bench sink, never touching the system's MTA.
A peer is a small object (`base.Peer`); this module only names them."""

from __future__ import annotations

from mta.bench.peers.base import Peer, PeerRun, SetupError, peers_home

_MODULES = {
    "mta": "mta.bench.peers.mta",
    "postfix": "mta.bench.peers.postfix",
    "exim": "mta.bench.peers.exim",
    "opensmtpd": "mta.bench.peers.opensmtpd",
    "aiosmtpd": "mta.bench.peers.aiosmtpd",
    "smtp-sink": "mta.bench.peers.smtpsink",
}

NAMES = tuple(_MODULES)


def get(name: str) -> Peer:
    """The peer called `name` (ValueError naming the known ones otherwise)."""
    import importlib

    if name not in _MODULES:
        raise ValueError(f"no peer named {name!r} (known: {', '.join(NAMES)})")
    return importlib.import_module(_MODULES[name]).PEER


__all__ = ["NAMES", "Peer", "PeerRun", "SetupError", "get", "peers_home"]
