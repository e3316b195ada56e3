"""`mta dkim`: DKIM keys. `keygen` writes a private key (PEM, mode 0600) and its TXT record,
and prints the record to publish; it never overwrites a key."""

from __future__ import annotations

import sys

import click

from mta.config.kinds import domain_name
from mta.errors import ConfigError
from mta.policy import dkimkeys


def problems(cfg) -> list[str]:
    """Every [[dkim.sign]] key that cannot be used, for check-config ([] when all can; a
    skipped key under on_key_error = "send-unsigned" is logged, not a problem)."""
    from mta.policy import builtins

    try:
        builtins.signer(cfg.dkim)
    except ConfigError as e:
        return e.errors
    return []


@click.group()
def dkim() -> None:
    """DKIM signing keys (RFC 6376; Ed25519: RFC 8463)."""


@dkim.command("keygen")
@click.option("--domain", required=True, metavar="DOMAIN", help="The signing domain (d=), e.g. example.com.")
@click.option("--selector", required=True, metavar="SELECTOR", help="The selector (s=), e.g. s2026.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), metavar="DIR",
              help="Directory for SELECTOR.private (PEM, mode 0600) and SELECTOR.txt; created (0700) if missing.")
@click.option("--algorithm", type=click.Choice(dkimkeys.ALGORITHMS), default="rsa2048", show_default=True,
              help="rsa2048 or rsa4096 (rsa-sha256), ed25519 (ed25519-sha256).")
def dkim_keygen(domain, selector, out_dir, algorithm) -> None:
    """Make a DKIM key: write DIR/SELECTOR.private and DIR/SELECTOR.txt (the TXT record's
    value on one line: v=DKIM1; k=...; p=...), and print the record to publish at
    SELECTOR._domainkey.DOMAIN, split into 255-octet strings as DNS needs."""
    name = domain_name(domain)
    if name is None:
        click.echo(f"mta: --domain {domain!r} is not a domain name", err=True)
        sys.exit(2)
    try:
        files = dkimkeys.write(out_dir, name, selector, algorithm)
    except ValueError as e:
        click.echo(f"mta: --selector: {e}", err=True)
        sys.exit(2)
    except FileExistsError as e:
        click.echo(f"mta: {e}", err=True)
        sys.exit(1)
    except OSError as e:
        click.echo(f"mta: cannot write to {out_dir}: {e.strerror or e}", err=True)
        sys.exit(1)
    click.echo(f"wrote {files.private} (mode 0600) and {files.txt} ({algorithm})")
    click.echo(f"publish this TXT record at {files.name}:")
    click.echo(dkimkeys.zone_line(files))
