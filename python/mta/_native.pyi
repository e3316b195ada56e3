"""Typed stubs of the Rust extension `mta._native` (built by maturin).

Three parts: the sans-IO SMTP parser (`SmtpParser`), header work
(`received_header`, `Headers`, `HeaderScanner` via `Message`), and the spool
(`Spool`, `SpoolReader`, `Message`). The message body crosses into Rust once, in
`SmtpParser.feed`, and never comes back to Python unless asked
(`SpoolReader.message_bytes`).
"""

from typing import Callable, Final, Literal, Sequence

__version__: str

class SpoolError(Exception):
    """A spool operation failed: I/O, bad format, lock held by another process."""

class ThrottleError(Exception):
    """The throttle table cannot be used: I/O, not a table of this version and size, or full."""

# ---------------------------------------------------------------------------
# SMTP parser (rust/src/smtp, bindings/smtp.rs)
# ---------------------------------------------------------------------------

class MailArgs:
    """MAIL FROM:<address> [params]. Frozen."""

    address: str  # "" for the null path <>; source route dropped; UTF-8 allowed only with SMTPUTF8
    size: int | None  # SIZE=
    body: Literal["7BIT", "8BITMIME"] | None
    smtputf8: bool
    ret: Literal["FULL", "HDRS"] | None  # DSN RET=
    envid: str | None  # DSN ENVID= (xtext-decoded)

class RcptArgs:
    """RCPT TO:<address> [params]. Frozen."""

    address: str  # "Postmaster" (no domain) is allowed as RFC 5321 says
    notify: tuple[str, ...] | None  # ("NEVER",) or subset of ("SUCCESS", "FAILURE", "DELAY")
    orcpt: str | None  # ORCPT= raw value "rfc822;addr" (xtext-decoded)

# Event tuples returned by SmtpParser.feed / start_data / start_bdat / resume.
# The first element says which:
#   ("cmd", verb, arg)
#       verb is one of: "EHLO" "HELO" "MAIL" "RCPT" "DATA" "BDAT" "RSET" "NOOP"
#       "QUIT" "VRFY" "HELP" "STARTTLS" "AUTH" "HTTP"
#       arg: EHLO/HELO -> str (the domain or address literal as sent)
#            MAIL -> MailArgs;  RCPT -> RcptArgs
#            BDAT -> (size: int, last: bool)
#            VRFY/HELP/AUTH/NOOP -> str (rest of the line, may be "")
#            HTTP -> str (the request line; GET/POST/HEAD/PUT/CONNECT ... HTTP/x)
#            others -> None
#       After a "DATA" or "BDAT" command the parser pauses: it returns no
#       further events until the session calls start_data / start_bdat /
#       resume. This is how pipelined bytes after DATA are never parsed as
#       commands before the server decided on the DATA.
#   ("error", code: int, enhanced: str, text: str)
#       a command line the grammar refused; the session sends exactly this
#       reply and counts it as an error. Examples:
#       500 5.5.2 line too long (the rest of the line is drained first)
#       500 5.5.2 command not recognized
#       501 5.5.2 NUL or bare CR in command line
#       501 5.5.4 syntax error in parameters (with usage text)
#       501 5.1.7 bad sender address syntax / 501 5.1.3 bad recipient address syntax
#       555 5.5.4 unsupported parameter (incl. BODY=BINARYMIME)
#       553 5.6.7 non-ASCII address without SMTPUTF8 (MAIL); for RCPT the
#           parser does not know about SMTPUTF8 in MAIL: the session passes it
#           with set_smtputf8(True) after an accepted MAIL ... SMTPUTF8.
#   ("line", raw: bytes)
#       only after take_line(): the client's next complete line, unparsed,
#       without its CR LF / LF (an AUTH response: base64 or "*"). The parser
#       pauses again after it: call take_line() for another line or resume().
#       A raw line longer than max_line gives ("error", 500, "5.5.2",
#       "line too long") instead and line mode ends (commands follow).
#   ("data_end", status)          end of DATA reached (CR LF . CR LF)
#   ("bdat_end", last: bool, status)   a BDAT chunk fully consumed
#       status: "ok" | "bare_lf" | "too_big"
#       "bare_lf": a bare CR or LF was seen and the policy is "reject"
#       "too_big": more than max_message_size octets after unstuffing
#       (header-block size and Received count are on the Message)

Event = tuple

class SmtpParser:
    def __init__(
        self,
        *,
        max_line: int = 512,
        max_message_size: int = 52_428_800,
        bare_lf: Literal["reject", "normalize"] = "reject",
    ) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Append bytes received from the client; return every complete event.
        Identical results for any split of the same byte stream."""
    def start_data(self, message: Message) -> list[Event]:
        """After a DATA command the session accepted (it sends 354 after this):
        body bytes, dot-unstuffed and bare-CR/LF-policed, go into `message`
        until CR LF . CR LF; then a "data_end" event. Processes bytes already
        buffered and returns their events."""
    def start_bdat(self, message: Message | None) -> list[Event]:
        """After a BDAT command: its chunk goes into `message`, or is
        discarded when None (the session rejected the BDAT). The same Message
        must be passed for every chunk of one transaction."""
    def resume(self) -> list[Event]:
        """After a DATA command the session refused, or when an AUTH exchange
        needs no (more) raw lines: continue parsing commands."""
    def set_smtputf8(self, on: bool) -> None:
        """Whether UTF-8 addresses are allowed in RCPT for the current transaction."""
    def set_auth_pause(self, on: bool) -> None:
        """On: the parser pauses after each "AUTH" command, as after DATA, until the
        session calls take_line() (the next line is a SASL response) or resume().
        Off (the default): AUTH is an ordinary command."""
    def take_line(self) -> list[Event]:
        """Paused after AUTH or after a ("line", ...) event: return the next
        complete line as ("line", bytes) (processing bytes already buffered).
        ValueError when not paused there."""
    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed (bounded by max_line while in command mode)."""

class ReplyParser:
    """Client side: incremental parser of server replies (any split of the input
    gives the same replies). Lines end at LF, a CR before it dropped; the code
    must be 200..599 and the same on every line of a multi-line reply."""

    def __init__(self, max_line: int = 8192) -> None: ...
    @property
    def buffered(self) -> bool:
        """Part of a reply has been received (a partial line or continuation lines)."""
    @property
    def error(self) -> str | None:
        """Set (final) once the input stopped being replies: "malformed reply line"
        or "reply line too long"."""
    def feed(self, data: bytes) -> list[tuple[int, list[str]]]:
        """Complete replies as (code, text of each line without code and separator),
        including those completed before an error; once `error` is set, ValueError."""

