"""The bounce classifier: every failure reply (a peer's, or one of mta's synthetic ones) gets
one category of CATEGORIES. Invariant: `classify` never raises and always answers one of them;
an ordered text rule table decides first, then the RFC 3463 enhanced code, then the basic code."""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["CATEGORIES", "DESCRIPTIONS", "classify"]

# The public contract (delivery log "class", DSN X-Mta-Class, shaping rules' `class =`):
# names may be added, never renamed. docs/shaping.md explains each one.
DESCRIPTIONS: dict[str, str] = {
    "invalid_recipient": "the recipient address does not exist",
    "inactive_mailbox": "the recipient's mailbox is disabled or inactive",
    "mailbox_full": "the recipient's mailbox is full",
    "bad_domain": "the recipient's domain does not exist or accepts no mail",
    "invalid_sender": "the sender address was refused",
    "message_too_large": "the message is too large",
    "spam": "the message or its sending address was refused as spam",
    "virus": "the message was refused as carrying a virus or malware",
    "content": "the message's content or format was refused",
    "policy": "the receiving system's policy refused the message",
    "authentication": "the message failed authentication (SPF, DKIM, DMARC or SMTP AUTH)",
    "rate_limited": "the receiving system limits how much mail it takes from us",
    "bad_connection": "the receiving system could not be reached or the connection failed",
    "tls": "a secure (TLS) connection could not be made or was required",
    "routing": "the message could not be routed (DNS, relaying, loops)",
    "protocol": "the SMTP dialogue failed (a syntax or protocol error)",
    "transient": "a temporary failure at the receiving system",
    "other": "the reason could not be determined",
}
CATEGORIES: tuple[str, ...] = tuple(DESCRIPTIONS)

