"""A small authoritative DNS server for tests: real UDP and TCP on 127.0.0.1
(one random port for both, or a given host and port such as 127.0.0.153:53 for
resolvers that only ask port 53), answering from a dict in a background thread,
counting the queries it sees. No mocks: point a resolver at it.

API
    from dnsserver import DNSServer, dns_server   # dns_server: a pytest fixture

    zone = {
        "example.com":     [("MX", "10 mx1.example.com"), ("MX", "20 mx2.example.com")],
        "mx1.example.com": [("A", "127.0.0.1"), ("AAAA", "::1", 30)],   # (type, rdata[, ttl])
        "alias.example":   [("CNAME", "mx1.example.com")],               # chased in-zone
        "broken.example":  "servfail",          # a behaviour instead of records
        "_spf.example":    [("TXT", "v=spf1 -all")],  # unquoted: one record, split at 255 octets
    }
    with DNSServer(zone, ttl=300, negative_ttl=60) as srv:
        srv.host, srv.port, srv.nameservers     # "127.0.0.1", int, ["127.0.0.1"]
    DNSServer(zone, host="127.0.0.153", port=53).start()  # that address; OSError if taken
        srv.add("new.example", [("A", "127.0.0.2")])    # replace a name's records live
        srv.behave("mx1.example.com", "timeout", rdtype="AAAA")  # per name or per (name, type)
        srv.delay("example.com", 0.3)           # answer that name late
        srv.count("example.com", "MX")          # queries seen (rdtype None: all types)
        srv.queries                             # [(name, "MX"), ...] in arrival order
        srv.reset_counts()

Behaviours: "servfail", "refused", "nxdomain" (that rcode), "timeout" (no
answer at all). Names are case-insensitive, with or without the final dot;
rdata names are absolute. A name absent from the zone is NXDOMAIN, a present
name (or an ancestor of one) without the type is NODATA; both carry a root SOA
whose TTL and MINIMUM are `negative_ttl`. UDP answers that do not fit
(512 bytes, or the query's EDNS size) are truncated (TC) so resolvers retry
over TCP.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.rrset
import pytest

BEHAVIOURS = ("servfail", "refused", "nxdomain", "timeout")


def _txt(value: str):
    """An unquoted TXT value as one record: its bytes in strings of at most 255 octets (as
    a zone file would publish a DKIM key); a value starting with '"' is zone-file syntax."""
    raw = value.encode()
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT,
                                   [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""])


def _norm(name) -> str:
    return str(name).rstrip(".").lower()


class DNSServer:
    def __init__(self, zone: dict | None = None, ttl: int = 300, negative_ttl: int = 60,
                 behaviours: dict | None = None, host: str = "127.0.0.1", port: int = 0):
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.host = host
        self.port = port  # 0: a free port, chosen at start()
        self._fixed_port = port
        self.queries: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._zone: dict[str, list[tuple[int, dns.rdata.Rdata, int]]] = {}
        self._behaviours: dict[tuple[str, int | None], str] = {}
        self._delays: dict[str, float] = {}
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        for name, value in (zone or {}).items():
            self.add(name, value)
        for key, what in (behaviours or {}).items():
            name, rdtype = key if isinstance(key, tuple) else (key, None)
            self.behave(name, what, rdtype)

    @property
    def nameservers(self) -> list[str]:
        return [self.host]

    # -- the zone ------------------------------------------------------------

    def add(self, name: str, records) -> None:
        """Set a name's records [(type, rdata[, ttl]), ...], or a behaviour string."""
        if isinstance(records, str):
            self.behave(name, records)
            records = []
        parsed = []
        for rec in records:
            rdtype = dns.rdatatype.from_text(rec[0])
            if rdtype == dns.rdatatype.TXT and not rec[1].startswith('"'):
                rdata = _txt(rec[1])
            else:
                rdata = dns.rdata.from_text(dns.rdataclass.IN, rdtype, rec[1], origin=dns.name.root,
                                            relativize=False)
            parsed.append((rdtype, rdata, rec[2] if len(rec) > 2 else self.ttl))
        with self._lock:
            self._zone[_norm(name)] = parsed

    def behave(self, name: str, behaviour: str | None, rdtype: str | None = None) -> None:
        """Make a name (or one type of it) misbehave; None restores normal answers."""
        if behaviour is not None and behaviour not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}")
        key = (_norm(name), dns.rdatatype.from_text(rdtype) if rdtype else None)
        with self._lock:
            if behaviour is None:
                self._behaviours.pop(key, None)
            else:
                self._behaviours[key] = behaviour
            self._zone.setdefault(key[0], [])

    def delay(self, name: str, seconds: float) -> None:
        with self._lock:
            self._delays[_norm(name)] = seconds

    def count(self, name: str, rdtype: str | None = None) -> int:
        name = _norm(name)
        with self._lock:
            return sum(1 for n, t in self.queries if n == name and (rdtype is None or t == rdtype))

    def reset_counts(self) -> None:
        with self._lock:
            self.queries.clear()

    # -- answering -----------------------------------------------------------

    def answer(self, wire: bytes, max_size: int | None) -> bytes | None:
        """The reply to one query in wire format (None: stay silent)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        q = query.question[0]
        qname = _norm(q.name)
        with self._lock:
            self.queries.append((qname, dns.rdatatype.to_text(q.rdtype)))
            behaviour = self._behaviours.get((qname, q.rdtype)) or self._behaviours.get((qname, None))
            delay = self._delays.get(qname, 0.0)
        if behaviour == "timeout":
            return None
        if delay:
            time.sleep(delay)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if behaviour in ("servfail", "refused", "nxdomain"):
            response.set_rcode(dns.rcode.from_text(behaviour.upper()))
            if behaviour == "nxdomain":
                response.authority.append(self._soa())
        else:
            self._fill(response, q.name, q.rdtype)
        if max_size is None and query.edns >= 0:
            max_size = max(512, query.payload)
        try:
            return response.to_wire(max_size=max_size or 65535)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    def _fill(self, response: dns.message.Message, qname: dns.name.Name, rdtype: int) -> None:
        name = qname
        with self._lock:
            for _ in range(8):  # CNAME chain, in-zone
                records = self._zone.get(_norm(name))
                if records is None:
                    if not any(n.endswith("." + _norm(name)) for n in self._zone):
                        response.set_rcode(dns.rcode.NXDOMAIN)
                    response.authority.append(self._soa())
                    return
                matching = [(rd, ttl) for t, rd, ttl in records if t == rdtype]
                cname = [(rd, ttl) for t, rd, ttl in records if t == dns.rdatatype.CNAME]
                if matching:
                    response.answer.append(_rrset(name, rdtype, matching))
                    return
                if cname and rdtype != dns.rdatatype.CNAME:
                    response.answer.append(_rrset(name, dns.rdatatype.CNAME, cname))
                    name = cname[0][0].target
                    continue
                response.authority.append(self._soa())
                return

    def _soa(self) -> dns.rrset.RRset:
        soa = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.SOA,
                                  f". hostmaster. 1 3600 600 86400 {self.negative_ttl}")
        return _rrset(dns.name.root, dns.rdatatype.SOA, [(soa, self.negative_ttl)])

    # -- serving -------------------------------------------------------------

    def start(self) -> DNSServer:
        owner = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                reply = owner.answer(data, None)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self):
                sock = self.request
                while True:
                    head = _recv_exact(sock, 2)
                    body = _recv_exact(sock, struct.unpack("!H", head)[0]) if head else None
                    if not body:
                        return
                    reply = owner.answer(body, 65535)
                    if reply is not None:
                        sock.sendall(struct.pack("!H", len(reply)) + reply)

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        Udp4or6 = type("Udp", (socketserver.ThreadingUDPServer,), {"address_family": family})
        # SO_REUSEADDR on TCP only: a fixed port is free again at once after a previous run's
        # TIME_WAIT, while two live servers still cannot share it (UDP would let them).
        Tcp4or6 = type("Tcp", (socketserver.ThreadingTCPServer,),
                       {"address_family": family, "allow_reuse_address": True})
        if self._fixed_port:
            port = self._fixed_port
            udp = Udp4or6((self.host, port), Udp)
            try:
                tcp = Tcp4or6((self.host, port), Tcp)
            except OSError:
                udp.server_close()
                raise
        else:
            for _ in range(50):  # one port free for both UDP and TCP
                udp = Udp4or6((self.host, 0), Udp)
                port = udp.server_address[1]
                try:
                    tcp = Tcp4or6((self.host, port), Tcp)
                except OSError:
                    udp.server_close()
                    continue
                break
            else:
                raise RuntimeError("no free port for the test DNS server")
        self.port = port
        for srv in (udp, tcp):
            srv.daemon_threads = True
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                 name=f"dnsserver-{port}", daemon=True)
            t.start()
            self._servers.append(srv)
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(timeout=2)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _rrset(name, rdtype: int, items) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, dns.rdataclass.IN, rdtype)
    for rdata, ttl in items:
        rrset.add(rdata, ttl)  # the set's TTL is the smallest of its records'
    return rrset


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@pytest.fixture
def dns_server():
    """An empty running DNSServer; fill it with .add() in the test."""
    with DNSServer() as srv:
        yield srv