def reply_parts(code: int, lines: list[str]) -> tuple[str | None, str]:
    """(enhanced code, text) of a client-side reply: the RFC 3463 code opening the first
    line when it has the reply's class (2, 4 or 5), and every line without it, joined
    with spaces, empty ones left out. ClientTransaction's outcomes use the same rule."""

class ClientTransaction:
    """Client side of one mail transaction (rust/src/smtp/client/transaction.rs): the
    replies owed (RSET if `reset`, MAIL, one per recipient, DATA unless `chunking`,
    then the end of data: one per accepted recipient with `lmtp`) and what each
    decides. Pipelined, the caller writes the whole command batch, then feeds the
    server's bytes (`feed`) or each reply (`on_reply`). With `pipelining=False`
    (lock-step) it writes the command `command` names before each reply, and nothing
    follows a refused MAIL, nor DATA when no recipient was accepted."""

    def __init__(self, rcpts: int, *, reset: bool, chunking: bool, lmtp: bool,
                 pipelining: bool = True) -> None: ...
    def feed(self, parser: ReplyParser, data: bytes) -> int:
        """Parse `data` with the connection's `parser` and decide on each complete
        reply: 0 wait, 1 send the data now, 2 send an empty data phase (".\\r\\n": the
        server said 354 though no recipient was accepted), 3 done, 4 stale (RSET
        refused: nothing decided), 5 a reply that no command was owed, 6 not a reply
        (`parser.error` says why; the replies before it were decided). The answer
        does not depend on how the bytes are split."""
    def on_reply(self, reply: tuple[int, list[str]]) -> int:
        """Decide on one reply already parsed, (code, lines) (a client `Reply`): the
        step, as `feed` returns it (never 6); 5 once done."""
    @property
    def command(self) -> int | None:
        """Lock-step only: the index of the command to write now, before its reply is
        awaited, in the batch [RSET if reset, MAIL, each RCPT, DATA unless chunking];
        None when pipelined or when the reply awaited is the end of data's."""
    def chain(self) -> None:
        """Another transaction's MAIL, RCPT and DATA were written behind this one's
        data (RFC 2920): from now on `feed` returns 3 (done) with the replies after
        this transaction's last kept for that one, instead of 5."""
    def adopt(self, prev: ClientTransaction) -> None:
        """Take the replies `prev` kept for this transaction (see `chain`); the next
        `feed` (data may be b"") decides on them before what it parses."""
    @property
    def untouched(self) -> bool:
        """No reply has been decided on yet."""
    @property
    def waiting_for(self) -> str:
        """The command whose reply is awaited: "RSET", "MAIL FROM", "RCPT TO",
        "DATA", "the end of data", or "" when none is."""
    @property
    def closing(self) -> bool:
        """A 421 came: the connection must not be reused."""
    @property
    def done(self) -> bool:
        """Every recipient has its outcome."""
    def fail(self, text: str, *, code: int = 451, enhanced: str = "4.4.2") -> None:
        """The transaction ends here (by default: the connection failed): each
        recipient still undecided gets `code` `enhanced` `text`."""
    def rows(self, recipients: Sequence[Sequence[object]], host: str | None, ip: str | None,
             tls: str | None) -> list[tuple]:
        """One RcptResult-shaped tuple per recipient (`recipients[i][0]` is its
        address): (address, code, enhanced, text, host, ip, tls, None, None); the
        text has every line of the reply without its enhanced code. ValueError
        before `done`."""

def format_reply(code: int, enhanced: str | None, lines: list[str] | str) -> bytes:
    """Single- or multi-line reply: b"250-first\\r\\n250 last\\r\\n", with the
    enhanced status code (RFC 3463) after the code on every line when given."""

def envelope_lines(
    sender: str,
    recipients: Sequence[tuple],
    size: int | None,
    body: str | None,
    smtputf8: bool,
    ret: str | None,
    envid: str | None,
    dsn: bool,
) -> tuple[bytes, list[bytes]]:
    """The client's MAIL FROM line and one RCPT TO line per recipient (each a sequence
    opening with address, notify or None, orcpt or None, as OutRcpt), with the parameters
    the peer offers: SIZE= when `size` is given, BODY= when `body` is, SMTPUTF8, and with
    `dsn` RET=, ENVID= (xtext), NOTIFY= and ORCPT= (its address as xtext); empty values are
    left out (rust/src/smtp/envelope.rs). ValueError on a CR or LF in any line."""

# ---------------------------------------------------------------------------
# PROXY protocol v1/v2 (rust/src/smtp/proxy.rs, bindings/proxy.rs)
# ---------------------------------------------------------------------------

class ProxyParser:
    """Sans-IO parser of the HAProxy PROXY header a load balancer sends first.

    Feed the connection's first bytes as they arrive; the answer does not
    depend on how they are split. v1 (text, at most 107 bytes with CR LF):
    TCP4, TCP6, UNKNOWN. v2 (binary, 16 bytes + declared length): command
    LOCAL or PROXY, families AF_UNSPEC, AF_INET, AF_INET6 over STREAM; TLVs
    inside the declared length are skipped. AF_UNIX and DGRAM are refused.
    """

    def __init__(self) -> None: ...
    def feed(self, data: bytes) -> tuple | None:
        """None: need more bytes.
        ("proxy", src_ip: str, src_port: int, dst_ip: str, dst_port: int):
            the client (src) as the proxy saw it.
        ("local",): v2 LOCAL, v2 PROXY with AF_UNSPEC, or v1 UNKNOWN: a
            health check or an unknown client; use the real connection's
            endpoints.
        Raises ValueError (with the reason) for anything else; once decided,
        later calls give the same answer (or raise again)."""
    @property
    def rest(self) -> bytes:
        """Bytes received after the header (b"" until it is complete)."""

# ---------------------------------------------------------------------------
# Header work (rust/src/message, bindings/message.rs)
# ---------------------------------------------------------------------------

def received_header(
    *,
    helo: str,
    reverse_name: str | None,  # None -> "unknown"
    ip: str,
    hostname: str,
    protocol: str,  # "SMTP" "ESMTP" "ESMTPS" "ESMTPA" "ESMTPSA" "UTF8SMTP" "UTF8SMTPS" ...
    queue_id: str,
    recipient: str | None,  # only when the message has exactly one recipient
    timestamp: float,  # unix time; RFC 5322 date with the local zone's offset (libc localtime_r, honours TZ)
    tls: str | None = None,  # e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"
) -> bytes:
    """`Received: from HELO (reverse [ip])\\r\\n\\tby HOSTNAME with PROTO id ID\\r\\n\\tfor <rcpt>; DATE\\r\\n`,
    folded so each line stays under 78 octets where possible."""

