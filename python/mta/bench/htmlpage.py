"""One self-contained HTML page for a bench report: inline CSS, charts as data: URIs, the report's
tables, run facts and peers. Every text taken from the report passes through html.escape."""

from __future__ import annotations

import base64
from html import escape

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --zebra: #f6f8fa; --accent: #4269d0; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--fg); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 21px; margin: 40px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 17px; margin: 26px 0 6px; }
.caption, .note { color: var(--muted); margin: 0 0 10px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 16px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; }
pre { background: var(--zebra); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px;
      overflow-x: auto; font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 8px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: #eef1f5; font-weight: 600; }
tbody tr:nth-child(even) { background: var(--zebra); }
td.num, th.num { text-align: right; }
td.best { font-weight: 700; color: #0b3d91; }
figure { margin: 18px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 4px; }
.peer { border: 1px solid var(--line); border-radius: 8px; padding: 4px 16px 12px; margin: 14px 0; }
details summary { cursor: pointer; color: var(--accent); }
ul.failed li { color: #a40e26; }
"""


def _e(v) -> str:
    return escape(str(v), quote=True)


def table(t: dict) -> str:
    """A report table ({"title", "caption", "columns", "rows"} of cells {"text", "best"}) as HTML."""
    cols = t["columns"]
    head = "".join(f'<th class="{"num" if c.get("num") else "text"}" scope="col">{_e(c["name"])}</th>' for c in cols)
    body = []
    for line in t["rows"]:
        cells = []
        for c, cell in zip(cols, line):
            cls = ("num" if c.get("num") else "text") + (" best" if cell.get("best") else "")
            cells.append(f'<td class="{cls}">{_e(cell["text"])}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    caption = f'<p class="caption">{_e(t["caption"])}</p>' if t.get("caption") else ""
    return (f"<h3>{_e(t['title'])}</h3>{caption}<div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _peer(name: str, p: dict) -> str:
    out = [f'<section class="peer"><h3>{_e(name)}</h3><dl class="facts">']
    out += [f"<dt>{k}</dt><dd>{_e(p[k])}</dd>" for k in ("version", "durability", "notes") if p.get(k)]
    out.append("</dl>")
    if p.get("config"):
        out.append(f"<details><summary>config</summary><pre>{_e(p['config'])}</pre></details>")
    return "".join(out) + "</section>"


def page(title: str, facts: list[tuple[str, str]], command: str | None, tables: list[dict],
         charts: list[tuple[str, bytes]], peers: dict, failures: list[dict] = (), chart_note: str = "") -> str:
    """The whole page; charts are (title, PNG bytes), embedded so the file stands alone."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>", f"<h1>{_e(title)}</h1>"]
    out.append('<dl class="facts">' + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in facts) + "</dl>")
    if command:
        out.append(f"<pre><code>{_e(command)}</code></pre>")
    out.append('<p class="note">Medians over the trials that did not fail (min–max); '
               "the best value of each column in bold.</p>")
    if charts or chart_note:
        out.append("<h2>Charts</h2>")
    for name, png in charts:
        data = base64.b64encode(png).decode("ascii")
        out.append(f'<figure><img alt="{_e(name)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{_e(name)}</figcaption></figure>")
    if chart_note:
        out.append(f'<p class="note">{_e(chart_note)}</p>')
    if tables:
        out.append("<h2>Results</h2>")
        out += [table(t) for t in tables]
    if failures:
        out.append('<h2>Failed trials</h2><ul class="failed">')
        out += [f"<li>{_e(f['system'])} / {_e(f['workload'])} #{_e(f.get('repeat', 0) + 1)}: {_e(f['failed'])}</li>"
                for f in failures]
        out.append("</ul>")
    if peers:
        out.append("<h2>Peers</h2>")
        out += [_peer(name, p or {}) for name, p in peers.items()]
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
