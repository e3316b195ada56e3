"""The `mta` command (run, queue, check-config, tls, dkim, user, http, plugins, bench). Options and output
formats are a contract scripts rely on: `queue list --json` prints one JSON array, an
unknown queue id exits 1, a bad config exits 2 naming every bad key."""

from __future__ import annotations

import itertools
import sys

import click

from mta import __version__
from mta.app import admin, dkim_cli, http_cli, plugins_cli, shaping_cli
from mta.app.filecli import delete_named, file_of
from mta.bench import cli as bench_cli
from mta.config import schema as config
from mta.config.reload import ConfigSource
from mta.errors import ConfigError, MtaError


def _setup_logging(level: str) -> None:
    from mta import log

    log.setup(level)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mta")
def main() -> None:
    """mta: a mail transfer agent (Python orchestration, Rust core)."""


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML configuration file (default: the embedded defaults).")
@click.option("--listen", multiple=True, metavar="HOST:PORT", help="Listen address; repeatable; IPv6 as [::1]:2525. Replaces `listen` from the file.")
@click.option("--spool", metavar="DIR", help=f"Spool directory (default {config.DEFAULT_SPOOL_DIR}).")
@click.option("--hostname", metavar="NAME", help="Our host name in the greeting and Received headers (default: this machine's name).")
@click.option("--mynetworks", metavar="CIDR[,CIDR...]", help="Clients allowed to relay anywhere; replaces the default 127.0.0.0/8 and ::1.")
@click.option("--relay-to", metavar="HOST:PORT", help="Send all mail that is not local to this smarthost (delivery.relay_to).")
@click.option("--no-delivery", is_flag=True, default=None, help="Accept and spool mail but deliver nothing (delivery.enabled = false).")
@click.option("--workers", type=int, metavar="N", help="Worker processes sharing the port, one spool shard each (default 1).")
@click.option("--http", "http_listen", multiple=True, metavar="HOST:PORT",
              help="Serve /metrics and /health here; repeatable. Adds to http.listen from the file.")