class Headers:
    """A header block to read and edit (plugins' `on_data` / `on_message` headers), over the
    Rust header index (rust/src/message/view.rs). Names are matched case-insensitively
    (ASCII). Each edit rewrites the block at once, so later reads see it; fields not edited
    keep their bytes exactly. Bytes after the first line that is not a field are kept after
    the fields (new fields go before them). Apply the result to a message with
    `Message.replace_header_block(headers.block())`."""

    def __init__(self, block: bytes, *, readonly: bool = False) -> None:
        """`block`: fields, each ending in CRLF or LF, without the empty line that ends the
        block (what `Message.header_block()` returns). `readonly`: every edit raises
        TypeError("read-only header view")."""
    def get(self, name: str) -> str | None:
        """The first field named `name`: its value unfolded (each CRLF or LF followed by SP
        or HTAB removed), ASCII whitespace stripped at both ends, decoded as UTF-8 (invalid
        octets become U+FFFD); None when there is none."""
    def get_all(self, name: str) -> list[str]:
        """Every field named `name`, in order, each value as `get` gives it."""
    def get_raw(self, name: str) -> bytes | None:
        """The first field's value as stored: the octets after the ':' up to, not including,
        its final line break (folding kept)."""
    def get_all_raw(self, name: str) -> list[bytes]:
        """Every field named `name`, in order, each value as `get_raw` gives it."""
    def items(self) -> list[tuple[str, str]]:
        """Every field as (name as written, value as `get` gives it), in order."""
    def names(self) -> list[str]:
        """Every field's name as written, in order (repeated names repeated)."""
    def __len__(self) -> int:
        """The number of fields."""
    def __contains__(self, name: str) -> bool:
        """A field named `name` exists."""
    def add(self, name: str, value: str | bytes) -> None:
        """Append `name: value` CRLF after the last field (a last field without its line
        break gets one first). `value` as str is written as UTF-8. ValueError: `name` empty
        or not ftext (printable ASCII but ':'), or `value` with NUL or a CR or LF other than
        folding (CRLF followed by SP or HTAB): "header value contains a bare CR or LF ..."."""
    def prepend(self, name: str, value: str | bytes) -> None:
        """Insert `name: value` CRLF before the first field; checked as `add`."""
    def remove(self, name: str) -> int:
        """Remove every field named `name`; how many were removed."""
    def remove_nth(self, name: str, n: int) -> bool:
        """Remove the `n`-th field named `name` (0 = topmost): True; False when there are
        not n + 1 of them. Read-only view: TypeError as `remove`."""
    def replace(self, name: str, value: str | bytes) -> bool:
        """Replace the value of the first field named `name` (its name kept as written, the
        field becomes `Name: value` CRLF up to its old end, folding included): True; when
        there is none, `add` it: False. Checked as `add`."""
    def block(self) -> bytes:
        """The current header block."""
    @property
    def changed(self) -> bool:
        """An edit changed the block (removing a name that is absent changes nothing)."""
    @property
    def readonly(self) -> bool:
        """Edits raise TypeError("read-only header view")."""

def is_wire_form(data: bytes, *, dot_stuff: bool) -> bool:
    """True when `wire_body` would change nothing but append the terminator: every line
    ends CRLF (no bare CR or LF), the last included, and with dot_stuff none starts with "."."""

def wire_body(data: bytes, *, dot_stuff: bool) -> bytes:
    """The stored message as it goes to the next hop: every line ending CRLF (a bare CR
    or LF becomes one), ending with CRLF; with dot_stuff (DATA) a "." opening a line is
    doubled and the terminating ".\\r\\n" appended. One pass (rust/src/message/wire.rs)."""

# ---------------------------------------------------------------------------
# The delivery log's line (rust/src/logline.rs, bindings/logline.rs)
# ---------------------------------------------------------------------------

def delivery_log_line(
    now: float,
    queue_id: str,
    recipient: str,
    status: str,
    attempt: int,
    arrival: float | None,  # 0 or None: "delay_s" is null
    code: int | None = None,  # None: no reply (remote_host .. tls_failure all null)
    enhanced: str | None = None,
    text: str | None = None,
    remote_host: str | None = None,
    remote_ip: str | None = None,
    tls: str | None = None,
    policy: str | None = None,
    tls_failure: str | None = None,
) -> str:
    """One JSON line (with its newline), as json.dumps(ensure_ascii=False) of the record
    would write it: keys time, queue_id, recipient, status, remote_host, remote_ip, reply
    ("code enhanced text"), attempt, delay_s (round(max(0, now - arrival), 3)), tls,
    policy, tls_failure. A lone surrogate comes out as its backslashreplace escape."""

def rfc3339(t: float) -> str:
    """UTC with milliseconds, 2024-01-02T03:04:05.678Z (the milliseconds truncated)."""

# ---------------------------------------------------------------------------
# Spool (rust/src/spool, bindings/spool.rs)
# ---------------------------------------------------------------------------

class ServerLog:
    """The server log's buffered lines (mta.log): `add` stamps a message with the local
    time as logging's "%(asctime)s" does, `write` writes them all (False: they could
    not be, and are dropped). `len()` is the bytes waiting."""

    def __init__(self, tag: str) -> None: ...
    def add(self, msg: str) -> None: ...
    def write(self, fd: int) -> bool: ...
    def __len__(self) -> int: ...

