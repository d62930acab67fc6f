"""Self-contained HTML reports of ``protlm predict`` without ``--head``: one page per protein and an
index. Inline CSS only — no script, no font, no CDN: a page opens offline, in a mail attachment or
on an air-gapped machine.

A protein's page shows its sequence in rows of 60 residues with every per-residue class target
(Q3, Q8) as a coloured track under it (one cell per residue, darker = more confident), the full
state strings (copyable), a bar per class of every per-protein class target, and every value.
With a contact predictor it also has a "Contact map" section: an inline SVG (no script) of the
top-L predicted pairs as squares in the upper triangle of an L × L frame, darker = more probable,
with axis ticks every 50 or 100 residues, and a table of the top L/5 long-range pairs (|i − j| ≥ 24).
"""

from __future__ import annotations

import html
from urllib.parse import quote

from protlm.predictors.predictor import split_name

ROW = 60

#: Colours of secondary-structure states (helices warm, strands blue, the rest greys/greens).
STATE_COLOURS = {"H": "#d62728", "G": "#ff7f0e", "I": "#e377c2", "E": "#1f77b4", "B": "#17becf",
                 "T": "#2ca02c", "S": "#bcbd22", "C": "#b0b0b0"}
_FALLBACK = ["#8c564b", "#9467bd", "#7f7f7f", "#aec7e8", "#98df8a", "#ffbb78"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em;color:#222;max-width:72em}
h1{font-size:1.4em;margin-bottom:.2em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left}
th{background:#f5f5f5}
.seq{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.25}
.blk{margin-bottom:.7em}.ln{display:flex}.lab{width:5.5em;color:#777;text-align:right;padding-right:.6em;flex:none}
.ln i{display:inline-block;width:1ch;text-align:center;font-style:normal;color:#fff}
.c0{opacity:.35}.c1{opacity:.45}.c2{opacity:.55}.c3{opacity:.65}.c4{opacity:.75}.c5{opacity:.85}.c6{opacity:.93}.c7{opacity:1}
.bar{background:#eee;width:20em;height:1em;display:inline-block;vertical-align:middle}
.bar i{display:block;height:100%;background:#4c78a8}
.best{font-weight:600}
pre.str{white-space:pre-wrap;word-break:break-all;font-size:12px;background:#fafafa;padding:.5em;border:1px solid #eee}
.key span{display:inline-block;padding:0 .4em;margin-right:.3em;color:#fff;border-radius:2px}
.note{font-size:.85em;color:#555}
"""
#: The contact map's drawing: its frame's side and margins (px), and the squares' colour.
MAP_SIDE, MAP_LEFT, MAP_TOP, MAP_RIGHT, MAP_BOTTOM = 420, 44, 28, 10, 10
MAP_COLOUR = "#08519c"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _colours(classes: list[str]) -> dict[str, str]:
    out, k = {}, 0
    for c in classes:
        if c in STATE_COLOURS:
            out[c] = STATE_COLOURS[c]
        else:
            out[c] = _FALLBACK[k % len(_FALLBACK)]
            k += 1
    return out


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _conf_class(p: float) -> str:
    return f"c{min(7, max(0, int((p - 0.3) / 0.1)))}"  # 0.3 … 1.0 in eight steps


def target_label(pname: str, tname: str) -> str:
    """A target's label on the pages: ``q3`` for a predictor of the default embedder,
    ``q3@unirep1900`` for another's (so both can be on one page)."""
    task, embedder = split_name(pname)
    return tname if pname == task else f"{tname}@{embedder}"


def _who(pname: str) -> str:
    """``localization, unirep64``: which predictor, on which embedder."""
    task, embedder = split_name(pname)
    return f"{task}, {embedder}"


def residue_tracks(protein: dict) -> list[tuple[str, dict]]:
    """(label, row) of every per-residue class target of a protein."""
    out = []
    for pname, targets in protein["predictions"].items():
        for tname, row in targets.items():
            if isinstance(row.get("prediction"), str) and isinstance(row.get("confidence"), list):
                out.append((target_label(pname, tname), row))
    return out


def protein_page(protein: dict, cards: dict[str, dict], index_href: str = "../index.html") -> str:
    """The HTML page of one protein (``protein``: a record of predictions.json)."""
    pid, seq = protein["id"], protein["sequence"]
    tracks = residue_tracks(protein)
    parts = [f"<p class=\"meta\"><a href=\"{_e(index_href)}\">← all proteins</a></p>",
             f"<h1>{_e(pid)}</h1>",
             f"<p class=\"meta\">{len(seq):,} residues · predictors: "
             f"{_e(', '.join(protein['predictions']))}</p>"]

    # per-protein results first: they are one line each
    summary = []
    for pname, targets in protein["predictions"].items():
        for tname, row in targets.items():
            if "probabilities" in row and isinstance(row.get("probabilities"), dict):
                bars = []
                best = row["prediction"]
                for c, p in sorted(row["probabilities"].items(), key=lambda kv: -kv[1]):
                    cls = " class=\"best\"" if c == best else ""
                    bars.append(f"<tr><td{cls}>{_e(c)}</td><td><span class=\"bar\"><i style=\"width:{100 * p:.1f}%\">"
                                f"</i></span></td><td>{p:.3f}</td></tr>")
                summary.append(f"<h3>{_e(target_label(pname, tname))} <span class=\"meta\">({_e(_who(pname))})"
                               f"</span>: <span class=\"best\">{_e(best)}</span> ({row['probability']:.3f})</h3>"
                               f"<table>{''.join(bars)}</table>")
            elif "value" in row and not isinstance(row.get("value"), list):
                v = row["value"]
                summary.append(f"<h3>{_e(target_label(pname, tname))} <span class=\"meta\">({_e(_who(pname))})"
                               f"</span>: {'–' if v is None else f'{v:.4f}'}</h3>")
            elif isinstance(row.get("values"), list):  # per-residue values
                vals = ", ".join("–" if v is None else f"{v:.3f}" for v in row["values"])
                summary.append(f"<h3>{_e(target_label(pname, tname))} <span class=\"meta\">({_e(_who(pname))}, "
                               f"per residue)</span></h3>"
                               f"<pre class=\"str\">{_e(vals)}</pre>")
    if summary:
        parts.append("<h2>Per protein</h2>" + "".join(summary))

    # the sequence with a coloured track per per-residue class target
    parts.append("<h2>Sequence" + (" and per-residue predictions" if tracks else "") + "</h2>")
    if tracks:
        keys = []
        for label, row in tracks:
            col = _colours(row.get("classes") or sorted(set(row["prediction"])))
            keys.append(f"<div class=\"key\">{_e(label)}: " + "".join(
                f"<span style=\"background:{c}\">{_e(s)}</span>" for s, c in col.items()) + "</div>")
        parts.append("<div class=\"note\">" + "".join(keys) +
                     "Darker cells: higher confidence (the predicted state's probability).</div>")
    # one CSS class per (track, state): a cell is <i class="t0k1 c7" title="…">H</i>
    styles, cls_of = [], []
    for t, (label, row) in enumerate(tracks):
        col = _colours(row.get("classes") or sorted(set(row["prediction"])))
        cls_of.append({state: f"t{t}k{k}" for k, state in enumerate(col)})
        styles += [f".t{t}k{k}{{background:{c}}}" for k, c in enumerate(col.values())]
    widest = max((len(label) for label, _ in tracks), default=0)
    if widest > 7:  # a track of another embedder (q3@unirep1900): a label column that fits it
        styles.append(f".lab{{width:{widest + 1}ch}}")
    if styles:
        parts.append(f"<style>{''.join(styles)}</style>")
    blocks = []
    for start in range(0, len(seq), ROW):
        stop = min(start + ROW, len(seq))
        lines = [f"<div class=\"ln\"><span class=\"lab\">{start + 1}</span><span>{_e(seq[start:stop])}</span></div>"]
        for t, (label, row) in enumerate(tracks):
            cells = []
            for pos, (s, p) in enumerate(zip(row["prediction"][start:stop], row["confidence"][start:stop]),
                                         start + 1):
                cells.append(f"<i class=\"{cls_of[t].get(s, '')} {_conf_class(p)}\" title=\"{pos} {_e(s)} {p:.2f}\">"
                             f"{_e(s)}</i>")
            lines.append(f"<div class=\"ln\"><span class=\"lab\">{_e(label)}</span><span>{''.join(cells)}"
                         f"</span></div>")
        blocks.append(f"<div class=\"blk\">{''.join(lines)}</div>")
    parts.append(f"<div class=\"seq\">{''.join(blocks)}</div>")

    parts.append("<h2>As text</h2>")
    parts.append(f"<p class=\"meta\">sequence</p><pre class=\"str\">{_e(seq)}</pre>")
    for label, row in tracks:
        mean = sum(row["confidence"]) / max(len(row["confidence"]), 1)
        parts.append(f"<p class=\"meta\">{_e(label)} (mean confidence {mean:.3f})</p>"
                     f"<pre class=\"str\" id=\"{_e(label)}\">{_e(row['prediction'])}</pre>")
    for pname, targets in protein["predictions"].items():
        for tname, row in targets.items():
            if is_contacts(row):
                parts.append(contact_section(pname, row, seq))
    parts.append(_footer(protein["predictions"].keys(), cards))
    return _page(f"{pid} — protlm predictions", "\n".join(parts))


def is_contacts(row: dict) -> bool:
    """A contact predictor's row (its top pairs, or why the protein was skipped)."""
    return "long_range_top_l5" in row or ("skipped" in row and "prediction" not in row)


def _tick_step(length: int) -> int:
    return 50 if length <= 600 else 100


def contact_svg(length: int, pairs: list, min_separation: int) -> str:
    """An inline SVG (no script, no namespace URL) of ``pairs`` (``[i, j, p]``, 1-based) as squares
    in the upper triangle of an L × L frame (row i from the top, column j from the left), shaded by
    p, with the diagonal and axis ticks every 50 or 100 residues."""
    side, left, top = MAP_SIDE, MAP_LEFT, MAP_TOP
    scale = side / max(length, 1)
    cell = max(scale, 2.5)  # a pair stays visible on a long protein

    def at(pos: float) -> float:  # the centre of residue pos (1-based) along an axis
        return (pos - 0.5) * scale

    out = [f"<svg class=\"cmap\" role=\"img\" width=\"{side + left + MAP_RIGHT}\" "
           f"height=\"{side + top + MAP_BOTTOM}\" viewBox=\"0 0 {side + left + MAP_RIGHT} {side + top + MAP_BOTTOM}\" "
           f"font-size=\"10\" font-family=\"sans-serif\">",
           f"<title>predicted contacts: the top {len(pairs):,} pairs with |i−j| ≥ {min_separation}</title>",
           f"<g transform=\"translate({left},{top})\">",
           f"<rect x=\"0\" y=\"0\" width=\"{side}\" height=\"{side}\" fill=\"#fff\" stroke=\"#999\"/>",
           f"<line x1=\"0\" y1=\"0\" x2=\"{side}\" y2=\"{side}\" stroke=\"#ccc\"/>"]
    step = _tick_step(length)
    ticks = [1] + list(range(step, length + 1, step))
    every = max(1, -(-(len(ticks) - 1) // 10))  # at most about ten labels per axis
    for k, pos in enumerate(ticks):
        x = round(at(pos), 1)
        out.append(f"<line x1=\"{x}\" y1=\"0\" x2=\"{x}\" y2=\"-4\" stroke=\"#666\"/>"
                   f"<line x1=\"0\" y1=\"{x}\" x2=\"-4\" y2=\"{x}\" stroke=\"#666\"/>")
        if k % every == 0:
            out.append(f"<text x=\"{x}\" y=\"-7\" text-anchor=\"middle\">{pos}</text>"
                       f"<text x=\"-7\" y=\"{x}\" text-anchor=\"end\" dominant-baseline=\"middle\">{pos}</text>")
    for i, j, p in pairs:
        x, y = round(at(j) - cell / 2, 2), round(at(i) - cell / 2, 2)
        opacity = round(0.15 + 0.85 * min(max(float(p), 0.0), 1.0), 3)
        out.append(f"<rect x=\"{x}\" y=\"{y}\" width=\"{round(cell, 2)}\" height=\"{round(cell, 2)}\" "
                   f"fill=\"{MAP_COLOUR}\" fill-opacity=\"{opacity}\"><title>{i}–{j}: {float(p):.3f}</title></rect>")
    out.append(f"<text x=\"{side}\" y=\"{side - 4}\" text-anchor=\"end\" fill=\"#777\">L = {length:,}</text>")
    out.append("</g></svg>")
    return "".join(out)


def contact_section(pname: str, row: dict, seq: str) -> str:
    """The "Contact map" section of a protein's page (in OUT/proteins/): the SVG of the top-L pairs,
    a link to the map's npz, and a table of the top L/5 long-range pairs (or why the protein was
    skipped)."""
    head = f"<h2>Contact map <span class=\"meta\">({_e(_who(pname))})</span></h2>"
    if "skipped" in row:
        return head + f"<p class=\"note\">Not predicted: {_e(row['skipped'])}.</p>"
    length, min_sep = len(seq), int(row.get("min_separation", 6))
    top, long = row.get("top") or [], row.get("long_range_top_l5") or []
    parts = [head, f"<p class=\"note\">The top L = {len(top):,} predicted pairs with |i−j| ≥ {min_sep} (contact: "
                   f"CB–CB &lt; 8 Å), row i from the top, column j from the left; darker = more probable (hover for "
                   f"the probability). Long range (|i−j| ≥ 24) is what the model card's P@L/5 measures."]
    if row.get("map"):
        href = "../" + quote(row["map"])
        parts[-1] += (f" The whole map (L × L probabilities, float16): <a href=\"{_e(href)}\" download>"
                      f"{_e(row['map'])}</a>.")
    parts[-1] += "</p>"
    parts.append(contact_svg(length, top, min_sep))
    if long:
        rows = "".join(f"<tr><td>{k}</td><td>{i}</td><td>{_e(seq[i - 1:i])}</td><td>{j}</td><td>{_e(seq[j - 1:j])}</td>"
                       f"<td>{j - i}</td><td>{p:.3f}</td></tr>" for k, (i, j, p) in enumerate(long, 1))
        parts.append(f"<h3>Top L/5 long-range pairs <span class=\"meta\">({len(long):,}; |i−j| ≥ 24)</span></h3>"
                     f"<table class=\"pairs\"><tr><th>rank</th><th>i</th><th></th><th>j</th><th></th><th>|i−j|</th>"
                     f"<th>p</th></tr>{rows}</table>")
    else:
        parts.append("<p class=\"note\">No long-range pair: the protein is shorter than 25 residues.</p>")
    return "".join(parts)


def _footer(used, cards: dict[str, dict]) -> str:
    rows = []
    for pname in used:
        c = cards.get(pname) or {}
        emb = c.get("embedder", {})
        rows.append(f"<tr><td>{_e(pname)}</td><td>{_e(c.get('task', ''))}</td><td>{_e(emb.get('name', ''))}</td>"
                    f"<td>{_e(c.get('headline', ''))}</td><td>{_e(emb.get('licence', ''))}</td></tr>")
    return ("<h2>Predictors</h2><table><tr><th>predictor</th><th>task</th><th>embedder</th><th>test result "
            "(model card)</th><th>weights licence</th></tr>" + "".join(rows) + "</table>"
            "<p class=\"note\">Predictions of small heads on frozen embeddings: read them with the test "
            "results above in mind. Model cards: <code>protlm.predictors.available()</code>, or "
            "MODEL_CARD.md beside each head in the installed package.</p>")


def index_page(proteins: list[dict], links: dict[str, str], cards: dict[str, dict], title: str) -> str:
    """The index: one row per protein (id → its page; per-protein results; Q3 composition)."""
    columns: list[tuple[str, str]] = []  # (predictor, target) of per-protein results, in order
    for p in proteins[:1]:
        for pname, targets in p["predictions"].items():
            for tname, row in targets.items():
                if "probabilities" in row and isinstance(row["probabilities"], dict) or (
                        "value" in row and not isinstance(row.get("value"), list)):
                    columns.append((pname, tname))
    residue_cols = [label for label, _ in residue_tracks(proteins[0])] if proteins else []
    head = "".join(f"<th>{_e(target_label(pn, t))}</th>" for pn, t in columns) + "".join(
        f"<th>{_e(t)} composition</th>" for t in residue_cols)
    rows = []
    for p in proteins:
        cells = [f"<td><a href=\"{quote(links[p['id']])}\">{_e(p['id'])}</a></td><td>{p['length']:,}</td>"]
        for pname, tname in columns:
            row = p["predictions"].get(pname, {}).get(tname, {})
            if "probabilities" in row:
                cells.append(f"<td>{_e(row['prediction'])} ({row['probability']:.2f})</td>")
            else:
                v = row.get("value")
                cells.append(f"<td>{'–' if v is None else f'{v:.3f}'}</td>")
        for label, row in residue_tracks(p):
            s = row["prediction"]
            counts = {c: s.count(c) for c in sorted(set(s), key=lambda c: -s.count(c))}
            cells.append("<td>" + " ".join(f"{_e(c)} {100 * n / len(s):.0f}%" for c, n in list(counts.items())[:4])
                         + "</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = (f"<h1>{_e(title)}</h1><p class=\"meta\">{len(proteins):,} proteins · predictors: "
            f"{_e(', '.join(cards))} · predictions.csv and predictions.json hold every number</p>"
            f"<table><tr><th>protein</th><th>length</th>{head}</tr>{''.join(rows)}</table>"
            + _footer(list(cards), cards))
    return _page(title, body)
