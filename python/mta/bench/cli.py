"""The `mta bench` command group: send | sink | compare. Options map one to one onto
run_send / run_sink / run_compare; the JSON written by --json is the documented contract.
"""

from __future__ import annotations

import json
import sys

import click


def _write_json(path: str | None, report: dict) -> None:
    if not path:
        return
    text = json.dumps(report, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
    else:
        with open(path, "w") as f:
            f.write(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def bench() -> None:
    """Benchmark any SMTP server: a load generator, a sink, a side-by-side comparison."""


@bench.command()
@click.option("--target", required=True, metavar="HOST:PORT", help="The server to load.")
@click.option("--messages", "-m", type=click.IntRange(min=0), help="Stop after N messages (default 1000 unless --duration).")
@click.option("--size", "-l", type=click.IntRange(min=1), default=1024, show_default=True, help="Whole message size in bytes, headers included.")
@click.option("--sessions", "-s", type=click.IntRange(min=1), default=50, show_default=True, help="Concurrent connections.")
@click.option("--per-connection", type=click.IntRange(min=1), default=1, show_default=True, help="Messages per connection (smtp-source without -d: 1).")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), help="Open loop: offer this many messages/s whatever the replies.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S", help="Stop after S seconds (whichever comes first with --messages).")
@click.option("--warmup", type=click.IntRange(min=0), default=0, show_default=True, help="Messages sent first and not counted.")
@click.option("--from", "sender", default="from@example.test", show_default=True, metavar="ADDR")
@click.option("--to", default="to@example.test", show_default=True, metavar="ADDR")
@click.option("--helo", default="client.example.test", show_default=True, metavar="NAME")
@click.option("--source-ip", metavar="IP[,IP...]", help="Spread connections over these local addresses (e.g. 127.0.0.2,127.0.0.3).")
@click.option("--starttls", is_flag=True, help="STARTTLS on every connection (the server must offer it).")
@click.option("--bdat", is_flag=True, help="Send with BDAT when the server offers CHUNKING.")
@click.option("--recipients", type=click.IntRange(min=1), default=1, show_default=True, help="Recipients per message (--to, then local+N@domain).")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Generator processes (default: min(2, CPUs)).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for any reply.")
@click.option("--json", "json_file", metavar="FILE", help="Write the figures as JSON (- for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no table.")
def send(target, messages, size, sessions, per_connection, rate, duration, warmup, sender, to, helo,
         source_ip, starttls, bdat, recipients, workers, timeout, json_file, quiet) -> None:
    """Load an SMTP server and report messages/s, latency and errors by reply code."""
    from mta.bench.sendrun import run_send
    from mta.bench.stats import Progress, render

    live = Progress(not quiet)
    total = (messages or 0)
    try:
        report = run_send(
            target, messages=messages, size=size, sessions=sessions, per_connection=per_connection,
            rate=rate, duration=duration, warmup=warmup, sender=sender, to=to, helo=helo,
            source_ips=[s.strip() for s in source_ip.split(",") if s.strip()] if source_ip else None,
            starttls=starttls, bdat=bdat, recipients=recipients, workers=workers, timeout=timeout,
            progress=lambda ok, err: live.update(f"sent {ok:,}{f' / {total:,}' if total else ''}  errors {err:,}"),
        )
    except (RuntimeError, ValueError, OSError) as e:
        live.close()
        click.echo(f"mta bench send: {e}", err=True)
        sys.exit(1)
    live.close()
    if not quiet and json_file != "-":
        render("send", report, f"mta bench send → {target}")
    _write_json(json_file, report)