class Message:
    """An in-flight message: the bytes after dot-unstuffing, with our
    Received header first. Memory-bounded: past `spill_threshold` bytes it
    spills to a file in the shard's tmp/ directory (unlinked at creation, so a
    crash leaves nothing behind). Created by Spool.new_message(); filled by
    SmtpParser; handed to Spool.submit(), which consumes it: afterwards its
    properties raise SpoolError and pushed bytes are ignored."""

    def __init__(self, *, max_header_size: int = 1024 * 1024) -> None:
        """A memory-only Message that never spills (parser tests); the server
        uses Spool.new_message()."""
    def push(self, data: bytes) -> None:
        """Append client bytes (dot-unstuffed); what SmtpParser does internally."""
    def bytes(self) -> bytes:
        """The whole content, our prefix included (tests; reads a spill file back)."""
    def read_at(self, offset: int, max: int = 262144) -> bytes:
        """At most `max` octets of the content (our prefix, a replaced header block, then
        the client's bytes) from `offset`; b"" at the end. A plugin's body_chunks() at
        on_message reads the message with it, a block at a time (a spill file included)."""
    def prepend(self, data: bytes) -> None:
        """Put `data` in front of everything (as Spool.prepend; for a memory-only message)."""
    @property
    def stored_size(self) -> int:
        """Octets of the whole content as it would be stored now: our prefix, a replaced
        header block, then the client's bytes (what read_at reads)."""
    def finish_headers(self) -> None:
        """The message ended: a header block that no empty line ended (a message of header
        fields only) ends with its last complete line, so header_done is True and the block
        may be replaced. The session calls it at end of data."""
    @property
    def size(self) -> int:
        """Octets of the client's message (excluding the prefix we added); after
        replace_header_block, of the message with the new header block."""
    @property
    def header_size(self) -> int:
        """Octets of the client's header block so far (up to, not including,
        the empty line; a first line that is not a header field also ends it).
        Once header_too_big, stays at max_header_size + 1."""
    def header_block(self) -> bytes:
        """The client's header block (header_size octets: up to, not including,
        the empty line), without our prefix; read back from the spill file if the
        message spilled. At most max_header_size + 1 octets. Used for the
        submission fix-up (mta.auth.add_missing_headers) at end of data. After
        replace_header_block: the new block."""
    @property
    def header_too_big(self) -> bool:
        """The client's header block exceeded max_header_size (scanning stops)."""
    @property
    def received_count(self) -> int:
        """Number of Received: header fields in the client's header block."""
    @property
    def spilled(self) -> bool: ...
    @property
    def header_done(self) -> bool:
        """The scanner found the end of the client's header block (the empty line, or a first
        line that is not a field); also True once it gave up on a block too big
        (header_too_big). A message that ends inside its header block never gets here."""
    def replace_header_block(self, new_block: bytes) -> None:
        """Replace the client's header block (its first header_size octets, up to, not
        including, the empty line) with `new_block`, e.g. `Headers.block()` after edits;
        again later replaces the first replacement. Afterwards header_block() is
        `new_block`, bytes() and the stored message are prefix + new_block + the client's
        bytes after the old block (the empty line and body unchanged), and size counts
        that. Works for a spilled message (the spill file is not rewritten; the spool
        copies it from after the old block). Spool.prepend still puts its bytes in front of
        everything. header_size and received_count keep describing the client's bytes.
        ValueError("header block not complete") before header_done or when header_too_big,
        and ValueError when `new_block` is not whole header fields each ending in a line
        break (b"" is fine), so the header/body boundary stays where the client put it;
        SpoolError after submit, after discard, or after a spill failure."""
    def discard(self) -> None:
        """Stop keeping the client's bytes (memory freed, spill file dropped) for a message
        that will be refused: size, header_size, received_count keep counting and
        header_done keeps scanning; bytes() and header_block() raise SpoolError, and
        Spool.submit of it completes with an error and stores nothing."""
    @property
    def discarded(self) -> bool:
        """discard() was called."""

class Recipient:
    address: str
    state: Literal["queued", "delivered", "deferred", "bounced"]
    notify: tuple[str, ...] | None
    orcpt: str | None
    attempts: int  # delivery attempts so far (as recorded by Spool.update)
    next_attempt: float | None  # unix time of the next attempt (deferred recipients)
    last_reply: str | None  # the last reply text (or local error) recorded
    @property
    def route(self) -> str | None:
        """Where the next attempt goes (a transport string such as "smarthost 10.0.0.5:25",
        set by the 6-tuple form of Spool.update; opaque to the spool); None: the usual routing."""

class Envelope:
    """One spooled message's envelope, as listed by SpoolReader / Spool."""

    queue_id: str
    arrival: float  # unix time
    size: int  # octets of the stored message (our Received header included)
    sender: str  # "" for <>
    recipients: list[Recipient]
    body: str | None
    smtputf8: bool
    ret: str | None
    envid: str | None
    helo: str
    client_ip: str
    shard: int
    held: bool  # message-level hold (Spool.hold): never due while set
    delay_warned: bool  # its delay notice was sent (Spool.delay_warned, submit's delay_notice_for): never cleared
    @property
    def notes(self) -> str | None:
        """The transaction's notes as given to Spool.submit (JSON text, never parsed by the
        spool; at most 65536 bytes), durable with the message; None when none were given."""

RecipientChange = (
    tuple[int, Literal["queued", "delivered", "deferred", "bounced"], int, float | None, str | None]
    | tuple[int, Literal["queued", "delivered", "deferred", "bounced"], int, float | None, str | None, str | None]
)

