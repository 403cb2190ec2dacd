"""The exercises' solutions (exercises/) and the results scripts (benchmarks/results.py, plot_results.py), on tiny
random models or made-up runs."""
import contextlib
import io
import json
import os
import subprocess
import sys
import unittest.mock
import xml.etree.ElementTree as ET

import pytest
import torch

import data
from adapters import save_adapter
from benchmarks import plot_results, results
from common import UserError
from exercises.mean_pool import MeanPoolLOPA, mean_hidden
from exercises.mean_pool import main as mean_pool_main
from exercises.nearest_tokens import main as nearest_main
from exercises.nearest_tokens import nearest_tokens
from exercises.new_task import main as new_task_main
from exercises.new_task import tsv_task
from exercises.serve_two import main as serve_main
from exercises.serve_two import serve
from lopa import LOPA, METHODS, LOPAConfig, PromptConfig, PromptTuning, label_logits
from model import load_model
from tests.helpers import padded_batch as batch, tiny_lm as small

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(fn, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = fn(*args)
    return status, out.getvalue()


def quick(folder, out, *extra):
    return ["--model", folder, "--out", str(out), "--device", "cpu", "--max-train-examples", "16",
            "--batch-size", "8", "--epochs", "1", "--m", "4", "--hidden", "16", *extra]


# ----------------------------------------------------------------------------- a new method

def test_a_registered_method_trains_through_train_py_with_its_own_cached_e(tiny_gpt2, tmp_path):
    status, out = quiet(mean_pool_main, ["--task", "rte", *quick(tiny_gpt2, tmp_path / "mp")])
    assert status == 0 and "method: lopa_mean;" in out and "done in" in out
    info = json.loads((tmp_path / "mp" / "adapter.json").read_text())
    assert info["method"] == "lopa_mean" and info["config"]["m"] == 4
    assert METHODS["lopa_mean"].tuner is MeanPoolLOPA
    seen = []  # the e train.py hands the tuner is the pooled one, computed once per example
    real = MeanPoolLOPA.prompt
    with unittest.mock.patch.object(MeanPoolLOPA, "prompt", lambda self, i, n, e=None: (seen.append(e),
                                                                                        real(self, i, n, e))[1]):
        quiet(mean_pool_main, ["--task", "rte", *quick(tiny_gpt2, tmp_path / "mp2")])
    assert seen and all(e is not None for e in seen)


# ----------------------------------------------------------------------------- mean pooling

def test_mean_pooling_ignores_padding():
    model = small()
    ids, lengths = batch(B=5, T=8)
    assert (lengths < 8).any()
    pooled = mean_hidden(model, ids, lengths)                           # (B, d)
    for i in range(5):
        alone = model(ids[i:i + 1, :lengths[i]], return_hidden=True)    # (1, n, d): no pads at all
        torch.testing.assert_close(pooled[i], alone[0].mean(0), atol=1e-5, rtol=1e-5)
    noisy = ids.clone()
    noisy[torch.arange(8)[None, :] >= lengths[:, None]] = 42            # other pad tokens: same e
    torch.testing.assert_close(mean_hidden(model, noisy, lengths), pooled, atol=1e-6, rtol=1e-6)
    tuner = MeanPoolLOPA(model, LOPAConfig(m=3, r=2, hidden=8)).eval()
    assert torch.equal(tuner.encode(ids, lengths), pooled)
    last = LOPA(model, LOPAConfig(m=3)).encode(ids, lengths)           # what train.py caches for a LOPA
    assert not torch.allclose(pooled, last)


# ----------------------------------------------------------------------------- nearest tokens

def test_nearest_tokens_recover_vocabulary_rows():
    model = small()
    rows = torch.tensor([5, 17, 42, 99, 0])
    sims, nearest = nearest_tokens(model, model.embed(rows), k=2)
    assert sims.shape == nearest.shape == (5, 2)
    assert torch.equal(nearest[:, 0], rows) and torch.allclose(sims[:, 0], torch.ones(5))
    assert (sims[:, 1] < 1 - 1e-3).all()
    torch.manual_seed(0)
    pt = PromptTuning(model, PromptConfig(m=4))                         # vocab_init: copies of vocabulary rows
    sims, nearest = nearest_tokens(model, pt.z_s * 3.0, k=1)            # scale does not matter
    assert torch.allclose(sims, torch.ones_like(sims))
    assert torch.equal(model.embed(nearest[:, 0]), pt.z_s)
    sims, nearest = nearest_tokens(model, -model.embed(rows), k=1)      # the opposite direction is far
    assert not (nearest[:, 0] == rows).any()


def test_nearest_tokens_command(tiny_gpt2, tmp_path):
    model, _ = load_model(tiny_gpt2)
    torch.manual_seed(0)
    save_adapter(LOPA(model, LOPAConfig(m=3, r=2, hidden=8)), tmp_path / "lopa", model=tiny_gpt2, task="sst2")
    status, out = quiet(nearest_main, [str(tmp_path / "lopa"), "a gripping film", "-k", "2"])
    lines = out.splitlines()
    assert status == 0 and lines[0] == "Z_S, shared by every input:" and lines[4] == "Z for 'a gripping film':"
    assert len(lines) == 8 and all(line.startswith("  row ") and line.count("|") == 1 for line in lines[1:4])
    save_adapter(PromptTuning(model, PromptConfig(m=3)), tmp_path / "pt", model=tiny_gpt2, task="sst2")
    with pytest.raises(UserError, match="same for every input"):
        quiet(nearest_main, [str(tmp_path / "pt"), "some text"])


# ----------------------------------------------------------------------------- a new task

def write_tsv(folder, rows):
    folder.mkdir(exist_ok=True)
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))