# Why a table of regexes and not keywords: providers say the same thing many ways, and the
# order settles the ambiguous replies (a greylisting 450 names the recipient; Gmail's rate
# limit says "unsolicited"). First match wins. Each rule: (category, regex, code prefix,
# enhanced prefix); the prefixes are "" for any. Texts are matched with addresses in <...>
# blanked, so a mailbox called spam@ or user-unknown@ decides nothing.
_W = r"[^.;]{0,40}"  # a few words, within one sentence
_RULES: list[tuple[str, str, str, str]] = [
    # mta's own synthetic replies (mta.delivery: smtp client, mx, transport, agent, maildir):
    # anchored on their exact texts, so a peer's host name in them never matters.
    ("tls", r"^(?:MTA-STS: |TLS (?:with|is required)|\S+ refused STARTTLS|not sending credentials to \S+ without TLS)", "", ""),
    ("bad_connection", r"^(?:connection to \S+ (?:timed out|failed)|no address to deliver to$)", "", ""),
    ("bad_connection", r"^\S+: (?:connection (?:closed|lost|reset|refused)|timed out)", "", ""),
    ("authentication", r"^authentication to \S+ failed", "", ""),
    ("message_too_large", r"^message size \d+ exceeds the limit of ", "", ""),
    ("protocol", r"\bdoes not support (?:SMTPUTF8|8BITMIME)\b", "", ""),
    ("routing", r"^(?:DNS lookup failed|cannot resolve \S+$|routing error|no mail host\b|Alias expansion loop)", "", ""),
    ("bad_domain", r"^(?:domain not found|host not found|invalid domain name|invalid host name|invalid address literal"
                   r"|an IP address is not a domain)", "", ""),
    ("transient", r"^(?:internal delivery error|local delivery failed|delivery agent |delivery stopped "
                  r"|mailbox unusable \(local configuration\)|cannot read the message from the spool)", "", ""),
    # Greylisting first: its replies often name the recipient ("Recipient address rejected: Greylisted").
    ("transient", r"\bgr[ae]y-?list|\bGL01\]", "", ""),
    ("protocol", r"\bprotocol violation\b|\bpipelin(?:e|ing)\b|\bout of sequence\b|\bbad sequence of commands\b", "", ""),
    ("policy", r"\bRESOLVER\.RST\.", "", ""),  # Exchange: restricted recipient (says "authentication")
    ("invalid_recipient", r"\bnot listed in (?:the )?(?:Domino|public|address|directory|global)", "", ""),
    # TLS before rate limits: Gmail's 421 4.7.29 "rate limited because ... not sent over a TLS connection".
    ("tls", r"\bstarttls\b|\btls\b|\bencryption (?:needed|required)\b|\bcertificate (?:verif|expired|not trusted)", "", ""),
    # Authentication before rate limits and spam: Gmail's 4.7.27/4.7.30/4.7.32 "rate limited
    # because SPF/DKIM ... didn't pass" is an authentication problem to fix, not a pace.
    ("invalid_sender", r"\bsender\b" + _W + r"\bnull MX\b", "", ""),
    ("authentication", r"\b(?:DMARC|SPF|DKIM|ARC validation)\b|\bsender policy framework\b|\bunauthenticated\b"
                       r"|\bauthentication (?:information|checks?|results?|failed|failure|required|credentials)\b"
                       r"|\bnot authenticated\b|\bpassword not accepted\b|\b(?:invalid|bad) (?:credentials|password)\b", "", ""),
    # Yahoo's deferrals (postmaster.yahooinc.com/error-codes): TS01/TS02/TSS04 pace, TS03/TSS09/BLxx block.
    ("spam", r"\b(?:TS03|TSS09|BL\d\d)\]", "", ""),
    ("rate_limited", r"\bTSS?0[124]\]|\bmessages from \S+ (?:temporarily )?deferred\b|\b4\.16\.5\d\b", "", ""),
    ("rate_limited", r"\bRP-00\d\b", "", ""),  # Outlook.com: "We have limits for how many messages ..."
    ("rate_limited", r"\bserver busy\b", "", "4.7."),  # Exchange Online 4.7.500: throttled per IP
    ("rate_limited", r"\bunusual rate\b", "4", ""),  # Gmail 4.7.28 (a 5xx one is a block: spam below)
    ("rate_limited", r"\brate[- ]?limit|\bthrottl|\btoo many (?:connections|concurrent|messages|recipients|sessions"
                     r"|e?mails?|transactions)\b|\btoo much (?:e?mail|traffic)\b|\breceiving mail (?:too quickly|at a rate)\b"
                     r"|\bconcurrent (?:connections|sessions)\b|\bconnection (?:rate|limit)\b|\bsending (?:quota|limits?)\b"
                     r"|\b(?:thread|message|recipient|connection|rate|relay) limit (?:exceeded|reached)\b|\blimits? for how many\b"
                     r"|\bunexpected volume\b|\bmail flood\b|\b(?:try|retry) (?:again )?(?:later|in \d+)\b.{0,40}\btoo (?:fast|many)\b", "", ""),
    # Blocklists and reputation blocks, named (the generic spam words come after the mailbox rules).
    ("spam", r"\bspamhaus\b|\bblocked using\b|\bblock ?list(?:ed)?\b|\bblack ?list(?:ed)?\b|\bDNSBL\b|\bRBL\b"
             r"|\bspamcop\b|\bbarracuda(?:central)?\b|\bsorbs\b|\bS3\d{3}\)|\bbanned sending IP\b"
             r"|\btraffic not accepted from this IP\b|\b(?:SC|OU)-00\d\b|\b(?:is|are|been|was|currently) listed\b", "", ""),
    ("virus", r"\bvirus(?:es)?\b|\bmalware\b|\binfected\b|\bEICAR\b|\btrojan\b|\bworm detected\b", "", ""),
    # Spam said outright, before "content filter" (Exchange: "rejected as spam by Content Filtering").
    ("spam", r"\b(?:as|is|likely|looks like|detected as|high probability of|considered|classified as) (?:spam|junk|unsolicited)\b"
             r"|\bspam (?:content|detected|score|abuse|message)\b", "", ""),
    ("content", r"\bnature of the content\b|\b(?:prohibited|illegal|banned|blocked|forbidden|dangerous|unsafe|unacceptable)"
                r" (?:attachment|file|content)|\battachment|\bBANNED:|\bcontent (?:presents|rejected|not accepted|policy)"
                r"|\bmessage content\b|\bRFC ?(?:5322|2822|822)\b|\bmissing (?:a valid )?(?:Message-ID|From|Date|address in From)"
                r"|\bheaders?\b|\bbare ?line ?feeds?|\bMIME\b|\b8-?bit\b", "", ""),
    ("mailbox_full", r"\bover ?quota\b|\bquota\b|\b(?:mailbox|inbox|mail ?box|account|storage|mail folder)" + _W + r"\bfull\b"
                     r"|\bfull mailbox\b|\bexceeded storage allocation\b|\bout of (?:storage|disk) space\b", "", ""),
    ("inactive_mailbox", r"\b(?:account|mailbox|user|address|recipient)\b" + _W + r"\b(?:disabled|deactivated|suspended"
                         r"|inactive|discontinued|expired|no longer (?:active|in use|available))\b"
                         r"|\b(?:disabled|deactivated|suspended|inactive|expired) (?:account|mailbox|user|recipient)\b", "", ""),
    ("invalid_sender", r"\bsender (?:address |domain |mailbox )?(?:rejected|denied|invalid|unknown|refused|not (?:allowed|permitted))\b"
                       r"|\bsender verif\w* failed\b|\bbad (?:outbound )?sender\b|\binvalid sender\b|\bdomain of sender address\b"
                       r"|\bsender address\b" + _W + r"\b(?:does not exist|not found|does not resolve)\b", "", ""),
    ("bad_domain", r"\bnull MX\b|\b(?:domain|host)(?: name)? (?:not found|unknown|does not exist|doesn'?t exist|is invalid|not valid)\b"
                   r"|\bDNS domain \S+ does not exist\b|\bno such domain\b|\b(?:unknown|invalid|nonexistent|non-existent) domain\b"
                   r"|\bfind the recipient domain\b|\bunrouteable (?:mail )?domain\b|\bNXDOMAIN\b", "", ""),
    ("invalid_recipient", r"\buser(?:name)? (?:unknown|not found|does not exist|doesn'?t exist)\b"
                          r"|\bunknown (?:user|recipient|mailbox|address|local ?part|alias)\b"
                          r"|\bno such (?:user|recipient|mailbox|address|account|person|local user)\b"
                          r"|\b(?:recipient|mailbox|address|account|user)\b" + _W + r"\b(?:does not exist|doesn'?t exist|not found)\b"
                          r"|\bdoes not exist\b|\bdoesn'?t have an? \S+ account\b"
                          r"|\b(?:invalid|bad|nonexistent|non-existent|unknown) (?:recipient|mailbox|e-?mail address|address|user)\b"
                          r"|\bmailbox (?:is )?(?:unavailable|not available|not found|invalid|unknown)\b|\brecipient (?:address )?rejected\b"
                          r"|\baddress rejected\b|\brecipient not found\b|\bRecipNotFound\b|\bno mailbox\b|\bunrouteable address\b"
                          r"|\bnot (?:a )?valid (?:RFC ?5321 )?(?:address|recipient|mailbox)\b|\baddress (?:unknown|invalid)\b"
                          r"|\bnot our customer\b|\bno (?:valid )?recipients?\b", "", ""),
    ("routing", r"\brelay(?:ing)? (?:access )?(?:denied|not permitted|prohibited|not allowed|refused)\b|\bunable to relay\b"
                r"|\bnot permitted to relay\b|\bwe do not relay\b|\b(?:mail|routing) loop\b|\bloops? (?:back|detected)\b"
                r"|\bhop count\b|\btoo many hops\b|\bexceeded \d+ hops\b|\bwrong (?:\S+ )?region\b|\bunable to route\b", "", ""),
    ("message_too_large", r"\b(?:message|mail|email|e-mail) (?:size|length|is too (?:large|big))\b|\btoo (?:large|big)\b"
                          r"|\bsize (?:limit|exceeds)\b|\bexceeds? (?:the )?(?:maximum|fixed|size)", "", ""),
    ("spam", r"\bspam\b|\bunsolicited\b|\bjunk\b|\breputation\b|\bsuspicious\b|\babuse\b|\bphishing\b", "", ""),
    ("bad_connection", r"\bconnection (?:refused|reset|timed out|dropped)\b|\bsocket error\b|\btime-?d? ?out\b", "", ""),
    ("policy", r"\bnot authori[sz]ed\b|\bpolic(?:y|ies)\b|\bPTR\b|\breverse (?:DNS|hostname|lookup)\b|\bcannot find your hostname\b"
               r"|\bDY-00\d\b|\bdynamic(?:ally)?(?:-assigned)? IP\b|\b(?:white|allow)[- ]?list|\bclient host rejected\b"
               r"|\baccess denied\b|\badministrative prohibition\b|\bprohibited\b|\bblocked\b|\brefused\b", "", ""),
    ("transient", r"\btemporar(?:y|ily)\b|\btry (?:again )?later\b|\bserver busy\b|\bservice (?:not |un)available\b", "4", ""),
]

