"""The `mta` command: run | queue list | queue show | check-config | tls selfsigned |
user add|del|list.

Scripts drive these exactly as written, so options and output formats are a
contract: `queue list --json` prints one JSON array, an unknown queue id
exits 1, a bad config exits 2 naming every bad key.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys

import click

from mta import __version__, config
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
def run(config_file, listen, spool, hostname, mynetworks, relay_to, no_delivery, workers) -> None:
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
    try:
        cfg = config.load(config_file, overrides)
    except ConfigError as e:
        click.echo(f"mta: configuration error:\n{e}", err=True)
        sys.exit(2)
    _setup_logging(cfg.log.level)
    from mta import workers

    try:
        status = workers.run(cfg)
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
    """Validate a configuration file; name every bad key and value."""
    errors = config.check(file)
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

    from mta import tls as _tls

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
    """Inspect the spool (read-only; safe while the server runs)."""


class _NoSpool:
    """A spool directory that does not exist yet holds no mail."""

    def list(self) -> list:
        return []

    def get(self, _queue_id):
        return None

    def message_bytes(self, _queue_id):
        return None


def _reader(spool_dir: str | None):
    import os

    from mta import _native

    root = spool_dir or config.DEFAULT_SPOOL_DIR
    if not os.path.isdir(root):
        return _NoSpool()
    try:
        return _native.SpoolReader(root)
    except _native.SpoolError as e:
        click.echo(f"mta: cannot read the spool: {e}", err=True)
        sys.exit(1)


def _rfc3339(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _entry(env) -> dict:
    return {
        "id": env.queue_id,
        "arrival": _rfc3339(env.arrival),
        "size": env.size,
        "sender": env.sender,
        "recipients": [{"address": r.address, "state": r.state} for r in env.recipients],
    }


@queue.command("list")
@click.option("--spool", metavar="DIR", help=f"Spool directory (default {config.DEFAULT_SPOOL_DIR}).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array of {id, arrival, size, sender, recipients}.")
def queue_list(spool, as_json) -> None:
    """List the queued messages."""
    entries = [_entry(e) for e in _reader(spool).list()]
    if as_json:
        click.echo(json.dumps(entries))
        return
    if not entries:
        click.echo("Mail queue is empty")
        return
    for e in entries:
        click.echo(f"{e['id']:<24} {e['size']:>10} {e['arrival']}  <{e['sender']}>")
        for r in e["recipients"]:
            click.echo(f"{'':<24} {r['state']:>10} <{r['address']}>")
    click.echo(f"-- {len(entries)} message(s)")


@queue.command("show")
@click.argument("queue_id")
@click.option("--spool", metavar="DIR", help=f"Spool directory (default {config.DEFAULT_SPOOL_DIR}).")
def queue_show(queue_id, spool) -> None:
    """Print a message's envelope, a blank line, then its stored bytes exactly."""
    reader = _reader(spool)
    env = reader.get(queue_id)
    data = reader.message_bytes(queue_id) if env is not None else None
    if env is None or data is None:
        click.echo(f"mta: no message with queue id {queue_id!r}", err=True)
        sys.exit(1)
    lines = [
        f"queue-id: {env.queue_id}",
        f"arrival: {_rfc3339(env.arrival)}",
        f"size: {env.size}",
        f"sender: <{env.sender}>",
    ]
    for attr in ("body", "ret", "envid"):
        if getattr(env, attr):
            lines.append(f"{attr}: {getattr(env, attr)}")
    if env.smtputf8:
        lines.append("smtputf8: yes")
    lines.append(f"client: {env.helo} [{env.client_ip}]")
    for r in env.recipients:
        extra = ""
        if r.notify:
            extra += f" notify={','.join(r.notify)}"
        if r.orcpt:
            extra += f" orcpt={r.orcpt}"
        lines.append(f"recipient: <{r.address}> {r.state}{extra}")
    out = sys.stdout.buffer
    out.write(("\n".join(lines) + "\n\n").encode())
    out.write(data)
    out.flush()


DEFAULT_USERS_FILE = "./mta-users"


def _users_file(users_file: str | None, config_file: str | None) -> str:
    """--users-file, else [auth] users_file of --config, else ./mta-users."""
    if users_file:
        return users_file
    if config_file:
        try:
            cfg = config.load(config_file)
        except ConfigError as e:
            click.echo(f"mta: configuration error:\n{e}", err=True)
            sys.exit(2)
        if cfg.auth.users_file:
            return cfg.auth.users_file
    return DEFAULT_USERS_FILE


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
    from mta import auth

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
        new = auth.set_user(path, name, auth.hash_password(password))
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
    from mta import auth

    path = _users_file(users_file, config_file)
    try:
        removed = auth.delete_user(path, name)
    except OSError as e:
        click.echo(f"mta: {path}: {e.strerror or e}", err=True)
        sys.exit(1)
    if not removed:
        click.echo(f"mta: {path}: no user {name!r}", err=True)
        sys.exit(1)
    click.echo(f"{path}: removed {name}")


@user.command("list")
@_users_file_opt
@_config_opt
def user_list(users_file, config_file) -> None:
    """Print the user names, one per line (no hashes)."""
    from mta import auth

    path = _users_file(users_file, config_file)
    try:
        names = auth.UserDB(path).users()
    except OSError as e:
        click.echo(f"mta: {path}: {e.strerror or e}", err=True)
        sys.exit(1)
    for n in names:
        click.echo(n)


if __name__ == "__main__":
    main()
from mta.bench.cli import bench as _bench  # noqa: E402
main.add_command(_bench)
