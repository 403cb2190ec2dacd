"""E2E NLG: prompt tuning, LOPA, LoRA and IDPG write restaurant descriptions behind frozen SmolLM2,
scored on E2E's official test set. The rule these runs serve was fixed before them: docs/e2e.md.

    python benchmarks/e2e.py             # every run below (resuming), each scored, then the record
    python benchmarks/e2e.py --report        # the record from the runs finished so far

Each run is `python train.py --task e2e --model smollm2 --method M --seed S --out RUNS/M-sS` in its
own process, its output in RUNS/M-sS.log (whose summary line gives the run's wall time), one after
the other. Then its best adapter writes a description of each of the test set's 630 MRs (greedy,
KV-cached, batches of 32; generate.write) and corpus BLEU reads every reference of each MR
(RUNS/M-sS/test.json keeps the texts). LOPA and IDPG are scored a second time with every e
replaced by the test set's mean e (benchmarks/diagnose.py's "mean e"): the same prompt for every
MR. The template alone, no prompt, is scored once (zero-shot). Writes benchmarks/e2e.json and .md.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from results import hardware  # noqa: E402
from study import mean_std, paired  # noqa: E402

import generate  # noqa: E402
from plumbing.adapters import load_with_model  # noqa: E402
from plumbing.cli import atomic_write, autocast, pick_dtype, write_text  # noqa: E402
from plumbing.loading import load_model  # noqa: E402
from plumbing.metrics import bleu  # noqa: E402
from train import per_example  # noqa: E402

HERE = os.path.join(ROOT, "benchmarks")
METHODS = ["prompt", "lopa", "lora", "idpg"]  # in the order each seed runs them
PAIRS = [("lopa", "prompt"), ("lora", "lopa"), ("idpg", "lopa"), ("lora", "prompt")]
TASK = generate.TASKS["e2e"]
BATCH = 32
# microsoft/LoRA's README (commit c18b175ee040ae1254c37e540a244f75a06dc0a0): E2E test BLEU with
# GPT-2 Medium, trained on the official 42k training set, decoded by beam search
PUBLISHED = {"fine-tuning": 68.2, "adapter": 66.3, "prefix tuning": 69.7, "LoRA": 70.4}


def test_split(tokenizer):
    return generate.tokenize_pairs("test", TASK, list(TASK.read("test").items()), tokenizer, 256)


def score_test(model, tokenizer, prompt_of, device="cpu"):
    """(BLEU on the official test set, the texts, seconds): every MR described behind prompt_of."""
    dtype, t0, test = pick_dtype("auto", device)[0], time.time(), test_split(tokenizer)
    with autocast(device, dtype):
        texts = generate.write(model, test, prompt_of, tokenizer, device, BATCH,
                               TASK.max_new_tokens)
    return bleu(texts, test.labels), texts, time.time() - t0


def score_run(folder, device="cpu"):
    """{"bleu", "texts", "seconds"} of the adapter in folder on the test set, and for LOPA and IDPG
    "mean_e_bleu" (and its texts) with every e replaced by the test set's mean e."""
    tuner, info, tokenizer = load_with_model(folder, device)
    tuner.model.to(device, pick_dtype("auto", device)[0]).eval()
    tuner.eval()
    out = {}
    if not tuner.caches_encoder:
        out["bleu"], out["texts"], out["seconds"] = score_test(
            tuner.model, tokenizer, lambda ids, lengths, index: tuner.prompt(ids, lengths))
        return out
    with autocast(device, pick_dtype("auto", device)[0]), torch.no_grad():
        e = per_example(lambda ids, lengths, index: tuner.encode(ids, lengths),
                        test_split(tokenizer), device, BATCH, "encode test")     # (N, h_enc)
    ways = {"": lambda ids, lengths, index: tuner.prompt(ids, lengths, e[index]),
            "mean_e_": lambda ids, lengths, index: tuner.prompt(ids, lengths,
                                                               e.mean(0).expand(len(index), -1))}
    for name, prompt_of in ways.items():
        out[name + "bleu"], out[name + "texts"], out[name + "seconds"] = score_test(
            tuner.model, tokenizer, prompt_of)
    return out


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError:
        return None