# (subject, detail) of RFC 3463 and its IANA registry updates -> category; a subject alone
# (detail None) for the details not listed. Subjects 0 and 3 without an entry: the code decides.
_ENHANCED: dict[tuple[int, int | None], str] = {
    (1, None): "invalid_recipient", (1, 2): "bad_domain", (1, 6): "inactive_mailbox",
    (1, 7): "invalid_sender", (1, 8): "invalid_sender", (1, 10): "bad_domain",
    (2, 1): "inactive_mailbox", (2, 2): "mailbox_full", (2, 3): "message_too_large",
    (3, 2): "transient", (3, 3): "protocol", (3, 4): "message_too_large",
    (4, None): "routing", (4, 1): "bad_connection", (4, 2): "bad_connection", (4, 5): "transient",
    (4, 7): "transient",  # delivery time expired (mta's own expiry names its last error instead)
    (5, None): "protocol", (5, 3): "rate_limited",  # too many recipients in one transaction
    (6, None): "content",
    (7, None): "policy", (7, 4): "tls", (7, 5): "tls", (7, 6): "tls", (7, 10): "tls", (7, 11): "tls",
    (7, 30): "tls", (7, 7): "content", (7, 16): "message_too_large", (7, 13): "inactive_mailbox",
    (7, 17): "invalid_recipient", (7, 18): "bad_domain", (7, 28): "rate_limited",
    **{(7, d): "authentication" for d in (8, 9, 12, 20, 21, 22, 23, 24, 26, 27, 29)},
}


