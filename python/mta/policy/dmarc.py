"""DMARC (RFC 7489): the author domain of a message, its organizational domain (the Public
Suffix List shipped by `publicsuffixlist`, never downloaded), policy discovery and identifier
alignment. Parsers here never raise on arbitrary text; DNS trouble is temperror, never a guess."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from publicsuffixlist import PublicSuffixList

from mta.policy.lexer import comment_end

__all__ = ["DmarcRecord", "DmarcResult", "author_domain", "check", "normalize_domain",
           "organizational_domain", "parse_record"]

POLICIES = ("none", "quarantine", "reject")
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


@functools.cache
def _psl() -> PublicSuffixList:
    # one per process, built on first use from the list inside the package
    return PublicSuffixList()


def normalize_domain(domain: str) -> str | None:
    """A domain in the form DNS and the list use: lower case, no final dot, A-labels; None
    when it is not a valid domain name (empty label, bad characters, too long)."""
    name = domain.strip().rstrip(".")
    if not name or len(name) > 1000:
        return None
    labels = []
    for label in name.split("."):
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                return None
        label = label.lower()
        if not _LABEL.match(label):
            return None
        labels.append(label)
    out = ".".join(labels)
    return out if len(out) <= 253 else None


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix and one more label; a public suffix is its own. A name
    that is not a valid domain comes back lower-cased, without the final dot, not A-labelled."""
    name = normalize_domain(domain)
    if name is None:
        return domain.strip().rstrip(".").lower()
    return _psl().privatesuffix(name) or name


# -- the author domain (RFC5322.From) ----------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_SPECIALS = set('()<>[]:;@\\,."')


def _tokens(text: str) -> list[str] | None:
    """RFC 5322 lexical tokens: specials as themselves, atoms, quoted strings (kept with
    their quotes), domain literals; comments and whitespace dropped. None when unterminated."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "(":
            i = comment_end(text, i)
            if i < 0:
                return None
        elif c in '"[':
            close = '"' if c == '"' else "]"
            j = i + 1
            while j < n and text[j] != close:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                return None
            out.append(text[i:j + 1])
            i = j + 1
        elif c in _SPECIALS:
            out.append(c)
            i += 1
        else:
            # an encoded word is one atom even when a careless sender put specials in it
            m = _ENCODED_WORD.match(text, i)
            if m:
                j = m.end()
            else:
                j = i
                while j < n and not text[j].isspace() and text[j] not in _SPECIALS:
                    j += 1
            out.append(text[i:j])
            i = j
    return out


def _mailboxes(tokens: list[str]) -> list[list[str]]:
    """The token lists of the mailboxes of an address list; group names and the
    separators (",", group ":" and ";") dropped, empty list elements skipped."""
    boxes: list[list[str]] = []
    current: list[str] = []
    depth = 0
    for tok in tokens:
        if tok == "<":
            depth += 1
        elif tok == ">":
            depth = max(0, depth - 1)
        if depth == 0 and tok in (",", ";", ":"):
            if tok != ":" and current:
                boxes.append(current)
            current = []  # ":" ends a group's display name, which is no mailbox
            continue
        current.append(tok)
    if current:
        boxes.append(current)
    return boxes


def _domain_of(box: list[str]) -> str | None:
    """The domain of one mailbox's tokens, or None when it has none or is malformed."""
    if "<" in box:
        if box.count("<") != 1 or box.count(">") != 1:
            return None
        start, end = box.index("<"), box.index(">")
        if end < start or end != len(box) - 1:
            return None
        spec = box[start + 1:end]
        if ":" in spec:  # obs-route "@a,@b:" before the address
            spec = spec[len(spec) - spec[::-1].index(":"):]
    else:
        spec = box
    if spec.count("@") != 1:
        return None
    at = spec.index("@")
    local, domain = spec[:at], spec[at + 1:]
    if not local or not domain or domain[0].startswith("["):
        return None
    if any(t in _SPECIALS and t != "." for t in local + domain):
        return None
    return normalize_domain("".join(domain))


def author_domain(from_fields: list[str]) -> tuple[str | None, str]:
    """The RFC5322.From domain: (domain, "") for exactly one From field holding exactly one
    mailbox with a domain, else (None, reason). The domain is normalized (normalize_domain)."""
    if not from_fields:
        return None, "no From field"
    if len(from_fields) > 1:
        return None, f"{len(from_fields)} From fields"
    tokens = _tokens(str(from_fields[0]))
    if tokens is None:
        return None, "From has no domain"
    boxes = _mailboxes(tokens)
    count = sum(max(1, b.count("<")) for b in boxes)
    if count > 1:
        return None, f"From has {count} mailboxes"
    domain = _domain_of(boxes[0]) if boxes else None
    if domain is None:
        return None, "From has no domain"
    return domain, ""


# -- the policy record (RFC 7489 6.3) ----------------------------------------------------

_VERSION = re.compile(r"[ \t]*[vV][ \t]*=[ \t]*DMARC1[ \t]*(?:;|\Z)")
_TAG = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s,!]+(?:![0-9]+[kmgtKMGT]?)?\Z")


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    p: str | None                 # None when missing or not a valid policy
    sp: str | None = None         # None when absent (p applies) or invalid (see invalid)
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    rua: tuple[str, ...] = ()     # the syntactically valid URIs only
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    rf: str = "afrf"
    ri: int = 86400
    invalid: tuple[str, ...] = ()  # tags whose values were invalid (defaults used instead)

    @property
    def valid(self) -> bool:
        """RFC 7489 6.6.3 step 6: a valid p= and no invalid sp=."""
        return self.p is not None and "sp" not in self.invalid


