"""Plot measured results: dev metric against trainable parameters (log scale), one panel per task
and model.

    pip install matplotlib                       # optional, for the figures only
    python benchmarks/plot_results.py            # benchmarks/results.json -> benchmarks/results.svg

results.json holds runs summarised over seeds, as benchmarks/results.py writes them: {"rows": [...],
and optionally "budget" and "hardware", printed under the figure}, or the bare list of rows, each
    {"task", "method", "metric_name", "mean", "std", "n_seeds", "trainable", "adapter_bytes",
     "model", "wall_s"}
Each method gets one colour, with an error bar of ±std; points of one method in a panel are joined
in order of size (a sweep of r or m). A method with no trainable parameters (a zero-shot baseline)
is drawn as a dashed line across its panel. Each point's or line's SVG group is named
"task/method" (its gid), so a test or a script can find it.
"""
import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FIELDS = ("task", "method", "metric_name", "mean", "std", "n_seeds", "trainable", "adapter_bytes",
          "model", "wall_s")


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


def draw(rows, notes, path):
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    plt.rcParams["svg.hashsalt"] = "lopa"  # the same figure gives the same file: clean diffs

    methods = list(dict.fromkeys(r["method"] for r in rows))
    colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    panels = {}
    for r in rows:
        panels.setdefault((r["task"], r["model"]), []).append(r)
    cols = min(3, len(panels))
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, squeeze=False,
                             figsize=(4 * cols, 3 * math.ceil(len(panels) / cols) + 0.4))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, ((task, model), mine) in zip(axes.flat, panels.items()):
        for method in dict.fromkeys(r["method"] for r in mine):
            pts = sorted((r for r in mine if r["method"] == method), key=lambda r: r["trainable"])
            if pts[0]["trainable"] <= 0:  # no parameters: a baseline across the panel
                ax.axhline(pts[0]["mean"], color=colour[method], ls="--", gid=f"{task}/{method}")
                continue
            ax.errorbar([r["trainable"] for r in pts], [r["mean"] for r in pts],
                        yerr=[r["std"] for r in pts], fmt="o-", color=colour[method], capsize=3,
                        gid=f"{task}/{method}")
        ax.set_xscale("log")
        ax.set_title(task, loc="left", fontweight="bold")
        ax.set_title(model, loc="right", fontsize=9)
        ax.set_xlabel("trainable parameters (log scale)")
        ax.set_ylabel("dev " + "/".join(sorted({r["metric_name"] for r in mine})))
        ax.grid(alpha=0.3)
    flat = {r["method"] for r in rows if r["trainable"] <= 0}
    fig.legend([plt.Line2D([], [], color=colour[m], **({"ls": "--"} if m in flat else
                                                       {"marker": "o"})) for m in methods], methods,
               loc="upper center", ncol=len(methods), frameon=False)
    for i, note in enumerate(notes):  # how the numbers were measured, under the panels
        fig.text(0.01, 0.01 + 0.03 * (len(notes) - 1 - i), note, fontsize=8)
    fig.tight_layout(rect=(0, 0.04 * len(notes), 1, 0.93))
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", default=os.path.join(HERE, "results.json"))
    p.add_argument("--output", default=os.path.join(HERE, "results.svg"))
    args = p.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("error: the figure needs matplotlib: pip install matplotlib")
    try:
        rows, notes = load(args.input)
    except ResultsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    draw(rows, notes, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
