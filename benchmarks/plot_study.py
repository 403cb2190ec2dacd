"""The study's figure, from benchmarks/study.json (made by `python benchmarks/study.py --report`).

    pip install matplotlib                 # optional, for this script only
    python benchmarks/plot_study.py        # -> benchmarks/study.svg

Three panels, one row per arm: dev metric per seed (dots) and mean (|), with zero-shot (and
the majority class's score, where it is in range) as lines; the paired difference to prompt
tuning with its 95% interval; and, for the arms with an encoder, how many dev predictions change
when every e is replaced by the mean e.
"""
import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def n_dev(rows):
    return next((next(iter(r["diagnose"].values()))["n"] for r in rows if r.get("diagnose")), "-")


def draw(study, path):
    import matplotlib
    matplotlib.use("Agg")  # files only, no window
    import matplotlib.pyplot as plt
    plt.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable

    rows = study["rows"][::-1]  # the first arm on top
    y = range(len(rows))
    fig, (acc, diff, used) = plt.subplots(1, 3, figsize=(12, 0.45 * len(rows) + 1.6), sharey=True,
                                          gridspec_kw={"width_ratios": [2, 2, 1.3]})
    for i, r in zip(y, rows):
        scores = [100 * s for s in r["scores"].values()]
        acc.plot(scores, [i] * len(scores), "o", color="#08519c", ms=4)
        acc.plot(statistics.mean(scores), i, "|", color="black", ms=14, mew=2)
        if p := r.get("minus_prompt"):
            low, high = (p["low"], p["high"]) if p["low"] is not None else (p["mean"], p["mean"])
            diff.errorbar(100 * p["mean"], i, xerr=[[100 * (p["mean"] - low)],
                                                    [100 * (high - p["mean"])]],
                          fmt="o", color="#08519c", capsize=3)
        if d := r.get("diagnose"):
            changed = statistics.mean(x["mean_e"]["changed"] for x in d.values())
            used.barh(i, changed, color="#fdae6b")
            # the number beside the bar, so that an arm whose mean e changes nothing still shows 0
            used.text(changed, i, f" {round(changed, 1):g}", va="center", fontsize=8)
    zero_shot = 100 * rows[0]["zero_shot"]
    acc.axvline(zero_shot, color="grey", ls="--", lw=1, label=f"zero-shot {zero_shot:.1f}")
    acc.set_xlim(zero_shot - 10, 95)
    if (always := 100 * study.get("majority", {}).get("metric", 0)) > zero_shot - 10:
        acc.axvline(always, color="#a50f15", ls=":", lw=1, label=f"majority class {always:.1f}")
    acc.legend(loc="lower right", fontsize=8)
    diff.axvline(0, color="grey", lw=1)
    used.set_xlim(0, 1.25 * max(used.get_xlim()[1], 8))  # from 0, with room for the numbers
    acc.set_yticks(list(y), [f"{r['arm']} ({len(r['scores'])})" for r in rows])
    acc.set_xlabel("dev metric (%)\nseeds (dots), mean (|)")
    diff.set_xlabel("minus prompt tuning (points)\n95% interval over paired seeds")
    used.set_xlabel(f"dev predictions changed (of {n_dev(rows)})\nwith every e = the mean e")
    fig.suptitle(f"{study['task']} dev, {study['model']}, {study['budget']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", default=os.path.join(HERE, "study.json"))
    p.add_argument("--out", default=os.path.join(HERE, "study.svg"))
    args = p.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit("error: the figure needs matplotlib: pip install matplotlib")
    with open(args.study) as f:
        draw(json.load(f), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
