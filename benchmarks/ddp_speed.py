"""Data-parallel speed: examples per second of train.py's training steps on N processes (torchrun)
against one process, in one run of this script, on the same examples and the same global batch.

    python benchmarks/ddp_speed.py                  # a small random GPT-2, 2 CPU processes
    python benchmarks/ddp_speed.py --model gpt2 --device cuda --nproc 4 --examples 4000

The two take turns (1, N, 1, N, ...), so that a slow spell on a shared machine falls on both; the
ratio is the median of each round's. Examples per second come from the epoch line's ms/step (the
training steps alone, evaluation not included) and --batch-size. On CPUs the cores are split
evenly by default: one process gets all of them as threads, each of N processes cores / N. On a
machine that other work keeps busy, threads mostly wait for each other: --threads 1 then gives
every process one thread, which measures how the steps scale over processes alone.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from model import GPT, GPTConfig  # noqa: E402


def small_gpt2(folder):
    """A random 4-layer, width-128 GPT-2 with the real vocabulary, as the hub lays out gpt2."""
    torch.manual_seed(0)
    cfg = GPTConfig(n_positions=256, n_embd=128, n_layer=4, n_head=4)
    conv1d = ("c_attn.weight", "c_proj.weight", "c_fc.weight")
    sd = {k: (v.t() if k.endswith(conv1d) else v).contiguous()
          for k, v in GPT(cfg).state_dict().items() if k != "lm_head.weight"}
    save_file(sd, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", **vars(cfg)}, f)
    return folder


def examples_per_s(nproc, args, model, out):
    """Run train.py for one epoch on nproc processes; examples per second of its steps."""
    threads = args.threads or max(1, (os.cpu_count() or 1) // nproc)
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(nproc), "--"] if nproc > 1 else [sys.executable])
    cmd = launch + ["train.py", "--task", args.task, "--model", model, "--out", out, "--overwrite",
                    "--device", args.device, "--method", args.method, "--epochs", "1",
                    "--max-train-examples", str(args.examples),
                    "--batch-size", str(args.batch_size)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    ms = re.search(r"\| (\d+) ms/step$", p.stdout, re.M)
    if p.returncode or not ms:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return args.batch_size * 1000 / int(ms[1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: a small random GPT-2 made here")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--task", default="sst2")
    p.add_argument("--method", default="lopa")
    p.add_argument("--examples", type=int, default=800, help="training examples (one epoch)")
    p.add_argument("--batch-size", type=int, default=16, help="the global batch")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="per process (default: cores split)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or small_gpt2(tmp)
        rates = [(examples_per_s(1, args, model, os.path.join(tmp, "one")),
                  examples_per_s(args.nproc, args, model, os.path.join(tmp, "many")))
                 for _ in range(args.rounds)]
    for i, (one, many) in enumerate(rates, 1):
        print(f"round {i}: 1 process {one:.0f} examples/s, {args.nproc} processes {many:.0f} "
              f"examples/s")
    ratio = statistics.median(many / one for one, many in rates)
    where = (torch.cuda.get_device_name() if args.device == "cuda" else
             f"{os.cpu_count()} CPU cores")
    threads = f"{args.threads} thread(s) per process" if args.threads else "cores split"
    print(f"{args.nproc} processes vs 1: {ratio:.2f}x the examples/s ({args.method}, batch "
          f"{args.batch_size}, {args.model or 'small random GPT-2 (4 layers, width 128)'}, "
          f"{where}, {threads}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