def run(config_file, listen, spool, hostname, mynetworks, relay_to, no_delivery, workers, http_listen) -> None:
    """Accept mail over SMTP and make it durable in the spool.

    With no options: listens on 127.0.0.1:2525, spools in ./mta-spool, relays
    only for 127.0.0.0/8 and ::1. SIGTERM stops it cleanly (exit 0).
    """
    overrides: dict = {}
    if listen:
        overrides["listen"] = list(listen)
    if spool:
        overrides["spool.dir"] = spool
    if hostname:
        overrides["hostname"] = hostname
    if relay_to is not None:
        overrides["delivery.relay_to"] = relay_to
    if no_delivery:
        overrides["delivery.enabled"] = False
    if workers is not None:
        overrides["workers"] = workers
    if mynetworks is not None:
        overrides["mynetworks"] = [n.strip() for n in mynetworks.split(",") if n.strip()]
    # Kept for reloads (SIGHUP, `mta reload`): the flags go on replacing the file's keys, and
    # --http addresses go on being added to the file's (an address named twice counts once).
    source = ConfigSource(config_file, overrides, tuple(http_listen))
    try:
        cfg = source.load()
    except ConfigError as e:
        click.echo(f"mta: configuration error:\n{e}", err=True)
        sys.exit(2)
    _setup_logging(cfg.log.level)
    from mta.app import workers

    try:
        status = workers.run(cfg, source)
    except ConfigError as e:  # a plugin that cannot load or start
        click.echo(f"mta: configuration error:\n{e}", err=True)
        sys.exit(2)
    except MtaError as e:
        click.echo(f"mta: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"mta: cannot start: {e}", err=True)
        sys.exit(1)
    sys.exit(status)


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
def check_config(file) -> None:
    """Validate a configuration file; name every bad key and value. Configured plugins are
    loaded and their setup/start and stop run once, and the DKIM signing keys read, so their
    errors show here too."""
    errors = config.check(file)
    if not errors:
        cfg = config.load(file)
        errors = plugins_cli.problems(cfg) + dkim_cli.problems(cfg)
    if errors:
        for e in errors:
            click.echo(e, err=True)
        sys.exit(2)
    click.echo(f"{file}: ok")


@main.group()
def tls() -> None:
    """TLS certificates for the listeners."""


@tls.command("selfsigned")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Directory to write key.pem (mode 0600) and cert.pem into; created if missing.")
@click.option("--hostname", metavar="NAME", help="Name in the certificate (default: this machine's name); "
              "localhost, 127.0.0.1 and ::1 are always added.")
@click.option("--days", type=click.IntRange(min=1), default=365, show_default=True, help="Validity in days.")
def tls_selfsigned(out_dir, hostname, days) -> None:
    """Write a self-signed key and certificate for development and tests."""
    import socket

    from mta.smtp import tls as _tls

    name = hostname or socket.gethostname()
    try:
        key_path, cert_path = _tls.selfsigned(out_dir, name, days)
    except OSError as e:
        click.echo(f"mta: cannot write to {out_dir}: {e.strerror or e}", err=True)
        sys.exit(1)
    click.echo(f"wrote {key_path} and {cert_path} (CN={name}, {days} days)")
    click.echo(f'[tls]\ncert = "{cert_path}"\nkey = "{key_path}"')


@main.group()
def queue() -> None:
    """Inspect the spool, and hold, release, delete, flush or bounce mail.

    list, show and summary are read-only and safe while the server runs; list
    and summary go a page at a time, asking each shard's running server (its
    control socket) or reading the files of a shard no server owns. hold,
    release, delete, flush, suspend, resume and bounce ask the running server,
    through the control socket of each spool shard: they fail when no server runs.
    """


def _fail(e: admin.AdminError) -> None:
    """Print what made an operation impossible (each problem met, if any) and exit 1."""
    for line in getattr(e, "problems", None) or [e.text]:
        click.echo(f"mta: {line}", err=True)
    sys.exit(1)


@queue.command("list")
@click.option("--spool", metavar="DIR", help=f"Spool directory (default {config.DEFAULT_SPOOL_DIR}).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON array of {id, arrival, size, sender, held, recipients}.")
def queue_list(spool, as_json) -> None:
    """List the queued messages; held ones say (held).

    Written as it is read, a page at a time (MTA_QUEUE_PAGE messages, default 5000): a
    running server is asked for its shard's pages, the files of a shard no server owns
    are read. Each shard's messages come in about arrival order; several shards are merged
    page by page.
    """
    out = click.get_binary_stream("stdout")
    pages = admin.list_pages(spool or config.DEFAULT_SPOOL_DIR, "json" if as_json else "text")
    total = 0
    try:
        first = next(pages, None)  # an unreadable spool says so before anything is written
        if as_json:
            out.write(b"[")
        for data, n in itertools.chain([first] if first else [], pages):
            if as_json and total:
                out.write(b", ")
            out.write(data)
            total += n
    except admin.AdminError as e:
        out.flush()
        _fail(e)
    if as_json:
        out.write(b"]\n")
    elif total:
        out.write(f"-- {total} message(s)\n".encode())
    else:
        out.write(b"Mail queue is empty\n")
    out.flush()


@queue.command("show")
@click.argument("queue_id")
@click.option("--spool", metavar="DIR", help=f"Spool directory (default {config.DEFAULT_SPOOL_DIR}).")
def queue_show(queue_id, spool) -> None:
    """Print a message's envelope, a blank line, then its stored bytes exactly."""
    try:
        env, data = admin.show(spool or config.DEFAULT_SPOOL_DIR, queue_id)
    except admin.AdminError as e:
        _fail(e)
    lines = [
        f"queue-id: {env['id']}",
        f"arrival: {env['arrival']}",
        f"size: {env['size']}",
        f"sender: <{env['sender']}>",
    ]
    for attr in ("body", "ret", "envid"):
        if env[attr]:
            lines.append(f"{attr}: {env[attr]}")
    if env["smtputf8"]:
        lines.append("smtputf8: yes")
    if env["held"]:
        lines.append("held: yes")
    if env["delay_warned"]:
        lines.append("delay notice sent: yes")
    lines.append(f"client: {env['helo']} [{env['client_ip']}]")
    for r in env["recipients"]:
        extra = ""
        if r["notify"]:
            extra += f" notify={','.join(r['notify'])}"
        if r["orcpt"]:
            extra += f" orcpt={r['orcpt']}"
        lines.append(f"recipient: <{r['address']}> {r['state']}{extra}")
    out = sys.stdout.buffer
    out.write(("\n".join(lines) + "\n\n").encode())
    out.write(data)
    out.flush()


# --- hold | release | delete | flush: requests to the running server(s) -----

def _control(op: str, spool: str | None, ids: tuple[str, ...], every: bool) -> None:
    try:
        done = admin.change(spool or config.DEFAULT_SPOOL_DIR, op, ids, every)
    except admin.AdminError as e:
        _fail(e)
    for p in done["problems"]:
        click.echo(f"mta: {p}", err=True)
    if every:
        for status, n in done["counts"].items():
            ok, _ = admin.verdict(op, status, every=True)
            click.echo(f"{n} message(s): {status}", err=not ok)
        if not done["counts"]:
            click.echo("no messages")
        for u in done["untouched"]:
            click.echo(f"mta: shard {u['shard']} holds {u['messages']} message(s) but no server owns it: not touched",
                       err=True)
    else:
        for r in done["results"]:
            if r["status"] in ("unknown", "no server"):
                click.echo(f"mta: {r['text']}", err=True)
            else:
                click.echo(r["text"], err=not r["ok"])
    sys.exit(0 if done["ok"] else 1)


def _ids_or_all(ids: tuple[str, ...], allow_none: bool = False) -> tuple[tuple[str, ...], bool]:
    if "ALL" in ids:
        if len(ids) > 1:
            raise click.UsageError("ALL stands alone: give ALL or queue ids, not both")
        return (), True
    if not ids:
        if allow_none:
            return (), True
        raise click.UsageError("give one or more queue ids, or ALL")
    return ids, False


_spool_opt = click.option("--spool", metavar="DIR", help=f"Spool directory (default {config.DEFAULT_SPOOL_DIR}).")


@queue.command("hold")
@click.argument("queue_ids", nargs=-1, metavar="QUEUE_ID... | ALL")
@_spool_opt
def queue_hold(queue_ids, spool) -> None:
    """Put messages on hold: they stay queued and are not delivered until released.

    Like postsuper -h. A message being delivered right now finishes that
    attempt; it is not retried while held. ALL holds every queued message.
    Exit 1 when no server runs or a queue id is unknown.
    """
    ids, every = _ids_or_all(queue_ids)
    _control("hold", spool, ids, every)


@queue.command("release")
@click.argument("queue_ids", nargs=-1, metavar="QUEUE_ID... | ALL")
@_spool_opt
def queue_release(queue_ids, spool) -> None:
    """Release held messages and make them due now.

    Like postsuper -H, plus a flush of the released messages: their deferred
    recipients are retried at once. ALL releases every held message. Exit 1
    when no server runs or a queue id is unknown.
    """
    ids, every = _ids_or_all(queue_ids)
    _control("release", spool, ids, every)


@queue.command("delete")
@click.argument("queue_ids", nargs=-1, metavar="QUEUE_ID... | ALL")
@_spool_opt
def queue_delete(queue_ids, spool) -> None:
    """Delete messages from the queue, without a bounce; the server logs each one.

    Like postsuper -d. A message being delivered right now is held first; the
    delete waits up to 10 s for that attempt to end, else says so (exit 1: run
    it again). ALL deletes every queued message. Exit 1 when no server runs or
    a queue id is unknown.
    """
    ids, every = _ids_or_all(queue_ids)
    _control("delete", spool, ids, every)


@queue.command("flush")
@click.argument("queue_ids", nargs=-1, metavar="[QUEUE_ID...]")
@_spool_opt
def queue_flush(queue_ids, spool) -> None:
    """Retry deferred mail now: all of it, or the messages named.

    Like postqueue -f (no ids) and postqueue -i ID. Held messages are left
    alone (a named one is an error). Exit 1 when no server runs or a queue id
    is unknown.
    """
    ids, every = _ids_or_all(queue_ids, allow_none=True)
    _control("flush", spool, ids, every)


DEFAULT_USERS_FILE = "./mta-users"


def _users_file(users_file: str | None, config_file: str | None) -> str:
    """--users-file, else [auth] users_file of --config, else ./mta-users."""
    return file_of(users_file, config_file, lambda cfg: cfg.auth.users_file, DEFAULT_USERS_FILE)


_users_file_opt = click.option("--users-file", metavar="FILE",
                               help=f"The user file (default: [auth] users_file of --config, else {DEFAULT_USERS_FILE}).")
_config_opt = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                           help="Configuration file naming the user file ([auth] users_file).")


