"""Does prompt tuning strike back here? Every arm of the study, over seeds, at one budget.

    python benchmarks/study.py --jobs 2            # every arm, seeds 0,1,2; resumes if stopped
    python benchmarks/study.py --arms lopa,prompt --seeds 0
    python benchmarks/study.py --report            # the table from the runs finished so far

An arm is one train.py configuration (ARMS), fixed before any run: nothing is chosen here. Each run
is `python train.py ...` in its own process, so its number is exactly what that command gives. A
finished run leaves a record in benchmarks/study/ (committed), so the study continues across
sessions; a run cut off midway continues from its checkpoint. Runs go seed by seed, in --arms order,
so the first finished runs already pair up. Each LOPA and IDPG run is then diagnosed
(benchmarks/diagnose.py: is the instance part used?) while its adapter is on this machine. The
report gives each arm's mean ± std over seeds and its paired difference to prompt tuning and to
LOPA over the seeds both finished, with a 95% t-interval. Writes benchmarks/study.json and study.md
(another task or budget: study-TASK-nN-eE.json and .md, so each setting keeps its own table).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from results import hardware, run_train  # noqa: E402

import data  # noqa: E402
from plumbing import metrics  # noqa: E402
from plumbing.cli import atomic_write, write_text  # noqa: E402

HERE = os.path.join(ROOT, "benchmarks")
ARMS = {  # name: (train.py flags, the question the arm answers)
    "prompt": (["--method", "prompt"], "ours: prompt from token embeddings, lr 1e-2"),
    "lopa": (["--method", "lopa"], "the paper's LOPA, frozen encoder = the model itself"),
    "prompt-paper": (["--method", "prompt", "--init", "random", "--lr", "1e-4"],
                     "the paper's prompt-tuning recipe: N(0, 1) start, lr 1e-4"),
    "lopa-gate1": (["--method", "lopa", "--combine", "2sigmoid"],
                   "gate start: Z = Z_S ⊙ 2σ(Z_I) starts at Z_S, not 0.5 Z_S"),
    "lopa-l2": (["--method", "lopa", "--encoder-norm", "l2"],
                "e normalised to unit length before the MLPs, as the codegen code"),
    "lopa-add": (["--method", "lopa", "--combine", "add"], "Z = Z_S + Z_I, an official variant"),
    "lora": (["--method", "lora"], "LoRA r = 16 on q, k, v"),
    "idpg": (["--method", "idpg"], "IDPG: a full-rank prompt from e, the paper's baseline"),
    "lopa-h576": (["--method", "lopa", "--hidden", "576"],
                  "H = d (576 for SmolLM2): MLP width = the model's, as the published NLU code"),
    "lopa-random": (["--method", "lopa", "--init", "random"],
                    "Z_S from N(0, 1), as the official code"),
    "lopa-encoder": (["--method", "lopa", "--encoder-lr", "1e-5"],
                     "the published NLU code's encoder: a copy of the model trained at lr 1e-5"),
    "lopa-lr3e-3": (["--method", "lopa", "--lr", "3e-3"],
                    "LOPA at the lr chosen on a length-matched held-out slice of train "
                    "(results.py --select only)"),
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def setting(args):
    return f"{args.task}-n{args.max_train_examples}-e{args.epochs}"


def name(args, arm, seed):
    return f"{setting(args)}-{arm}-seed{seed}"


def run_folder(args, arm, seed):
    return os.path.join(args.runs, name(args, arm, seed))


def record(args, arm, seed):
    """Where a finished run's result.json (and diagnosis) is kept: in git, so that the study resumes
    in a later session, though the runs' folders (adapters, checkpoints) stay on this machine."""
    return os.path.join(args.records, name(args, arm, seed) + ".json")


def train_and_record(args, arm, seed, env):
    if finished(args, arm, seed):
        return
    info = run_train(run_folder(args, arm, seed), flags(args, arm, seed), env)
    info.update(hardware=hardware(), threads=env["OMP_NUM_THREADS"])
    write_record(args, arm, seed, info)
    if has_encoder(arm):  # diagnose now, while the adapter is surely on this machine
        diagnosis(args, arm, seed, info)


def has_encoder(arm):
    return ARMS[arm][0][1] in ("lopa", "idpg")


