"""`mta queue summary|suspend|resume|bounce`: the queue's shape per recipient domain or site
(counted a page at a time, like Postfix's qshape) and the shaping admin commands, sent to
every running worker over its control socket by mta.app.admin; here only flags and printing."""

from __future__ import annotations

import json
import sys
import time

import click

from mta.app import admin
from mta.app.admin import BUCKETS, DEFAULT_DURATION, DEFAULT_TOP, LABELS, bucket  # noqa: F401  (the CLI's names)
from mta.config import schema as config
from mta.errors import ConfigError

_spool_opt = click.option("--spool", metavar="DIR",
                          help=f"Spool directory (default: [spool] dir of --config, else {config.DEFAULT_SPOOL_DIR}).")


def _root(spool: str | None, cfg) -> str:
    if spool:
        return spool
    return cfg.spool.dir if cfg is not None else config.DEFAULT_SPOOL_DIR


def _load(config_file: str | None):
    try:
        return config.load(config_file)
    except ConfigError as e:
        click.echo(f"mta: configuration error:\n{e}", err=True)
        sys.exit(2)


def _fail(e: admin.AdminError) -> None:
    for line in getattr(e, "problems", None) or [e.text]:
        click.echo(f"mta: {line}", err=True)
    sys.exit(1)


def _problems(done: dict) -> None:
    for p in done["problems"]:
        click.echo(f"mta: {p}", err=True)


def _target(domain: str | None, site: str | None) -> dict:
    if (domain is None) == (site is None):
        raise click.UsageError("give either --domain or --site (one of the two)")
    try:
        return admin.target(domain, site)
    except admin.BadArgument as e:
        raise click.BadParameter(e.reason, param_hint=f"--{e.field}") from None


def _left(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _flag_line(key: str, until: float, now: float) -> str:
    kind, _, target = key.partition("|")
    verb = {"suspend": "suspended", "slow": "slowed"}.get(kind, kind)
    what = f"domain {target[1:]}" if target.startswith("@") else f"site {target}"
    return f"{verb}: {what}, {_left(until - now)} left (until {admin.rfc3339(until)})"


# --- the commands --------------------------------------------------------------------

@click.command("summary")
@_spool_opt
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Configuration file: its [spool] dir, [dns] resolvers, transport map and "
                   "[[shaping.rule]] site globs (for --by site).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the table.")
@click.option("--by", type=click.Choice(["domain", "site"]), default="domain", show_default=True,
              help="Rows per recipient domain, or per destination site (MX lookups of the --top domains).")
@click.option("--top", type=click.IntRange(min=0), default=DEFAULT_TOP, show_default=True, metavar="N",
              help="Show the N biggest rows (0: all); the rest are summed in one row. With --by site, "
                   "only the N biggest domains are looked up.")
def summary(spool, config_file, as_json, by, top) -> None:
    """The queue's shape, like Postfix's qshape: per recipient domain (or site), how many
    messages still wait for a recipient there, by age in minutes (T: all; 5: under 5
    minutes; 10: 5 to 10; ... 1280+: older), the biggest first.

    Then the sites and domains suspended or slowed in the running server, with the time
    left (without a running server: "no server running: flags unknown"). Counts a page at
    a time where `mta queue list` reads (read-only, safe while the server runs).

    --json prints {"by", "buckets", "total", "rows": [{"name", "total", "ages",
    "recipients"}, ...], "rest": {"count", "total", "ages"}, "flags": {key: until} or
    null, "flags_note"}; with --by site, each row also lists its "domains".
    """
    cfg = _load(config_file) if (config_file or by == "site") else None
    try:
        out = admin.summary(_root(spool, cfg), by, top, cfg)
    except admin.AdminError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(out))
        return
    now = time.time()
    rest, rest_n = out["rest"], out["rest"]["count"]
    more = f"({rest_n} more domain(s), not looked up)" if by == "site" else f"({rest_n} more domain(s))"
    names = ["TOTAL"] + [r["name"] for r in out["rows"]] + ([more] if rest_n else [])
    width = min(max(len(n) for n in names), 48)
    cells = ([[out["total"], *out["ages"]]] + [[r["total"], *r["ages"]] for r in out["rows"]]
             + ([[rest["total"], *rest["ages"]]] if rest_n else []))
    nwidth = max(5, *(len(str(c)) for row in cells for c in row))
    click.echo(f"{'':>{width}} " + " ".join(f"{label:>{nwidth}}" for label in LABELS))
    for name, row in zip(names, cells):
        click.echo(f"{name:>{width}} " + " ".join(f"{n:>{nwidth}}" for n in row))
    flags, note = out["flags"], out["flags_note"]
    if note is not None:
        click.echo(note)
    elif not flags:
        click.echo("no site or domain is suspended or slowed")
    else:
        for key, until in sorted(flags.items()):
            click.echo(_flag_line(key, until, now))


