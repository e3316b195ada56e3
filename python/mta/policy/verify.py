"""SPF, DKIM, ARC and DMARC of untrusted mail (the chain's first on_message entry), recorded in
one Authentication-Results field on top and in `tx.notes["auth"]`; forged results removed.
Invariant: a check that cannot finish in time is a temperror, never a stalled session."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable

from mta import _native
from mta.plugin import Reject
from mta.policy import authres, dmarc, spf
from mta.policy.chain import Entry
from mta.policy.dkim import openssl_rsa_verify

log = logging.getLogger("mta.verify")

AR = "Authentication-Results"
_IN_PLACE_MAX = 256 * 1024  # bodies hashed on the event loop's thread up to this size
_KEY_RECORDS_MAX = 4
_KEYS_MAX = 1000  # TXT records tried at a key name (RFC 6376 3.6.2.2: one is expected)


class Verifier:
    """The checks, handed the DNS lookup (`async query(name, rdtype)`) and the settings."""

    def __init__(self, lookup: Any, *, authserv_id: str, hostname: str, dmarc_reject: str = "tag",
                 timeout: float = 10.0):
        self.lookup = lookup
        self.authserv_id = authserv_id
        self.hostname = hostname
        self.dmarc_reject = dmarc_reject
        self.timeout = timeout
        self._keys: dict[str, Any] = {}  # key record -> DkimPublicKey: parsed once, not per message

    async def check(self, tx, msg) -> Reject | None:
        """Check the message, record the results; a Reject when DMARC says reject and
        verify.dmarc_reject = "reject" (tx.hold set for a quarantine)."""
        deadline = time.monotonic() + self.timeout
        headers = msg.headers
        block, body = msg.signing_input()  # as received: what the signers signed
        conn = tx.conn
        from_fields = headers.get_all("From")
        from_domain, from_problem = dmarc.author_domain(from_fields)
        if from_domain:  # warm the cache for the DMARC step while the rest runs
            for name in {from_domain, dmarc.organizational_domain(from_domain)}:
                asyncio.ensure_future(self.lookup.query(f"_dmarc.{name}", "TXT")).add_done_callback(_quiet)
        spf_r, dkim_r, arc_r = await asyncio.gather(
            _within(deadline, spf.check(self.lookup, conn.peer_ip, tx.sender, conn.helo or "",
                                        hostname=self.hostname, timeout=self.timeout),
                    spf.SpfResult("temperror", "mailfrom", tx.sender, "timed out")),
            _within(deadline, self._dkim(block, body), [("temperror", "timed out", {}, "")]),
            _within(deadline, self._arc(block, body), ("fail", "timed out")),
        )
        if from_domain:
            d = await _within(deadline, dmarc.check(self.lookup, from_domain, (spf_r.result, spf_r.domain),
                                                    [(r, dom) for r, _w, _p, dom in dkim_r]),
                              dmarc.DmarcResult("temperror", from_domain, None, "none", "timed out"))
        else:
            result = "permerror" if from_fields else "none"
            d = dmarc.DmarcResult(result, "", None, "none", from_problem)
        self._remove_forged(headers)
        msg.add_trace(authres.field(self.authserv_id, _methods(tx, spf_r, dkim_r, arc_r, d),
                                    utf8=bool(tx.mail.smtputf8)))
        tx.notes["auth"] = {
            "spf": spf_r.result, "dkim": [{"result": r, "domain": dom} for r, _w, _p, dom in dkim_r if dom],
            "dmarc": d.result, "dmarc_policy": d.policy, "dmarc_disposition": d.disposition,
            "from_domain": from_domain, "arc": arc_r[0],
        }
        return self._act(tx, d)

    def _act(self, tx, d: dmarc.DmarcResult) -> Reject | None:
        if d.result != "fail" or self.dmarc_reject == "tag" or d.disposition == "none":
            return None
        if d.disposition == "reject" and self.dmarc_reject == "reject":
            log.info("DMARC reject of mail from <%s> [%s]: From domain %s", tx.sender, tx.conn.peer_ip,
                     d.from_domain)
            return Reject(550, "5.7.1", f"Email rejected per DMARC policy for {d.from_domain}")
        tx.hold = True  # quarantine: kept, not sent, until an admin releases it
        log.info("DMARC quarantine of mail from <%s> [%s]: From domain %s; held in the queue",
                 tx.sender, tx.conn.peer_ip, d.from_domain)
        return None

    def _remove_forged(self, headers) -> None:
        values = headers.get_all(AR)
        for n in range(len(values) - 1, -1, -1):
            if authres.claims(values[n], self.authserv_id):
                headers.remove_nth(AR, n)

    async def _key(self, name: str) -> tuple[Any, str, str]:
        """(the DkimPublicKey or None, the result when None, why)."""
        status, records = await self.lookup.query(name, "TXT")
        if status == "tempfail":
            return None, "temperror", f"key lookup for {name} failed"
        if status != "ok" or not records:
            return None, "permerror", f"no key published at {name}"
        why = ""
        for record in records[:_KEY_RECORDS_MAX]:
            key = self._keys.get(record)
            if key is None:
                try:
                    key = _native.DkimPublicKey(record)
                except ValueError as e:
                    why = str(e)
                    continue
                if key.algorithm == "rsa":  # checked by OpenSSL
                    key = _native.DkimPublicKey(record, verify_digest=openssl_rsa_verify(key))
                if len(self._keys) >= _KEYS_MAX:
                    self._keys.clear()
                self._keys[record] = key
            return key, "", ""
        return None, "permerror", f"unusable key at {name}: {why}"

    async def _dkim(self, block: bytes, body: Any) -> list[tuple[str, str, dict, str]]:
        """Per signature (result, reason, A-R properties, d= domain); [("none", ...)] unsigned."""
        sigs = _native.dkim_signatures(block)
        if not sigs:
            return [("none", "", {}, "")]
        usable = [s for s in sigs if s.error is None]
        keys = dict(zip((s.key_name for s in usable),
                        await asyncio.gather(*(self._key(n) for n in {s.key_name for s in usable}))))
        checks = [(s, keys[s.key_name][0]) for s in usable if keys[s.key_name][0] is not None]
        verified = iter(await _off_loop(body, _native.dkim_verify, block, body, checks, int(time.time()))
                        if checks else ())
        out = []
        for s in sigs:
            props = {"header.d": s.domain, "header.i": s.identity, "header.s": s.selector,
                     "header.a": s.algorithm, "header.b": s.b_prefix} if s.error is None else \
                {k: v for k, v in (("header.d", s.domain), ("header.s", s.selector)) if v}
            if s.error is not None:
                out.append(("permerror", s.error, props, s.domain or ""))
            elif keys[s.key_name][0] is None:
                _key, result, why = keys[s.key_name]
                out.append((result, why, props, s.domain))
            else:
                result, why = next(verified)
                out.append((result, why, props, s.domain))
        return out

    async def _arc(self, block: bytes, body: Any) -> tuple[str, str]:
        chain = _native.arc_chain(block)
        if chain.status != "check":
            return chain.status, chain.reason
        found = await asyncio.gather(*(self._key(n) for n in chain.key_names))
        keys = {n: k for n, (k, _r, _w) in zip(chain.key_names, found) if k is not None}
        return tuple(await _off_loop(body, _native.arc_verify, block, body, chain, keys, int(time.time())))


def _methods(tx, spf_r, dkim_r, arc_r, d) -> list[tuple[str, str, str, dict]]:
    sender = tx.sender
    if spf_r.identity == "helo":
        spf_props = {"smtp.helo": spf_r.domain}
    else:
        spf_props = {"smtp.mailfrom": sender if "@" in sender else spf_r.domain}
    out = [("spf", spf_r.result, spf_r.reason, spf_props)]
    out += [("dkim", r, why, props) for r, why, props, _d in dkim_r]
    out.append(("dmarc", d.result, d.reason, {"header.from": d.from_domain} if d.from_domain else {}))
    out.append(("arc", arc_r[0], arc_r[1], {}))
    return out


async def _within(deadline: float, work: Awaitable, fallback: Any) -> Any:
    """`work`'s answer, or `fallback` once the deadline passed (the work is cancelled)."""
    try:
        async with asyncio.timeout_at(asyncio.get_running_loop().time() + max(0.0, deadline - time.monotonic())):
            return await work
    except TimeoutError:
        return fallback


async def _off_loop(body: Any, fn, *args):
    """fn(*args), on a thread for a big message: hashing megabytes would stall every other
    session of this event loop (the GIL is released while the body is hashed)."""
    if getattr(body, "stored_size", 0) < _IN_PLACE_MAX:
        return fn(*args)
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def _quiet(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # retrieved: a failed prefetch is the real lookup's business


def entry(verifier: Verifier) -> Entry:
    """The checks as the chain's first on_message entry, for mail from outside mynetworks
    that did not authenticate (a coroutine only then: trusted mail costs one test)."""
    check = verifier.check

    def on_message(tx, msg):
        conn = tx.conn
        if conn is None or conn.trusted or conn.auth_user is not None:
            return None
        return check(tx, msg)

    return Entry("verify", {"on_message": on_message}, module="mta.policy.verify", builtin=True)