class Spool:
    """One shard of the spool, owned (flock) by this process, with its
    group-commit writer thread. Opening it recovers the shard: a torn record
    at the end of the newest segment is truncated; a bad record elsewhere is
    moved to corrupt/ and reported in `recovery_report`."""

    def __init__(
        self,
        root: str,
        shard: int = 0,
        *,
        segment_size: int = 64 * 1024 * 1024,
        spill_threshold: int = 1024 * 1024,
        max_header_size: int = 1024 * 1024,
        sync: bool = True,  # False only for benchmarks of the ceiling; never default
        sync_log: bool = False,  # tests: record each segment's length after each fdatasync in <shard>/synced.log
        copy_forward_percent: int = 25,  # copy a sealed segment's live messages forward below this fill; 0 = never
        commit_delay: float = 0.0,  # seconds a submission may wait to share an fdatasync under load
        active_limit: int = 20_000,  # envelopes of the newest arrivals kept in memory; the rest are read back
    ) -> None:
        """Creates root and root/<shard> with mode 0700; raises SpoolError if
        another process holds the shard's lock."""
    @property
    def shard(self) -> int: ...
    @property
    def notify_fd(self) -> int:
        """Readable when completions are waiting; the event loop watches it
        (loop.add_reader) and calls completions() once per wake-up."""
    @property
    def recovery_report(self) -> list[str]:
        """Human-readable lines: messages recovered, torn tail truncated, records moved to corrupt/."""
    def new_queue_id(self) -> str:
        """Unique across shards and restarts; [A-Za-z0-9]+, sortable by time."""
    def new_message(self) -> Message: ...
    def prepend(self, message: Message, data: bytes) -> None:
        """Put our Received header in front (call before the parser fills the body)."""
    def submit(
        self,
        token: int,
        queue_id: str,
        message: Message,
        *,
        sender: str,
        recipients: list[tuple[str, tuple[str, ...] | None, str | None]],  # (address, notify, orcpt)
        body: str | None = None,
        smtputf8: bool = False,
        ret: str | None = None,
        envid: str | None = None,
        helo: str = "",
        client_ip: str = "",
        arrival: float | None = None,
        notes: str | None = None,  # the transaction's notes (JSON text), stored in the envelope
        held: bool = False,  # stored held: never due until released (Spool.hold(..., False))
        delay_notice_for: str | None = None,  # this is that message's delay notice: see below
        events: list[str] | None = None,  # webhook events (JSON texts) written in the same batch
        accepted_event: bool = False,  # also the "accepted" event, made here from the envelope
    ) -> None:
        """Queue the message for the writer thread; returns at once. Its
        completion (token, None | error text) shows up in completions() after
        the batch holding it was written and fdatasync'ed. The Message is
        consumed. ValueError (message left untouched) for a queue_id outside
        [A-Za-z0-9]+, an unknown NOTIFY keyword, or notes over 65536 bytes
        ("transaction notes exceed 65536 bytes"); SpoolError after close().
        A discarded Message (Message.discard) completes with an error and
        stores nothing. `delay_notice_for`: the message is the delay notice (DSN)
        about that queue id, which is marked delay_warned in the same batch (its
        STATE record first: one sync, one completion; a crash never keeps the notice
        without the flag); ValueError when that queue id is not durable here."""
    def completions(self) -> list[tuple[int, str | None]]:
        """Drain finished submissions; also clears notify_fd's readiness."""
    def inject_fault(self, kind: Literal["write", "sync"] | None, errno: int = 28) -> None:
        """Tests: make the next writes or syncs fail with errno (28 = ENOSPC, 5 = EIO); None clears."""
    def gauges(self) -> tuple[int, int, float | None]:
        """(messages, held ones, the oldest arrival or None): a walk of the index, no
        envelope read (the metrics tick's queue gauges)."""
    def stats(self) -> dict[str, int]:
        """batches, syncs, messages, bytes, segments, failed_batches,
        segments_deleted, messages_copied (compaction), queued_messages (index size),
        index_bytes (the index's own memory: slots, schedule, segment lists), hot_envelopes
        (envelopes kept in memory, at most active_limit);
        for /metrics: sync_le_<seconds> (fdatasync latency, per bucket, not cumulative; the
        last "sync_le_+Inf"), sync_us_sum (their total in µs), batch_le_<n> (messages per
        successful batch, per bucket; the last "batch_le_+Inf")."""
    def list(self) -> list[Envelope]:
        """Every durable message of this shard, oldest arrival first (copies
        the whole index: for tools and tests, not for the queue manager's loop)."""

    # Queue manager API. update/hold/delete complete like submit: (token, None |
    # error text) in completions(), after the record is fdatasync'ed, in the
    # same group commit as everything else; the index changes only then.
    # ValueError at call time for a queue id not (yet) durable in this shard.
    def update(self, token: int, queue_id: str, changes: list[RecipientChange],
               events: list[str] | None = None) -> None:
        """Record recipient outcomes: (index into the envelope's recipients,
        new state, total attempts so far, next attempt unix time or None, last
        reply or None[, route]). Each change is the recipient's whole new state:
        the optional sixth item is the route of its next attempt (a transport
        string, opaque to the spool), and a change without one (or with None)
        clears it. A STATE record; a restart replays it. ValueError: unknown
        queue id, index out of range, unknown state name, negative time, a
        change of other than 5 or 6 items."""
    def hold(self, token: int, queue_id: str, on: bool) -> None:
        """Hold (never due) or release the whole message."""
    def delay_warned(self, token: int, queue_id: str) -> None:
        """Mark the message's delay notice as sent (a STATE record; the flag is never cleared)."""
    def delete(self, token: int, queue_id: str) -> None:
        """Remove the message (when every recipient is final): a DELETE record;
        it leaves the index when durable and its space is reclaimed by compaction."""
    def delete_many(self, token: int, queue_ids: list[str], events: list[str] | None = None,
                    delivered_log: str | None = None) -> list[str]:
        """`delete` for several messages, with one completion (`token`) once one
        sync made all their DELETE records durable. Returns the unknown queue ids,
        which were left out; when none was known nothing is queued and `token`
        never completes. `delivered_log`: delivery-log lines whose "delivered" events
        (each record with "event" first) are recorded after `events`."""

    # Webhook events (EVENT / EVENT_ACK records). `events=` on submit, update and
    # delete_many writes each JSON text as an EVENT record in the same batch as (and
    # before) that record: durable with it. An event gets a seq (per shard, strictly
    # increasing, also across restarts) and an id ("<time+shard queue-id form>.<seq>",
    # unique for ever). A webhook's cursor says it has every event up to a seq; an event
    # is kept (in memory and on disk) until every configured webhook's cursor passed it.
    # ValueError for an event JSON over 4 MiB.
    def record_events(self, token: int, events: list[str]) -> bool:
        """EVENT records on their own; `token` completes once they are durable. False
        (and `token` never completes) for an empty list."""
    def ack_events(self, token: int, name: str, upto: int) -> None:
        """Webhook `name` has every event up to seq `upto` (an EVENT_ACK record; its
        cursor moves once durable and never goes back). ValueError: an empty name."""
    def events_after(self, name: str, limit: int) -> list[tuple[int, str, float, str]]:
        """Durable events after `name`'s cursor, oldest first, at most `limit`: (seq, id,
        unix time, json). A name never acknowledged has every pending event."""
    def events_body(self, name: str, limit: int, kinds: list[str] | None = None) -> tuple[bytes, int, int, int, int]:
        """`events_after` as one webhook POST body: (JSON array with each record's id in front,
        first seq, last seq, events taken, records in the body); only the `kinds` wanted go in
        the body (None: all). No events: (b"[]", 0, 0, 0, 0)."""
    def event_backlog(self, name: str, nth: int) -> tuple[int, int | None]:
        """How many durable events `name` has not passed, and the seq of the `nth`
        (1-based) of them (None: fewer)."""
    def event_cursor(self, name: str) -> int:
        """`name`'s cursor: the seq up to which it has every event (0: none yet)."""
    def set_event_names(self, names: list[str]) -> None:
        """The configured webhooks: from now on only their cursors keep events (before
        the first call, every name found in the spool counts). [] lets every event go."""
    @property
    def pending_events(self) -> int:
        """Events kept in memory: what the slowest configured webhook has not passed."""
    def due(self, now: float, limit: int) -> list[str]:
        """Queue ids, oldest arrival first, of messages not held with a
        recipient "queued", or "deferred" with next_attempt <= now (or None);
        at most limit. Cheap with a big index (a schedule kept on every
        change). A message stays due until an update changes that, so the
        caller skips the ones it already has in flight."""
    def next_due(self) -> float | None:
        """Earliest time any message that is not held becomes due (0.0 when
        something is due already, e.g. a queued recipient); None if none."""
    def get(self, queue_id: str) -> Envelope | None:
        """The current envelope (durable state) of one message: from memory for the newest
        arrivals, else read back from the spool (raises SpoolError if that read fails)."""
    def message_bytes(self, queue_id: str) -> bytes | None:
        """The stored message bytes (pread, GIL released; safe while the
        writer appends or compacts)."""
    def encode_jobs(self, jobs: list[tuple[int, str, bytes]]) -> tuple[bytes, list[int]]:
        """The delivery agent's frame payload for `jobs`, each (job number, queue id,
        marshal form (version 2) of (key, targets, options)): a marshal list of the
        items AgentDelivery._send would send for those entries, with their log context;
        and the job numbers left out (gone, held, a recipient not queued, unreadable).
        GIL released."""
    def locate(self, queue_id: str) -> StoredMessage | None:
        """Where the message is stored, to be read a block at a time; None: gone."""
    def keep_fresh(self, on: bool) -> None:
        """Keep the bytes of messages just made durable in memory for a moment (at most
        1024 of them, 8 MiB, 256 KiB each), for encode_jobs to take instead of reading
        them back; off (the default) keeps none."""
    def close(self) -> None:
        """Finish every submitted message (write, sync, complete), stop the writer, release the lock.
        Idempotent; completions() still returns what finished during close."""
    # The streaming queue tools: the live messages in log order (segments by number, records
    # by position: about arrival order), a page at a time. `cursor` 0 starts; each call returns
    # the cursor to continue from, None at the end. A page costs its own size, not the queue's;
    # the index work and the formatting run with the GIL released. `limit`: 1..100000 messages
    # (ValueError otherwise). A message copied forward by compaction during a walk may show up
    # twice; one arriving during it shows up at the end.
    def page(self, cursor: int, limit: int, form: str) -> tuple[bytes, int, int | None]:
        """(data, messages in it, next cursor). form "json": each message's object exactly as
        json.dumps(mta.app.admin.entry(env)) writes it, joined by ", " (the inside of a JSON
        array); form "text": the lines `mta queue list` prints per message, each ending "\n".
        Another form: ValueError."""
    def shape(self, cursor: int, limit: int, now: float, buckets: list[int]) -> tuple[
            dict[str, list[int]], dict[str, int], int | None]:
        """({domain: [messages, per age column...]}, {domain: recipients}, next cursor) of a page,
        as mta.app.admin.shape counts: recipients not delivered nor bounced, a message once per
        domain; its age (`now` minus arrival) in the first column whose bound (`buckets`, minutes,
        increasing) it is below, else the last (len(buckets) + 2 columns, the total first)."""
    def ids(self, cursor: int, limit: int) -> tuple[list[str], int | None]:
        """(the queue ids of a page, next cursor)."""

