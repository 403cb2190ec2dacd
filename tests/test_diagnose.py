"""benchmarks/diagnose.py on the tiny GPT-2: does a LOPA adapter use its input-dependent part?"""
import json
import os
import sys

import pytest
import torch

import train
from plumbing.adapters import save_adapter
from plumbing.cli import UserError
from lopa import LOPA, LOPAConfig
from plumbing.loading import load_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import diagnose  # noqa: E402


def quick(model, out, *extra):
    return ["--task", "sst2", "--model", model, "--out", str(out), "--max-train-examples", "32",
            "--batch-size", "8", "--epochs", "1", "--m", "4", "--hidden", "16", *extra]


def run(folder, tmp_path):
    assert diagnose.main(["--adapter", str(folder), "--json", str(tmp_path / "d.json")]) == 0
    return json.loads((tmp_path / "d.json").read_text())


def test_real_e_reproduces_the_trained_score(tiny_gpt2, tmp_path, one_thread, capsys):
    assert train.main(quick(tiny_gpt2, tmp_path / "run")) == 0
    out = run(tmp_path / "run", tmp_path)
    info = json.loads((tmp_path / "run" / "adapter.json").read_text())
    assert out["n"] == 872 and out["real"]["metric"] == info["metrics"]["dev"]["metric"]
    assert out["real"]["changed"] == 0 and 0 <= out["mean_e"]["changed"] <= 872
    assert 0 < out["term"]["min"] <= out["term"]["mean"] <= out["term"]["max"] < 1  # σ of something
    assert out["e"]["norm"] > out["e"]["mean_abs"] > 0 and 0 <= out["e"]["saturated"] <= 1
    log = capsys.readouterr().out
    assert "every e = the mean e" in log and "gate fixed at its mean" in log and "verdict:" in log


@pytest.mark.parametrize("strength", [0.0, 3.0])
def test_the_ablations_see_an_instance_part_only_where_there_is_one(tiny_gpt2, tmp_path, one_thread,
                                                                     strength):
    model, _ = load_model(tiny_gpt2)
    torch.manual_seed(0)
    tuner = LOPA(model, LOPAConfig(m=4, r=2, hidden=16))
    with torch.no_grad():  # strength 0: Z_I = 0 for every input; 3: a large Z_I that depends on e
        for net in (tuner.mlp_u, tuner.mlp_v):
            net[1].weight.normal_(std=strength)
            net[3].weight.normal_(std=strength)
    save_adapter(tuner, tmp_path / "a", model=tiny_gpt2, task="sst2")
    out = run(tmp_path / "a", tmp_path)
    if strength == 0:
        assert out["mean_e"]["changed"] == out["mean_gate"]["changed"] == 0
        assert out["term"]["std_across_examples"] == 0 and out["term"]["mean"] == 0.5
        assert out["term"]["near_0_or_1"] == 0  # every entry at σ(0) = 0.5
    else:
        assert out["mean_e"]["changed"] > 10 and out["mean_gate"]["changed"] > 10
        assert out["term"]["std_across_examples"] > 0.1
        assert out["term"]["near_0_or_1"] > 0.5  # a large Z_I: the gate is mostly shut or open
        assert out["e"]["saturated"] > 0.5  # weights of std 3 on e: tanh at ±1 almost everywhere


def test_a_prompt_adapter_is_refused_in_one_line(tiny_gpt2, tmp_path, one_thread):
    assert train.main(quick(tiny_gpt2, tmp_path / "run", "--method", "prompt")) == 0
    with pytest.raises(UserError, match="does not depend on the input"):
        diagnose.main(["--adapter", str(tmp_path / "run")])
