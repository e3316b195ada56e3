"""`mta http token add|del|list`: the HTTP API's bearer tokens (mta.auth.tokens). A new token is
printed once, alone on the last line of the output, and stored only as its SHA-256."""

from __future__ import annotations

import sys

import click

from mta.app.filecli import delete_named, file_of

DEFAULT_TOKENS_FILE = "./mta-tokens"


def _tokens_file(tokens_file: str | None, config_file: str | None) -> str:
    """--tokens-file, else [http] tokens_file of --config, else ./mta-tokens."""
    return file_of(tokens_file, config_file, lambda cfg: cfg.http.tokens_file, DEFAULT_TOKENS_FILE)


_file_opt = click.option("--tokens-file", metavar="FILE",
                         help=f"The token file (default: [http] tokens_file of --config, else {DEFAULT_TOKENS_FILE}).")
_config_opt = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                           help="Configuration file naming the token file ([http] tokens_file).")


@click.group("http")
def http() -> None:
    """The HTTP API (docs/http.md)."""


@http.group()
def token() -> None:
    """Manage the HTTP API's bearer tokens (SHA-256 hashes, mode 0600)."""


@token.command("add")
@click.argument("name")
@click.option("--scope", "scope", required=True, metavar="SCOPES",
              help="Comma-separated: inject (POST /api/inject/v1), admin (/api/admin/...).")
@click.option("--senders", metavar="ADDR|@DOMAIN,...", default="",
              help="Envelope senders an inject token may use (default: any).")
@_file_opt
@_config_opt
def token_add(name, scope, senders, tokens_file, config_file) -> None:
    """Create a token (or replace NAME's); the token is printed once, alone on the last line."""
    from mta.auth import tokens

    try:
        scopes = tokens.parse_scopes(scope)
        allowed = tokens.parse_senders(senders)
        if not tokens.valid_token_name(name):
            raise ValueError(f"invalid token name {name!r}: 1-64 letters, digits, '.', '_', '@' or '-'")
    except ValueError as e:
        click.echo(f"mta: {e}", err=True)
        sys.exit(2)
    path = _tokens_file(tokens_file, config_file)
    try:
        secret = tokens.add_token(path, name, scopes, allowed)
    except OSError as e:
        click.echo(f"mta: {path}: {e.strerror or e}", err=True)
        sys.exit(1)
    who = f"senders {','.join(allowed)}" if allowed else "any sender"
    click.echo(f"{path}: token {name} (scopes {','.join(scopes)}; {who}); it is shown only this once:")
    click.echo(secret)


@token.command("del")
@click.argument("name")
@_file_opt
@_config_opt
def token_del(name, tokens_file, config_file) -> None:
    """Revoke NAME's token (exit 1 if there is none); a running server notices at once."""
    from mta.auth import tokens

    delete_named(_tokens_file(tokens_file, config_file), name, tokens.delete_token, "token")


@token.command("list")
@_file_opt
@_config_opt
def token_list(tokens_file, config_file) -> None:
    """Print NAME SCOPES SENDERS, one token per line (never the token)."""
    from mta.auth import tokens

    path = _tokens_file(tokens_file, config_file)
    for t in tokens.TokenDB(path).tokens():
        click.echo(f"{t.name} {','.join(t.scopes)} {','.join(t.senders) or '*'}")
