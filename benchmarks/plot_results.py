"""Plot measured results: dev metric against trainable parameters (log scale), one panel per task
and model.

    python benchmarks/plot_results.py            # benchmarks/results.json -> benchmarks/results.svg

results.json holds runs summarised over seeds, as benchmarks/results.py writes them: {"rows": [...],
and optionally "budget" and "hardware", printed under the figure}, or the bare list of rows, each
    {"task", "method", "metric_name", "mean", "std", "n_seeds", "trainable", "adapter_bytes",
     "model", "wall_s"}
Each method gets one colour, with an error bar of ±std; points of one method in a panel are joined
in order of size (a sweep of r or m). A method with no trainable parameters (a zero-shot baseline)
is drawn as a dashed line across its panel. The SVG is written by hand, so the script needs nothing
beyond Python.
"""
import argparse
import json
import math
import os
import sys
from xml.sax.saxutils import escape

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = ("task", "method", "metric_name", "mean", "std", "n_seeds", "trainable", "adapter_bytes",
          "model", "wall_s")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
PANEL_W, PANEL_H, COLS = 380, 280, 3            # one panel's size in px, panels per row
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 40, 44       # the plot area's margins inside a panel
LEGEND_H = 34


class ResultsError(Exception):
    """A problem with results.json that its author can fix."""


def load(path):
    """(rows, notes): the results, and the lines the file has on how they were measured."""
    try:
        with open(path) as f:
            results = json.load(f)
    except OSError as e:
        raise ResultsError(f"cannot read {path} ({e.strerror})") from None
    except ValueError as e:
        raise ResultsError(f"{path} is not valid JSON ({e})") from None
    rows, notes = results, []
    if isinstance(results, dict):
        rows = results.get("rows")
        notes = [f"{k}: {results[k]}" for k in ("budget", "hardware") if results.get(k)]
    if not isinstance(rows, list) or not rows:
        raise ResultsError(f"{path} must hold a non-empty list of results "
                           f"(or an object whose \"rows\" is one)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or (missing := [k for k in FIELDS if k not in row]):
            raise ResultsError(f"{path}: entry {i} lacks "
                               f"{missing if isinstance(row, dict) else list(FIELDS)}")
        for k in ("mean", "std", "trainable"):
            if not isinstance(row[k], (int, float)) or not math.isfinite(row[k]):
                raise ResultsError(f"{path}: entry {i} has {k} = {row[k]!r}; it must be a number")
    return rows, notes


def nice_ticks(lo, hi, n=5):
    """About n round values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    raw = (hi - lo) / n
    step = min((s * 10 ** math.floor(math.log10(raw)) for s in (1, 2, 5, 10)),
               key=lambda s: abs(s - raw))
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 10) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def short(n):
    """10 -> 10, 1000 -> 1k, 1e6 -> 1M: tick labels for parameter counts."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:g}{unit}"
    return f"{n:g}"


def panel(rows, colour, x0, y0):
    """SVG elements of one panel whose top-left corner is (x0, y0)."""
    points = [r for r in rows if r["trainable"] > 0]
    lines = [r for r in rows if r["trainable"] <= 0]
    w, h = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM
    left, top = x0 + LEFT, y0 + TOP
    lo = min(r["mean"] - r["std"] for r in rows)
    hi = max(r["mean"] + r["std"] for r in rows)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 0.01)
    lo, hi = lo - pad, hi + pad
    dmin = math.floor(math.log10(min((r["trainable"] for r in points), default=1)))
    dmax = math.ceil(math.log10(max((r["trainable"] for r in points), default=10)))
    dmin, dmax = (dmin, dmax) if dmax > dmin else (dmin, dmin + 1)
    px = lambda n: left + w * (math.log10(n) - dmin) / (dmax - dmin)  # noqa: E731
    py = lambda v: top + h * (hi - v) / (hi - lo)  # noqa: E731

    task, models = rows[0]["task"], sorted({r["model"] for r in rows})
    metric = "/".join(sorted({r["metric_name"] for r in rows}))
    out = [f'<text x="{left}" y="{y0 + 18}" class="title">{escape(task)}</text>',
           f'<text x="{left + w}" y="{y0 + 18}" class="small" text-anchor="end">'
           f'{escape(", ".join(models))}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" class="frame"/>']
    for d in range(dmin, dmax + 1):
        x = px(10 ** d)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" class="grid"/>')
        out.append(f'<text x="{x:.1f}" y="{top + h + 16}" class="small" text-anchor="middle">'
                   f'{short(10 ** d)}</text>')
    for v in nice_ticks(lo, hi):
        y = py(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" class="small" text-anchor="end">'
                   f'{v:g}</text>')
    out.append(f'<text x="{left + w / 2}" y="{y0 + PANEL_H - 8}" class="small" '
               f'text-anchor="middle">trainable parameters (log scale)</text>')
    out.append(f'<text transform="translate({x0 + 14},{top + h / 2}) rotate(-90)" class="small" '
               f'text-anchor="middle">dev {escape(metric)}</text>')

    for r in lines:
        y = py(r["mean"])
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" '
                   f'stroke="{colour[r["method"]]}" class="baseline">'
                   f'<title>{escape(tooltip(r))}</title></line>')
    for method in dict.fromkeys(r["method"] for r in points):
        mine = sorted((r for r in points if r["method"] == method), key=lambda r: r["trainable"])
        c = colour[method]
        if len(mine) > 1:
            path = " ".join(f'{px(r["trainable"]):.1f},{py(r["mean"]):.1f}' for r in mine)
            out.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="1.2"/>')
        for r in mine:
            x = px(r["trainable"])
            out.append(f'<line x1="{x:.1f}" y1="{py(r["mean"] - r["std"]):.1f}" x2="{x:.1f}" '
                       f'y2="{py(r["mean"] + r["std"]):.1f}" stroke="{c}" stroke-width="1.5"/>')
            out.append(f'<circle cx="{x:.1f}" cy="{py(r["mean"]):.1f}" r="4.5" fill="{c}">'
                       f'<title>{escape(tooltip(r))}</title></circle>')
    return out