def _uris(value: str) -> tuple[tuple[str, ...], bool]:
    parts = [u.strip() for u in value.split(",")]
    good = tuple(u for u in parts if _URI.match(u))
    return good, len(good) == len(parts)


def parse_record(text: str) -> DmarcRecord | None:
    """One TXT record: None when it does not start with "v=DMARC1"; otherwise the record,
    with defaults in place of invalid or missing tags (RFC 7489 6.3) and those tags listed."""
    if not _VERSION.match(text):
        return None
    seen: dict[str, str] = {}
    invalid: list[str] = []
    for part in text.split(";")[1:]:
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not eq or not _TAG.match(name) or name in seen:
            continue  # the first of a repeated tag counts; garbage between tags is skipped
        seen[name] = value
    fields: dict = {"p": None}
    for name, value in seen.items():
        low = value.lower()
        if name in ("p", "sp"):
            if low in POLICIES:
                fields[name] = low
            else:
                invalid.append(name)
        elif name in ("adkim", "aspf"):
            if low in ("r", "s"):
                fields[name] = low
            else:
                invalid.append(name)
        elif name in ("pct", "ri"):
            limit = 100 if name == "pct" else 2**32 - 1
            if value.isascii() and value.isdigit() and int(value) <= limit:
                fields[name] = int(value)
            else:
                invalid.append(name)
        elif name in ("rua", "ruf"):
            fields[name], clean = _uris(value)
            if not clean:
                invalid.append(name)
        elif name in ("fo", "rf"):
            fields[name] = value
    return DmarcRecord(invalid=tuple(invalid), **fields)


# -- the check (RFC 7489 6.6) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: str            # "pass" | "fail" | "none" | "temperror" | "permerror"
    from_domain: str
    policy: str | None     # p=, or sp= when the record came from the org domain
    disposition: str       # "none" | "quarantine" | "reject", after pct sampling
    reason: str            # short text for the Authentication-Results comment
    record_domain: str | None = None


def _aligned(ident: str, from_domain: str, from_org: str, mode: str) -> bool:
    name = normalize_domain(ident or "")
    if name is None:
        return False
    if mode == "s":
        return name == from_domain
    return organizational_domain(name) == from_org


async def _records(lookup, domain: str) -> tuple[str, list[DmarcRecord | None]]:
    """("ok" | "tempfail", the DMARC records at _dmarc.<domain>; None for unparseable ones)."""
    status, texts = await lookup.query(f"_dmarc.{domain}", "TXT")
    if status == "tempfail":
        return status, []
    if status != "ok":
        return "ok", []
    found = []
    for text in texts:
        if _VERSION.match(text):
            found.append(parse_record(text))
    return "ok", found


async def check(lookup, from_domain: str, spf: tuple[str, str], dkim: list[tuple[str, str]], *,
                rng: Callable[[], float] = random.random) -> DmarcResult:
    """Evaluate DMARC for one message: policy discovery (RFC 7489 6.6.3) at the From domain,
    then at its organizational domain; pass on an aligned SPF or DKIM pass; on fail the policy
    that applies, sampled by pct (rng() * 100 < pct: subject to the policy)."""
    domain = normalize_domain(from_domain or "")
    if domain is None:
        return DmarcResult("permerror", from_domain, None, "none", "invalid From domain")
    org = organizational_domain(domain)
    record_domain = domain
    status, found = await _records(lookup, domain)
    if status == "ok" and not found and org != domain:
        record_domain = org
        status, found = await _records(lookup, org)
    if status == "tempfail":
        return DmarcResult("temperror", domain, None, "none",
                           f"DNS lookup of _dmarc.{record_domain} failed", record_domain)
    if not found:
        return DmarcResult("none", domain, None, "none", "no DMARC record")
    if len(found) > 1:
        return DmarcResult("none", domain, None, "none",
                           f"{len(found)} DMARC records at _dmarc.{record_domain}", record_domain)
    record = found[0]
    assert record is not None  # _records kept only texts that parse_record accepts
    if not record.valid:
        if not record.rua:
            bad = "invalid " + "/".join(t for t in ("p", "sp") if t in record.invalid) + "="
            if record.p is None and "p" not in record.invalid:
                bad = "no p="
            return DmarcResult("permerror", domain, None, "none",
                               f"DMARC record at _dmarc.{record_domain}: {bad}", record_domain)
        # 6.6.3 step 6: a bad policy with a reporting address counts as p=none
        record = replace(record, p="none", sp=None, pct=100, adkim="r", aspf="r")
    assert record.p is not None
    policy = record.sp if record_domain != domain and record.sp else record.p
    spf_ok = (spf[0] or "").strip().lower() == "pass" and _aligned(spf[1], domain, org, record.aspf)
    dkim_ok = any((res or "").strip().lower() == "pass" and _aligned(d, domain, org, record.adkim)
                  for res, d in dkim)
    if spf_ok or dkim_ok:
        return DmarcResult("pass", domain, policy, "none", f"p={policy} dis=none", record_domain)
    disposition = policy
    if policy != "none" and not _sampled(record.pct, rng):
        disposition = "quarantine" if policy == "reject" else "none"  # RFC 7489 6.6.4
    return DmarcResult("fail", domain, policy, disposition, f"p={policy} dis={disposition}",
                       record_domain)


def _sampled(pct: int, rng: Callable[[], float]) -> bool:
    if pct >= 100:
        return True
    if pct <= 0:
        return False
    return rng() * 100 < pct
