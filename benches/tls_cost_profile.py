"""The real server for benches/tls_cost.py: `mta run` (as benches/mta-bench-tls.toml configures it)
under `mta bench send`, plaintext and STARTTLS, its CPU per message and `perf record -g` samples
grouped by shared object; py-spy --native top frames. Invariant: every process started is stopped."""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from mta.bench.procs import descendants, free_port, tree_cpu_seconds, wait_greeting

GROUPS = (  # first match wins: (group, pattern on the shared object's name)
    ("libcrypto (OpenSSL crypto)", r"libcrypto"),
    ("libssl (OpenSSL TLS)", r"libssl"),
    ("Python's _ssl module", r"_ssl\.cpython"),
    ("uvloop (loop.so)", r"uvloop|loop\.cpython"),
    ("mta._native (Rust)", r"_native|libmta"),
    ("Python interpreter", r"python3|libpython"),
    ("libc", r"libc[.-]"),
    ("kernel", r"kernel|vmlinux|\[kernel"),
)
CONFIG = """\
# written by benches/tls_cost.py: benches/mta-bench-tls.toml with this run's certificate
[smtp]
reverse_dns = false

[delivery]
tls = "{out_tls}"

[tls]
cert = "{cert}"
key = "{key}"
"""
MODES = (  # (label, the generator's STARTTLS, mta's outbound tls, the sink offers STARTTLS, per connection)
    ("plaintext in and out", False, "none", False, 1),
    ("STARTTLS in, plaintext out", True, "none", False, 1),
    ("STARTTLS in and out (outbound pooled: 100 per connection)", True, "opportunistic", True, 1),
    ("kept: plaintext in and out", False, "none", False, 100),
    ("kept: STARTTLS in, plaintext out", True, "none", False, 100),
    ("kept: STARTTLS in and out", True, "opportunistic", True, 100),
)


def group_of(dso: str) -> str:
    for name, pat in GROUPS:
        if re.search(pat, dso):
            return name
    return "other"


def group_dso_report(text: str) -> dict[str, float]:
    """`perf report --sort dso --stdio` text -> {group: % of samples}, every group listed."""
    out = {name: 0.0 for name, _ in GROUPS} | {"other": 0.0}
    for line in text.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S.*?)\s*$", line)
        if m:
            out[group_of(m.group(2))] += float(m.group(1))
    return {k: round(v, 1) for k, v in out.items()}


IDLE = ("epoll_wait", "epoll_pwait", "uv__io_poll")  # the loop waiting: not work
LOOP_THREAD = "asyncio/runners.py"  # under uvloop.run / asyncio.run: the event-loop thread's stacks


def top_frames(raw: str, n: int = 15) -> dict[str, list[tuple[str, float]]]:
    """py-spy `-f raw` (collapsed stacks: "a;b;c COUNT") -> the n most sampled leaf frames and
    innermost Python frames (file.py:line), as % of the event-loop thread's busy samples (other
    threads, idle in a pool or busy in the spool writer, and the loop's waits left out)."""
    leaves: collections.Counter = collections.Counter()
    pyframes: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, k = line.rpartition(" ")
        if not stack or not k.isdigit():
            continue
        frames = [f.strip() for f in stack.split(";")]
        if LOOP_THREAD not in stack or any(frames[-1].startswith(w) for w in IDLE):
            continue
        leaves[frames[-1]] += int(k)
        py = [f for f in frames if ".py:" in f]
        pyframes[py[-1] if py else "(no Python frame)"] += int(k)
        total += int(k)
    if not total:
        return {"leaves": [], "python": []}
    return {what: [(f, round(100 * c / total, 1)) for f, c in cnt.most_common(n)]
            for what, cnt in (("leaves", leaves), ("python", pyframes))}