def test_new_task_loads_encodes_and_trains(tiny_gpt2, tmp_path):
    rows = [("what a lovely day", "pos"), ("the soup was cold", "neg"), ("a warm, kind film", "pos"),
            ("it broke after a week", "neg")]
    write_tsv(tmp_path / "toy", rows)
    task = tsv_task(tmp_path / "toy")
    tokenizer = load_model(tiny_gpt2)[1]
    assert len(data.label_token_ids(task, tokenizer)) == 2
    before = dict(data.TASKS)
    status, out = quiet(new_task_main, [str(tmp_path / "toy"), *quick(tiny_gpt2, tmp_path / "run")])
    assert status == 0 and "training on 4 of 4 examples; dev: 4" in out
    assert json.loads((tmp_path / "run" / "adapter.json").read_text())["task"] == "tsv"
    assert data.TASKS == before and "tsv" not in data.TASKS
    ids = data.tokenize(task, ("what a lovely day",), tokenizer, 64)
    assert tokenizer.decode(ids) == "Text: what a lovely day\nOverall, it was"
    write_tsv(tmp_path / "bad", rows + [("no label here", "maybe")])
    with pytest.raises(UserError, match=r"train\.tsv:6: unknown label 'maybe'"):
        new_task_main([str(tmp_path / "bad"), *quick(tiny_gpt2, tmp_path / "run2")])
    with pytest.raises(UserError, match="usage"):
        new_task_main([])


# ----------------------------------------------------------------------------- two tasks, one batch

def test_serve_two_tasks_in_one_batch_equals_each_alone(tiny_gpt2, tmp_path):
    model, tokenizer = load_model(tiny_gpt2)
    torch.manual_seed(0)
    for p in model.parameters():  # as in small(): let the prompts matter
        if p.dim() == 2:
            p.data.normal_(std=0.3)
    adapters = [(LOPA(model, LOPAConfig(m=4, r=2, hidden=8)).eval(), data.TASKS["sst2"]),
                (PromptTuning(model, PromptConfig(m=4)), data.TASKS["rte"])]
    requests = [(0, "a gripping, funny film"), (1, "A man sleeps.\tA person is asleep."), (0, "dull"),
                (1, "It rains.")]
    answers = serve(model, tokenizer, adapters, requests)
    for (k, text), (word, prob) in zip(requests, answers):
        tuner, task = adapters[k]
        parts = tuple(text.split("\t")) + ("",) * (len(task.text_cols) - len(text.split("\t")))
        ids = data.tokenize(task, parts, tokenizer, 124)
        with torch.no_grad():
            h = tuner(torch.tensor([ids]), torch.tensor([len(ids)]))
        probs = label_logits(model, h, torch.tensor(data.label_token_ids(task, tokenizer))).softmax(-1)[0]
        assert word == task.label_words[int(probs.argmax())].strip()
        assert abs(prob - probs.max().item()) < 1e-5
    assert {w for w, _ in answers[0::2]} <= {"negative", "positive"} and {w for w, _ in answers[1::2]} <= {"Yes", "No"}


