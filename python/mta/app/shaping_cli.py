"""`mta queue summary|suspend|resume|bounce`: the queue's shape per recipient domain or site
(read from the spool files, like Postfix's qshape) and the shaping admin commands, sent to
every running worker over its control socket; nothing here writes the spool itself."""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import sys
import time

import click

from mta.app import control
from mta.config import schema as config
from mta.config.kinds import Duration, Errors, domain_name
from mta.delivery import FINAL
from mta.errors import ConfigError

# Age buckets in minutes, as qshape's: a message goes in the first whose bound its age is
# below; "1280+" holds the rest. T is the total.
BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)
LABELS = ("T",) + tuple(str(b) for b in BUCKETS) + (f"{BUCKETS[-1]}+",)
DEFAULT_TOP = 50
MX_CONCURRENCY = 16  # MX lookups in flight at once (--by site)
DEFAULT_DURATION = "1h"

_spool_opt = click.option("--spool", metavar="DIR",
                          help=f"Spool directory (default: [spool] dir of --config, else {config.DEFAULT_SPOOL_DIR}).")


def bucket(age: float) -> int:
    """The age column (1 .. len(BUCKETS)+1; 0 is the total) of a message `age` seconds old."""
    minutes = age / 60.0
    for i, bound in enumerate(BUCKETS):
        if minutes < bound:
            return i + 1
    return len(BUCKETS) + 1


def shape(envelopes, now: float) -> tuple[dict[str, list[int]], dict[str, int]]:
    """({domain: [total, per age column...]}, {domain: recipients}) of the recipients not yet
    final: a message counts once per domain it still has recipients in. Takes any iterable
    and keeps nothing of an envelope, only the counters."""
    table: dict[str, list[int]] = {}
    rcpts: dict[str, int] = {}
    width = len(LABELS)
    for env in envelopes:
        seen: set[str] = set()
        for r in env.recipients:
            if r.state in FINAL:
                continue
            domain = r.address.rpartition("@")[2].lower() or "(no domain)"
            rcpts[domain] = rcpts.get(domain, 0) + 1
            seen.add(domain)
        if not seen:
            continue
        col = bucket(now - env.arrival)
        for domain in seen:
            row = table.get(domain)
            if row is None:
                row = table[domain] = [0] * width
            row[0] += 1
            row[col] += 1
    return table, rcpts


def ranked(table: dict[str, list[int]], top: int) -> tuple[list[tuple[str, list[int]]], list[int], int]:
    """(the `top` biggest rows by total, then name; 0: all), the sum of the rest, how many rest."""
    rows = sorted(table.items(), key=lambda kv: (-kv[1][0], kv[0]))
    shown, rest = (rows, []) if top <= 0 else (rows[:top], rows[top:])
    return shown, _sum(r for _, r in rest), len(rest)


def _sum(rows) -> list[int]:
    out = [0] * len(LABELS)
    for r in rows:
        for i, n in enumerate(r):
            out[i] += n
    return out


# --- sites: where each domain's mail goes --------------------------------------------

async def sites_of(domains: list[str], cfg) -> dict[str, str]:
    """{domain: its destination site}, as the worker names it (site_name of the MX hosts,
    or the smarthost of a transport route); looked up concurrently, at most MX_CONCURRENCY
    at once, through the config's [dns]. Failures get a site in parentheses."""
    from mta.delivery.mx import MxResolver
    from mta.delivery.router import Router
    from mta.delivery.shaping.shaper import site_name

    globs = tuple(r.site for r in getattr(getattr(cfg, "shaping", None), "rule", ()) if getattr(r, "site", None))
    router = Router(cfg)  # the tables only: route hooks need the running server
    d = cfg.dns
    resolver = MxResolver(list(d.nameservers) or None, port=d.port, timeout=d.timeout)
    gate = asyncio.Semaphore(MX_CONCURRENCY)

    async def one(domain: str) -> str:
        spec = router.lookup(domain)
        if spec.kind in ("smarthost", "lmtp"):
            return site_name([spec.host], globs)
        if spec.kind != "mx":
            return f"({spec.kind})"
        async with gate:
            status, records = await resolver.query(domain, "MX")
        if status == "nodata":  # no MX: the domain itself is its mail host
            return site_name([domain], globs)
        if status == "nxdomain":
            return "(no such domain)"
        if status != "ok":
            return "(DNS lookup failed)"
        hosts = [h for _pref, h in records if h not in (".", "")]
        return site_name(hosts, globs) if hosts else "(null MX)"

    found = await asyncio.gather(*(one(dom) for dom in domains))
    return dict(zip(domains, found))