def finished(runs, name):
    """{"bleu", ..., "held_out", "zero_shot_held_out", "wall_s"} of a finished, scored run."""
    folder = os.path.join(runs, name)
    test, info = read_json(os.path.join(folder, "test.json")), read_json(
        os.path.join(folder, "adapter.json"))
    seconds = wall_s(folder)
    if not (test and info and seconds is not None):
        return None
    return {**test, "held_out": info["metrics"]["dev"]["bleu"],
            "zero_shot_held_out": info["metrics"]["zero_shot"]["bleu"],
            "best_epoch": info["best_epoch"], "wall_s": seconds}


def wall_s(folder):
    """The run's wall time in seconds from the summary line of its log; None until it has one."""
    try:
        with open(folder + ".log", encoding="utf-8") as f:
            done = re.search(r"^done in (\d+) s", f.read().replace("\r", "\n"), re.M)
    except OSError:
        return None
    return done and int(done.group(1))


def run(runs, method, seed):
    name, folder = f"{method}-s{seed}", os.path.join(runs, f"{method}-s{seed}")
    if wall_s(folder) is None:  # not trained yet (a run trained but not scored goes on to score)
        resume = os.path.exists(os.path.join(folder, "checkpoint.safetensors"))
        cmd = [sys.executable, "train.py", "--task", "e2e", "--model", "smollm2", "--method",
               method, "--seed", str(seed), "--out", folder] + ["--resume"] * resume
        with open(folder + ".log", "w", encoding="utf-8") as log:
            if subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode:
                sys.exit(f"error: `{' '.join(cmd[1:])}` failed; see {folder}.log")
    print(f"scoring {name} on the test set", flush=True)
    out = score_run(folder)
    atomic_write(os.path.join(folder, "test.json"),
                 lambda p: write_text(p, json.dumps(out, indent=1) + "\n"))


def zero_shot(runs):
    """The template alone on the test set, once: {"bleu", "texts", "seconds"}."""
    path = os.path.join(runs, "zero-shot.json")
    if not read_json(path):
        model, tokenizer = load_model("smollm2")
        model.to("cpu", pick_dtype("auto", "cpu")[0]).eval()
        bleu, texts, seconds = score_test(model, tokenizer, lambda *a: None)
        atomic_write(path, lambda p: write_text(p, json.dumps(
            {"bleu": bleu, "texts": texts, "seconds": seconds}, indent=1) + "\n"))
    return read_json(path)


def report(runs, seeds):
    zero, rows, mrs = read_json(os.path.join(runs, "zero-shot.json")), {}, list(TASK.read("test"))
    for method in METHODS:
        got = {s: r for s in seeds if (r := finished(runs, f"{method}-s{s}"))}
        if not got:
            continue
        row = {"method": method, "bleu": {str(s): r["bleu"] for s, r in got.items()},
               "held_out": {str(s): r["held_out"] for s, r in got.items()},
               "best_epoch": {str(s): r["best_epoch"] for s, r in got.items()},
               "wall_s": {str(s): r["wall_s"] for s, r in got.items()},
               "test_s": {str(s): round(r["seconds"]) for s, r in got.items()},
               "examples": got[min(got)]["texts"][:3]}
        row["mean"], row["std"] = mean_std(row["bleu"].values())
        if zero:
            row["minus_zero_shot"] = paired(list(row["bleu"].values()), [zero["bleu"]] * len(got))
        if all("mean_e_bleu" in r for r in got.values()):
            row["mean_e"] = {str(s): r["mean_e_bleu"] for s, r in got.items()}
            row["mean_e_changed"] = {  # how many of the test set's descriptions the mean e changes
                str(s): sum(x != y for x, y in zip(r["texts"], r["mean_e_texts"]))
                for s, r in got.items()}
            row["minus_mean_e"] = paired(list(row["bleu"].values()), list(row["mean_e"].values()))
        rows[method] = row
    for a, b in PAIRS:
        if a in rows and b in rows:
            common = sorted(set(rows[a]["bleu"]) & set(rows[b]["bleu"]))
            rows[a][f"minus_{b}"] = paired([rows[a]["bleu"][s] for s in common],
                                           [rows[b]["bleu"][s] for s in common])
    out = {"task": "e2e", "model": "smollm2", "unit": "percent", "hardware": hardware(),
           "command": "python benchmarks/e2e.py", "test_mrs": len(mrs), "example_mrs": mrs[:3],
           "zero_shot": zero and {k: v for k, v in zero.items() if k != "texts"},
           "zero_shot_examples": zero and zero["texts"][:3], "published": PUBLISHED,
           "rows": list(rows.values())}
    atomic_write(os.path.join(HERE, "e2e.json"),
                 lambda p: write_text(p, json.dumps(out, indent=1) + "\n"))
    atomic_write(os.path.join(HERE, "e2e.md"), lambda p: write_text(p, markdown(out)))
    print(markdown(out))