class SpoolReader:
    """Read-only view of every shard under root; safe while the server runs
    (takes no lock, ignores a torn tail). Every call rescans the segments (the
    log is the truth); it may show a record written but not yet synced.
    STATE and DELETE records are applied: recipients show their current state,
    deleted messages are absent."""

    def __init__(self, root: str) -> None: ...
    def list(self) -> list[Envelope]: ...
    def get(self, queue_id: str) -> Envelope | None: ...
    def message_bytes(self, queue_id: str) -> bytes | None: ...
    def shards(self) -> list[int]:
        """The shard numbers under root (directories with segments), in order."""
    # Spool.page, shape and ids of one shard. The shard is scanned once per reader, at its
    # first page; later pages walk that scan (a consistent view, not a live one).
    def page(self, shard: int, cursor: int, limit: int, form: str) -> tuple[bytes, int, int | None]: ...
    def shape(self, shard: int, cursor: int, limit: int, now: float, buckets: list[int]) -> tuple[
            dict[str, list[int]], dict[str, int], int | None]: ...
    def ids(self, shard: int, cursor: int, limit: int) -> tuple[list[str], int | None]: ...

STATES: Final[tuple[str, ...]]
INLINE_MAX: Final[int]
"""Messages bigger than this are read a block at a time by delivery (StoredMessage),
and go in the agent's job frame as their location (rust/src/agent/frames.rs)."""

