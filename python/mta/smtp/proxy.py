"""HAProxy PROXY protocol on the server side: who may send the header (parsed in Rust,
`_native.ProxyParser`). Invariant: with `proxy_protocol` on, a session reads only the
header, only from an address in `proxy_from`; anything else is closed without a reply."""

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