@main.group()
def user() -> None:
    """Manage the SMTP AUTH user file (scrypt hashes, mode 0600)."""


@user.command("add")
@click.argument("name")
@_users_file_opt
@_config_opt
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin instead of prompting.")
def user_add(name, users_file, config_file, password_stdin) -> None:
    """Add a user, or set a new password for an existing one."""
    from mta.auth import users as auth
    from mta.auth.passwords import hash_password

    if not auth.valid_user_name(name):
        click.echo(f"mta: invalid user name {name!r}: 1-255 characters, no whitespace, ':' or control characters",
                   err=True)
        sys.exit(2)
    path = _users_file(users_file, config_file)
    if password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        click.echo("mta: empty password refused", err=True)
        sys.exit(2)
    try:
        new = auth.set_user(path, name, hash_password(password))
    except OSError as e:
        click.echo(f"mta: {path}: {e.strerror or e}", err=True)
        sys.exit(1)
    click.echo(f"{path}: {'added' if new else 'changed the password of'} {name}")


@user.command("del")
@click.argument("name")
@_users_file_opt
@_config_opt
def user_del(name, users_file, config_file) -> None:
    """Remove a user (exit 1 if there is no such user)."""
    from mta.auth import users as auth

    delete_named(_users_file(users_file, config_file), name, auth.delete_user, "user")