def _lower(rx: str) -> str:
    """`rx` for a lowercased text: its literals lowercased, its escapes (\\S, \\d, \\b) kept."""
    out, i = [], 0
    while i < len(rx):
        if rx[i] == "\\":
            out.append(rx[i:i + 2])
            i += 2
        else:
            out.append(rx[i].lower())
            i += 1
    return "".join(out)


def _alternatives(rx: str) -> list[str]:
    """The top-level alternatives of `rx`."""
    alts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(rx):
        c = rx[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            alts.append(rx[start:i])
            start = i + 1
        i += 1
    return alts + [rx[start:]]


_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_QUANTIFIERS = frozenset("?*{+")


def _triggers(alt: str) -> list[tuple[str, bool, str]] | None:
    """`alt`, one alternative of a rule, as alternatives that each open with a literal:
    [(the literal, whether it is a whole word of the text, the alternative)]; None when one
    cannot be told (it opens with a class, ^, an optional group ...)."""
    bounded = alt.startswith("\\b")
    body = alt[2:] if bounded else alt
    if body.startswith("(?:"):  # a leading group: one alternative per alternative inside it
        depth, i, in_class = 0, 0, False
        while i < len(body):
            c = body[i]
            if c == "\\":
                i += 2
                continue
            if in_class:
                in_class = c != "]"
            elif c == "[":
                in_class = True
            else:
                depth += c == "("
                depth -= c == ")"
                if depth == 0:
                    break
            i += 1
        rest = body[i + 1:]
        if i >= len(body) or (rest[:1] and rest[:1] in _QUANTIFIERS):
            return None
        found = []
        for inner in _alternatives(body[3:i]):
            t = _triggers(("\\b" if bounded else "") + inner + rest)
            if t is None:
                return None
            found += t
        return found
    n = 0
    while n < len(body) and body[n] in _WORD_CHARS:
        n += 1
    nxt, after = body[n:n + 1], body[n + 1:n + 2]
    if nxt and nxt in _QUANTIFIERS:  # the run's last character is optional or repeated
        n, ends = n - 1, False
    elif nxt == "\\":
        ends = after in ("b", "s", ".", "[", "(", "-", ")", "]") and body[n + 2:n + 3] not in _QUANTIFIERS
    else:
        ends = bool(nxt) and nxt in " -',:;/" and after not in _QUANTIFIERS
    if n <= 0:
        return None
    literal = body[:n]
    # \b before a word character, as a look-behind after the literal: a pattern that opens
    # with a literal is found by the engine's fast scan, one that opens with \b is not.
    rx = f"{literal}(?<!\\w{literal}){body[n:]}" if bounded else body
    return [(literal, bounded and ends, rx)]


def _index(rules: list[tuple[str, str, str, str]]):
    """The rules' alternatives indexed by the word or substring each match contains, so that
    only those whose literal is in the text are tried (the engine would try every alternative
    at every position of the text: tens of microseconds a reply). Returns (the alternatives
    without a literal, as one pattern per rule or None; word -> [(rule, pattern)];
    [(substring, rule, pattern)])."""
    always: list[re.Pattern | None] = []
    by_word: dict[str, list[tuple[int, re.Pattern]]] = {}
    by_substring: list[tuple[str, int, re.Pattern]] = []
    for i, (_cat, rx, _code, _enh) in enumerate(rules):
        plain = []
        for alt in _alternatives(_lower(rx)):
            found = _triggers(alt)
            if found is None:
                plain.append(alt)
                continue
            for literal, whole, alt_rx in found:
                if whole:
                    by_word.setdefault(literal, []).append((i, re.compile(alt_rx)))
                else:
                    by_substring.append((literal, i, re.compile(alt_rx)))
        always.append(re.compile("|".join(plain)) if plain else None)
    return always, by_word, by_substring


# Matched against the lowercased text (faster than re.IGNORECASE).
_ALWAYS, _BY_WORD, _BY_SUBSTRING = _index(_RULES)
_ALL_WORDS = frozenset(_BY_WORD)
_ALWAYS_RULES = {i: [] for i, rx in enumerate(_ALWAYS) if rx is not None}
_WORDS = re.compile(r"[a-z0-9]+")
_ENH = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})\Z")
_LEADING_ENH = re.compile(r"#?([245])\.(\d{1,3})\.(\d{1,3})\b")
_ADDRESS = re.compile(r"<[^<>]*>")
# Replies mta wraps in its own text: the expiry (queue manager) and a connection-level refusal
# (smtp client); the wrapped reply decides, except for a refused STARTTLS (always "tls").
_WRAPPED = re.compile(r"(?:delivery time expired; last error|\S+ (?:greeted|refused (?!STARTTLS)\S+)): (\d{3})"
                      r"(?: ([245]\.\d{1,3}\.\d{1,3}))?(?: (.*))?\Z", re.DOTALL)
