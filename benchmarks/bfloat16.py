"""bfloat16 on a CPU that multiplies it in hardware: what it costs in accuracy, and the budget it
buys (SST-2, LOPA, SmolLM2). The rule these runs serve was fixed before them: docs/study.md, "The
budget in bfloat16".

    python benchmarks/bfloat16.py                    # every run below (resuming), then the record
    python benchmarks/bfloat16.py --report           # the record from the runs finished so far
    python benchmarks/bfloat16.py --runs DIR         # runs in DIR (default runs/bfloat16)
    python benchmarks/bfloat16.py --names A,B        # only the runs named A and B

Each run is `python train.py --task sst2 --model smollm2 --seed S FLAGS --out RUNS/NAME-sS` in its
own process, its output in RUNS/NAME-sS.log (whose summary line gives the run's wall time), one
after the other: a run's time is its own only when nothing else runs beside it. --dtype is left at
auto, which is bfloat16 on such a CPU; the script refuses to run elsewhere. Writes
benchmarks/bfloat16.json and .md: each row's scores, mean ± std and wall times, and the paired
differences the rule reads, with their 95% t-intervals.
"""
import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from results import hardware  # noqa: E402
from study import mean_std, paired  # noqa: E402

from plumbing.cli import atomic_write, pick_dtype, write_text  # noqa: E402

HERE = os.path.join(ROOT, "benchmarks")
RUNS = {  # name: (train.py flags, what the run is for), in the order they run
    "ho-bf16-n2000": (["--holdout", "500", "--max-train-examples", "2000"],
                      "held-out, bfloat16, 2,000 x 2 (the old default's budget)"),
    "ho-bf16-n4000": (["--holdout", "500", "--max-train-examples", "4000"],
                      "held-out, bfloat16, 4,000 x 2 (the candidate, sized by time)"),
    "dev-bf16-n4000": (["--max-train-examples", "4000"], "dev, bfloat16, 4,000 x 2"),
    "dev-bf16-n2000": (["--max-train-examples", "2000"], "dev, bfloat16, 2,000 x 2"),
    "dev-fp32-n2000": (["--max-train-examples", "2000", "--dtype", "float32"],
                       "dev, float32, 2,000 x 2 (the float32 default)"),
    # Since 8a9bdd5 attention multiplies in bfloat16 (plumbing.cli.autocast); the runs
    # above came before it. The default run again, and the README's other methods beside it:
    "dev-lopa": ([], "dev, the default run (bfloat16, 4,000 x 2), attention in bfloat16"),
    "dev-prompt": (["--method", "prompt"], "dev, prompt tuning, as the default run"),
    "dev-lora": (["--method", "lora"], "dev, LoRA, as the default run"),
    "dev-lopa-n2000": (["--max-train-examples", "2000"],
                       "dev, bfloat16, 2,000 x 2, attention in bfloat16"),
    # Since the commit that wrote attention out (model.attention, in place of torch's fused or
    # math kernel) a run rounds differently; the README's runs again, with it:
    "dev-lopa-w": ([], "dev, the default run, attention written out"),
    "dev-fp32-w": (["--dtype", "float32"], "dev, float32 (its default, 2,000 x 2), written out"),
    "dev-prompt-w": (["--method", "prompt"], "dev, prompt tuning, attention written out"),
    "dev-lora-w": (["--method", "lora"], "dev, LoRA, attention written out"),
    # The budget chosen again with attention written out (docs/study.md): held out. It kept
    # 4,000 x 2, so the rule's dev runs at 6,000 were not made and have no row here.
    "ho-w-n4000": (["--holdout", "500", "--max-train-examples", "4000"],
                   "held-out, bfloat16, 4,000 x 2, attention written out"),
    "ho-w-n6000": (["--holdout", "500", "--max-train-examples", "6000"],
                   "held-out, bfloat16, 6,000 x 2, attention written out"),
    # One epoch over more sentences (docs/study.md): held out first. It was not chosen, so the
    # rule's dev runs at 12,000 x 1 were not made and have no row here.
    "ho-w-e1-n12000": (["--holdout", "500", "--max-train-examples", "12000", "--epochs", "1"],
                       "held-out, bfloat16, 12,000 x 1, attention written out"),
}
PAIRS = [("ho-bf16-n4000", "ho-bf16-n2000"), ("dev-bf16-n2000", "dev-fp32-n2000"),
         ("dev-bf16-n4000", "dev-fp32-n2000"), ("dev-lopa", "dev-fp32-n2000"),
         ("dev-lopa", "dev-bf16-n4000"), ("dev-prompt", "dev-lopa"), ("dev-lora", "dev-lopa"),
         ("dev-lopa-n2000", "dev-fp32-n2000"), ("dev-lopa-w", "dev-fp32-w"),
         ("dev-lopa-w", "dev-lopa"), ("dev-fp32-w", "dev-fp32-n2000"),
         ("dev-prompt-w", "dev-lopa-w"), ("dev-lora-w", "dev-lopa-w"),
         ("ho-w-n6000", "ho-w-n4000"), ("ho-w-e1-n12000", "ho-w-n4000")]


