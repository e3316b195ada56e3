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
@click.option("--tls-resume", is_flag=True, help="With --starttls: offer the last TLS session each generator process kept on its next connection, as a sending MTA's session cache does (the JSON counts full and resumed handshakes).")
@click.option("--bdat", is_flag=True, help="Send with BDAT when the server offers CHUNKING.")
@click.option("--recipients", type=click.IntRange(min=1), default=1, show_default=True, help="Recipients per message (--to, then local+N@domain).")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Generator processes (default: min(2, CPUs)).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for any reply.")
@click.option("--json", "json_file", metavar="FILE", help="Write the figures as JSON (- for stdout).")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no table.")
def send(target, messages, size, sessions, per_connection, rate, duration, warmup, sender, to, helo,
         source_ip, starttls, tls_resume, bdat, recipients, workers, timeout, json_file, quiet) -> None:
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
            tls_resume=tls_resume, progress=lambda ok, err: live.update(f"sent {ok:,}{f' / {total:,}' if total else ''}  errors {err:,}"),
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


def _split_names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


@bench.command()
@click.option("--peers", metavar="NAME,...", help="Ready-made peers to race: mta, postfix, exim, opensmtpd, aiosmtpd, smtp-sink (see `mta bench peers list`).")
@click.option("--workloads", metavar="NAME,...", help="Standard workloads (default: all; with --sweep or --rate: e2e-1k): accept-1k, e2e-1k, e2e-1k-keep, e2e-64k, e2e-1m, e2e-1k-tls, e2e-1k-keep-tls. With --config: the plan's workloads by name.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="A plan file (TOML: [compare], [[system]], [[workload]]) instead of, or besides, --peers.")
@click.option("--messages", type=click.IntRange(min=1), help="Override every workload's message count (quick runs).")
@click.option("--repeats", type=click.IntRange(min=1), help="Trials per system and workload point (default: 3, or the plan's).")
@click.option("--sweep", metavar="PARAM=V,...", help="Run each workload at every value of sessions, size or per_connection (e.g. sessions=1,10,50,200,500; size=1k,64k,1m).")
@click.option("--rate", "rates", metavar="R,...", help="Open loop: offer these messages/s (one connection per message), report the highest each peer sustains.")
@click.option("--p99-max", metavar="DURATION", help="With --rate: a rate counts as sustained only with p99 latency at most this (e.g. 50ms).")
@click.option("--only", multiple=True, metavar="SYSTEM", help="Run only these systems (repeatable).")
@click.option("--out", "out_dir", metavar="DIR", help="Write DIR/report.md, DIR/report.json and the charts (default: bench-results/compare-DATE).")
@click.option("--output", metavar="PREFIX", help="Legacy: write PREFIX.json, PREFIX.md and PREFIX.png instead (a plan's default).")
@click.option("--html", is_flag=True, help="Also write DIR/report.html: one self-contained page with the tables and charts.")
@click.option("--svg", is_flag=True, help="Also write each chart as SVG (text kept as text).")
def compare(peers, workloads, config_file, messages, repeats, sweep, rates, p99_max, only, out_dir, output, html, svg) -> None:
    """Race servers on the same workloads, in alternation; write a report with tables and charts.

    \b
    mta bench compare --peers mta,postfix,exim,opensmtpd
    mta bench compare --peers mta,postfix --workloads e2e-1k --sweep sessions=1,10,50,200,500
    mta bench compare --peers mta,postfix --rate 500,1000,2000,4000 --p99-max 50ms
    mta bench compare --config benches/compare-e2e.toml
    """
    from mta.bench.comparerun import CompareError, run_from_cli

    try:
        code = run_from_cli(peers=_split_names(peers), workloads=_split_names(workloads), config_file=config_file,
                            messages=messages, repeats=repeats, sweep=sweep, rates=rates, p99_max=p99_max,
                            only=list(only), out_dir=out_dir, output=output, html=html, svg=svg, echo=click.echo)
    except CompareError as e:
        click.echo(f"mta bench compare: {e}", err=True)
        sys.exit(2)
    sys.exit(code)


from mta.bench.peers_cli import peers as _peers_group  # noqa: E402  (the `mta bench peers` group)

bench.add_command(_peers_group)
