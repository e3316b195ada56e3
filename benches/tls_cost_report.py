"""Markdown for benches/tls_cost.py: one table per measurement and the derived breakdown (where the
extra CPU per message of STARTTLS goes). Invariant: pure (figures in, text out); a missing part is skipped."""

from __future__ import annotations


def _t(head: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_c(x) for x in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _c(x) -> str:
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}" if abs(x) >= 10 else f"{x:,.2f}"
    if isinstance(x, int):
        return f"{x:,}"
    return "" if x is None else str(x)


def _find(rows: list[dict], **kw) -> dict | None:
    for r in rows or []:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def transport_delta(res: dict, size: int, conns: str, key: str = "server_us") -> float | None:
    plain = _find(res.get("transport"), size=size, connections=conns, security="plain")
    tls = _find(res.get("transport"), size=size, connections=conns, security="TLS")
    return round(tls[key] - plain[key], 1) if plain and tls else None


def breakdown(res: dict) -> list[list]:
    """Inbound, 1 KiB, one message per connection: the real server's extra µs per message split
    into the handshake in OpenSSL, the record layer, the rest of the event-loop transport, and
    what is left (mta's own STARTTLS session work: STARTTLS, the second EHLO, start_tls)."""
    rows = []
    hs = (res.get("handshakes") or [{}])[0].get("server_us")
    rec = _find(res.get("records"), size=1024)
    rec_us = rec["open_us"] if rec else None  # the reader uvloop uses for an asyncio.Protocol (first row)
    tr = transport_delta(res, 1024, "one message per connection")
    srv = res.get("server") or []
    plain = _find(srv, mode="plaintext in and out")
    tls_in = _find(srv, mode="STARTTLS in, plaintext out")
    total = None
    if plain and tls_in and "failed" not in plain and "failed" not in tls_in:
        total = round(tls_in["server_cpu_us_per_msg"] - plain["server_cpu_us_per_msg"], 1)
        rows.append(["mta run, STARTTLS in minus plaintext (all of it)", total, "100%"])
    parts = []
    if hs is not None:
        parts.append(("TLS 1.3 full handshake in OpenSSL (server side, MemoryBIO)", hs))
    if rec_us is not None:
        # the replies mta writes are a few hundred bytes: their sealing is noise beside the message's opening
        parts.append(("record layer: open the 1 KiB message (SSLObject.read)", rec_us))
    if tr is not None and hs is not None and rec_us is not None:
        parts.append(("uvloop SSLProtocol beyond those two (passes, copies, more packets, close_notify)",
                      round(tr - hs - rec_us, 1)))
    if total is not None and tr is not None:
        parts.append(("the rest: mta's STARTTLS session work (STARTTLS, 2nd EHLO, start_tls, TlsInfo)",
                      round(total - tr, 1)))
    for name, us in parts:
        rows.append([name, us, f"{100 * us / total:.0f}%" if total else ""])
    return rows


def _perf_table(title: str, cols: list[tuple[str, float, dict]]) -> list[str]:
    """cols: (column name, CPU µs per message, {group: %}); a group's µs = its share of that CPU."""
    if not cols:
        return []
    head = ["shared object"] + [f"{name}: % / µs per msg" for name, _, _ in cols]
    rows = [[g] + [f"{pct[g]:.1f}% / {pct[g] * us / 100:,.0f}" for _, us, pct in cols] for g in cols[0][2]]
    return [title + "\n", _t(head, rows), "µs per message = the share times that column's CPU per message.\n"]


def outbound(res: dict) -> list[list]:
    """Outbound, per connection (mta as the client, 1 KiB, one message per connection): the
    client context mta builds per connection today, the client's handshake in OpenSSL, the
    event-loop transport beyond it (the bench client reuses one context), and per message
    on a pooled connection of 100."""
    ctx = res.get("contexts") or []
    hs = (res.get("handshakes") or [{}])[0].get("client_us")
    rec = _find(res.get("records"), size=1024)
    tr = transport_delta(res, 1024, "one message per connection", "client_us")
    if not (len(ctx) >= 2 and hs is not None and rec and tr is not None):
        return []
    beyond = round(tr - hs - rec["seal_us"], 1)
    conn = round(ctx[0]["us"] + tr, 1)
    return [["a new opportunistic client context (ssl.SSLContext, CERT_NONE)", ctx[0]["us"]],
            ["TLS 1.3 full handshake in OpenSSL (client side, MemoryBIO)", hs],
            ["record layer: seal the 1 KiB message", rec["seal_us"]],
            ["uvloop SSLProtocol beyond those (client side)", beyond],
            ["**per opportunistic connection**", conn],
            ["verified TLS instead: ssl.create_default_context() per connection", ctx[1]["us"]],
            ["per message on a pooled connection of 100 (opportunistic)", round(conn / 100, 1)]]