def tooltip(r):
    return (f'{r["method"]} on {r["task"]} ({r["model"]}): dev {r["metric_name"]} '
            f'{r["mean"]:.4f} ± {r["std"]:.4f} over {r["n_seeds"]} seed(s); '
            f'{r["trainable"]:,} trainable; adapter {r["adapter_bytes"]:,} bytes; {r["wall_s"]} s')


def render(rows, notes=()):
    """The whole figure as an SVG string."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colour = {m: COLOURS[i % len(COLOURS)] for i, m in enumerate(methods)}
    groups = {}
    for r in rows:
        groups.setdefault((r["task"], r["model"]), []).append(r)
    cols = min(COLS, len(groups))
    top = LEGEND_H + math.ceil(len(groups) / cols) * PANEL_H  # where the notes start
    width, height = cols * PANEL_W, top + 16 * len(notes) + (6 if notes else 0)
    body = [f'<text x="12" y="{top + 12 + 16 * i}" class="small">{escape(n)}</text>'
            for i, n in enumerate(notes)]
    x = 12
    for m in methods:  # the legend, one swatch per method
        body.append(f'<circle cx="{x + 5}" cy="18" r="5" fill="{colour[m]}"/>')
        body.append(f'<text x="{x + 14}" y="22" class="legend">{escape(m)}</text>')
        x += 30 + 8 * len(m)
    for i, group in enumerate(groups.values()):
        body += panel(group, colour, (i % cols) * PANEL_W, LEGEND_H + (i // cols) * PANEL_H)
    style = ("text{font-family:sans-serif;fill:#222} .title{font-size:14px;font-weight:bold} "
             ".small{font-size:11px} .legend{font-size:12px} .frame{fill:none;stroke:#888} "
             ".grid{stroke:#e4e4e4} .baseline{stroke-width:1.5;stroke-dasharray:5 4}")
    return "\n".join([f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                      f'viewBox="0 0 {width} {height}">', f"<style>{style}</style>",
                      f'<rect width="{width}" height="{height}" fill="white"/>', *body, "</svg>",
                      ""])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=os.path.join(HERE, "results.json"))
    p.add_argument("--output", default=os.path.join(HERE, "results.svg"))
    args = p.parse_args(argv)
    try:
        svg = render(*load(args.input))
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tmp = f"{args.output}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(svg)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
