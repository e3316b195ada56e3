"""The charts of a bench report, drawn with matplotlib (the `chart` extra) from summary rows:
one Figure per file, sized DPI x figsize exactly, every system in the legend, none drawn without data.
Figures are built without pyplot, so no global backend or figure registry is touched."""

from __future__ import annotations

import math
import os

DPI = 100
_COLORS = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#3ca951", "#ff8ab7", "#a463f2", "#97bbf5", "#9c6b4e",
           "#9498a0"]


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(w: float, h: float, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    fig.suptitle(title, fontweight="bold")
    return fig


def _label(name: str) -> str:
    # matplotlib hides legend labels starting with "_" and reads "$...$" as math
    name = name.replace("$", r"\$")
    return " " + name if name.startswith("_") else name


def _legend(fig, systems: list[str]) -> None:
    from matplotlib.patches import Patch

    seen: dict[str, object] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    for k, s in enumerate(systems):
        # every system stays in the legend, so a peer that drew nothing is seen to be missing
        if _label(s) not in seen:
            seen[_label(s) + " (no data)"] = Patch(facecolor="none", edgecolor=_COLORS[k % len(_COLORS)])
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(len(seen), 6),
                   frameon=False)


def _throughput(r: dict) -> tuple:
    """(median, min, max) of what a row is judged by: end to end when relayed, else accepted."""
    key = "end_to_end_per_s" if r["kind"] == "end-to-end" else "messages_per_s"
    return r[key], r[key + "_min"], r[key + "_max"]


def _p99(r: dict) -> tuple:
    return r["p99_ms"], r["p99_ms_min"], r["p99_ms_max"]


BAR_COLUMNS = 3