def test_serve_two_command(tiny_gpt2, tmp_path):
    model, _ = load_model(tiny_gpt2)
    save_adapter(LOPA(model, LOPAConfig(m=4, r=2, hidden=8)), tmp_path / "a", model=tiny_gpt2, task="sst2")
    save_adapter(PromptTuning(model, PromptConfig(m=4)), tmp_path / "b", model=tiny_gpt2, task="cola")
    status, out = quiet(serve_main, [str(tmp_path / "a"), str(tmp_path / "b"), "--ask", "0", "fine film",
                                     "--ask", "1", "The cat sat on mat the."])
    lines = [line.split("\t") for line in out.splitlines()]
    assert status == 0
    assert [(k, text) for k, _, _, text in lines] == [("0", "fine film"), ("1", "The cat sat on mat the.")]
    assert lines[0][1] in ("negative", "positive") and lines[1][1] in ("No", "Yes")
    with pytest.raises(UserError, match="adapter number"):
        serve_main([str(tmp_path / "a"), "--ask", "1", "no such adapter"])
    info = json.loads((tmp_path / "b" / "adapter.json").read_text())
    (tmp_path / "b" / "adapter.json").write_text(json.dumps({**info, "model": "gpt2"}))
    with pytest.raises(UserError, match="different base models"):
        serve_main([str(tmp_path / "a"), str(tmp_path / "b"), "--ask", "0", "x"])


# ----------------------------------------------------------------------------- the results figure

def result(method, trainable, mean, task="sst2", metric="acc"):
    return {"task": task, "method": method, "metric_name": metric, "mean": mean, "std": 0.01, "n_seeds": 3,
            "trainable": trainable, "adapter_bytes": 4 * trainable, "model": "toy", "wall_s": 12.5}


@pytest.mark.parametrize("as_written_by_results_py", [True, False])
def test_plot_results_writes_an_svg_with_every_method(tmp_path, as_written_by_results_py):
    rows = [result("zero-shot", 0, 0.55), result("prompt", 7_680, 0.7), result("lopa", 1_201_192, 0.8),
            result("lopa", 300_000, 0.78), result("lora", 589_824, 0.82), result("lopa", 1_201_192, 0.7, "mrpc", "f1")]
    notes = {"hardware": "a made-up CPU", "budget": "made-up budget", "command": "none"}
    (tmp_path / "results.json").write_text(json.dumps({**notes, "rows": rows} if as_written_by_results_py else rows))
    svg = tmp_path / "results.svg"
    status, out = quiet(plot_results.main, ["--input", str(tmp_path / "results.json"), "--output", str(svg)])
    assert status == 0 and out.strip() == f"wrote {svg}"
    root = ET.parse(svg).getroot()                                      # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    for method in ("zero-shot", "prompt", "lopa", "lora"):
        assert method in texts                                          # the legend
    assert {"sst2", "mrpc"} <= set(texts) and "dev acc" in texts and "dev f1" in texts
    assert (["budget: made-up budget", "hardware: a made-up CPU"] if as_written_by_results_py else []) == \
        [t for t in texts if t.startswith(("budget", "hardware"))]
    points = [c for c in root.iter(f"{ns}circle") if c.find(f"{ns}title") is not None]
    assert len(points) == 5                                             # zero-shot is a dashed line, not a point
    assert len(list(root.iter(f"{ns}polyline"))) == 1                   # the two lopa points on sst2, joined
    titles = [t.text for t in root.iter(f"{ns}title")]
    assert any(t.startswith("zero-shot on sst2") for t in titles)
    x = {}  # (method, trainable) -> horizontal position, in the sst2 panel
    for c in points:
        title = c.find(f"{ns}title").text
        if " on sst2 " in title:
            x[title.split(" on ")[0], title.split("; ")[1]] = float(c.get("cx"))
    assert (x["prompt", "7,680 trainable"] < x["lopa", "300,000 trainable"] < x["lora", "589,824 trainable"]
            < x["lopa", "1,201,192 trainable"])


