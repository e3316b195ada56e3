"""HAProxy PROXY protocol on the server side: who may send the header.

The header itself is parsed in Rust (`_native.ProxyParser`, sans-IO, v1 and
v2). Invariant: with `proxy_protocol` on, a session reads nothing but the
header until it is complete, and only from an address in `proxy_from`;
anything else closes the connection without a reply.
"""

from __future__ import annotations

from mta import _native
from mta.config.schema import Config
from mta.policy.relay import Networks


class ProxyGate:
    def __init__(self, cfg: Config):
        self.allowed = Networks(cfg.proxy_from)

    def accepts(self, ip: str) -> bool:
        return ip in self.allowed

    @staticmethod
    def parser() -> _native.ProxyParser:
        return _native.ProxyParser()