@bench.command()
@click.option("--listen", required=True, metavar="HOST:PORT", help="Where to accept connections.")
@click.option("--reply-delay", type=click.FloatRange(min=0), default=0.0, metavar="MS", help="Delay each end-of-data reply by MS milliseconds.")
@click.option("--fail-rate", metavar="4xx:P,5xx:P", help="Reject this share of messages at end of data (451 / 554).")
@click.option("--hostname", default="sink.bench.test", show_default=True)
@click.option("--no-starttls", is_flag=True, help="Do not offer STARTTLS.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="PEM certificate (default: a throwaway self-signed one).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="PEM key for --tls-cert.")
@click.option("--count", type=click.IntRange(min=1), help="Stop after N messages (accepted + rejected).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), metavar="S", help="Stop after S seconds.")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Sink processes sharing the port (default: min(2, CPUs)).")
@click.option("--seed", type=int, help="Seed for --fail-rate (reproducible runs).")
@click.option("--json", "json_file", metavar="FILE", help="Write the figures as JSON when it stops (- for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no table.")
def sink(listen, reply_delay, fail_rate, hostname, no_starttls, tls_cert, tls_key, count, duration,
         workers, seed, json_file, quiet) -> None:
    """Accept and discard mail as fast as possible; count it and check its integrity.

    Runs until SIGTERM / Ctrl-C, --count or --duration, then prints what it received.
    """
    from mta.bench.sinkrun import parse_fail_rate, run_sink
    from mta.bench.stats import Progress, render

    try:
        parse_fail_rate(fail_rate)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--fail-rate") from None
    live = Progress(not quiet)
    try:
        report = run_sink(
            listen, workers=workers, hostname=hostname, reply_delay_ms=reply_delay, fail_rate=fail_rate,
            starttls=not no_starttls, tls_cert=tls_cert, tls_key=tls_key, count=count, duration=duration,
            seed=seed,
            progress=lambda r: live.update(f"received {r['messages']:,}  integrity errors {r['integrity_errors']}"),
            ready=None if quiet else (lambda: click.echo(f"mta bench sink: listening on {listen}", err=True)),
        )
    except OSError as e:
        live.close()
        click.echo(f"mta bench sink: {e}", err=True)
        sys.exit(1)
    live.close()
    if not quiet and json_file != "-":
        render("sink", report, f"mta bench sink on {listen}")
    _write_json(json_file, report)


@bench.command()
@click.option("--config", "config_file", required=True, type=click.Path(exists=True, dir_okay=False), help="TOML file: [compare], [[system]], [[workload]].")
@click.option("--repeats", type=click.IntRange(min=1), help="Trials per system and workload (default: the file's, else 5).")
@click.option("--messages", type=click.IntRange(min=1), help="Override every workload's message count (quick runs).")
@click.option("--only", multiple=True, metavar="SYSTEM", help="Run only these systems (repeatable).")
@click.option("--output", metavar="PREFIX", help="Write PREFIX.json, PREFIX.md and PREFIX.png (default: the file's).")
def compare(config_file, repeats, messages, only, output) -> None:
    """Run the same workloads against several servers in alternation; report side by side."""
    from mta.bench.compare import load_plan, run_compare
    from mta.bench.report import write_outputs

    try:
        plan = load_plan(config_file)
    except (ValueError, OSError) as e:
        click.echo(f"mta bench compare: {config_file}: {e}", err=True)
        sys.exit(2)
    if repeats:
        plan.repeats = repeats
    if messages:
        for w in plan.workloads:
            w.messages = messages
    if only:
        unknown = set(only) - {s.name for s in plan.systems}
        if unknown:
            click.echo(f"mta bench compare: no system named {', '.join(sorted(unknown))}", err=True)
            sys.exit(2)
        plan.systems = [s for s in plan.systems if s.name in only]
    if output:
        plan.output = output

    def say(row: dict) -> None:
        if "failed" in row:
            click.echo(f"  {row['workload']} #{row['repeat'] + 1} {row['system']}: FAILED {row['failed']}", err=True)
            return
        e2e = f", end-to-end {row['end_to_end_per_s']:,.0f}/s" if "end_to_end_per_s" in row else ""
        click.echo(f"  {row['workload']} #{row['repeat'] + 1} {row['system']}: {row['accepted_per_s']:,.0f}/s"
                   f"{e2e}, server CPU {row['server_cpu_s']:.2f} s, errors {sum(row['errors'].values())}", err=True)

    rows = run_compare(plan, say)
    meta = {"config": config_file, "repeats": plan.repeats, "generator_workers": plan.generator_workers or "default",
            "systems": [s.__dict__ for s in plan.systems], "workloads": [w.__dict__ for w in plan.workloads]}
    paths = write_outputs(plan.output, meta, rows, [s.name for s in plan.systems])
    with open(paths["markdown"]) as f:
        click.echo(f.read())
    click.echo("wrote " + ", ".join(paths.values()), err=True)
    if any("failed" in r for r in rows):
        sys.exit(1)