def bar_size(n_workloads: int, n_systems: int) -> tuple[float, float]:
    """A panel per workload (each with its own scale: 1 MiB and accept-only rates differ by
    100x), up to BAR_COLUMNS in a row."""
    cols = min(BAR_COLUMNS, max(1, n_workloads))
    rows = -(-max(1, n_workloads) // cols)
    return cols * max(3.5, 0.5 * n_systems + 1.2), 3.2 * rows + 1.0


def _bars(rows: list[dict], systems: list[str], value, title: str, ylabel: str):
    """A panel per workload, a bar per system with its median written on it, whiskers min–max."""
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    by = {(r["workload"], r["system"]): value(r) for r in rows}
    if not any(v[0] is not None for v in by.values()):
        return None
    fig = _figure(*bar_size(len(workloads), len(systems)), title)
    cols = min(BAR_COLUMNS, len(workloads))
    grid = fig.subplots(-(-len(workloads) // cols), cols, squeeze=False)
    for i, w in enumerate(workloads):
        ax = grid[i // cols][i % cols]
        for k, s in enumerate(systems):
            v = by.get((w, s), (None,))
            if v[0] is None:
                continue
            bar = ax.bar([k], [v[0]], 0.8, yerr=[[v[0] - v[1]], [v[2] - v[0]]], capsize=3, label=_label(s),
                         color=_COLORS[k % len(_COLORS)])
            ax.bar_label(bar, labels=[f"{v[0]:,.0f}" if v[0] >= 10 else f"{v[0]:.2g}"], fontsize=7, padding=2)
        ax.set_title(w)
        ax.set_xticks([])
        ax.set_ylabel(ylabel if i % cols == 0 else "")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.margins(y=0.15)
    for j in range(len(workloads), grid.shape[0] * cols):
        grid[j // cols][j % cols].set_visible(False)
    _legend(fig, systems)
    return fig


def _sweep(rows: list[dict], systems: list[str], param: str):
    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig = _figure(11, 4 * len(workloads), f"{param} sweep: throughput and p99 latency (median, band min–max)")
    values = [r["sweep"]["value"] for r in rows]
    log = param == "sessions" or (min(values) > 0 and max(values) / min(values) >= 100)
    for i, w in enumerate(workloads):
        axes = (fig.add_subplot(len(workloads), 2, 2 * i + 1), fig.add_subplot(len(workloads), 2, 2 * i + 2))
        for (ax, value, ylabel) in zip(axes, (_throughput, _p99), ("messages/s", "p99 latency ms")):
            for k, s in enumerate(systems):
                pts = sorted((r["sweep"]["value"], value(r)) for r in rows
                             if r["workload"] == w and r["system"] == s and value(r)[0] is not None)
                if not pts:
                    continue
                xs = [x for x, _ in pts]
                color = _COLORS[k % len(_COLORS)]
                ax.plot(xs, [v[0] for _, v in pts], marker="o", label=_label(s), color=color)
                ax.fill_between(xs, [v[1] for _, v in pts], [v[2] for _, v in pts], alpha=0.2, color=color)
            if log:
                ax.set_xscale("log")
            # the swept values themselves as ticks: "50 sessions" reads better than 10^1.7
            ax.set_xticks(sorted(set(values)), [_tick(param, v) for v in sorted(set(values))])
            ax.minorticks_off()
            if value is _p99:  # peers' tails differ by 100x: a linear axis flattens all but the worst
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter("{x:g}")
            ax.set_xlabel(param)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{w}: {ylabel.split()[0]}")
            ax.grid(alpha=0.3)
    _legend(fig, systems)
    return fig


def _tick(param: str, v) -> str:
    if param == "size":
        return next((f"{v / k:g} {unit}" for unit, k in (("MiB", 2**20), ("KiB", 2**10)) if v >= k), f"{v:g} B")
    return f"{v:g}"


def _cdf(rows: list[dict], systems: list[str]):
    from matplotlib.ticker import FuncFormatter

    workloads = list(dict.fromkeys(r["workload"] for r in rows if r.get("latency_cdf_ms")))
    if not workloads:
        return None
    ncols = min(2, len(workloads))
    nrows = math.ceil(len(workloads) / ncols)
    fig = _figure(5.5 * ncols, 4 * nrows, "latency distribution (the median trial)")
    for i, w in enumerate(workloads):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for k, s in enumerate(systems):
            r = next((r for r in rows if r["workload"] == w and r["system"] == s and r.get("latency_cdf_ms")), None)
            # a log axis cannot show 0 ms; those points sit left of every real latency anyway
            pts = [(ms, pct) for pct, ms in (r["latency_cdf_ms"] if r else ()) if ms > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=_label(s), color=_COLORS[k % len(_COLORS)])
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.set_ylim(0, 100)
        ax.set_xlabel("latency ms")
        ax.set_ylabel("percentile")
        ax.set_title(w)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, systems)
    return fig


def _open_loop(rows: list[dict], systems: list[str], bound):
    groups = list(dict.fromkeys((r["workload"], _point(r)) for r in rows))
    fig = _figure(11, 4 * len(groups), "open loop: achieved throughput and p99 latency against the offered rate")
    for i, (w, point) in enumerate(groups):
        mine = [r for r in rows if r["workload"] == w and _point(r) == point]
        offered = sorted({r["rate"] for r in mine})
        left, right = fig.add_subplot(len(groups), 2, 2 * i + 1), fig.add_subplot(len(groups), 2, 2 * i + 2)
        left.plot(offered, offered, linestyle="--", color="#888888", label="offered")
        if bound is not None:
            right.axhline(bound, linestyle="--", color="#c00000", label=f"p99 bound {bound:g} ms")
        for k, s in enumerate(systems):
            pts = sorted((r["rate"], _throughput(r)[0], r["p99_ms"]) for r in mine if r["system"] == s)
            color = _COLORS[k % len(_COLORS)]
            for ax, j in ((left, 1), (right, 2)):
                got = [(p[0], p[j]) for p in pts if p[j] is not None]
                if got:
                    ax.plot([g[0] for g in got], [g[1] for g in got], marker="o", label=_label(s), color=color)
        for ax, ylabel in ((left, "achieved messages/s"), (right, "p99 latency ms")):
            ax.set_xlabel("offered messages/s")
            ax.set_ylabel(ylabel)
            ax.set_title(w + point)
            ax.grid(alpha=0.3)
    _legend(fig, systems)
    return fig


def _point(r: dict) -> str:
    return f" ({r['sweep']['param']} = {r['sweep']['value']})" if r.get("sweep") else ""


def figures(rows: list[dict], meta: dict, names=None) -> list[dict]:
    """[{"name": file stem, "title", "figure"}] for every chart with data (only `names` if given)."""
    systems = list(dict.fromkeys(r["system"] for r in rows))
    standard = [r for r in rows if r.get("sweep") is None and r.get("rate") is None]
    swept = [r for r in rows if r.get("sweep") is not None and r.get("rate") is None]
    rated = [r for r in rows if r.get("rate") is not None]
    plans = [("throughput", "throughput per workload (median, whiskers min–max)",
              lambda t: _bars(standard, systems, _throughput, t, "messages/s (end to end when relayed)")),
             ("p99", "p99 latency per workload (median, whiskers min–max)",
              lambda t: _bars(standard, systems, _p99, t, "p99 latency ms"))]
    for param in dict.fromkeys(r["sweep"]["param"] for r in swept):
        mine = [r for r in swept if r["sweep"]["param"] == param]
        plans.append((f"sweep-{param}", f"{param} sweep", lambda t, mine=mine, p=param: _sweep(mine, systems, p)))
    plans.append(("latency-cdf", "latency distribution", lambda t: _cdf(standard, systems)))
    if rated:
        plans.append(("open-loop", "open loop", lambda t: _open_loop(rated, systems, meta.get("p99_max_ms"))))
    out = []
    for name, title, draw in plans:
        if names is not None and name not in names:
            continue
        fig = draw(title)
        if fig is not None:
            out.append({"name": name, "title": title, "figure": fig})
    return out


def save(fig, png: str, svg: str | None = None) -> None:
    """PNG at DPI; SVG with its text kept as text (searchable), no timestamp so reruns compare."""
    import matplotlib

    fig.savefig(png, dpi=DPI, format="png")
    if svg:
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "mta-bench"}):
            fig.savefig(svg, format="svg", metadata={"Date": None})


def write_all(rows: list[dict], meta: dict, out_dir: str, svg: bool = False, names=None,
              stem: str | None = None) -> list[dict]:
    """Every chart (only `names` if given) into out_dir as NAME.png (and NAME.svg), or as STEM.png
    when one chart is asked for under another name; [{"name", "title", "png", "svg"}]."""
    made = []
    for f in figures(rows, meta, names):
        base = os.path.join(out_dir, stem or f["name"])
        png, vec = base + ".png", base + ".svg" if svg else None
        save(f["figure"], png, vec)
        made.append({"name": f["name"], "title": f["title"], "png": png, "svg": vec})
    return made