@user.command("list")
@_users_file_opt
@_config_opt
def user_list(users_file, config_file) -> None:
    """Print the user names, one per line (no hashes)."""
    from mta.auth import users as auth

    path = _users_file(users_file, config_file)
    try:
        names = auth.UserDB(path).users()
    except OSError as e:
        click.echo(f"mta: {path}: {e.strerror or e}", err=True)
        sys.exit(1)
    for n in names:
        click.echo(n)


@main.command("reload")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="The configuration file the server runs with: its spool.dir says where the server is.")
@_spool_opt
def reload_cmd(config_file, spool) -> None:
    """Make the running server re-read its configuration file, as SIGHUP does.

    Every spool shard's worker reads the file (with the flags `mta run` was given) and applies
    it, or refuses it when it has errors (the running configuration stays). Keys that need a
    restart (listen, spool, workers, http, privileges, ...) are reported as ignored. Prints
    per shard "ok" and what changed, or the errors. Exit 1 if a shard refused it or no server
    answers; 2 if --config cannot be read.
    """
    from mta.app import admin

    root = spool
    if root is None and config_file:
        try:
            root = config.load(config_file).spool.dir
        except ConfigError as e:
            click.echo(f"mta: configuration error:\n{e}", err=True)
            sys.exit(2)
    root = root or config.DEFAULT_SPOOL_DIR
    try:
        result = admin.reload(root)  # the same call as POST /api/admin/reload
    except admin.AdminError as e:
        click.echo(f"mta: {e}", err=True)
        sys.exit(1)
    for problem in result["problems"]:
        click.echo(f"mta: {problem}", err=True)
    for sh in result["shards"]:
        lines = "".join(f"\n  {m}" for m in sh["messages"])
        if sh["applied"]:
            click.echo(f"shard {sh['shard']}: ok{lines}")
        else:
            click.echo(f"shard {sh['shard']}: refused{lines}", err=True)
    sys.exit(0 if result["ok"] else 1)


main.add_command(bench_cli.bench)
main.add_command(plugins_cli.plugins)
main.add_command(dkim_cli.dkim)
main.add_command(http_cli.http)
for _command in shaping_cli.COMMANDS:  # mta queue summary|suspend|resume|bounce
    queue.add_command(_command)

if __name__ == "__main__":
    main()
