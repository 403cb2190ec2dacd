"""torchrun: two CPU processes (gloo) train the tiny GPT-2 to the adapter that one process trains with
the same global batch, for LOPA, prompt tuning and LoRA; a two-process run stopped by Ctrl-C and resumed
ends where the whole run does. One torchrun launch runs them all (tests/ddp_runs.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import train
from plumbing.checkpoints import read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("lopa", "prompt", "lora")


def flags(model, out, *extra):
    # 46 examples in batches of 9: shares of 5 and 4 rows, and a last batch of 1 that leaves rank 1 nothing
    return ["--task", "rte", "--model", model, "--out", str(out), "--max-train-examples", "46",
            "--batch-size", "9", "--m", "4", "--hidden", "16", "--lora-r", "2", "--seed", "1",
            "--dtype", "float32", *extra]


def torchrun(runs, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "tests/ddp_runs.py", json.dumps(runs)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_two_processes_train_as_one_and_resume(tiny_gpt2, tmp_path, one_thread):
    # dropout 0: dropout draws its masks per process, so with dropout the runs agree in distribution only
    exact = ["--epochs", "1", "--dropout", "0", "--lora-dropout", "0"]
    two = [[flags(tiny_gpt2, tmp_path / f"two-{m}", "--method", m, *exact), 0] for m in METHODS]
    cut = flags(tiny_gpt2, tmp_path / "cut", "--epochs", "2", "--checkpoint-every", "2")
    two += [[cut, 8], [cut + ["--resume"], 0], [flags(tiny_gpt2, tmp_path / "whole", "--epochs", "2"), 0]]
    p = torchrun(two)
    assert p.stdout.count("done in") == 5  # rank 0 alone prints
    assert "interrupted at step 9/12" in p.stderr and "resuming at step 9/12" in p.stdout
    for m in METHODS:
        assert train.main(flags(tiny_gpt2, tmp_path / f"one-{m}", "--method", m, *exact)) == 0
        a, b = (load_file(tmp_path / f"{n}-{m}" / "adapter.safetensors") for n in ("one", "two"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=0), (m, k, (a[k] - b[k]).abs().max())
        one, two_ = (read_checkpoint(tmp_path / f"{n}-{m}")[0] for n in ("one", "two"))
        assert one["zero_shot"] == two_["zero_shot"] and one["step"] == two_["step"] == 6
        assert one["history"][0]["loss"] == pytest.approx(two_["history"][0]["loss"], abs=1e-5)
    a, b = (load_file(tmp_path / n / "adapter.safetensors") for n in ("cut", "whole"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_file(tmp_path / "cut" / "checkpoint.safetensors")
    assert "rng" in ckpt and "rng.1" in ckpt  # each process's dropout generator