class StoredMessage:
    """Where one stored message is (segment, record, data offset, size): what a delivery
    attempt of a big message carries instead of its bytes. Its frame form (`frame()`) is
    a plain tuple; `StoredMessage(*frame)` makes it again (in the delivery agent)."""
    def __init__(self, kind: str, shard_dir: str, shard: int, seq: int, queue_id: str, offset: int,
                 len: int, data_offset: int, size: int) -> None: ...
    def frame(self) -> tuple[str, str, int, int, str, int, int, int, int]: ...
    def __len__(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def queue_id(self) -> str: ...
    def open(self, wire: bool | None = None) -> MessageReader:
        """A reader (the segment held open from now on, so compaction cannot take the
        bytes away; a message moved already is found again by a scan of its shard).
        wire None: the stored bytes; True: as DATA sends them (dot-stuffed, ".CRLF" at
        the end); False: as BDAT does. SpoolError when it is gone."""
    def wire_length(self, dot_stuff: bool) -> int:
        """The length of the wire form, by reading the message once."""

def encode_job(job: int, head: bytes, queue_id: str, sender: str,
               recipients: Sequence[tuple[str, tuple[str, ...] | None, str | None, int]],
               data: bytes | StoredMessage, body: str | None, smtputf8: bool, ret: str | None,
               envid: str | None, arrival: float, log: tuple[float, tuple[int, ...]] | None) -> bytes:
    """One job item of the delivery agent's frame (marshal, version 2), made by the frame's
    one definition (rust/src/agent/frames.rs), as Spool.encode_jobs makes it from a spool
    entry; `head` is the marshal form of (key, targets, options)."""

class MessageReader:
    """A stored message a block at a time; the record's CRC is checked as it goes, and a
    mismatch raises SpoolError instead of the last block."""
    def read(self, max: int = 262144) -> bytes:
        """The next block (at most `max` stored bytes; the wire form may be a little
        longer); b"" at the end, and only there."""
    @property
    def remaining(self) -> int: ...


# --- DKIM and ARC (rust/src/dkim; RFC 6376, RFC 8463, RFC 8617) ---------------------------

class DkimKey:
    """A DKIM private key. RSA (1024 to 4096 bits) as PKCS#1 ("RSA PRIVATE KEY") or PKCS#8
    ("PRIVATE KEY"), Ed25519 as PKCS#8."""

    def __init__(self, pem: bytes) -> None:
        """ValueError with the reason: not PEM, encrypted, another algorithm (EC ...), RSA
        smaller than 1024 or larger than 4096 bits."""
    @property
    def algorithm(self) -> str:
        """"rsa-sha256" or "ed25519-sha256"."""
    @property
    def bits(self) -> int:
        """The RSA modulus' bits; 256 for Ed25519."""
    def public_record(self) -> str:
        """The TXT record to publish: "v=DKIM1; k=rsa; p=<SPKI base64>" or
        "v=DKIM1; k=ed25519; p=<the raw 32 octets, base64>"."""

class DkimSigner:
    """One signing identity: domain, selector, key and what to sign."""

    def __init__(self, domain: str, selector: str, key: DkimKey, headers: list[str] | None = None,
                 canonicalization: str = "relaxed/relaxed", expire: int | None = None,
                 identity: str | None = None,
                 sign_digest: Callable[[bytes], bytes] | None = None) -> None:
        """`headers` None: From, Reply-To, Subject, Date, To, Cc, Resent-Date, Resent-From,
        Resent-Sender, Resent-To, Resent-Cc, Resent-Message-ID, In-Reply-To, References,
        Message-ID, MIME-Version, Content-Type, Content-Transfer-Encoding, Content-ID,
        Content-Description, List-Id, List-Help, List-Unsubscribe, List-Unsubscribe-Post,
        List-Subscribe, List-Post, List-Owner, List-Archive, Sender, Feedback-ID, Autocrypt,
        OpenPGP. Each name present is signed as often as it occurs, From once more
        (over-signed); absent names are not listed. `canonicalization`: "relaxed/relaxed",
        "simple/simple", "relaxed/simple", "simple/relaxed", "relaxed" (= relaxed/simple),
        "simple". `expire`: seconds, x= = t= + expire. `identity`: i=, within `domain`.
        `sign_digest`: the private-key operation of the same key over the 32-octet SHA-256
        digest of the signed data, returning the signature (mta.policy.dkim hands OpenSSL's
        RSA through `cryptography`); None: the key's own (RustCrypto). Called with the GIL.
        ValueError naming what is wrong."""
    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...

def dkim_sign(header_block: bytes, body: Message | bytes, signers: list[DkimSigner], now: int) -> list[bytes]:
    """One "DKIM-Signature: ...\r\n" field per signer (folded at 78 columns with CRLF TAB,
    never l=), to prepend to the message. `header_block`: whole fields each ending in CRLF
    (a final empty line may follow). `body`: a Message (the body after its own header block,
    read in blocks from memory or its spill file) or the body's bytes. Signers with the same
    body canonicalization share one body hash. GIL released. SpoolError: the Message's
    body cannot be read."""

class DkimSignature:
    """One DKIM-Signature field as parsed (dkim_signatures)."""
    @property
    def error(self) -> str | None:
        """Why it cannot be checked (permerror): malformed tag list, duplicate tag, missing
        v/a/b/bh/d/h/s, v != 1, unknown a= or c=, i= not within d=, h= without from, x=
        before t=, bad base64, a number tag that is not one, "too many signatures"."""
    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def identity(self) -> str:
        """i=, default "@" + d."""
    @property
    def headers(self) -> list[str]:
        """h=, names as written, in order."""
    @property
    def canonicalization(self) -> str:
        """"header/body", e.g. "relaxed/simple" (c= absent: "simple/simple")."""
    @property
    def length(self) -> int | None: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def expiration(self) -> int | None: ...
    @property
    def b_prefix(self) -> str:
        """The first 8 characters of b= (white space removed), for header.b."""
    @property
    def key_name(self) -> str:
        """"<selector>._domainkey.<domain>" ("" when d= or s= is missing)."""

def dkim_signatures(header_block: bytes) -> list[DkimSignature]:
    """Every DKIM-Signature field, topmost first; never raises. Past 32 each carries the
    error "too many signatures"."""

class DkimPublicKey:
    """A DKIM key record (RFC 6376 3.6.1)."""

    def __init__(self, record: str, verify_digest: Callable[[bytes, bytes], bool] | None = None) -> None:
        """`record`: the TXT strings joined. ValueError with the reason: v= not first or not
        DKIM1, unknown k=, empty p= ("key revoked"), bad base64, not a key of k=, an RSA key
        of more than 4096 bits, h= without sha256, s= not covering email or *. RSA keys under
        1024 bits parse (dkim_verify then gives fail). `verify_digest(digest, signature)`:
        the same key's check of a signature over the 32-octet SHA-256 digest, True when it
        holds (mta.policy.verify hands OpenSSL's RSA check through `cryptography`); None or a
        hook that raises: the key's own (RustCrypto). Called with the GIL."""
    @property
    def algorithm(self) -> str:
        """"rsa" or "ed25519"."""
    @property
    def bits(self) -> int: ...
    @property
    def rsa_spki(self) -> bytes | None:
        """An RSA key as SubjectPublicKeyInfo DER (whichever form the record published, SPKI
        or PKCS#1), for another implementation of the check; None for Ed25519."""
    @property
    def testing(self) -> bool:
        """t=y."""
    @property
    def strict(self) -> bool:
        """t=s: the i= domain must equal d=."""

def dkim_verify(header_block: bytes, body: Message | bytes,
                checks: list[tuple[DkimSignature, DkimPublicKey]], now: int) -> list[tuple[str, str]]:
    """Per check (result, reason): "pass" with reason ""; "fail" ("body hash did not
    verify", "signature did not verify", "signature expired", "l= longer than the body",
    "RSA key of 512 bits (less than 1024)"); "permerror" (the signature's error, "key is
    ed25519, signature is rsa-sha256", "i= not in d= for a t=s key", "signature field not
    in the header block"). The signature's own field is found in `header_block` by its
    bytes. Each distinct (body canonicalization, l=) hash is computed once. GIL released."""

def dkim_body_hash(chunks: list[bytes], canonicalization: str, length: int | None = None) -> bytes:
    """The raw SHA-256 body hash of the concatenated chunks; `canonicalization` "simple" or
    "relaxed"; `length`: l=, the canonical octets hashed."""

class ArcChain:
    """An ARC chain's structure (RFC 8617 5.2 steps 1-4), from arc_chain."""
    @property
    def status(self) -> str:
        """"none" (no ARC fields), "fail" (see reason) or "check" (keys needed)."""
    @property
    def reason(self) -> str: ...
    @property
    def instances(self) -> int:
        """N, the highest i= (0 unless "check")."""
    @property
    def key_names(self) -> list[str]:
        """The "<s>._domainkey.<d>" names of every ARC-Seal and the latest
        ARC-Message-Signature, each once, in instance order."""

def arc_chain(header_block: bytes) -> ArcChain:
    """The structure: ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results with
    i=1..N, exactly one of each per instance, N <= 50, cv=none at i=1 and pass above."""

def arc_verify(header_block: bytes, body: Message | bytes, chain: ArcChain,
               keys: dict[str, DkimPublicKey], now: int) -> tuple[str, str]:
    """("pass", "") or ("fail", reason): the latest ARC-Message-Signature verified as a DKIM
    signature, then every ARC-Seal from N down to 1 over the sets 1..i (relaxed). A key
    missing from `keys`: ("fail", "no key for <name>"). A chain not "check": ("fail", its
    reason, or "no ARC fields"). GIL released."""

# ---------------------------------------------------------------------------
# The machine-wide throttle table (rust/src/throttle, bindings/throttle.rs)
# ---------------------------------------------------------------------------

class ShmThrottle:
    """A file-backed shared-memory table every process of one server maps: GCRA rates,
    connection counts per worker slot, flag times; atomics only. Keys are texts; flags
    list the first 96 bytes of theirs. Bad arguments raise ValueError; an unusable or
    full table raises ThrottleError (never a wrong answer)."""

    def __init__(self, path: str, slot: int, entries: int = 65536, fresh: bool = False) -> None:
        """Map the table at `path` (created sparse, zeroed, mode 0600 if absent); `fresh`:
        replace any file there with an empty table (the main process at server start).
        `slot` (0..63, the worker index) owns the connections this handle acquires. A file
        of another version or entry count: ThrottleError."""
    @property
    def slot(self) -> int: ...
    @property
    def entries(self) -> int: ...
    def take(self, key: str, interval: float, burst: int, n: int = 1, now: float | None = None) -> float:
        """GCRA: 0.0 if `n` tokens (one per `interval` seconds, at most `burst` ahead) were
        taken; else the seconds until they could be (nothing taken). `now`: a time.monotonic()
        value for tests (default: CLOCK_MONOTONIC now). interval 0 or n 0: 0.0, nothing
        taken. ValueError if burst < 1 or n > burst (it could never be granted)."""
    def acquire(self, key: str, limit: int) -> bool:
        """One connection slot of `key`, counted for this handle's slot, if fewer than
        `limit` are held machine-wide."""
    def release(self, key: str) -> None:
        """Give back one connection of `key` this slot holds; nothing if it holds none."""
    def clear_slot(self) -> int:
        """Give back every connection this slot holds (a dead predecessor's); how many."""
    def set_until(self, key: str, until: float) -> None:
        """Flag `key` until wall time `until` (time.time() seconds); 0 clears it."""
    def until(self, key: str) -> float:
        """The flag's wall time, 0.0 if unset or past."""
    def flags(self) -> dict[str, float]:
        """Every flag not past: key text -> wall time."""
    def held(self, key: str) -> int:
        """Connections of `key` held machine-wide."""

# ---------------------------------------------------------------------------
# TLS on rustls (rust/src/tls, bindings/tls.rs), sans I/O; mta.smtp.tlstransport drives it
# ---------------------------------------------------------------------------

class TlsError(OSError):
    """A TLS connection failed (fatal alert, garbage, refused certificate). `kind` is the
    TLS-RPT result type: "certificate-expired", "certificate-not-trusted",
    "certificate-host-mismatch" or "validation-failure" (anything else)."""

    kind: str

class TlsConnection:
    """One TLS connection (server or client side), made by `TlsServerConfig.accept` or
    `TlsClientConfig.connect`. Every call returns all it produced: nothing is left to fetch."""

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """The peer's ciphertext in; (plaintext received, ciphertext to send) out. A client
        calls feed(b"") first for its ClientHello. TlsError when the connection fails; then
        `close()` returns the alert to send."""
    def send(self, data: bytes) -> bytes:
        """Plaintext to ciphertext. Before the handshake is done it is held and comes out
        with the handshake's last flight."""
    def close(self) -> bytes:
        """close_notify to send (after a failure: the alert)."""
    @property
    def handshaking(self) -> bool: ...
    @property
    def version(self) -> str | None:
        """"TLSv1.3" or "TLSv1.2"; None while handshaking."""
    @property
    def cipher(self) -> str | None:
        """OpenSSL's name of the suite, as ssl.SSLObject.cipher()[0] ("TLS_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-AES256-GCM-SHA384"); None while handshaking."""
    @property
    def bits(self) -> int | None:
        """Secret bits of the cipher (256, 128); None while handshaking."""
    @property
    def resumed(self) -> bool:
        """The handshake resumed a session (ticket or TLS 1.2 session id)."""
    @property
    def peer_closed(self) -> bool:
        """The peer sent close_notify."""

class TlsServerConfig:
    """Server side: built once, shared by every connection (that is what resumption needs).
    Key exchange X25519, P-256, P-384; the server's cipher order (AES-256-GCM first)."""

    def __init__(
        self,
        cert_pem: bytes,
        key_pem: bytes,
        min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2",
        ticket_secret: bytes | None = None,
        rotation: float = 3600.0,
        resumption: bool = True,
    ) -> None:
        """`cert_pem`: the chain, leaf first; `key_pem`: its key (PKCS#8, SEC1 or PKCS#1; EC
        P-256/P-384, RSA, Ed25519). Tickets are sealed with keys derived from the 32-byte
        `ticket_secret` and the epoch floor(time / rotation); those of the current and the
        previous epoch open, so configs with the same secret (the workers) share sessions.
        None: a random secret (tickets open in this config only). `resumption` False: no
        tickets and no session cache, every handshake full. ValueError naming the
        problem (bad PEM, key not the certificate's, secret not 32 bytes, rotation < 1 s)."""
    def accept(self) -> TlsConnection:
        """A server connection for one accepted client."""

class TlsClientConfig:
    """Client side: keeps the last sessions of up to 1024 server names for resumption."""

    def __init__(self, verify: bool, ca_pem: bytes | None = None) -> None:
        """`verify` False: any certificate (opportunistic TLS; the handshake signature is still
        checked). True: the chain must lead to a CA in `ca_pem`, or in the system bundle
        /etc/ssl/certs/ca-certificates.crt when None (ValueError if it cannot be read), and
        name the server. ValueError when `ca_pem` holds no usable certificate."""
    def connect(self, server_name: str) -> TlsConnection:
        """A connection to `server_name`: a DNS name (SNI) or an IP address (no SNI). A
        resumed session skips the certificate checks, as in OpenSSL. ValueError: bad name."""
