"""What the commands that edit a private file of names (`mta user`, `mta http token`) share:
which file (a flag, else the config's key, else a default) and the delete step. Invariant: a
configuration error exits 2, a file error 1, with the path in the message."""

from __future__ import annotations

import sys
from typing import Callable

import click

from mta import config
from mta.errors import ConfigError


def file_of(explicit: str | None, config_file: str | None, key: Callable, default: str) -> str:
    """`explicit` (the --...-file flag), else key(config) of --config when it sets one, else `default`."""
    if explicit:
        return explicit
    if config_file:
        try:
            chosen = key(config.load(config_file))
        except ConfigError as e:
            click.echo(f"mta: configuration error:\n{e}", err=True)
            sys.exit(2)
        if chosen:
            return chosen
    return default


def delete_named(path: str, name: str, delete: Callable[[str, str], bool], what: str) -> None:
    """delete(path, name); exit 1 when the file cannot be written or has no such `what`."""
    try:
        removed = delete(path, name)
    except OSError as e:
        click.echo(f"mta: {path}: {e.strerror or e}", err=True)
        sys.exit(1)
    if not removed:
        click.echo(f"mta: {path}: no {what} {name!r}", err=True)
        sys.exit(1)
    click.echo(f"{path}: removed {name}")
