"""`mta plugins list` and the plugin part of `mta check-config`: load the configured plugins
as a worker would (import, hooks, signatures, Plugin(options)); check-config also runs their
setup/start and stop, so an options error shows before the server starts."""

from __future__ import annotations

import sys

import click

from mta.config import schema as config
from mta.errors import ConfigError


def problems(cfg) -> list[str]:
    """Every plugin problem of a loaded configuration ([] when they all load and start)."""
    from mta.policy import loader
    from mta.policy.chain import Chain

    try:
        entries = loader.load(cfg.plugin, cfg.delivery.route_hook)
    except ConfigError as e:
        return e.errors
    chain = Chain(entries)

    async def start_stop() -> None:
        await chain.start()  # (a failure stops those already started)
        await chain.stop()

    import asyncio  # here: every mta command loads this module, few run the plugins

    try:
        asyncio.run(start_stop())
    except ConfigError as e:
        return e.errors
    return []


@click.group()
def plugins() -> None:
    """Python plugins ([[plugin]] in the config; see docs/plugins.md)."""


@plugins.command("list")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="TOML configuration file (default: the embedded defaults, which have no plugin).")
def plugins_list(config_file) -> None:
    """Print each plugin in chain order: its module, hooks (sync or async) and timeout.
    The built-in policies come first; they run before every plugin."""
    from mta.plugin import HOOKS
    from mta.policy import loader

    try:
        cfg = config.load(config_file)
        entries = loader.load(cfg.plugin, cfg.delivery.route_hook)
    except ConfigError as e:
        click.echo(f"mta: configuration error:\n{e}", err=True)
        sys.exit(2)
    click.echo("built-in: relay (on_rcpt), recipients (on_rcpt), sender_login (on_mail, with [auth] users_file), "
               "verify (on_message, with [verify] enabled)")
    last = "built-in, last: dkim_sign (on_message, with [[dkim.sign]])" if cfg.dkim.sign else None
    if not entries:
        click.echo("no plugins configured")
        if last:
            click.echo(last)
        return
    for i, e in enumerate(entries, 1):
        kinds = e.kinds()
        hooks = ", ".join(f"{h} ({kinds[h]})" for h in HOOKS if h in kinds) or "no hooks"
        life = [n for n, fn in (("setup/start", e.setup), ("stop", e.stop)) if fn is not None]
        click.echo(f"{i}. {e.name}  module={e.module}  timeout={e.timeout:g}s")
        click.echo(f"   hooks: {hooks}")
        if life:
            click.echo(f"   lifecycle: {', '.join(life)}")
    if last:
        click.echo(last)