@click.command("suspend")
@click.option("--domain", metavar="DOMAIN", help="Suspend mail to this recipient domain.")
@click.option("--site", metavar="SITE", help="Suspend mail to this destination site (as `mta queue summary "
              "--by site` names it, or a [[shaping.rule]] site glob).")
@click.option("--duration", default=DEFAULT_DURATION, show_default=True, metavar="T",
              help='How long: seconds, or a number with ms, s, m, h or d ("30m", "2h").')
@_spool_opt
def suspend(domain, site, duration, spool) -> None:
    """Stop delivering to a domain or a site for a while.

    Its messages stay queued and wait until the suspension ends (no attempt counted),
    then go; other destinations keep flowing. Set in every running worker; a new
    suspend of the same domain or site replaces the end time. Exit 1 when no server runs.
    """
    target = _target(domain, site)
    try:
        seconds = admin.duration(duration)
    except admin.BadArgument as e:
        raise click.BadParameter(e.reason, param_hint="--duration") from None
    try:
        done = admin.suspend(_root(spool, None), target, seconds)
    except admin.AdminError as e:
        _fail(e)
    _problems(done)
    if done["workers"]:
        click.echo(f"{admin.named(target)} suspended until {done['until_text']} ({_left(seconds)}) "
                   f"in {done['workers']} worker(s)")
    sys.exit(0 if done["ok"] else 1)


@click.command("resume")
@click.option("--domain", metavar="DOMAIN", help="Resume mail to this recipient domain.")
@click.option("--site", metavar="SITE", help="Resume mail to this destination site.")
@_spool_opt
def resume(domain, site, spool) -> None:
    """End a suspension now: the messages it held back are due at once.

    Clears the flag set by `mta queue suspend` (or by a [[shaping.on_reply]] rule, for a
    site) in every running worker. Exit 1 when no server runs.
    """
    target = _target(domain, site)
    try:
        done = admin.resume(_root(spool, None), target)
    except admin.AdminError as e:
        _fail(e)
    _problems(done)
    counts = done["counts"]
    if done["workers"]:
        state = "was suspended" if done["was_suspended"] else "was not suspended"
        click.echo(f"{admin.named(target)} resumed ({state}): {counts.get('due', 0)} message(s) due now")
        if counts.get("active"):
            click.echo(f"{counts['active']} message(s) being delivered right now")
    if counts.get("failed"):
        click.echo(f"mta: {counts['failed']} message(s) could not be made due (see the server log)", err=True)
    sys.exit(0 if done["ok"] else 1)


@click.command("bounce")
@click.option("--domain", required=True, metavar="DOMAIN", help="The recipient domain whose mail is bounced.")
@_spool_opt
def bounce(domain, spool) -> None:
    """Bounce every queued recipient of a domain now, with a DSN to each sender.

    The recipients not yet delivered or bounced get "5.0.0 bounced by the administrator
    (mta queue bounce)", recorded in the delivery log and reported to the sender (RFC
    3464, as any bounce); a message's other recipients stay queued. A message being
    delivered right now is bounced once that attempt ends (waited for up to 10 s, else
    it is left alone and the command exits 1: run it again). Exit 1 when no server runs.
    """
    target = _target(domain, None)
    try:
        done = admin.bounce(_root(spool, None), target["domain"])
    except admin.AdminError as e:
        _fail(e)
    _problems(done)
    counts = done["counts"]
    if done["workers"]:
        click.echo(f"{admin.named(target)}: {done['recipients']} recipient(s) bounced in "
                   f"{counts.get('bounced', 0)} message(s)")
    if counts.get("busy"):
        click.echo(f"mta: {counts['busy']} message(s) being delivered right now were not bounced: "
                   "run the command again once the attempt ends", err=True)
    if counts.get("failed"):
        click.echo(f"mta: {counts['failed']} message(s) could not be bounced (see the server log)", err=True)
    sys.exit(0 if done["ok"] else 1)


COMMANDS = (summary, suspend, resume, bounce)