def write_record(args, arm, seed, info):
    os.makedirs(args.records, exist_ok=True)
    if os.path.isabs(info["command"][-2]):  # --out: a committed record names no local path
        info["command"][-2] = os.path.join("runs", "study", name(args, arm, seed))
    text = json.dumps(info, indent=1) + "\n"
    atomic_write(record(args, arm, seed), lambda p: write_text(p, text))


def flags(args, arm, seed):
    return ["--task", args.task, "--model", args.model, "--seed", str(seed),
            "--epochs", str(args.epochs), "--max-train-examples", str(args.max_train_examples),
            *ARMS[arm][0]]


def finished(args, arm, seed):
    """The run's record, or None if it has not finished (with these exact flags)."""
    path = record(args, arm, seed)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        info = json.load(f)
    return info if info["command"][1:-3] == flags(args, arm, seed) else None


def diagnosis(args, arm, seed, info):
    """diagnose.py's numbers for a finished LOPA or IDPG run (info: its record), computed once and
    kept in the record (None when its adapter is not on this machine and the record has none)."""
    folder = run_folder(args, arm, seed)
    if "diagnose" not in info and os.path.exists(os.path.join(folder, "adapter.json")):
        path = os.path.join(folder, "diagnose.json")
        cmd = [sys.executable, "benchmarks/diagnose.py", "--adapter", folder, "--json", path]
        subprocess.run(cmd, cwd=ROOT, check=True)
        with open(path) as f:
            info["diagnose"] = json.load(f)
        write_record(args, arm, seed, info)
    return info.get("diagnose")


def report_name(args):
    """The name "study" for the main setting (SST-2, 2,000 x 2), else one per setting."""
    return "study" if setting(args) == "sst2-n2000-e2" else f"study-{setting(args)}"


def paired(a, b):
    """Mean of a - b over paired seeds, with its 95% t-interval (None with fewer than 2 pairs)."""
    d = [x - y for x, y in zip(a, b)]
    if len(d) < 2:
        return {"n": len(d), "mean": d[0] if d else None, "low": None, "high": None}
    half = T95[len(d) - 1] * statistics.stdev(d) / len(d) ** 0.5
    mean = statistics.mean(d)
    return {"n": len(d), "mean": mean, "low": mean - half, "high": mean + half}


def majority(task_name):
    """The dev scores ({"metric", "acc", ...}) of answering every input with dev's most common
    label: the score to beat."""
    labels = [label for _, label in data.load_split(task_name, "dev")]
    most = max(set(labels), key=labels.count)
    return metrics.score(data.get_task(task_name), [most] * len(labels), labels)


def report(args, arms, seeds):
    rows, machines = {}, set()
    for arm in arms:
        runs = {s: r for s in seeds if (r := finished(args, arm, s))}
        machines |= {r.get("hardware", "unrecorded") for r in runs.values()}
        if not runs:
            continue
        scores = {s: r["metrics"]["dev"]["metric"] for s, r in runs.items()}
        mean, std = mean_std(scores.values())
        row = {"arm": arm, "flags": ARMS[arm][0], "question": ARMS[arm][1], "scores": scores,
               "acc": {s: r["metrics"]["dev"]["acc"] for s, r in runs.items()},
               "mean": mean, "std": std,
               "trainable": next(iter(runs.values()))["trainable"],
               "zero_shot": next(iter(runs.values()))["metrics"]["zero_shot"]["metric"]}
        if has_encoder(arm):
            row["diagnose"] = {s: d for s, r in runs.items() if (d := diagnosis(args, arm, s, r))}
        rows[arm] = row
    for row in rows.values():
        for ref in ("prompt", "lopa"):
            if ref in rows and ref != row["arm"]:
                common = sorted(set(row["scores"]) & set(rows[ref]["scores"]))
                row[f"minus_{ref}"] = paired([row["scores"][s] for s in common],
                                             [rows[ref]["scores"][s] for s in common])
    budget = f"{args.max_train_examples} examples x {args.epochs} epochs"
    out = {"task": args.task, "metric": data.get_task(args.task).metric, "model": args.model,
           "budget": budget, "majority": majority(args.task),
           "hardware": " / ".join(sorted(machines)),
           "command": "python benchmarks/study.py " + " ".join(sys.argv[1:]),
           "rows": list(rows.values())}
    stem = os.path.join(HERE, report_name(args))
    atomic_write(stem + ".json", lambda p: write_text(p, json.dumps(out, indent=1) + "\n"))
    atomic_write(stem + ".md", lambda p: write_text(p, markdown(out)))
    print(markdown(out))