# --- the workers: every running shard of the spool -----------------------------------

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


def running(root: str) -> tuple[list[int], list[str]]:
    """(the shards a server answers on, the problems met asking the others)."""
    up, problems = [], []
    try:
        present = control.shards(root)
    except OSError as e:
        return [], [f"cannot read the spool {root}: {e.strerror or e} (run as the user the server runs as, or root)"]
    for shard in present:
        try:
            control.call(root, shard, {"op": "ping"}, timeout=10)
            up.append(shard)
        except control.NoServer:
            pass
        except control.ControlError as e:
            problems.append(str(e))
    return up, problems


def flags_of(root: str) -> tuple[dict[str, float] | None, str | None]:
    """(the flags set in the running workers, merged; or None), and why they are unknown."""
    up, problems = running(root)
    if not up:
        return None, problems[0] if problems else "no server running: flags unknown"
    merged: dict[str, float] = {}
    for shard in up:
        try:
            reply = control.call(root, shard, {"op": "flags"})
        except (control.NoServer, control.ControlError) as e:
            return None, f"flags unknown: {e}"
        for key, until in reply.get("flags", {}).items():
            if key.startswith(("suspend|", "slow|")):  # not the clients' own "want|" signals
                merged[key] = max(merged.get(key, 0.0), float(until))
    return merged, None


def _everywhere(root: str, request: dict, what: str) -> tuple[list[dict], bool]:
    """`request` to every running worker: (their replies, whether any failed; each failure
    printed). Exit 1 when none runs."""
    up, problems = running(root)
    for p in problems:
        click.echo(f"mta: {p}", err=True)
    if not up:
        if not problems:
            click.echo(f"mta: no server is running on the spool {root} (no control socket answers); "
                       f"{what} needs the running server: start `mta run --spool {root}` first", err=True)
        sys.exit(1)
    replies, failed = [], bool(problems)
    for shard in up:
        try:
            replies.append(control.call(root, shard, request))
        except (control.NoServer, control.ControlError) as e:
            click.echo(f"mta: {e}", err=True)
            failed = True
    return replies, failed


def _target(domain: str | None, site: str | None) -> dict:
    if (domain is None) == (site is None):
        raise click.UsageError("give either --domain or --site (one of the two)")
    if domain is not None:
        name = domain_name(domain)
        if name is None:
            raise click.BadParameter(f"{domain!r} is not a domain name", param_hint="--domain")
        return {"domain": name}
    if not 0 < len(site) <= control.MAX_SITE or not site.isprintable() or " " in site:
        raise click.BadParameter(f"expected 1-{control.MAX_SITE} printable characters, no spaces",
                                 param_hint="--site")
    return {"site": site.lower()}


def _named(t: dict) -> str:
    return f"domain {t['domain']}" if "domain" in t else f"site {t['site']}"


