"""The parts of benches/queue_scale.py that read and write files, not servers: the JSON array
counter (bounded memory at 10M entries) and the Markdown tables of a report. Pure functions of
their inputs; queue_scale.py runs the servers and steps."""

from __future__ import annotations

import json
from pathlib import Path

MiB = 1 << 20


def count_json_array(path: Path) -> int:
    """Entries of a JSON array file, parsed one element at a time (bounded memory at 10M);
    ValueError unless it is one well-formed array of objects with an "id"."""
    dec = json.JSONDecoder()
    n, buf, pos, eof = 0, "", 0, False
    with open(path, encoding="utf-8") as f:
        def more() -> bool:
            nonlocal buf, pos, eof
            chunk = f.read(1 << 20)
            buf, pos, eof = buf[pos:] + chunk, 0, not chunk
            return bool(chunk)

        def skip() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not more():
                    return buf[pos] if pos < len(buf) else ""

        if skip() != "[":
            raise ValueError("not a JSON array")
        pos += 1
        if skip() == "]":
            pos += 1
        else:
            while True:
                skip()  # raw_decode takes no leading whitespace
                try:
                    obj, end = dec.raw_decode(buf, pos)
                except ValueError:
                    if eof or not more():
                        raise
                    continue
                if not isinstance(obj, dict) or "id" not in obj:
                    raise ValueError(f"entry {n} is not a message object")
                n, pos = n + 1, end
                sep = skip()
                pos += 1
                if sep == "]":
                    break
                if sep != ",":
                    raise ValueError(f"expected , or ] after entry {n}, got {sep!r}")
        if skip():
            raise ValueError("data after the array")
    return n


def fmt_s(v) -> str:
    return "" if v is None else f"{v:.2f} s" if v < 100 else f"{v:.0f} s"


def fmt_rate(v) -> str:
    return "" if not v else f"{v:,.0f}/s"


def fmt_b(v) -> str:
    return "" if not v else f"{v / MiB:,.0f} MiB" if v < 10 * 1024 * MiB else f"{v / (1024 * MiB):.2f} GiB"


def rows(trial: dict) -> list[tuple[str, str, str, str, str, str]]:
    """(step, time, rate, RSS peak, RSS end, notes) per step of one N."""
    out = []
    for name, st in trial["steps"].items():
        if st["status"] != "ok":
            out.append((name, "", "", "", "", f"{st['status'].upper()}: {st['reason']}"[:300]))
            continue
        peak, end, notes = st.get("rss_peak"), st.get("rss_end"), []
        t = st.get("seconds")
        if name == "idle":
            t = st["listening_s"]
            notes.append(f"start to listening; PSS {fmt_b(st['pss_end'])}; empty queue: the baseline")
        elif name == "accept":
            notes.append(f"{st['accepted']:,} accepted; PSS peak {fmt_b(st['pss_peak'])}, end {fmt_b(st['pss_end'])}; "
                         f"{st['rss_per_message']:,.0f} B RSS/queued msg; spool {fmt_b(st['spool_bytes'])}")
            if "deferred_after_s" in st:
                notes.append(f"all deferred {st['deferred_after_s']:.1f} s after the last 250")
        elif name == "restart":
            rec = st["recovery_s"]
            rep = st.get("recovery_report_s")
            notes.append(f"to listening; recovery done {fmt_s(rec) if rec is not None else 'not logged'}"
                         + (f" (spool recovery report at {fmt_s(rep)})" if rep is not None else "") + "; "
                         f"{st['rss_per_message']:,.0f} B RSS/queued msg; stop {fmt_s(st['stop_s'])}; "
                         f"{st['attempts_after_restart']} attempts after it")
        elif name.startswith(("list", "summary")):
            peak = st["cli_max_rss"]
            notes.append("RSS peak: the CLI's max RSS" + (f"; {st['entries']:,} entries" if "entries" in st else "")
                         + (f"; total {st['total']:,}" if "total" in st else ""))
        elif name.endswith("ALL"):
            notes.append(f"worker; {st['said']!r}" + (f"; all deferred again in {st['deferred_again_s']:.1f} s"
                                                      if "deferred_again_s" in st else ""))
        elif name == "drain":
            if "restart_listening_s" in st:
                notes.append("--no-delivery: restarted with delivery on, timed from the exec")
            notes.append(f"{st['drained']:,} delivered; spool {fmt_b(st['spool_bytes_start'])} -> "
                         f"{fmt_b(st['spool_bytes_mid'])} (half) -> {fmt_b(st['spool_bytes_end'])} (end)")
        elif name == "postfix":
            notes.append(f"{st['accepted']:,} accepted; PSS of Postfix's tree (peak/end), not RSS; "
                         f"`mailq` {fmt_s(st['mailq']['seconds'])}: {st['mailq']['last_line']}")
            peak, end = st["pss_peak"], st["pss_end"]
        out.append((name, fmt_s(t), fmt_rate(st.get("rate")), fmt_b(peak), fmt_b(end), "; ".join(notes)))
    return [tuple(" ".join(c.split()).replace("|", "\\|") for c in row) for row in out]  # one table line each


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# Queue at scale (issue 25)\n", f"`{report['command']}`\n",
             (f"{m.get('cpus')} CPUs ({m.get('cpu_model', '')}), {m.get('memory_gib')} GiB; spool on "
              f"{m.get('disk', {}).get('fstype', '?')}; {report['started']}\n")]
    for trial in report["trials"]:
        mode = "delivery on, next hop down" if trial["delivery"] else "--no-delivery"
        lines += [f"\n## {trial['messages']:,} messages of {report['size']} bytes ({mode})\n",
                  "| step | time | rate | RSS peak | RSS end | notes |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows(trial)]
    return "\n".join(lines) + "\n"