@pytest.mark.parametrize("content,message", [("not json", "not valid JSON"), ("[]", "non-empty list"),
                                             ('{"rows": {}}', "non-empty list"),
                                             ('[{"task": "sst2"}]', "entry 0 lacks"),
                                             (json.dumps([{**result("lopa", 10, 0.5), "mean": "high"}]), "mean")])
def test_plot_results_bad_input_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "results.json").write_text(content)
    status = plot_results.main(["--input", str(tmp_path / "results.json"), "--output", str(tmp_path / "r.svg")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r.svg").exists()


def test_results_py_picks_lr_on_the_held_out_slice_reuses_runs_and_keeps_other_rows(tmp_path, monkeypatch):
    old = {**result("lora", 5, 0.9), "budget": "old budget", "command": "old command", "hardware": "old CPU"}
    stale = {**old, "task": "mrpc", "method": "lopa"}                    # measured again below: replaced in place
    (tmp_path / "results.json").write_text(json.dumps({"rows": [old, stale, {**old, "task": "mrpc"}]}))
    calls, real_run = [], subprocess.run

    def fake_train_py(cmd, **kw):                                       # stands in for one train.py process
        if cmd[1:2] != ["train.py"]:
            return real_run(cmd, **kw)                                  # platform.processor() asks `uname`
        flag = {a: b for a, b in zip(cmd, cmd[1:]) if a.startswith("--")}
        seed, lr, holdout = int(flag["--seed"]), float(flag["--lr"]), int(flag.get("--holdout", 0))
        calls.append((seed, lr, holdout))
        score = lr if holdout else 0.5 + seed / 10                      # the held-out slice favours the largest lr
        os.makedirs(flag["--out"], exist_ok=True)
        with open(os.path.join(flag["--out"], "adapter.json"), "w") as f:
            json.dump({"metrics": {"dev": {"metric": score}, "zero_shot": {"metric": 0.4}}, "metric_name": "f1",
                       "trainable": 7}, f)
        with open(os.path.join(flag["--out"], "adapter.safetensors"), "wb") as f:
            f.write(bytes(28))
        return subprocess.CompletedProcess(cmd, 0, stderr="")
    monkeypatch.setattr(results, "HERE", str(tmp_path))
    monkeypatch.setattr(results.subprocess, "run", fake_train_py)
    argv = ["benchmarks/results.py", "--tasks", "mrpc", "--methods", "lopa", "--seeds", "0,1", "--runs", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    quiet(results.main)
    best = max(results.GRID["lopa"])
    assert calls == [(0, lr, 500) for lr in results.GRID["lopa"]] + [(0, best, 0), (1, best, 0)]
    written = json.loads((tmp_path / "results.json").read_text())
    rows = written["rows"]
    assert [(r["task"], r["method"]) for r in rows] == [("sst2", "lora"), ("mrpc", "lopa"), ("mrpc", "lora"),
                                                        ("mrpc", "zero-shot")]
    assert rows[0] == old and rows[2] == {**old, "task": "mrpc"} and rows[1]["lr"] == best
    assert rows[1]["scores"] == [0.5, 0.6] and rows[1]["command"] == "python " + " ".join(argv)
    assert rows[1]["adapter_bytes"] == 28
    md = (tmp_path / "results.md").read_text()
    assert "| sst2 | lora | acc 90.0 ± 1.0 | 3 | old budget |" in md and "`old command`" in md
    assert "| mrpc | lopa | f1 55.0 ± 7.1 | 2 | 2000 examples x 2 epochs, lr chosen on 500 held out of train |" in md

    quiet(results.main)                                                 # again: every run is reused, none retrained
    assert len(calls) == 5 and json.loads((tmp_path / "results.json").read_text())["rows"] == rows

    monkeypatch.setattr(results.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 2, stderr="epoch 1/2: 10%\rerror: loss became nan at step 3\n"))
    monkeypatch.setattr(sys, "argv", argv[:-2] + ["--runs", str(tmp_path / "new")])
    with pytest.raises(SystemExit, match=r"^error: `python train.py --task mrpc .*` failed: error: loss became nan"):
        results.main()