def markdown(res: dict) -> str:
    m = res.get("machine", {})
    out = ["# TLS cost breakdown (benches/tls_cost.py)\n",
           (f"{m.get('date', '')}, commit {m.get('commit', '?')}, Python {m.get('python')}, {m.get('openssl')}, "
            f"{m.get('cpus')} CPUs{', --quick' if m.get('quick') else ''}; {m.get('elapsed_s', '?')} s; load average "
            f"{' -> '.join(str(x) for x in m.get('loadavg_before_after', []))}. "
            "CPU µs per operation (thread or process CPU time), medians of rounds.\n"),
           f"`{m['command']}`\n" if m.get("command") else ""]
    bd = breakdown(res)
    if bd:
        out += ["## Where STARTTLS's extra CPU per message goes (inbound, 1 KiB, one message per connection)\n",
                _t(["part", "µs / message", "share"], bd)]
    ob = outbound(res)
    if ob:
        out += ["## Outbound: what STARTTLS adds per connection mta opens (1 KiB, one message)\n",
                _t(["part", "µs"], ob)]
    if res.get("handshakes"):
        out += ["## Handshakes over MemoryBIO pairs (mta's server context, the opportunistic client context)\n",
                _t(["handshake", "server µs", "client µs", "resumed", "version, cipher"],
                   [[r["handshake"], r["server_us"], r["client_us"], f"{100 * r['resumed_share']:.0f}%",
                     f"{r['version']} {r['cipher']}"] for r in res["handshakes"]]),
                "Client µs include making its SSLObject and reading the tickets.\n"]
    if res.get("contexts"):
        out += ["## Contexts and objects\n", _t(["operation", "µs", "min", "max"],
                                                 [[r["op"], r["us"], r["min"], r["max"]] for r in res["contexts"]])]
    if res.get("primitives"):
        out += ["## The handshake's primitives (`cryptography`: OpenSSL plus a Python call)\n",
                _t(["operation", "µs", "min", "max"], [[r["op"], r["us"], r["min"], r["max"]] for r in res["primitives"]])]
    if res.get("records"):
        out += ["## Record layer: SSLObject write and the peer's read, over MemoryBIOs\n",
                _t(["size", "reader", "seal (write) µs", "MB/s", "open (read) µs", "MB/s", "plain copy µs", "MB/s"],
                   [[f"{r['size'] // 1024} KiB", r["reader"], r["seal_us"], r["seal_MBps"], r["open_us"], r["open_MBps"],
                     r["copy_us"], r["copy_MBps"]] for r in res["records"]])]
    if res.get("transport"):
        rows = []
        for r in res["transport"]:
            plain = _find(res["transport"], size=r["size"], connections=r["connections"], security="plain")
            d = (lambda k, r=r, plain=plain: round(r[k] - plain[k], 1) if plain and r is not plain else None)
            rows.append([f"{r['size'] // 1024} KiB", r["connections"], r["security"], r["server_us"], d("server_us"),
                         r["client_us"], d("client_us"), r["server_rate"], f"{100 * r['resumed_share']:.0f}%"])
        out += ["## The event-loop transport: uvloop server and client on loopback, processes of their own\n",
                _t(["size", "connections", "security", "server µs/msg", "server − plain", "client µs/msg",
                    "client − plain", "server msgs/s", "resumed"], rows),
                ("Implicit TLS (`create_server(ssl=)`/`create_connection(ssl=)`), 10 connections, a 14-byte "
                 "reply per message; the server's CPU over the counted messages (a warm-up excluded).\n")]
        out += _perf_table("### The transport's server under perf record: samples by shared object (self time)",
                           [(f"{r['size'] // 1024} KiB, {r['connections']}, {r['security']}", r["server_us"],
                             r["perf_dso_pct"]) for r in res["transport"] if r.get("perf_dso_pct")])
    srv = [r for r in res.get("server") or [] if "failed" not in r]
    if srv:
        def base(r: dict) -> float:  # the plaintext mode with as many messages per connection
            plain = [p for p in srv if p["mode"].endswith("plaintext in and out")
                     and p.get("per_connection", 1) == r.get("per_connection", 1)]
            return plain[0]["server_cpu_us_per_msg"] if plain else float("nan")

        out += [("## The real server: `mta run` under `mta bench send` (1 KiB, 50 sessions; one message per "
                 "connection, or kept: 100)\n"),
                _t(["mode", "accepted/s", "server CPU µs/msg", "minus plaintext", "CPU busy (cores)", "rounds µs/msg"],
                   [[r["mode"], r["accepted_per_s"], r["server_cpu_us_per_msg"],
                     round(r["server_cpu_us_per_msg"] - base(r), 1), r["server_cpu_share"],
                     ", ".join(f"{x:,.0f}" for x in r.get("rounds_cpu_us_per_msg", []))] for r in srv]),
                ("CPU of mta's process tree (workers, delivery) from the load's start to the queue's drain, "
                 "per accepted message; medians of the rounds (modes in turn), perf and py-spy in the first.\n")]
        with_perf = [r for r in srv if r.get("perf_dso_pct")]
        out += _perf_table("### mta under perf record -g: samples by shared object (self time)",
                           [(r["mode"], r["server_cpu_us_per_msg"], r["perf_dso_pct"]) for r in with_perf])
        for r in with_perf:
            for key, what in (("perf_top_symbols", "top symbols"), ("perf_top_openssl_symbols", "top OpenSSL symbols")):
                if r.get(key):
                    out += [f"<details><summary>{what}, {r['mode']}</summary>\n\n```\n"
                            + "\n".join(r[key][:20]) + "\n```\n</details>\n"]
        for r in srv:
            ps = r.get("pyspy") or {}
            if ps.get("leaves"):
                who = "the main process" if ps.get("pid_is_root") else "a child process"
                out += [f"### py-spy --native on the busiest process ({who}), {r['mode']}\n",
                        "Shares of the busy samples (the event loop's waits left out).\n",
                        _t(["leaf frame", "%"], ps["leaves"]), _t(["innermost Python frame", "%"], ps["python"])]
    for r in res.get("server") or []:
        if "failed" in r:
            out.append(f"- real server, {r['mode']}: failed: {r['failed']}\n")
    return "\n".join(out)