def process_cpu(pid: int) -> float:
    """utime + stime of one process, in clock ticks (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
        return float(sum(int(x) for x in raw[raw.rindex(b")") + 2:].split()[11:13]))
    except (OSError, ValueError):
        return 0.0


def _start(argv: list[str], log, env) -> subprocess.Popen:
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, env=env)


def _stop(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(5)


def _queue_empty(spool: str, env) -> bool:
    r = subprocess.run([sys.executable, "-m", "mta", "queue", "list", "--spool", spool, "--json"],
                       capture_output=True, text=True, timeout=30, env=env, check=False)
    return r.returncode == 0 and r.stdout.strip() == "[]"


def run_mode(mode: tuple, cert: str, key: str, messages: int, sessions: int, perf: bool, pyspy_s: float,
             tmp: str, say) -> dict:
    label, starttls, out_tls, sink_tls, per_conn = mode
    env = dict(os.environ)
    cfg = os.path.join(tmp, "mta.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG.format(out_tls=out_tls, cert=cert, key=key))
    port, sport = free_port(), free_port()
    spool = os.path.join(tmp, "spool")
    log = open(os.path.join(tmp, "log"), "ab")  # noqa: SIM115 - closed in the finally below, after the servers stop
    sink = srv = None
    try:
        sink = _start([sys.executable, "-m", "mta", "bench", "sink", "--listen", f"127.0.0.1:{sport}", "--workers", "1",
                       "--quiet"] + ([] if sink_tls else ["--no-starttls"]), log, env)
        srv = _start([sys.executable, "-m", "mta", "run", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                      "--spool", spool, "--hostname", "mta.example.test", "--relay-to", f"127.0.0.1:{sport}"], log, env)
        if not (wait_greeting(sport, time.monotonic() + 30) and wait_greeting(port, time.monotonic() + 60)):
            raise RuntimeError(f"{label}: mta or the sink did not start (log: {tmp}/log)")
        send = [sys.executable, "-m", "mta", "bench", "send", "--target", f"127.0.0.1:{port}", "--sessions",
                str(sessions), "--per-connection", str(per_conn), "--quiet"] + (["--starttls"] if starttls else [])
        subprocess.run(send + ["--messages", "200"], check=True, timeout=120, env=env, stdout=subprocess.DEVNULL)
        pids = descendants(srv.pid)
        perf_data = os.path.join(tmp, "perf.data")
        rec = None
        if perf:
            rec = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-g", "-o", perf_data, "-p",
                                    ",".join(map(str, pids))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)  # attached before the load starts
        cpu0, t0 = tree_cpu_seconds(srv.pid), time.monotonic()
        out = os.path.join(tmp, "send.json")
        subprocess.run(send + ["--messages", str(messages), "--json", out], check=True, timeout=300, env=env,
                       stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not _queue_empty(spool, env) and time.monotonic() < deadline:
            time.sleep(0.2)
        cpu = tree_cpu_seconds(srv.pid) - cpu0
        wall = time.monotonic() - t0
        if rec is not None:
            rec.send_signal(signal.SIGINT)
            rec.wait(60)
        with open(out) as f:
            rep = json.load(f)
        row = {"mode": label, "per_connection": per_conn, "messages": rep["messages"], "errors": rep["errors"],
               "accepted_per_s": rep["messages_per_s"], "server_cpu_us_per_msg": round(cpu * 1e6 / max(1, rep["messages"]), 1),
               "server_cpu_share": round(cpu / wall, 2), "pids": len(pids)}
        if perf and os.path.exists(perf_data):
            rep_text = subprocess.run(["perf", "report", "-i", perf_data, "--no-children", "--sort", "dso", "--stdio",
                                       "-g", "none"], capture_output=True, text=True, timeout=300, check=False).stdout
            row["perf_dso_pct"] = group_dso_report(rep_text)
            row["perf_dso_raw"] = [ln.strip() for ln in rep_text.splitlines() if re.match(r"\s*[\d.]+%", ln)][:20]
            syms = subprocess.run(["perf", "report", "-i", perf_data, "--no-children", "--sort", "dso,sym", "--stdio",
                                   "-g", "none"], capture_output=True, text=True, timeout=300, check=False).stdout
            lines = [" ".join(ln.split()) for ln in syms.splitlines() if re.match(r"\s*[\d.]+%", ln)]
            row["perf_top_symbols"] = lines[:25]
            row["perf_top_openssl_symbols"] = [ln for ln in lines if "libcrypto" in ln or "libssl" in ln][:20]
        if pyspy_s and starttls and out_tls == "none" and shutil.which("py-spy"):
            row["pyspy"] = _pyspy(send, srv.pid, pyspy_s, tmp, env)
        say(f"  mta {label}: {row['accepted_per_s']}/s, {row['server_cpu_us_per_msg']} µs/msg")
        return row
    finally:
        _stop(srv)
        _stop(sink)
        log.close()
        shutil.rmtree(spool, ignore_errors=True)


def _pyspy(send: list[str], root: int, seconds: float, tmp: str, env) -> list:
    """The busiest worker (the tree's process using most CPU in the load) under py-spy --native."""
    pids = descendants(root)
    raw = os.path.join(tmp, "pyspy.txt")
    load = subprocess.Popen(send + ["--duration", str(seconds + 3), "--messages", "1000000"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = {p: process_cpu(p) for p in pids}
        time.sleep(1.0)
        busiest = max(pids, key=lambda p: process_cpu(p) - before[p])
        r = subprocess.run(["py-spy", "record", "--native", "-p", str(busiest), "-d", str(int(seconds)), "-f", "raw",
                            "-o", raw, "--nonblocking"], capture_output=True, text=True, timeout=seconds + 60, check=False)
        if r.returncode != 0 or not os.path.exists(raw):
            r = subprocess.run(["py-spy", "record", "--native", "-p", str(busiest), "-d", str(int(seconds)), "-f",
                                "raw", "-o", raw], capture_output=True, text=True, timeout=seconds + 60, check=False)
        with open(raw) as f:
            return {"pid_is_root": busiest == root, **top_frames(f.read())}
    except (OSError, subprocess.SubprocessError):
        return {}
    finally:
        load.wait(seconds + 60)


def profile(cert: str, key: str, messages: int, sessions: int, perf: bool, pyspy_s: float, say,
            repeats: int = 1) -> list[dict]:
    """Every mode `repeats` times in turn (A B C A B C: drift hits all alike); perf and py-spy in
    the first round only; the figures are medians over the rounds, each round's kept as well."""
    tmp = tempfile.mkdtemp(prefix="mta-tls-cost-")
    runs: dict[str, list[dict]] = {m[0]: [] for m in MODES}
    try:
        for r in range(repeats):
            for mode in MODES:
                try:
                    runs[mode[0]].append(run_mode(mode, cert, key, messages, sessions, perf and r == 0,
                                                  pyspy_s if r == 0 else 0, tmp, say))
                except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                    say(f"  mta {mode[0]}: failed: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for label, got in runs.items():
        if not got:
            rows.append({"mode": label, "failed": "every round failed (see the lines above)"})
            continue
        row = dict(got[0])
        for k in ("server_cpu_us_per_msg", "accepted_per_s", "server_cpu_share"):
            row[k] = round(statistics.median(g[k] for g in got), 2)
        row["rounds_cpu_us_per_msg"] = [g["server_cpu_us_per_msg"] for g in got]
        rows.append(row)
    return rows
