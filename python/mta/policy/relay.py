"""Relay control, the one place for who may send where: mynetworks may relay anywhere,
everyone else only to the local and relay domains. An address that routes by itself
(source route, percent hack, bang path) never counts as local: no open relay by default."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from mta.plugin import Reject

RELAY_DENIED = Reject(554, "5.7.1", "Relay access denied")


class Networks:
    """Fast membership test of an IP in a list of networks, cached per address."""

    def __init__(self, nets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]):
        self._nets = tuple(nets)
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: str) -> bool:
        hit = self._cache.get(ip)
        if hit is None:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                return False
            if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
                addr = addr.ipv4_mapped
            hit = any(addr in n for n in self._nets if n.version == addr.version)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


def domain_of(address: str) -> str:
    """The domain an address is addressed to, lowercased, '' for none."""
    at = address.rfind("@")
    return address[at + 1 :].lower() if at >= 0 else ""


def _self_routing(local: str) -> bool:
    # Percent hack and bang paths: a local part that names another host.
    # Quoted local parts arrive unquoted from the parser, so '"a@b"@x' is
    # caught here too.
    return any(c in local for c in "%!@")


class RelayPolicy:
    def __init__(self, mynetworks: Networks, local_domains: Iterable[str], relay_domains: Iterable[str]):
        self.mynetworks = mynetworks
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.relay_domains = frozenset(d.lower() for d in relay_domains)

    def trusted(self, ip: str) -> bool:
        return ip in self.mynetworks

    def check_rcpt(self, address: str, trusted: bool) -> Reject | None:
        """None when `address` may be relayed to, else the refusal."""
        if trusted:
            return None
        if address.lower() == "postmaster":
            return None
        at = address.rfind("@")
        if at <= 0:
            return RELAY_DENIED
        domain = address[at + 1 :].lower()
        if domain not in self.local_domains and domain not in self.relay_domains:
            return RELAY_DENIED
        if _self_routing(address[:at]):
            return RELAY_DENIED
        return None
