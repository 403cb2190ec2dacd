"""Refactors must not change what a run computes: seed-0 runs on the tiny GPT-2 give the adapters pinned
in pinned_adapters.json (per tensor: its sum, its sum of squares and its first entries).

Regenerate the file only for a change that is meant to change the numbers, and say so in the commit:
    PIN_ADAPTERS=write python -m pytest tests/test_pinned.py
"""
import json
import os

import pytest
from safetensors.torch import load_file

import train

HERE = os.path.dirname(os.path.abspath(__file__))
PINNED = os.path.join(HERE, "pinned_adapters.json")
RUNS = {  # name: train.py flags beside the tiny model's; each exercises one code path of a method
    "lopa": ["--method", "lopa"],
    "prompt": ["--method", "prompt"],
    "lora": ["--method", "lora"],
    "idpg": ["--method", "idpg"],
    # the study's LOPA variants, pinned before they moved out of the paper's lines
    "lopa-add": ["--method", "lopa", "--combine", "add"],
    "lopa-2sigmoid": ["--method", "lopa", "--combine", "2sigmoid"],
    "lopa-l2": ["--method", "lopa", "--encoder-norm", "l2"],
    "lopa-random": ["--method", "lopa", "--init", "random"],
    "lopa-encoder": ["--method", "lopa", "--encoder-lr", "1e-4"],
}


def summary(folder):
    """{tensor name: [sum, sum of squares, first 4 entries]} of an adapter folder."""
    state = load_file(os.path.join(folder, "adapter.safetensors"))
    return {k: [v.double().sum().item(), v.double().square().sum().item(), *v.flatten()[:4].tolist()]
            for k, v in sorted(state.items())}


def train_tiny(model, out, flags):
    argv = ["--task", "sst2", "--model", model, "--out", str(out), "--max-train-examples", "48",
            "--batch-size", "8", "--epochs", "2", "--m", "4", "--hidden", "16", "--lora-r", "2",
            "--seed", "0", *flags]
    assert train.main(argv) == 0
    return summary(out)


@pytest.mark.parametrize("name", RUNS)
def test_seed0_runs_give_the_pinned_adapters(tiny_gpt2, tmp_path, one_thread, name):
    got = train_tiny(tiny_gpt2, tmp_path / name, RUNS[name])
    pins = {}
    if os.path.exists(PINNED):
        with open(PINNED) as f:
            pins = json.load(f)
    if os.environ.get("PIN_ADAPTERS") == "write":
        with open(PINNED, "w") as f:
            json.dump({**pins, name: got}, f, indent=1)
        pytest.skip(f"wrote the pin of {name}")
    want = pins[name]
    assert got.keys() == want.keys()
    for k in want:  # rtol: other CPUs may round differently; a changed computation moves O(1)
        assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k

