"""The bounce classifier: real providers' replies and every synthetic reply mta makes get the
expected category; any input gets one of CATEGORIES and nothing raises."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.delivery import classify as classifier
from mta.delivery.classify import CATEGORIES, DESCRIPTIONS, classify

# (code, enhanced, text, category). Texts as mta records them: the enhanced code split off,
# multi-line replies joined with spaces, addresses and IPs anonymised.
# Sources:
#   G: Google, "Gmail SMTP errors and codes", support.google.com/a/answer/3726730, and the
#      Gmail replies quoted at smtp.codes/google and smtpfieldmanual.com/provider/google
#   Y: Yahoo, postmaster.yahooinc.com/error-codes and help.yahoo.com/kb SLN3436; TSS04 as
#      quoted in secuserve.zammad.com FAQ 397 and smtpfieldmanual.com/provider/yahoo
#   M: Microsoft Learn, "Email non-delivery reports and SMTP errors in Exchange Online" (and its
#      "fix error code 5.7.700 through 5.7.750" page); Exchange Online Protection replies quoted
#      at smtp.codes/exchangeonline and smtpfieldmanual.com/spamfilter/exchangeonline
#   O: Outlook.com postmaster ("Error codes": RP-001, SC-001, DY-001, S3150), as quoted on
#      the mailop and postfix-users lists
#   P: Postfix (postfix.org ADDRESS_VERIFICATION_README, postscreen/postgrey docs) and replies
#      quoted on postfix-users; E: Exim spec (ACL replies) and exim-users; A: amavisd-new docs
#   N: NHS mail incident report EX703958 (support.nhs.net, Jan 2024) quoting EOP replies
REAL = [
    # --- Gmail (G) ---
    (550, "5.1.1", "The email account that you tried to reach does not exist. Please try double-checking the "
     "recipient's email address for typos or unnecessary spaces. Learn more at https://support.google.com/mail/?p=NoSuchUser - gsmtp",
     "invalid_recipient"),
    (550, "5.2.1", "The email account that you tried to reach is disabled. - gsmtp", "inactive_mailbox"),
    (552, "5.2.2", "The email account that you tried to reach is over quota. - gsmtp", "mailbox_full"),
    (452, "4.2.2", "The email account that you tried to reach is over quota. Please direct the recipient to "
     "https://support.google.com/mail/?p=OverQuotaTemp - gsmtp", "mailbox_full"),
    (450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. Please resend your message "
     "at a later time. - gsmtp", "rate_limited"),
    (450, "4.2.1", "The user you are trying to contact is receiving mail at a rate that prevents additional "
     "messages from being delivered. Please resend your message at a later time. - gsmtp", "rate_limited"),
    (450, "4.2.1", "Peak SMTP relay limit exceeded for customer. This is a temporary error.", "rate_limited"),
    (421, "4.7.28", "[192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your "
     "IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. "
     "Please visit https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our Bulk Email Senders "
     "Guidelines. - gsmtp", "rate_limited"),
    (421, "4.7.0", "Our system has detected an unusual rate of unsolicited mail originating from your IP address. "
     "To protect our users from spam, mail sent from your IP address has been temporarily blocked.", "rate_limited"),
    (550, "5.7.1", "[192.0.2.1] Our system has detected that this message is likely unsolicited mail. To reduce "
     "the amount of spam sent to Gmail, this message has been blocked. - gsmtp", "spam"),
    (421, "4.7.0", "[192.0.2.1] Our system has detected that this message is suspicious due to the very low "
     "reputation of the sending domain. To best protect our users from spam, the message has been blocked. - gsmtp",
     "spam"),
    (421, "4.7.0", "[192.0.2.1] Our system has detected that this message is suspicious due to the nature of the "
     "content and/or the links within. To best protect our users from spam, the message has been blocked. - gsmtp",
     "content"),
    (552, "5.7.0", "This message was blocked because its content presents a potential security issue. Please "
     "visit https://support.google.com/mail/?p=BlockedMessage to review our message content and attachment "
     "content guidelines. - gsmtp", "content"),
    (550, "5.7.26", "This mail has been blocked because the sender is unauthenticated. Gmail requires all senders "
     "to authenticate with either SPF or DKIM. - gsmtp", "authentication"),
    (550, "5.7.26", "Unauthenticated email from example.com is not accepted due to domain's DMARC policy. Please "
     "contact the administrator of example.com domain. - gsmtp", "authentication"),
    (421, "4.7.27", "Your email has been rate limited because SPF authentication didn't pass for this message. "
     "- gsmtp", "authentication"),
    (550, "5.7.1", "This message does not have authentication information or fails to pass authentication checks. "
     "To best protect our users from spam, the message has been blocked. - gsmtp", "authentication"),
    (550, "5.7.25", "The IP address sending this message does not have a PTR record setup, or the corresponding "
     "forward DNS entry does not point to the sending IP. - gsmtp", "policy"),
    (421, "4.7.0", "TLS required for RCPT domain, closing connection.", "tls"),
    (530, "5.7.0", "Must issue a STARTTLS command first.", "tls"),
    (421, "4.7.0", "IP not in whitelist for RCPT domain, closing connection.", "policy"),
    (550, "5.7.1", "The IP you're using to send mail is not authorized to send email directly to our servers. "
     "Please use the SMTP relay at your service provider instead. - gsmtp", "policy"),
    (550, "5.7.1", "This message violates example.com email policy. - gcdp <sessionid> - gsmtp", "policy"),
    (552, "5.3.4", "Your message exceeded Google's message size limits. - gsmtp", "message_too_large"),
    (421, "4.3.0", "Temporary System Problem. Try again later. - gsmtp", "transient"),
    (421, "4.4.5", "Server busy, try again later. - gsmtp", "transient"),
    (451, "4.3.0", "Mail server temporarily rejected message. - gsmtp", "transient"),
    (451, "4.4.2", "Timeout - closing connection. - gsmtp", "bad_connection"),
    (451, "4.5.0", "SMTP protocol violation, see RFC 2821. - gsmtp", "protocol"),
    (454, "4.5.0", "SMTP protocol violation, no commands allowed to pipeline after STARTTLS, see RFC 3207. - gsmtp",
     "protocol"),
    (452, "4.5.3", "Your message has too many recipients. - gsmtp", "rate_limited"),
    (553, "5.1.2", "We weren't able to find the recipient domain. Please check for any spelling errors. - gsmtp",
     "bad_domain"),
    (553, "5.1.3", "The recipient address <x@example.com> is not a valid RFC 5321 address. - gsmtp",
     "invalid_recipient"),
    (554, "5.6.0", "Message exceeded 50 hops, this may indicate a mail loop. - gsmtp", "routing"),
    (550, "5.7.1", "Messages missing a valid address in From: header, or having no From: header, are not "
     "accepted. - gsmtp", "content"),
    (535, "5.7.8", "Username and Password not accepted. - gsmtp", "authentication"),
    (550, "5.4.5", "Daily user sending quota exceeded. - gsmtp", "rate_limited"),
    # --- Yahoo (Y) ---
    (421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user "
     "complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes", "rate_limited"),
    (421, "4.7.0", "[TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints - 4.16.55.1; "
     "see https://help.yahoo.com/kb/postmaster/SLN3434.html", "rate_limited"),
    (421, "4.7.1", "[TS03] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed. "
     "See https://help.yahoo.com/kb/postmaster/SLN3436.html", "spam"),
    (553, "5.7.2", "[TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT "
     "succeed. See https://postmaster.yahooinc.com/error-codes", "spam"),
    (553, "5.7.1", "[BL21] Connections will not be accepted from 192.0.2.1, because the ip is in Spamhaus's "
     "list; see https://postmaster.yahooinc.com/error-codes", "spam"),
    (421, None, "Message temporarily deferred - 4.16.50", "rate_limited"),
    (421, "4.7.0", "[GL01] Message from (192.0.2.1) temporarily deferred - 4.16.50. Please refer to "
     "https://help.yahoo.com/kb/postmaster/SLN3434.html", "transient"),
    (554, None, "delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0] - "
     "mta1234.mail.ne1.yahoo.com", "invalid_recipient"),
    (554, None, "delivery error: dd Sorry your message to x@yahoo.com cannot be delivered. This account has been "
     "disabled or discontinued [#102]. - mta1234.mail.bf1.yahoo.com", "inactive_mailbox"),
    (554, None, "delivery error: dd Sorry, your message to x@yahoo.com cannot be delivered. This mailbox is "
     "disabled (554.30). - mta1234.mail.bf1.yahoo.com", "inactive_mailbox"),
    (552, None, "1 Requested mail action aborted, mailbox not found", "invalid_recipient"),
    (552, None, "Message size exceeds fixed maximum message size", "message_too_large"),
    # --- Exchange Online / Outlook (M, O, N) ---
    (550, "5.1.10", "RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "invalid_recipient"),
    (550, "5.1.1", "RESOLVER.ADR.ExRecipNotFound; not found", "invalid_recipient"),
    (550, "5.4.1", "Recipient address rejected: Access denied. AS(201806281) [x.prod.protection.outlook.com]",
     "invalid_recipient"),
    (554, "5.2.2", "mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
     "mailbox_full"),
    (550, "5.7.606", "Access denied, banned sending IP [192.0.2.1]. To request removal from this list please "
     "visit https://sender.office.com/ and follow the directions. (AS16012609)", "spam"),
    (550, "5.7.1", "Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service "
     "provider since part of their network is on our block list (S3150). You can also refer your provider to "
     "http://mail.live.com/mail/troubleshooting.aspx#errors.", "spam"),
    (550, "5.7.1", "Service unavailable, Client host [192.0.2.1] blocked using Spamhaus. To request removal from "
     "this list see https://www.spamhaus.org/query/ip/192.0.2.1 (AS16012611)", "spam"),
    (550, "5.7.1", "Service unavailable, Helo domain is listed in Spamhaus. (S8001)", "spam"),
    (451, "4.7.500", "Server busy. Please try again later from [192.0.2.1]. (AS77712344) "
     "[x.prod.protection.outlook.com]", "rate_limited"),
    (451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation.",
     "rate_limited"),
    (421, "4.3.2", "The maximum number of concurrent connections per resource forest has exceeded a limit, "
     "closing transmission channel. PRX8", "rate_limited"),
    (432, "4.3.2", "STOREDRV.Deliver; recipient thread limit exceeded", "rate_limited"),
    (550, "5.7.509", "Access denied, sending domain example.com does not pass DMARC verification and has a DMARC "
     "policy of reject.", "authentication"),
    (550, "5.7.23", "The message was rejected because of Sender Policy Framework violation", "authentication"),
    (530, "5.7.57", "Client was not authenticated to send anonymous mail during MAIL FROM", "authentication"),
    (550, "5.7.1", "RESOLVER.RST.AuthRequired; authentication required", "policy"),
    (550, "5.7.708", "Access denied, traffic not accepted from this IP.", "spam"),
    (550, "5.7.750", "Service unavailable. Client blocked from sending from unregistered domains.", "policy"),
    (550, "5.4.310", "DNS domain example.com does not exist", "bad_domain"),
    (451, "4.4.62", "Mail sent to the wrong Office 365 region. ATTR35.", "routing"),
    (550, "5.4.14", "Hop count exceeded - possible mail loop ATTR34", "routing"),
    (451, "4.4.316", "Connection refused [Message=Socket error code 10061]", "bad_connection"),
    (550, "5.7.64", "TenantAttribution; Relay Access Denied", "routing"),
    (554, "5.6.211", "Invalid MIME Content: Single text value size (32784) exceeded allowed maximum (32768)",
     "content"),
    (550, "5.5.0", "Requested action not taken: mailbox unavailable (S2017062302)", "invalid_recipient"),
    (421, None, "RP-001 (COL004-MC1F41) Unfortunately, some messages from 192.0.2.1 weren't sent. Please try again. "
     "We have limits for how many messages can be sent per hour and per day.", "rate_limited"),
    (550, None, "SC-001 (BAY004-MC1F41) Unfortunately, messages from 192.0.2.1 weren't sent. Please contact your "
     "Internet service provider. You can tell them that Hotmail does not relay dynamically-assigned IP ranges.",
     "spam"),
    (550, None, "DY-001 (SNT004-MC1F41) Unfortunately, messages from 192.0.2.1 weren't sent. Please contact your "
     "Internet service provider.", "policy"),
    (550, "5.7.350", "Remote server returned message detected as spam", "spam"),
    (550, "5.7.1", "This email was rejected because it violates our security policy.", "policy"),
    # --- Postfix, Exim, amavis, others (P, E, A) ---
    (550, "5.1.1", "<x@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
     "invalid_recipient"),
    (450, "4.2.0", "<x@example.com>: Recipient address rejected: Greylisted, see "
     "http://postgrey.schweikert.ch/help/example.com.html", "transient"),
    (554, "5.7.1", "<x@example.com>: Relay access denied", "routing"),
    (450, "4.1.8", "<x@example.net>: Sender address rejected: Domain not found", "invalid_sender"),
    (450, "4.1.2", "<x@example.net>: Recipient address rejected: Domain not found", "bad_domain"),
    (452, "4.3.1", "Insufficient system storage", "transient"),
    (421, "4.7.0", "mx.example.com Error: too many connections from 192.0.2.1", "rate_limited"),
    (450, "4.7.1", "Client host rejected: cannot find your hostname, [192.0.2.1]", "policy"),
    (554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org; "
     "https://www.spamhaus.org/query/ip/192.0.2.1", "spam"),
    (554, "5.7.1", "Service unavailable; Client host [192.0.2.1] blocked using b.barracudacentral.org",
     "spam"),
    (552, "5.3.4", "Message size exceeds fixed limit", "message_too_large"),
    (550, "5.1.1", "<x@example.com>... User unknown", "invalid_recipient"),
    (550, None, "Verification failed for <x@example.net> Unrouteable address Sender verify failed",
     "invalid_sender"),
    (550, None, "Administrative prohibition", "policy"),
    (550, None, "This message contains a virus (Eicar-Test-Signature) and has been rejected", "virus"),
    (554, "5.7.0", "Reject, id=12345-01 - INFECTED: Eicar-Test-Signature", "virus"),
    (554, "5.7.0", "Reject, id=12345-01 - BANNED: P=p003,L=1,M=multipart/mixed | P=p002,L=1/2,T=exe,N=a.exe",
     "content"),
    (550, None, "High probability of spam", "spam"),
    (451, None, "Temporary local problem - please try later", "transient"),
    (550, "5.2.1", "Mailbox disabled, not accepting messages", "inactive_mailbox"),
    (552, "5.2.2", "Requested mail action aborted: exceeded storage allocation", "mailbox_full"),
    (503, "5.5.1", "Error: need RCPT command", "protocol"),
    (500, "5.5.2", "Error: bad syntax", "protocol"),
    (550, None, "#5.1.0 Address rejected.", "invalid_recipient"),
    (421, "4.3.2", "Service shutting down", "transient"),
    (450, "4.7.1", "Error: too much mail from 192.0.2.1", "rate_limited"),
    (556, "5.1.10", "Recipient address has null MX", "bad_domain"),
    (550, "5.7.27", "Sender address has null MX", "invalid_sender"),
    (550, "5.1.1", "<x@example.com>: Recipient address rejected: undeliverable address: mailbox not found in "
     "Domino directory", "invalid_recipient"),
]

assert len(REAL) >= 60


@pytest.mark.parametrize("code,enhanced,text,expected", REAL)
def test_real_replies(code, enhanced, text, expected):
    assert classify(code, enhanced, text) == expected


HOST = "mx.b.test[192.0.2.1]:25"

# Every synthetic reply mta makes (grep results_for( and the _Failure, Resolution, maildir,
# router, lane and manager texts in python/mta).
SYNTHETIC = [
    (451, "4.3.0", "internal delivery error", "transient"),  # transport, manager
    (451, "4.4.4", "cannot resolve smarthost.test", "routing"),  # transport
    (451, "4.7.5", "MTA-STS: no MX host matches the policy", "tls"),  # mtasts
    (451, "4.4.1", "no address to deliver to", "bad_connection"),  # smtp client
    (451, "4.4.1", f"connection to {HOST} timed out", "bad_connection"),
    (451, "4.4.1", f"connection to {HOST} failed: Connection refused", "bad_connection"),
    (451, "4.4.1", f"connection to {HOST} failed: No route to host", "bad_connection"),
    (451, "4.4.2", f"{HOST}: connection closed by the server", "bad_connection"),
    (451, "4.4.2", f"{HOST}: connection lost ([Errno 104] Connection reset by peer)", "bad_connection"),
    (451, "4.4.2", f"{HOST}: timed out waiting for the reply to DATA", "bad_connection"),
    (451, "4.4.2", f"{HOST}: timed out while sending the message", "bad_connection"),
    (451, "4.4.2", "mx.spam-filter.test[192.0.2.9]:25: connection closed by the server", "bad_connection"),
    (451, "4.3.2", f"{HOST} greeted: 421 4.3.2 Service shutting down", "transient"),
    (451, "4.7.1", f"{HOST} greeted: 554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
     "zen.spamhaus.org", "spam"),
    (451, "4.7.0", f"{HOST} greeted: 421 4.7.0 mx Error: too many connections from 192.0.2.1", "rate_limited"),
    (451, "4.4.1", f"{HOST} refused EHLO: 550 no", "other"),
    (451, "4.7.5", f"{HOST} refused STARTTLS: 454 4.7.0 TLS not available due to local problem", "tls"),
    (451, "4.5.1", f"{HOST} refused STARTTLS: 502 5.5.1 Unrecognized command", "tls"),
    (451, "4.7.5", f"TLS is required but {HOST} does not offer STARTTLS", "tls"),
    (451, "4.7.5", f"TLS with {HOST} failed: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed", "tls"),
    (451, "4.7.0", f"not sending credentials to {HOST} without TLS", "tls"),
    (451, "4.7.8", f"authentication to {HOST} failed: 535 5.7.8 Error: authentication failed", "authentication"),
    (451, "4.3.0", "cannot read the message from the spool", "transient"),
    (552, "5.3.4", f"message size 123456 exceeds the limit of {HOST} (1000)", "message_too_large"),
    (550, "5.6.7", f"{HOST} does not support SMTPUTF8, which this message needs", "protocol"),
    (550, "5.1.3", "address contains a control character", "invalid_recipient"),  # envelope_lines' ValueError
    (451, "4.3.0", "delivery agent did not start: [Errno 12] Cannot allocate memory", "transient"),
    (451, "4.3.0", "delivery agent died; will retry", "transient"),
    (451, "4.3.2", "delivery stopped (the server is shutting down)", "transient"),
    (550, "5.1.2", "domain not found", "bad_domain"),  # mx
    (550, "5.1.2", "invalid address literal", "bad_domain"),
    (550, "5.1.2", "an IP address is not a domain (use an address literal)", "bad_domain"),
    (550, "5.1.2", "invalid domain name", "bad_domain"),
    (550, "5.1.2", "invalid host name", "bad_domain"),
    (550, "5.1.2", "host not found", "bad_domain"),
    (556, "5.1.10", "Recipient address has null MX", "bad_domain"),
    (550, "5.4.4", "no mail host", "routing"),
    (550, "5.4.4", "no mail host (no MX host has an address)", "routing"),
    (451, "4.4.3", "DNS lookup failed: SERVFAIL", "routing"),
    (451, "4.4.3", "DNS lookup failed: timeout", "routing"),
    (550, "5.1.1", "User unknown in local recipient table", "invalid_recipient"),  # router
    (550, "5.4.6", "Alias expansion loop or too many recipients", "routing"),
    (452, "4.2.2", "mailbox full", "mailbox_full"),  # maildir
    (451, "4.3.5", "mailbox unusable (local configuration)", "transient"),
    (451, "4.3.0", "local delivery failed", "transient"),
    (451, "4.3.0", "routing error (route hook failed)", "routing"),  # manager
    # The queue manager's expiry: the last error decides.
    (550, "4.4.7", f"delivery time expired; last error: 451 4.4.1 connection to {HOST} timed out", "bad_connection"),
    (550, "4.4.7", "delivery time expired; last error: 452 4.2.2 The email account that you tried to reach is "
     "over quota.", "mailbox_full"),
    (550, "4.4.7", "delivery time expired; last error: 421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily "
     "deferred due to unexpected volume or user complaints", "rate_limited"),
    (550, "4.4.7", "delivery time expired; last error: 451 greylisted, try again", "transient"),
]


@pytest.mark.parametrize("code,enhanced,text,expected", SYNTHETIC)
def test_synthetic_replies(code, enhanced, text, expected):
    assert classify(code, enhanced, text) == expected


def test_fallbacks_enhanced_then_code():
    assert classify(550, "5.1.1", "nope") == "invalid_recipient"
    assert classify(550, "5.7.1", "nope") == "policy"
    assert classify(550, "5.7.26", "nope") == "authentication"
    assert classify(550, "5.3.4", "nope") == "message_too_large"
    assert classify(421, "4.4.2", "nope") == "bad_connection"
    assert classify(451, "4.4.9", "nope") == "routing"
    assert classify(451, None, "nope") == "transient"
    assert classify(554, None, "nope") == "other"
    assert classify(550, "5.0.0", "nope") == "other"
    assert classify(451, "4.0.0", "nope") == "transient"
    assert classify(250, "2.0.0", "ok") == "other"  # not a failure: still a category
    assert classify(550, "bogus", "nope") == "other"


def test_addresses_decide_nothing():
    assert classify(550, "5.1.1", "<spam@example.com>: Recipient address rejected: User unknown") == "invalid_recipient"
    assert classify(550, None, "<user-unknown@example.com> policy violation") == "policy"


def test_categories_are_the_contract():
    assert CATEGORIES == (
        "invalid_recipient", "inactive_mailbox", "mailbox_full", "bad_domain", "invalid_sender",
        "message_too_large", "spam", "virus", "content", "policy", "authentication", "rate_limited",
        "bad_connection", "tls", "routing", "protocol", "transient", "other")
    assert set(DESCRIPTIONS) == set(CATEGORIES)
    used = {c for *_, c in REAL + SYNTHETIC}
    assert used == set(CATEGORIES)  # every category is reachable by a real reply


def test_long_text_is_bounded():
    assert classify(550, "5.1.1", "x" * 1_000_000) == "invalid_recipient"
    assert classify(550, None, "a " * 100_000 + "user unknown") == "other"  # past the first 2 KiB


_enh = st.none() | st.from_regex(r"\A[0-9]\.[0-9]{1,4}\.[0-9]{1,4}\Z") | st.text(max_size=12)
_words = st.sampled_from(["user unknown", "spam", "TLS", "quota", "rate limited", "delivery time expired; "
                          "last error: ", "greeted: ", "<", ">", "5.1.1", "#", " "])
_text = st.text(max_size=200) | st.lists(_words | st.text(max_size=10), max_size=12).map("".join)


@settings(max_examples=500, deadline=None)
@given(code=st.integers(-10**6, 10**6), enhanced=_enh, text=_text)
def test_any_input_gets_a_category(code, enhanced, text):
    assert classify(code, enhanced, text) in CATEGORIES


@settings(max_examples=50, deadline=None)
@given(code=st.one_of(st.none(), st.floats(), st.text()), enhanced=st.integers() | st.none(),
       text=st.none() | st.binary())
def test_wrong_types_never_raise(code, enhanced, text):
    assert classify(code, enhanced, text) in CATEGORIES


# The index (each alternative tried only when its word or substring is in the text) must
# decide exactly as each rule's whole pattern would.
_mod = classifier
_FULL = [re.compile(_mod._lower(rx)) for _cat, rx, _c, _e in _mod._RULES]
_VOCAB = sorted({w for w in _mod._ALL_WORDS} | {s for s, _i, _rx in _mod._BY_SUBSTRING})


def _indexed(i, text):
    words = set(_mod._WORDS.findall(text))
    alts = [rx for w in words for j, rx in _mod._BY_WORD.get(w, []) if j == i]
    alts += [rx for s, j, rx in _mod._BY_SUBSTRING if j == i and s in text]
    always = _mod._ALWAYS[i]
    return bool((always is not None and always.search(text)) or any(rx.search(text) for rx in alts))


def _check_index(text):
    text = text.lower()
    for i, full in enumerate(_FULL):
        assert _indexed(i, text) == bool(full.search(text)), (_mod._RULES[i][1], text)


@pytest.mark.parametrize("text", [t for _c, _e, t, _x in REAL + SYNTHETIC])
def test_index_decides_as_the_patterns_on_the_tables(text):
    _check_index(text)


_piece = st.sampled_from(_VOCAB) | st.sampled_from([" ", "-", "'", ".", ";", "x", "s", "ed", "\\", "(", ")"]) \
    | st.text(max_size=4)


@settings(max_examples=1000, deadline=None)
@given(st.lists(_piece, max_size=16).map(" ".join) | st.lists(_piece, max_size=16).map("".join))
def test_index_decides_as_the_patterns(text):
    _check_index(text)