_MAX_TEXT = 2048  # a reply's first 2 KiB decide: bounded cost for any reply
_MAX_DEPTH = 4


def classify(code: int, enhanced: str | None, text: str) -> str:
    """The category (one of CATEGORIES) of the failure reply `code enhanced text`. Any
    input gets one, nothing raises: a non-failure code gets "other"."""
    try:
        code = int(code)
        enhanced = enhanced if isinstance(enhanced, str) else None
        text = text if isinstance(text, str) else str(text)
        if len(text) > _MAX_TEXT or (enhanced is not None and len(enhanced) > 16):
            return _classify(code, enhanced, text, 0)  # never kept: the cache holds small keys only
        return _cached(code, enhanced, text)
    except Exception:  # noqa: BLE001 - a classifier must never stop a delivery or a DSN
        return "other"


@lru_cache(maxsize=4096)  # bounded: the same few replies recur (mta's own, a provider's)
def _cached(code: int, enhanced: str | None, text: str) -> str:
    return _classify(code, enhanced, text, 0)


def _classify(code: int, enhanced: str | None, text: str, depth: int) -> str:
    text = text[:_MAX_TEXT]
    if depth < _MAX_DEPTH and (m := _WRAPPED.match(text)):
        return _classify(int(m[1]), m[2], m[3] or "", depth + 1)
    scode, enh = str(code), enhanced or ""
    subject = _ENH.match(enh) if enh else None
    if subject is None and (subject := _LEADING_ENH.match(text)) is not None:
        enh = subject[0].lstrip("#")
    if "<" in text:
        text = _ADDRESS.sub("<>", text)
    text = text.lower()
    tried = {i: list(alts) for i, alts in _ALWAYS_RULES.items()}  # rule -> its alternatives to try
    for word in _ALL_WORDS.intersection(_WORDS.findall(text)):
        for i, rx in _BY_WORD[word]:
            tried.setdefault(i, []).append(rx)
    for sub, i, rx in _BY_SUBSTRING:
        if sub in text:
            tried.setdefault(i, []).append(rx)
    for i in sorted(tried):
        cat, _rx, cprefix, eprefix = _RULES[i]
        if (cprefix and not scode.startswith(cprefix)) or (eprefix and not enh.startswith(eprefix)):
            continue
        always = _ALWAYS[i]
        if (always is not None and always.search(text)) or any(rx.search(text) for rx in tried[i]):
            return cat
    if subject is not None:
        s, d = int(subject[2]), int(subject[3])
        if s == 7 and 500 <= d < 800:  # Exchange Online's 4.7.5xx-7xx: per-IP throttling; 5.7.5xx-7xx: blocks
            return "rate_limited" if scode[:1] == "4" else "policy"
        cat = _ENHANCED.get((s, d)) or _ENHANCED.get((s, None))
        if cat is not None:
            return cat
    if 400 <= code < 500:
        return "transient"
    return "other"
