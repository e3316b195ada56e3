"""`mta bench peers list|setup|start|stop`: the ready-made peers by hand. `start` leaves the
peer running in the background (its state in HOME/NAME/running.json) until `stop`; what
`compare` does per trial, for a person who wants to poke at a peer."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from mta.bench import peers as registry


def _names(name: str) -> list[str]:
    if name == "all":
        return list(registry.NAMES)
    try:
        registry.get(name)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="NAME") from None
    return [name]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def peers() -> None:
    """Ready-made peers (mta, postfix, exim, opensmtpd, aiosmtpd, smtp-sink), each run from a
    private directory ($MTA_BENCH_HOME, default /var/lib/mta-bench as root) as a relay into the
    bench sink, never touching the system's MTA configuration."""


@peers.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per peer instead of a table.")
def list_cmd(as_json) -> None:
    """Each peer: ready or what is missing, its version, whether it relays, its durability."""
    home = registry.peers_home()
    out = []
    for name in registry.NAMES:
        p = registry.get(name)
        why = p.missing(home)
        try:
            version = "" if why else p.version(home)
        except (OSError, RuntimeError) as e:
            version = f"unknown ({e})"
        out.append({"name": name, "ready": why is None, "missing": why, "version": version, "relays": p.relays,
                    "durability": p.durability, "notes": p.notes})
    if as_json:
        for item in out:
            click.echo(json.dumps(item))
        return
    for item in out:
        state = item["version"] if item["ready"] else f"not ready: {item['missing']}"
        click.echo(f"{item['name']:<10} {state}")
        click.echo(f"{'':<10} {'relay' if item['relays'] else 'accept-only'}; durability: {item['durability']}"
                   + (f"; {item['notes']}" if item["notes"] else ""))


@peers.command()
@click.argument("name")
def setup(name) -> None:
    """Install what peer NAME needs (or `all`): Debian packages it can share with the system
    (apt-get install), conflicting MTAs unpacked privately (apt-get download, dpkg -x)."""
    home = registry.peers_home()
    failed = 0
    for n in _names(name):
        try:
            registry.get(n).setup(home, lambda line, n=n: click.echo(f"{n}: {line}" if not line.startswith(n) else line))
            why = registry.get(n).missing(home)
            click.echo(f"{n}: ready" if why is None else f"{n}: still not ready: {why}")
            failed += why is not None
        except registry.SetupError as e:
            click.echo(f"{n}: cannot be set up here: {e}", err=True)
            failed += 1
    sys.exit(1 if failed else 0)


def _state_file(name: str) -> Path:
    return registry.peers_home() / name / "running.json"


@peers.command()
@click.argument("name")
@click.option("--port", type=click.IntRange(1, 65535), default=2525, show_default=True, help="Where the peer listens (127.0.0.1).")
@click.option("--sink-port", type=click.IntRange(1, 65535), default=2626, show_default=True, help="Where it relays (run `mta bench sink --listen 127.0.0.1:PORT`).")
def start(name, port, sink_port) -> None:
    """Start peer NAME in the background on --port, relaying to --sink-port."""
    from mta.bench.peers.runner import PeerProcess
    from mta.bench.tlsutil import throwaway_certificate

    (name,) = _names(name) if name != "all" else (None,)
    if name is None:
        raise click.BadParameter("start one peer at a time", param_hint="NAME")
    if _state_file(name).exists():
        click.echo(f"mta bench peers: {name} is already started (stop it first: mta bench peers stop {name})", err=True)
        sys.exit(1)
    peer, home = registry.get(name), registry.peers_home()
    why = peer.missing(home)
    if why:
        click.echo(f"mta bench peers: {name}: {why}", err=True)
        sys.exit(1)
    work = home / name / "manual"
    tls = work / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    cert, key = throwaway_certificate("relay.bench.test")
    for src, dst in ((cert, tls / "cert.pem"), (key, tls / "key.pem")):  # outlive this process
        Path(dst).write_bytes(Path(src).read_bytes())
    os.chmod(tls / "key.pem", 0o600)
    run = registry.PeerRun(home=home, work=work, port=port, sink_port=sink_port, cert=str(tls / "cert.pem"),
                           key=str(tls / "key.pem"), python=sys.executable)
    log = open(home / name / "manual.log", "ab")
    try:
        proc = PeerProcess(peer, run, log)
    except RuntimeError as e:
        click.echo(f"mta bench peers: {e}", err=True)
        sys.exit(1)
    _state_file(name).write_text(json.dumps({"pid": proc.pid, "port": port, "sink_port": sink_port,
                                             "work": str(work), "cert": run.cert, "key": run.key}))
    click.echo(f"{name}: listening on 127.0.0.1:{port}, relaying to 127.0.0.1:{sink_port} "
               f"(pid {proc.pid}, log {home / name / 'manual.log'})")


@peers.command()
@click.argument("name")
def stop(name) -> None:
    """Stop peer NAME (started with `mta bench peers start`) and clean its queue."""
    (name,) = _names(name) if name != "all" else (None,)
    if name is None:
        raise click.BadParameter("stop one peer at a time", param_hint="NAME")
    path = _state_file(name)
    if not path.exists():
        click.echo(f"mta bench peers: {name} is not started", err=True)
        sys.exit(1)
    st = json.loads(path.read_text())
    peer, home = registry.get(name), registry.peers_home()
    run = registry.PeerRun(home=home, work=Path(st["work"]), port=st["port"], sink_port=st["sink_port"],
                           cert=st["cert"], key=st["key"], python=sys.executable)
    peer.stop(run)
    try:
        os.kill(st["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        try:
            os.kill(st["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(st["pid"], signal.SIGKILL)
    peer.cleanup(run)
    path.unlink()
    click.echo(f"{name}: stopped")
