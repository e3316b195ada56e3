"""CPU per message of the checks of untrusted mail (issue 21): SPF, DKIM, DMARC and ARC as the
server runs them (mta.testing.ScriptedSession, `[verify]` on, DNS from the loopback server of
tests/dnsserver.py, its cache warmed first), minus the same session with `[verify]` off, run
by run in alternation; then each check alone. CPU time of the whole process (the DNS
server's thread idles: counted).

  PYTHONPATH=/tmp/mta-dkim/python:tests python benches/verify_cost.py [--messages 400] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from dnsserver import DNSServer
from mta import _native
from mta.bench.payload import build_message
from mta.delivery.mx import MxResolver
from mta.policy import dkimkeys, dmarc, spf
from mta.testing import ScriptedSession

DOMAIN = "example.test"  # From: and MAIL FROM of the bench messages
PEER = "192.0.2.25"  # outside mynetworks: checked; SPF passes through the include
SIZES = (1024, 65536)
SELECTORS = {"rsa-2048": ("bench-rsa", "rsa2048"), "ed25519": ("bench-ed", "ed25519")}


def world() -> tuple[dict, dict]:
    """(the zone, {algorithm: DkimSigner}) of a domain with SPF, DKIM keys and DMARC p=reject."""
    zone = {
        DOMAIN: [("TXT", "v=spf1 ip4:198.51.100.0/24 include:_spf.example.test -all")],
        f"_spf.{DOMAIN}": [("TXT", "v=spf1 ip4:192.0.2.0/24 ~all")],
        f"_dmarc.{DOMAIN}": [("TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@example.test")],
    }
    signers = {}
    for alg, (selector, kind) in SELECTORS.items():
        pem, record = dkimkeys.generate(kind)
        zone[f"{selector}._domainkey.{DOMAIN}"] = [("TXT", record)]
        signers[alg] = _native.DkimSigner(DOMAIN, selector, _native.DkimKey(pem))
    return zone, signers


def signed(size: int, signer, seed: int) -> bytes:
    msg = build_message(size, f"from@{DOMAIN}", "to@example.net", seed)
    if signer is None:
        return msg
    cut = msg.index(b"\r\n\r\n") + 2
    return b"".join(_native.dkim_sign(msg[:cut], msg[cut + 2:], [signer], int(time.time()))) + msg


class Timed:
    """One session sending this message over and over (MAIL, RCPT, DATA; one resolver cache),
    `[verify]` on or off; each run() gives the process CPU µs per transaction."""

    def __init__(self, srv: DNSServer, verify: bool, raw: bytes) -> None:
        cfg = {"verify.enabled": verify, "dns.nameservers": srv.nameservers, "dns.port": srv.port,
               "local_domains": ["example.net"], "verify.authserv_id": "mx.test"}
        self.s = ScriptedSession(peer_ip=PEER, config=cfg)
        self.s.ehlo("mail.example.test")
        self.raw = raw
        for _ in range(20):  # warm: the cache, the allocator, the lazy imports
            self.one()
        if verify:  # the checks really ran, and passed
            text = self.s.store.stored[max(self.s.store.stored)]["data"].split(b"\r\n\r\n", 1)[0]
            assert b"Authentication-Results: mx.test" in text and b"dmarc=pass" in text, text[:600]

    def one(self) -> None:
        self.s.mail(f"from@{DOMAIN}")
        self.s.rcpt("to@example.net")
        r = self.s.data(self.raw)
        assert r.code == 250, r

    def run(self, messages: int) -> float:
        self.s.store.stored.clear()
        t0 = time.process_time()
        for _ in range(messages):
            self.one()
        return (time.process_time() - t0) * 1e6 / messages


def session_us(srv: DNSServer, raw: bytes, messages: int, runs: int) -> tuple[float, float, float, int]:
    """(median µs per transaction with [verify] off, on, median of the per-round differences,
    DNS queries seen while timed): off and on in alternation, so the machine's drift hits both."""
    off, on = Timed(srv, False, raw), Timed(srv, True, raw)
    try:
        srv.reset_counts()
        pairs = [(off.run(messages), on.run(messages)) for _ in range(runs)]
    finally:
        off.s.close()
        on.s.close()
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(b - a for a, b in pairs), len(srv.queries))


def parts_us(srv: DNSServer, raw: bytes, calls: int, runs: int) -> dict[str, float]:
    """Each check alone on a warm cache, as mta.policy.verify calls it: median µs per call."""
    loop = asyncio.new_event_loop()
    lookup = MxResolver(srv.nameservers, port=srv.port, timeout=2.0)
    cut = raw.index(b"\r\n\r\n") + 2
    block, body = raw[:cut], raw[cut + 2:]

    async def spf_once():
        r = await spf.check(lookup, PEER, f"from@{DOMAIN}", "mail.example.test", hostname="mx.test")
        assert r.result == "pass", r

    async def dkim_once():
        sigs = _native.dkim_signatures(block)
        _status, records = await lookup.query(sigs[0].key_name, "TXT")
        key = _native.DkimPublicKey(records[0])
        (result, why), = _native.dkim_verify(block, body, [(sigs[0], key)], int(time.time()))
        assert result == "pass", why

    async def dmarc_once():
        r = await dmarc.check(dmarc_lookup[0], DOMAIN, ("pass", DOMAIN), [("pass", DOMAIN)])
        assert r.result == "pass", r

    dmarc_lookup = [lookup]
    try:  # mta.policy.dmarc has taken the resolver, or its bound `query`: whichever it takes
        loop.run_until_complete(dmarc_once())
    except TypeError:
        dmarc_lookup[0] = lookup.query

    async def arc_once():  # no ARC set: what every unsealed message costs
        assert _native.arc_chain(block).status == "none"

    async def timed(fn) -> float:
        await fn()
        out = []
        for _ in range(runs):
            t0 = time.process_time()
            for _ in range(calls):
                await fn()
            out.append((time.process_time() - t0) * 1e6 / calls)
        return statistics.median(out)

    try:
        return {name: round(loop.run_until_complete(timed(fn)), 1)
                for name, fn in (("spf", spf_once), ("dkim", dkim_once), ("dmarc", dmarc_once), ("arc", arc_once))}
    finally:
        loop.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=400, help="transactions per run")
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (the median is reported)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    zone, signers = world()
    rows = []
    with DNSServer(zone) as srv:
        for size in SIZES:
            for alg, signer in signers.items():
                raw = signed(size, signer, 1)
                base, on, diff, queries = session_us(srv, raw, a.messages, a.runs)
                rows.append({"size": size, "algorithm": alg, "session_off_us": round(base, 1),
                             "session_on_us": round(on, 1), "verify_us": round(diff, 1),
                             "dns_queries_timed": queries, **parts_us(srv, raw, a.messages, a.runs)})
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print("| message | signature | session, verify off µs | session, verify on µs | verification µs "
          "| SPF alone | DKIM alone | DMARC alone | ARC alone | DNS queries while timed |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size'] // 1024} KiB | {r['algorithm']} | {r['session_off_us']:,.0f} | {r['session_on_us']:,.0f} "
              f"| {r['verify_us']:,.0f} | {r['spf']:,.0f} | {r['dkim']:,.0f} | {r['dmarc']:,.0f} | {r['arc']:,.1f} "
              f"| {r['dns_queries_timed']} |")


if __name__ == "__main__":
    main()