def finished(runs, name, seed):
    """(dev or held-out score, wall seconds) of a finished run, else None."""
    folder = os.path.join(runs, f"{name}-s{seed}")
    try:
        with open(folder + ".log", encoding="utf-8") as f:
            done = re.search(r"^done in (\d+) s", f.read().replace("\r", "\n"), re.M)
        with open(os.path.join(folder, "adapter.json")) as f:
            score = json.load(f)["metrics"]["dev"]["metric"]
    except OSError:
        return None
    return (score, int(done.group(1))) if done else None


def run(runs, name, seed):
    folder = os.path.join(runs, f"{name}-s{seed}")
    resume = ["--resume"] if os.path.exists(os.path.join(folder, "checkpoint.safetensors")) else []
    cmd = [sys.executable, "train.py", "--task", "sst2", "--model", "smollm2", "--seed", str(seed),
           *RUNS[name][0], "--out", folder, *resume]
    with open(folder + ".log", "w", encoding="utf-8") as log:
        if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
            sys.exit(f"error: `{' '.join(cmd[1:])}` failed; see {folder}.log")


def recorded():
    """{name: row} of benchmarks/bfloat16.json as it stands: runs recorded there are not run again,
    and their rows stay when their folders are gone (another machine, a wiped disk)."""
    try:
        with open(os.path.join(HERE, "bfloat16.json"), encoding="utf-8") as f:
            return {r["name"]: r for r in json.load(f)["rows"]}
    except OSError:
        return {}


def report(runs, seeds, old):
    """Writes the record: each run's finished seeds, or its row in old (recorded()) when none."""
    rows = {}
    for name, (flags, what) in RUNS.items():
        got = {s: r for s in seeds if (r := finished(runs, name, s))}
        scores = {str(s): score for s, (score, _) in got.items()}
        if not scores and name in old:
            rows[name] = {k: v for k, v in old[name].items() if not k.startswith("minus_")}
        elif scores:
            mean, std = mean_std(scores.values())
            rows[name] = {"name": name, "flags": flags, "what": what, "scores": scores,
                          "mean": mean, "std": std,
                          "wall_s": {str(s): t for s, (_, t) in got.items()}}
    for a, b in PAIRS:
        if a in rows and b in rows:
            common = sorted(set(rows[a]["scores"]) & set(rows[b]["scores"]))
            rows[a][f"minus_{b}"] = paired([rows[a]["scores"][s] for s in common],
                                           [rows[b]["scores"][s] for s in common])
    out = {"task": "sst2", "method": "lopa", "model": "smollm2", "hardware": hardware(),
           "command": "python benchmarks/bfloat16.py", "rows": list(rows.values())}
    atomic_write(os.path.join(HERE, "bfloat16.json"),
                 lambda p: write_text(p, json.dumps(out, indent=1) + "\n"))
    atomic_write(os.path.join(HERE, "bfloat16.md"), lambda p: write_text(p, markdown(out)))
    print(markdown(out))


def markdown(out):
    lines = [f"# bfloat16 against float32, and the bfloat16 budget: {out['task']}, "
             f"{out['method']}, {out['model']}", "",
             f"Hardware: {out['hardware']}. Command: `{out['command']}`.", "",
             "| run | scores by seed | mean ± std | wall s by seed "
             "| paired difference, 95% interval |", "|---|---|---|---|---|"]
    for r in out["rows"]:
        scores = ", ".join(f"{100 * v:.2f}" for v in r["scores"].values())
        walls = ", ".join(str(v) for v in r["wall_s"].values()) or "-"
        diffs = "; ".join(f"{k[6:]}: {100 * p['mean']:+.2f} [{100 * p['low']:+.2f}, "
                          f"{100 * p['high']:+.2f}]" for k, p in r.items()
                          if k.startswith("minus_") and p["low"] is not None) or "-"
        lines.append(f"| {r['what']} | {scores} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | "
                     f"{walls} | {diffs} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "bfloat16"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--names", default=",".join(RUNS), help="the runs to make, in RUNS' order")
    p.add_argument("--report", action="store_true", help="no runs: the record of those finished")
    a = p.parse_args()
    seeds, names = [int(s) for s in a.seeds.split(",")], a.names.split(",")
    if unknown := set(names) - set(RUNS):
        sys.exit(f"error: no run named {', '.join(sorted(unknown))}; see RUNS in this file")
    old = recorded()
    if not a.report:
        if pick_dtype("auto", "cpu")[0] != pick_dtype("bfloat16", "cpu")[0]:
            sys.exit("error: this CPU has no AVX-512 BF16 or AMX: "
                     "these runs measure bfloat16 there")
        os.makedirs(a.runs, exist_ok=True)
        for name in (n for n in RUNS if n in names):
            for s in seeds:
                if str(s) in old.get(name, {}).get("scores", {}) or finished(a.runs, name, s):
                    continue
                run(a.runs, name, s)
    report(a.runs, seeds, old)


if __name__ == "__main__":
    main()
