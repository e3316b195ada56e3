"""Accept mail only for the recipients listed in a SQLite database: an unknown recipient of one
of the listed domains is refused at RCPT with `550 5.1.1`, so nothing is ever bounced to a
forged sender. Recipients of other domains are not this plugin's business and pass on.

Enable it (the directory holding this file must be on the server's PYTHONPATH):

    [[plugin]]
    module = "sqlite_recipients"
    options = { database = "/var/lib/mta/recipients.db", domains = ["example.com", "example.org"] }
    timeout = "2s"

The database holds one table (make it with the `sqlite3` shell, or `create_database()` below):

    CREATE TABLE recipients (address TEXT PRIMARY KEY);   -- in lower case
    INSERT INTO recipients VALUES ('alice@example.com'), ('@example.org');

A row '@example.org' accepts every address of example.org (a catch-all). Changes to the table
apply to the next RCPT, with no reload. The plugin only reads: the file is opened read-only,
so another program may write it (SQLite's WAL mode lets readers and a writer work at once).

Typical use: a relay or backup MX for domains whose mailboxes live elsewhere (`relay_domains`).
The server's own checks run first: relay control refuses recipients the client may not send
to, and for `local_domains` the built-in address book refuses unknown local users; a recipient
they refuse never reaches this hook.

Failures: if the database cannot be read (locked too long, file gone), the hook raises; the
server answers `451 4.3.0` (try again later) and logs the error with its traceback. Mail is
deferred, never wrongly refused.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse

from mta.plugin import OptionsError, Reject, run_blocking

UNKNOWN = Reject(550, "5.1.1", "Recipient address rejected: User unknown")


class Plugin:
    """Constructed once per worker with the [[plugin]] options; start() and stop() open and
    close the database; on_rcpt is the hook."""

    def __init__(self, options: dict):
        # Check the options here: an OptionsError (or any exception) is a configuration error
        # naming this plugin, at `mta check-config` and at start-up. Open nothing yet: the
        # object may also be made by a process that never serves mail.
        database = options.get("database")
        if not isinstance(database, str) or not database:
            raise OptionsError('options.database: the path of the SQLite file is required')
        domains = options.get("domains")
        if not isinstance(domains, list) or not domains or not all(isinstance(d, str) and d for d in domains):
            raise OptionsError('options.domains: a non-empty list of domains, e.g. ["example.com"]')
        self.database = database
        self.domains = frozenset(d.strip().lower() for d in domains)
        self.db: sqlite3.Connection | None = None
        # One connection shared by run_blocking's threads: sqlite3 allows that with
        # check_same_thread=False as long as one thread uses it at a time, hence the lock.
        self.lock = threading.Lock()

    def start(self) -> None:
        """Open the database read-only; a missing file or table fails the start-up."""
        uri = "file:" + urllib.parse.quote(self.database) + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=1.0)
        try:
            db.execute("SELECT address FROM recipients LIMIT 1").fetchall()
        except sqlite3.Error as e:
            db.close()
            raise OptionsError(f"{self.database}: {e} (expected a table recipients(address))") from None
        self.db = db

    def stop(self) -> None:
        with self.lock:
            if self.db is not None:
                self.db.close()
                self.db = None

    async def on_rcpt(self, tx, address: str):
        """Refuse an unknown recipient of our domains; None lets the next plugin decide."""
        _local, at, domain = address.rpartition("@")
        if not at or domain.lower() not in self.domains:
            return None  # not a domain we list (or "Postmaster" without a domain)
        # The query is blocking I/O: it runs in mta's thread pool, never on the event loop.
        if await run_blocking(self.known, address.lower(), "@" + domain.lower()):
            return None
        return UNKNOWN

    def known(self, address: str, catch_all: str) -> bool:
        """The address, or its domain's catch-all row, is in the table (runs in a thread)."""
        with self.lock:
            if self.db is None:
                raise RuntimeError("the recipients database is closed")
            row = self.db.execute("SELECT 1 FROM recipients WHERE address IN (?, ?) LIMIT 1",
                                  (address, catch_all)).fetchone()
        return row is not None


def create_database(path: str, addresses=()) -> None:
    """Make (or add to) a recipients database: `python -c 'import sqlite_recipients as s;
    s.create_database("/var/lib/mta/recipients.db", ["alice@example.com"])'`."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS recipients (address TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO recipients VALUES (?)", [(a.lower(),) for a in addresses])
    db.close()