def interval(p):
    if p["low"] is None:
        return "-" if p["mean"] is None else f"{100 * p['mean']:+.2f} (1 seed)"
    verdict = "" if p["low"] > 0 or p["high"] < 0 else ", n.s."
    return f"{100 * p['mean']:+.2f} [{100 * p['low']:+.2f}, {100 * p['high']:+.2f}]{verdict}"


METRIC_NAMES = {"acc": "accuracy", "f1": "F1", "mcc": "MCC"}


def mean_std(values):
    """(mean, std) over seeds; std 0 for a single seed."""
    values = list(values)
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def points(mean, std):
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown(out):
    """The table; a task scored by F1 or MCC gets an accuracy column too, since always answering
    the common label can score well by F1 (MRPC: 81.22) but not by accuracy (68.38)."""
    zero_shot = out["rows"][0]["zero_shot"] if out["rows"] else float("nan")
    acc_column, metric = out["metric"] != "acc", METRIC_NAMES[out["metric"]]
    best = f"{100 * out['majority']['metric']:.2f}" + (
        f" ({metric}), accuracy {100 * out['majority']['acc']:.2f}" if acc_column else "")
    lines = [f"{out['task']} dev, {out['model']}, {out['budget']}; {out['hardware']}. "
             f"Zero-shot (the template alone): {100 * zero_shot:.2f}; majority class (dev's most "
             f"common label for every input): {best}.", "",
             f"| arm | dev {metric}, mean ± std | per seed | minus prompt (95% CI) "
             "| minus lopa (95% CI) | mean-e ablation: Δ metric, predictions changed "
             "| trainable |" + " dev accuracy, mean ± std |" * acc_column,
             "|---|---|---|---|---|---|---|" + "---|" * acc_column]
    for r in out["rows"]:
        seeds = ", ".join(f"{100 * v:.2f}" for v in r["scores"].values())
        diag = "-"
        if r.get("diagnose"):
            ds = list(r["diagnose"].values())
            delta = statistics.mean(d["mean_e"]["metric"] - d["real"]["metric"] for d in ds)
            changed = statistics.mean(d["mean_e"]["changed"] for d in ds)
            seeds_n = f"{len(ds)} seed" + "s" * (len(ds) > 1)
            diag = f"{100 * delta:+.2f}, {changed:.0f} of {ds[0]['n']} ({seeds_n})"
        line = (f"| {r['arm']} | {points(r['mean'], r['std'])} | {seeds} | "
                f"{interval(r['minus_prompt']) if 'minus_prompt' in r else '-'} | "
                f"{interval(r['minus_lopa']) if 'minus_lopa' in r else '-'} | {diag} | "
                f"{r['trainable']:,} |")
        lines.append(line + f" {points(*mean_std(r['acc'].values()))} |" * acc_column)
    lines += ["", "Arms:"]
    lines += [f"- {r['arm']}: `{' '.join(r['flags'])}`: {r['question']}" for r in out["rows"]]
    lines += ["", f"Command: `{out['command']}`"]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sst2")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train-examples", default="2000")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each with cores/jobs threads")
    p.add_argument("--report", action="store_true", help="only tabulate the runs already finished")
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "study"), help="the runs' folders")
    p.add_argument("--records", default=os.path.join(HERE, "study"), help="finished runs' records")
    args = p.parse_args()
    arms, seeds = args.arms.split(","), [int(s) for s in args.seeds.split(",")]
    if unknown := [a for a in arms if a not in ARMS]:
        sys.exit(f"error: unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
    if not args.report:
        # OMP_NUM_THREADS, when set, wins: e.g. two studies side by side at 1 thread each
        threads = (os.environ.get("OMP_NUM_THREADS")
                   or str(max(1, (os.cpu_count() or 1) // args.jobs)))
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        todo = [(arm, s) for s in seeds for arm in arms]  # seed-major: early runs pair up
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(train_and_record, args, arm, seed, env) for arm, seed in todo]
            try:
                for f in futures:
                    f.result()
            except BaseException:  # a failed run: start no more (the ones running finish)
                pool.shutdown(cancel_futures=True)
                raise
    report(args, arms, seeds)


if __name__ == "__main__":
    main()
