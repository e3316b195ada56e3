#!/usr/bin/env python3
"""Where the TLS time goes (issue 26): handshake, primitives, record layer, event-loop transport
and the real server's profile, CPU µs per operation, as a markdown table (and JSON with --out).
Invariant: bounded runs (about 3 minutes by default, --quick about 30 s); every process is stopped.

    PYTHONPATH=python python benches/tls_cost.py [--quick] [--out PREFIX] [--no-profile] [--no-perf] [--pyspy S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:  # the installed package, or the tree's with its extension built in place (scripts/dev-build)
    import mta._native  # noqa: F401
except ImportError:
    sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tls_cost_report import markdown

SIZES = (1024, 65536)


def settings(quick: bool) -> dict:
    if quick:
        return {"hs_n": 30, "rounds": 3, "calls": 50, "transport_rounds": 1, "profile_messages": 600,
                "profile_repeats": 1,
                "counts": {(1024, False): 1000, (1024, True): 150, (65536, False): 200, (65536, True): 60}}
    return {"hs_n": 200, "rounds": 5, "calls": 200, "transport_rounds": 5, "profile_messages": 5000,
            "profile_repeats": 3,
            "counts": {(1024, False): 6000, (1024, True): 800, (65536, False): 1000, (65536, True): 300}}


def certificate(tmp: str) -> tuple[str, str]:
    """A `mta tls selfsigned` certificate (EC P-256), as the TLS bench makes one."""
    from mta.smtp.tls import selfsigned

    key, cert = selfsigned(tmp, "mta.example.test", days=2)
    return cert, key


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run(args, say) -> dict:
    import tls_cost_micro as micro
    import tls_cost_transport as transport
    from mta.bench.tlsutil import client_context

    st = settings(args.quick)
    tmp = tempfile.mkdtemp(prefix="mta-tls-cost-cert-")
    try:
        cert, key = certificate(tmp)
        t0 = time.monotonic()
        load0 = round(os.getloadavg()[0], 2)
        res = {"machine": {"python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION,
                           "cpus": os.cpu_count(), "commit": git_commit(), "quick": args.quick,
                           "command": "PYTHONPATH=python python benches/tls_cost.py " + " ".join(sys.argv[1:]),
                           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}}
        say("handshakes over MemoryBIO pairs ...")
        res["handshakes"] = micro.measure_handshakes(cert, key, st["hs_n"], st["rounds"])
        res["contexts"] = micro.measure_contexts(cert, key, st["rounds"], st["calls"])
        say("primitives and the record layer ...")
        res["primitives"] = micro.measure_primitives(st["rounds"], st["calls"]) + micro.measure_aead(
            SIZES, st["rounds"], st["calls"])
        res["records"] = micro.measure_records(cert, key, SIZES, st["rounds"], st["calls"])
        say("the uvloop transport (server and client in processes of their own) ...")
        res["transport"] = transport.measure_transport(lambda: micro.server_context(cert, key), client_context, SIZES,
                                                       st["counts"], st["transport_rounds"], say,
                                                       perf=args.perf and shutil.which("perf") is not None)
        if args.profile:
            import tls_cost_profile as prof

            say("the real server (mta run under mta bench send) ...")
            perf = args.perf and shutil.which("perf") is not None
            res["server"] = prof.profile(cert, key, st["profile_messages"], 50, perf,
                                         0 if args.quick else args.pyspy, say, st["profile_repeats"])
        res["machine"]["elapsed_s"] = round(time.monotonic() - t0, 1)
        # other work on the machine inflates CPU per operation (shared caches, frequency): say how busy it was
        res["machine"]["loadavg_before_after"] = [load0, round(os.getloadavg()[0], 2)]
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="A smoke run of about 30 s (fewer rounds, no py-spy).")
    p.add_argument("--out", metavar="PREFIX", help="Write PREFIX.json (every figure) and PREFIX.md (the tables).")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="Skip the real server (mta run under mta bench send, perf, py-spy).")
    p.add_argument("--no-perf", dest="perf", action="store_false", help="Measure the real server without perf record.")
    p.add_argument("--from-json", metavar="FILE", help="Measure nothing: print (and with --out write) the tables of a saved run.")
    p.add_argument("--pyspy", type=float, default=5.0, metavar="S",
                   help="Seconds of py-spy --native on the STARTTLS server (0: none; default 5; none with --quick).")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
    else:
        res = run(args, lambda m: print(m, file=sys.stderr, flush=True))
    text = markdown(res)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        if not args.from_json:
            Path(args.out + ".json").write_text(json.dumps(res, indent=2) + "\n")
        Path(args.out + ".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
