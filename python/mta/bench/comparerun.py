"""`mta bench compare` from its command line to its report: the plan (ready-made peers and
standard workloads, or a plan file, or both), sweeps and offered rates expanded, the trials
run in alternation, and the report with everything needed to repeat the run."""

from __future__ import annotations

import dataclasses
import shlex
import sys
import time

from mta.bench import peers as peer_registry
from mta.bench.compare import Plan, load_plan, peer_system, run_compare
from mta.bench.machine import describe
from mta.bench.workloads import expand, parse_ms, parse_rates, parse_sweep, standard


class CompareError(ValueError):
    """A command line that cannot run; the message names the option."""


def build_plan(*, peers: list[str], workloads: list[str], config_file: str | None, messages: int | None,
               repeats: int | None, sweep: str | None, rates: str | None, only: list[str]) -> Plan:
    if not peers and not config_file:
        raise CompareError("name the servers: --peers mta,postfix,... (see `mta bench peers list`) or --config PLAN")
    try:
        if config_file:
            plan = load_plan(config_file)
            if workloads:
                by_name = {w.name: w for w in plan.workloads}
                bad = [n for n in workloads if n not in by_name]
                if bad:
                    raise CompareError(f"--workloads: the plan has no workload {', '.join(bad)} "
                                       f"(it has: {', '.join(by_name)})")
                plan.workloads = [by_name[n] for n in workloads]
        else:
            plan = Plan(repeats=3, output="")
            plan.workloads = standard(workloads or (["e2e-1k"] if sweep or rates else None))
        have = {s.name for s in plan.systems}
        for name in peers:
            if name not in have:
                plan.systems.append(peer_system(name))
        sweep_spec = parse_sweep(sweep) if sweep else None
        rate_list = parse_rates(rates) if rates else None
    except ValueError as e:
        raise CompareError(str(e)) from None
    if repeats:
        plan.repeats = repeats
    if messages:
        for w in plan.workloads:
            w.messages = messages
    if only:
        unknown = set(only) - {s.name for s in plan.systems}
        if unknown:
            raise CompareError(f"--only: no system named {', '.join(sorted(unknown))}")
        plan.systems = [s for s in plan.systems if s.name in only]
    plan.workloads = expand(plan.workloads, sweep_spec, rate_list)
    if plan.systems and any(s.peer for s in plan.systems) and plan.sink_port == 2626:
        from mta.bench.procs import free_port

        plan.sink_port = free_port()  # a port nothing else uses, for the whole run
    return plan


def _peer_meta(plan: Plan) -> dict:
    from mta.bench.compare import peer_run

    out = {}
    home = peer_registry.peers_home()
    for s in plan.systems:
        if s.peer:
            peer = peer_registry.get(s.peer)
            run = peer_run(dataclasses.replace(s, port=s.port or 0), plan, str(home / "example"))
            try:
                version = peer.version(home) if not peer.missing(home) else f"not available: {peer.missing(home)}"
            except (OSError, RuntimeError) as e:
                version = f"unknown ({e})"
            out[s.name] = {"peer": s.peer, "version": version, "durability": peer.durability, "notes": peer.notes,
                           "config": peer.config_text(run) + "\n# (ports: chosen per trial)"}
        else:
            out[s.name] = {"start": s.start, "stop": s.stop, "drained": s.drained, "env": s.env}
    return out


def make_meta(plan: Plan, sweep: str | None, rates: str | None, p99_max_ms: float | None) -> dict:
    bases = {}
    for w in plan.workloads:
        bases.setdefault(w.name, {k: v for k, v in dataclasses.asdict(w).items() if k not in ("name", "sweep", "rate")})
    sw = parse_sweep(sweep) if sweep else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": "mta " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["bench"] else shlex.join(sys.argv),
        "machine": describe(str(peer_registry.peers_home()) if peer_registry.peers_home().exists() else "/tmp"),
        "repeats": plan.repeats, "generator_workers": plan.generator_workers or "min(2, CPUs)",
        "peers": _peer_meta(plan), "workloads": bases,
        "sweep": {"param": sw[0], "values": sw[1]} if sw else None,
        "rates": parse_rates(rates) if rates else None, "p99_max_ms": p99_max_ms,
    }


def run_from_cli(*, peers, workloads, config_file, messages, repeats, sweep, rates, p99_max, only, out_dir,
                 output, html, svg, echo) -> int:
    plan = build_plan(peers=peers, workloads=workloads, config_file=config_file, messages=messages,
                      repeats=repeats, sweep=sweep, rates=rates, only=only)
    try:
        p99_max_ms = parse_ms(p99_max) if p99_max else None
    except ValueError as e:
        raise CompareError(f"--p99-max: {e}") from None
    home = peer_registry.peers_home()
    runnable = []
    for s in plan.systems:
        why = peer_registry.get(s.peer).missing(home) if s.peer else None
        if why:
            echo(f"  skipping {s.name}: {why}", err=True)
        else:
            runnable.append(s)
    plan.systems = runnable
    if not plan.systems:
        raise CompareError("no server can run here (see the lines above)")
    tls_all = sorted({w.name for w in plan.workloads if w.starttls and w.kind == "accept-only"})
    tls_relays = sorted({w.name for w in plan.workloads if w.starttls})
    for s in plan.systems:
        # only where it would otherwise take part (an accept-only peer has no end-to-end trials)
        tls_names = tls_relays if s.relays else tls_all
        if tls_names and not s.starttls:
            why = peer_registry.get(s.peer).notes if s.peer else "starttls = false"
            echo(f"  {s.name} sits out {', '.join(tls_names)}: no STARTTLS ({why})", err=True)
    meta = make_meta(plan, sweep, rates, p99_max_ms)

    def say(row: dict) -> None:
        point = "".join(f" {row['sweep']['param']}={row['sweep']['value']}" for _ in [0] if row.get("sweep"))
        point += f" rate={row['rate']:g}/s" if row.get("rate") else ""
        head = f"  {row['workload']}{point} #{row['repeat'] + 1} {row['system']}"
        if "failed" in row:
            echo(f"{head}: FAILED {row['failed']}", err=True)
            return
        e2e = f", end-to-end {row['end_to_end_per_s']:,.0f}/s" if "end_to_end_per_s" in row else ""
        echo(f"{head}: {row['accepted_per_s']:,.0f}/s{e2e}, p99 {row['latency_ms']['p99']:.1f} ms, "
             f"server CPU {row['server_cpu_s']:.2f} s, errors {sum(row['errors'].values())}", err=True)

    rows = run_compare(plan, say)
    order = [s.name for s in plan.systems]
    from mta.bench import report

    if output or (plan.output and not out_dir):
        paths = report.write_outputs(output or plan.output, meta, rows, order)
        with open(paths["markdown"]) as f:
            echo(f.read())
    else:
        out_dir = out_dir or f"bench-results/compare-{time.strftime('%Y%m%d-%H%M%S')}"
        paths = report.write_report(out_dir, meta, rows, order, html=html, svg=svg)
        with open(paths["markdown"]) as f:
            echo(f.read())
    echo("wrote " + ", ".join(paths.values()), err=True)
    return 1 if any("failed" in r for r in rows) else 0