def interval(p):
    """A paired difference and its 95% interval (one seed: the difference alone)."""
    if p["low"] is None:
        return f"{p['mean']:+.2f} (one seed)"
    return f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]"


def mean_e_cell(r):
    if "minus_mean_e" not in r:
        return "-"
    changed = ", ".join(map(str, r["mean_e_changed"].values()))
    return f"{interval(r['minus_mean_e'])}; descriptions changed: {changed}"


def markdown(out):
    zero = out["zero_shot"]
    lines = [f"# E2E NLG, official test set ({out['test_mrs']} MRs): BLEU of soft prompts and LoRA "
             f"on frozen SmolLM2-135M", "",
             f"Hardware: {out['hardware']}. Command: `{out['command']}`. Rule: docs/e2e.md. "
             "Trained on E2E's development set (the MRs not held out), never on the official "
             "training set; greedy decoding.", "",
             f"Zero-shot (the template alone): {zero['bleu']:.2f}." if zero else "", "",
             "| method | test BLEU by seed | mean ± std | held-out BLEU by seed | best epoch | "
             "train s by seed | minus zero-shot | minus mean e | paired differences |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        by_seed = ", ".join(f"{v:.2f}" for v in r["bleu"].values())
        held = ", ".join(f"{v:.2f}" for v in r["held_out"].values())
        diffs = "; ".join(f"{k[6:]}: {interval(p)}" for k, p in r.items() if k.startswith("minus_")
                          and k not in ("minus_zero_shot", "minus_mean_e"))
        spread = f"{r['mean']:.2f} ± {r['std']:.2f}" if len(r["bleu"]) > 1 else "-"
        lines.append(f"| {r['method']} | {by_seed} | {spread} | {held} | "
                     f"{', '.join(map(str, r['best_epoch'].values()))} | "
                     f"{', '.join(map(str, r['wall_s'].values()))} | "
                     f"{interval(r['minus_zero_shot']) if 'minus_zero_shot' in r else '-'} | "
                     f"{mean_e_cell(r)} | "
                     f"{diffs or '-'} |")
    lines += ["", "Published, not comparable (microsoft/LoRA's README at c18b175: GPT-2 Medium, "
              "355M, trained on the official 42k pairs, beam search): "
              + ", ".join(f"{k} {v}" for k, v in out["published"].items()) + ".", "",
              "## Examples (seed 0, the test set's first MRs)", ""]
    for i, mr in enumerate(out["example_mrs"]):
        lines.append(f"- `{mr}`")
        if out["zero_shot_examples"]:
            lines.append(f"  - zero-shot: {out['zero_shot_examples'][i]}")
        lines += [f"  - {r['method']}: {r['examples'][i]}" for r in out["rows"]]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=os.path.join(ROOT, "runs", "e2e"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--report", action="store_true", help="only write the record")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    os.makedirs(a.runs, exist_ok=True)
    if not a.report:
        if pick_dtype("auto", "cpu")[0] != torch.bfloat16:
            sys.exit("error: these runs are bfloat16 ones: run them on a CPU with AVX-512 BF16")
        for seed in seeds:
            for method in METHODS:
                if not finished(a.runs, f"{method}-s{seed}"):
                    run(a.runs, method, seed)
            if seed == seeds[0]:
                zero_shot(a.runs)
    report(a.runs, seeds)


if __name__ == "__main__":
    main()