def _rfc3339(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _left(seconds: float) -> str:
    s = max(0, int(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _flag_line(key: str, until: float, now: float) -> str:
    kind, _, target = key.partition("|")
    verb = {"suspend": "suspended", "slow": "slowed"}.get(kind, kind)
    what = f"domain {target[1:]}" if target.startswith("@") else f"site {target}"
    return f"{verb}: {what}, {_left(until - now)} left (until {_rfc3339(until)})"


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
    left (without a running server: "no server running: flags unknown"). Reads the spool
    files as `mta queue list` does (read-only, safe while the server runs).

    --json prints {"by", "buckets", "total", "rows": [{"name", "total", "ages",
    "recipients"}, ...], "rest": {"count", "total", "ages"}, "flags": {key: until} or
    null, "flags_note"}; with --by site, each row also lists its "domains".
    """
    cfg = _load(config_file) if (config_file or by == "site") else None
    root = _root(spool, cfg)
    now = time.time()
    table, rcpts = shape(_envelopes(root), now)
    total = _sum(table.values())
    groups: dict[str, list[str]] = {}
    if by == "site":
        shown, _rest, _n = ranked(table, top)
        looked = [d for d, _ in shown]
        sites = asyncio.run(sites_of(looked, cfg)) if looked else {}
        site_table: dict[str, list[int]] = {}
        for domain in looked:
            site = sites[domain]
            groups.setdefault(site, []).append(domain)
            site_table[site] = _sum([site_table.get(site, [0] * len(LABELS)), table[domain]])
        by_site: dict[str, int] = {}
        for domain in looked:
            by_site[sites[domain]] = by_site.get(sites[domain], 0) + rcpts[domain]
        rcpts = by_site
        rows, _, _ = ranked(site_table, 0)
        rest = _sum(table[d] for d in table if d not in sites)
        rest_n = len(table) - len(looked)
    else:
        rows, rest, rest_n = ranked(table, top)
    flags, note = flags_of(root)
    if as_json:
        out = {"by": by, "buckets": list(LABELS), "total": total[0], "ages": total[1:],
               "rows": [dict({"name": name, "total": r[0], "ages": r[1:], "recipients": rcpts.get(name, 0)},
                             **({"domains": groups[name]} if by == "site" else {})) for name, r in rows],
               "rest": {"count": rest_n, "total": rest[0], "ages": rest[1:]},
               "flags": flags, "flags_note": note}
        click.echo(json.dumps(out))
        return
    more = f"({rest_n} more domain(s), not looked up)" if by == "site" else f"({rest_n} more domain(s))"
    names = ["TOTAL"] + [n for n, _ in rows] + ([more] if rest_n else [])
    width = min(max(len(n) for n in names), 48)
    cells = [total] + [r for _, r in rows] + ([rest] if rest_n else [])
    nwidth = max(5, *(len(str(c)) for row in cells for c in row))
    click.echo(f"{'':>{width}} " + " ".join(f"{label:>{nwidth}}" for label in LABELS))
    for name, row in zip(names, cells):
        click.echo(f"{name:>{width}} " + " ".join(f"{n:>{nwidth}}" for n in row))
    if note is not None:
        click.echo(note)
    elif not flags:
        click.echo("no site or domain is suspended or slowed")
    else:
        for key, until in sorted(flags.items()):
            click.echo(_flag_line(key, until, now))


def _envelopes(root: str):
    """Every queued message's envelope under `root` (none when the directory is missing)."""
    from mta import _native

    if not os.path.isdir(root):
        return iter(())
    try:
        envs = _native.SpoolReader(root).list()
    except _native.SpoolError as e:
        click.echo(f"mta: cannot read the spool: {e}", err=True)
        sys.exit(1)
    # Consumed from the end as it is counted, so each envelope is freed once counted.
    envs.reverse()
    return (envs.pop() for _ in range(len(envs)))


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
    errs = Errors()
    seconds = Duration(max=365 * 86400.0).parse("--duration", duration, errs)
    if errs.items:
        raise click.BadParameter(errs.items[0].partition(": ")[2], param_hint="--duration")
    until = time.time() + seconds
    ok, failed = _everywhere(_root(spool, None), {"op": "suspend", **target, "until": until}, "suspend")
    if ok:
        click.echo(f"{_named(target)} suspended until {_rfc3339(until)} ({_left(seconds)}) "
                   f"in {len(ok)} worker(s)")
    sys.exit(1 if failed else 0)


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
    ok, failed = _everywhere(_root(spool, None), {"op": "resume", **target}, "resume")
    counts: dict[str, int] = {}
    was = 0.0
    for r in ok:
        was = max(was, float(r.get("was") or 0.0))
        for k, n in r.get("counts", {}).items():
            counts[k] = counts.get(k, 0) + n
    if ok:
        state = "was suspended" if was > time.time() else "was not suspended"
        click.echo(f"{_named(target)} resumed ({state}): {counts.get('due', 0)} message(s) due now")
        if counts.get("active"):
            click.echo(f"{counts['active']} message(s) being delivered right now")
    if counts.get("failed"):
        click.echo(f"mta: {counts['failed']} message(s) could not be made due (see the server log)", err=True)
    sys.exit(1 if failed or counts.get("failed") else 0)


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
    ok, failed = _everywhere(_root(spool, None), {"op": "bounce", **target}, "bounce")
    counts: dict[str, int] = {}
    recipients = 0
    for r in ok:
        recipients += int(r.get("recipients", 0))
        for k, n in r.get("counts", {}).items():
            counts[k] = counts.get(k, 0) + n
    if ok:
        click.echo(f"{_named(target)}: {recipients} recipient(s) bounced in {counts.get('bounced', 0)} message(s)")
    bad = counts.get("busy", 0) + counts.get("failed", 0)
    if counts.get("busy"):
        click.echo(f"mta: {counts['busy']} message(s) being delivered right now were not bounced: "
                   "run the command again once the attempt ends", err=True)
    if counts.get("failed"):
        click.echo(f"mta: {counts['failed']} message(s) could not be bounced (see the server log)", err=True)
    sys.exit(1 if bad or failed else 0)


COMMANDS = (summary, suspend, resume, bounce)
