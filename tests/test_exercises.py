"""The code exercises of tutorial.md (section 9), on tiny random models.

    python -m pytest tests/test_exercises.py                          # the reference solutions
    python -m pytest tests/test_exercises.py --student -k mean_pool   # your exercises/mean_pool.py

Each exercise's tests carry its file's name (so -k picks them) and read the module `ex` gives:
exercises/solutions/NAME.py, or with --student exercises/NAME.py. A failing check says in words
what is off and where to look, never by a dump of tensors. Without --student this file also checks
the stubs in exercises/ (the solutions' names and signatures; every exercise test run on an
untouched stub stops at NotImplementedError; a stub you have started on is skipped there) and
pastes the python blocks of exercises/solutions/README.md into a Python console, in order.
"""
import ast
import code
import contextlib
import copy
import importlib
import inspect
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import unittest.mock
import xml.etree.ElementTree as ET

import pytest
import torch

import data
from plumbing.adapters import save_adapter
from plumbing.cli import UserError
from llama import Llama, LlamaConfig
from lopa import LOPA, IDPGConfig, LOPAConfig, PromptConfig, PromptTuning, closed_form
from plumbing.methods import METHODS
from lopa import label_logits
from model import GPT, GPTConfig
from plumbing.loading import load_model
from tests.helpers import TINY, padded_batch as batch, tiny_lm as small
from tests.test_tutorial import blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANSWERS = os.path.join(ROOT, "exercises", "solutions", "README.md")


def names(folder):
    return sorted(n[:-3] for n in os.listdir(os.path.join(ROOT, folder))
                  if n.endswith(".py") and n != "__init__.py")


STUBS = names("exercises")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def ex(request):
    """ex("mean_pool"): the module under test, exercises/solutions/mean_pool.py, or with --student
    the student's exercises/mean_pool.py."""
    package = "exercises" if request.config.getoption("--student") else "exercises.solutions"
    return lambda name: importlib.import_module(f"{package}.{name}")


@pytest.fixture
def reference(request):
    if request.config.getoption("--student"):
        pytest.skip("checks the reference solutions and the stubs, not your files")


def quiet(fn, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = fn(*args)
    return status, out.getvalue()


def quick(folder, out, *extra):
    return ["--model", folder, "--out", str(out), "--device", "cpu", "--max-train-examples", "16",
            "--batch-size", "8", "--epochs", "1", "--m", "4", "--hidden", "16", *extra]


def count(tuner):
    return sum(p.numel() for p in tuner.trainable_parameters())


def nums(t, n=4):
    """A few numbers of a tensor, short enough for a failure message: '1, 0.87, 0.91, ...'."""
    flat = t.detach().flatten().tolist()
    return ", ".join(f"{v:.3g}" for v in flat[:n]) + (", ..." if len(flat) > n else "")


def tail(out, n=3):
    """The last lines a command printed, for a failure message."""
    return " | ".join(out.strip().splitlines()[-n:]) or "nothing"


# ----------------------------------------------------------------------------- 1: count by hand

def test_count_params_by_hand_is_what_lopa_trains(ex):
    by_hand = ex("count_params").by_hand

    def check(d, m, r, H, tuner, h_enc=None):
        got, want = by_hand(d, m=m, r=r, H=H, h_enc=h_enc), count(tuner)
        off = got - want
        hint = {-m * d: "Z_S (m x d) is missing", m * d: "Z_S is counted twice",
                -(2 * H + m * r + d * r): "the biases are missing",
                }.get(off, "count Z_S and both MLPs, Linear(h_enc, H) then Linear(H, out), "
                           "biases included")
        if h_enc and off:
            hint = "with an encoder of width h_enc the first layers read h_enc numbers, not d"
        where = f"d = {d}, m = {m}, r = {r}, H = {H}" + (f", h_enc = {h_enc}" if h_enc else "")
        assert not off, f"by_hand: {got:,} for {where}, LOPA trains {want:,}: {hint}"

    with torch.device("meta"):  # shapes only: no memory, no time
        narrow = GPT(GPTConfig(vocab_size=100, n_positions=8, n_embd=16, n_layer=1, n_head=2))
        for model in (GPT(GPTConfig()), Llama(LlamaConfig()), GPT(TINY)):  # GPT-2 small, SmolLM2
            d = model.config.n_embd
            for m, r, H in ((10, 4, 256), (10, 1, 256), (10, 2, 256), (4, 2, 16), (25, 3, 64)):
                check(d, m, r, H, LOPA(model, LOPAConfig(m=m, r=r, hidden=H)))
            check(d, 4, 2, 8, LOPA(model, LOPAConfig(m=4, r=2, hidden=8), encoder=narrow), h_enc=16)
    got = by_hand(576)
    assert got == 903_592, (f"by_hand(576) = {got:,}, train.py prints 903,592 for SmolLM2: "
                            f"are the defaults m = 10, r = 4, H = 256?")


# ----------------------------------------------------------------------------- 6: nearest tokens

def test_nearest_tokens_recover_vocabulary_rows(ex):
    nearest_tokens = ex("nearest_tokens").nearest_tokens
    model = small()
    rows = torch.tensor([5, 17, 42, 99, 0])
    sims, nearest = nearest_tokens(model, model.embed(rows), k=2)   # copies of vocabulary rows
    assert sims.shape == nearest.shape == (5, 2), (
        f"for 5 prompt rows and k = 2 both results should be (5, 2), got {tuple(sims.shape)} and "
        f"{tuple(nearest.shape)}: take the top k over the vocabulary (the last dim) for each row")
    assert (sims[:, 0] >= sims[:, 1]).all(), (
        "the similarities are not in decreasing order: closest first (topk, or a descending sort)")
    if not torch.allclose(sims[:, 0], torch.ones(5), atol=1e-5):
        norms = model.embed(rows).norm(dim=-1)                          # (5,)
        why = ("a plain dot product? normalise the prompt rows and the embedding rows" if
               torch.allclose(sims[:, 0], norms ** 2, rtol=1e-4) else
               "one side only is normalised: the prompt rows or the embedding rows" if
               torch.allclose(sims[:, 0], norms, rtol=1e-4) else
               "normalise the prompt rows and the embedding rows (F.normalize, dim -1)")
        pytest.fail(f"a copy of a vocabulary row should have similarity 1 with that row, got "
                    f"{nums(sims[:, 0])}: not the cosine; {why}", pytrace=False)
    assert torch.equal(nearest[:, 0], rows), (
        f"the nearest tokens of copies of rows {rows.tolist()} came out as "
        f"{nearest[:, 0].tolist()}: compare with model.embed of every id, by cosine, and return "
        f"those ids")
    assert (sims[:, 1] < 1 - 1e-3).all(), (
        "the second neighbour has similarity 1 as well: the k neighbours should be k different "
        "tokens")
    torch.manual_seed(0)
    pt = PromptTuning(model, PromptConfig(m=4))          # vocab_init: copies of vocabulary rows
    sims, nearest = nearest_tokens(model, pt.z_s * 3.0, k=1)            # scale does not matter
    assert torch.allclose(sims, torch.ones_like(sims), atol=1e-5), (
        f"a prompt scaled by 3 should keep similarity 1 to the rows it copies, got {nums(sims)}: "
        f"normalise the prompt rows too, cosine ignores length")
    assert torch.equal(model.embed(nearest[:, 0]), pt.z_s), (
        "a prompt scaled by 3 no longer finds the rows it copies: rank by cosine, which ignores "
        "length")
    sims, nearest = nearest_tokens(model, -model.embed(rows), k=1)      # the opposite is far
    assert not (nearest[:, 0] == rows).any(), (
        "the negation of a token's row came out nearest to that same token: rank by the signed "
        "cosine, not its absolute value")


def test_nearest_tokens_command(ex, tiny_gpt2, tmp_path):
    main = ex("nearest_tokens").main
    model, _ = load_model(tiny_gpt2)
    torch.manual_seed(0)
    save_adapter(LOPA(model, LOPAConfig(m=3, r=2, hidden=8)), tmp_path / "lopa", model=tiny_gpt2,
                 task="sst2")
    status, out = quiet(main, [str(tmp_path / "lopa"), "a gripping film", "-k", "2"])
    lines = out.splitlines()
    assert status == 0 and len(lines) == 8, (
        f"nearest_tokens.py on a LOPA adapter (m = 3) and one text should print 8 lines, a title "
        f"and 3 rows for Z_S, then for Z; it printed {len(lines)}: {tail(out)}")
    assert lines[0] == "Z_S, shared by every input:" and lines[4] == "Z for 'a gripping film':", (
        f"the titles are off: {lines[0]!r}, {lines[4]!r}")
    assert all(line.startswith("  row ") and line.count("|") == 1 for line in lines[1:4]), (
        f"with -k 2 each row should list 2 tokens: {lines[1]!r}")
    save_adapter(PromptTuning(model, PromptConfig(m=3)), tmp_path / "pt", model=tiny_gpt2,
                 task="sst2")
    with pytest.raises(UserError, match="same for every input"):
        quiet(main, [str(tmp_path / "pt"), "some text"])


# ----------------------------------------------------------------------------- 7: a new task

def write_tsv(folder, rows):
    folder.mkdir(exist_ok=True)
    for split in ("train", "dev"):
        lines = "".join(f"{text}\t{label}\n" for text, label in rows)
        (folder / f"{split}.tsv").write_text("text\tlabel\n" + lines)


def test_new_task_loads_encodes_and_trains(ex, tiny_gpt2, tmp_path, monkeypatch):
    new_task = ex("new_task")
    rows = [("what a lovely day", "pos"), ("the soup was cold", "neg"),
            ("a warm, kind film", "pos"), ("it broke after a week", "neg")]
    write_tsv(tmp_path / "toy", rows)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    task = new_task.tsv_task("toy")                   # a relative folder, as typed in a shell
    monkeypatch.chdir(tmp_path / "elsewhere")         # and the files read from another folder
    assert isinstance(task, data.Task), f"tsv_task should return a data.Task, not {type(task)}"
    assert task.name == "tsv" and task.metric == "acc", (
        f"the task should be named after the `name` argument ('tsv') with metric 'acc'; got "
        f"{task.name!r} and {task.metric!r}")
    assert {"train", "dev"} <= set(task.files), (
        f"files should map 'train' and 'dev' to their paths; its keys are {sorted(task.files)}")
    with unittest.mock.patch.dict(data.TASKS, {task.name: task}):
        try:
            loaded = data.load_split("tsv", "dev")
        except UserError:
            pytest.fail(f"tsv_task('toy'), called in the folder that holds toy/, stored files = "
                        f"{task.files}, which load_split cannot read: it reads a relative path "
                        f"inside assets/glue/, not the working folder; store absolute paths "
                        f"(os.path.abspath)", pytrace=False)
    want = [((t,), int(y == "pos")) for t, y in rows]
    assert loaded == want, (
        f"toy/dev.tsv loads as {loaded[:2]}, ..., want {want[:2]}, ...: the text column is "
        f"'text', the label column 'label', and labels ('neg', 'pos') are ids 0 and 1")
    tokenizer = load_model(tiny_gpt2)[1]
    assert len(data.label_token_ids(task, tokenizer)) == 2, "want two label words, one token each"
    ids = data.tokenize(task, ("what a lovely day",), tokenizer, 64)
    assert tokenizer.decode(ids) == task.fill("what a lovely day"), (
        f"the template does not come back from its tokens: {tokenizer.decode(ids)!r} against "
        f"{task.fill('what a lovely day')!r}")
    before = dict(data.TASKS)
    monkeypatch.chdir(tmp_path)
    status, out = quiet(new_task.main, ["toy", *quick(tiny_gpt2, tmp_path / "run")])
    assert status == 0 and "training on 4 of 4 examples; dev: 4" in out, (
        f"new_task.py toy (a relative folder) should train on its 4 rows; it printed: {tail(out)}")
    assert json.loads((tmp_path / "run" / "adapter.json").read_text())["task"] == "tsv"
    assert data.TASKS == before and "tsv" not in data.TASKS, "main() left its task in data.TASKS"
    write_tsv(tmp_path / "bad", rows + [("no label here", "maybe")])
    with pytest.raises(UserError, match=r"train\.tsv:6: unknown label 'maybe'"):
        new_task.main(["bad", *quick(tiny_gpt2, tmp_path / "run2")])
    with pytest.raises(UserError, match="usage"):
        new_task.main([])


# ----------------------------------------------------------------------------- 8: mean pooling

def test_mean_pool_ignores_padding(ex):
    mean_pool = ex("mean_pool")
    model = small()
    ids, lengths = batch(B=5, T=8)
    assert (lengths < 8).any()
    pooled = mean_pool.mean_hidden(model, ids, lengths)                 # (B, d)
    assert pooled.shape == (5, 32), (
        f"mean_hidden should give (B, d) = (5, 32), got {tuple(pooled.shape)}: average over the "
        f"positions, dim 1 of the (B, T, d) hidden states")
    every = model(ids, return_hidden=True)                              # (B, T, d), pads included
    for i, n in enumerate(lengths.tolist()):
        alone = model(ids[i:i + 1, :n], return_hidden=True)[0].mean(0)  # (d,): no pads at all
        if torch.allclose(pooled[i], alone, atol=1e-5, rtol=1e-5):
            continue
        if n == 8:
            why = "it has no pads: is it the mean of the final hidden states over the positions?"
        elif torch.allclose(pooled[i], every[i].mean(0), atol=1e-5):
            why = "are pads counted in the mean? average over the first lengths[i] positions only"
        elif torch.allclose(pooled[i], alone * n / 8, atol=1e-5):
            why = "the pads are left out of the sum, but it is divided by T, not by lengths[i]"
        else:
            why = "are pads counted? sum the first lengths[i] positions, divide by lengths[i]"
        pytest.fail(f"row {i} ({n} real tokens of 8) differs from the row run alone: {why}",
                    pytrace=False)
    noisy = ids.clone()
    noisy[torch.arange(8)[None, :] >= lengths[:, None]] = 42            # other pad tokens: same e
    assert torch.allclose(mean_pool.mean_hidden(model, noisy, lengths), pooled, atol=1e-6), (
        "other pad tokens changed the result: positions from lengths[i] on must not count")
    tuner = mean_pool.MeanPoolLOPA(model, LOPAConfig(m=3, r=2, hidden=8)).eval()
    e = tuner.encode(ids, lengths)
    assert e.shape == pooled.shape and torch.allclose(e, pooled, atol=1e-6), (
        "MeanPoolLOPA.encode(ids, lengths) should be mean_hidden(self.encoder, ids, lengths)")
    last = LOPA(model, LOPAConfig(m=3)).encode(ids, lengths)  # what train.py caches for a LOPA
    assert not torch.allclose(pooled, last), (
        "mean_hidden gives the last token's hidden state, LOPA's own e: average the positions")


def test_mean_pool_is_a_method_of_train_py_with_its_own_cached_e(ex, tiny_gpt2, tmp_path):
    mean_pool = ex("mean_pool")
    status, out = quiet(mean_pool.main, ["--task", "rte", *quick(tiny_gpt2, tmp_path / "mp")])
    assert status == 0 and "method: lopa_mean;" in out and "done in" in out, (
        f"mean_pool.py (train.py --method lopa_mean) did not finish a run; it printed: {tail(out)}")
    info = json.loads((tmp_path / "mp" / "adapter.json").read_text())
    assert info["method"] == "lopa_mean" and info["config"]["m"] == 4, (
        f"the adapter should be saved as method 'lopa_mean' with m = 4; adapter.json says "
        f"{info['method']!r}, m = {info['config'].get('m')}")
    assert METHODS["lopa_mean"].tuner is mean_pool.MeanPoolLOPA, (
        "--method lopa_mean is not MeanPoolLOPA: keep the register() line")
    seen, real = [], mean_pool.MeanPoolLOPA.prompt

    def spy(self, ids, lengths, e=None):  # the e train.py hands the tuner: the pooled one, cached
        want = mean_pool.mean_hidden(self.encoder, ids, lengths)
        seen.append(e is not None and e.shape == want.shape
                    and torch.allclose(e, want, atol=1e-4, rtol=1e-4))
        return real(self, ids, lengths, e)
    with unittest.mock.patch.object(mean_pool.MeanPoolLOPA, "prompt", spy):
        quiet(mean_pool.main, ["--task", "rte", *quick(tiny_gpt2, tmp_path / "mp2")])
    assert seen and all(seen), (
        "the e that train.py cached and handed to prompt() is not mean_hidden's: train.py fills "
        "its cache with MeanPoolLOPA.encode, so that should return mean_hidden(self.encoder, ...)")


# ----------------------------------------------------------------------------- 9: IDPG

def test_idpg_size_shape_start_and_frozen_model(ex):
    IDPG = ex("idpg").IDPG
    with torch.device("meta"):
        for cfg in (GPTConfig(), TINY):
            model, d = GPT(cfg), cfg.n_embd
            for m, H in ((10, 256), (4, 16), (25, 64)):
                n = count(IDPG(model, IDPGConfig(m=m, hidden=H)))
                want = closed_form("idpg", d, d, m=m, H=H)
                hint = {m * d: "an extra m x d tensor: IDPG has no Z_S",
                        -want: "none at all: is the MLP an attribute, self.mlp = ...?",
                        }.get(n - want, "want one MLP, Linear(h_enc, H) then Linear(H, m * d), "
                                        "biases included, and nothing else")
                assert n == want, (f"parameter count: IDPG(m = {m}, hidden = {H}) on d = {d} "
                                   f"trains {n:,}, want {want:,}: {hint}")
    model = small()
    torch.manual_seed(0)
    idpg = IDPG(model, IDPGConfig(m=3, hidden=8)).eval()
    ids, lengths = batch()
    z = idpg.prompt(ids, lengths)                                       # (B, m, d)
    assert z.shape == (4, 3, 32), (
        f"shape: prompt() gives {tuple(z.shape)}, want (B, m, d) = (4, 3, 32): reshape the MLP's "
        f"(B, m * d) output")
    assert not torch.allclose(z[0], z[1]), (
        "every input gets the same prompt: the MLP should read each input's e")
    e = idpg.encode(ids, lengths)                                       # (B, h_enc)
    assert torch.equal(idpg.prompt(ids, lengths, e), z), (
        "prompt(ids, lengths, e) with train.py's cached e differs from prompt(ids, lengths): use "
        "e when it is given, compute self.encode(ids, lengths) only when it is None")
    start = idpg.prompt(ids, lengths, torch.zeros_like(e))[0]           # (m, d): e = 0
    vocab = model.embed(torch.arange(TINY.vocab_size))                  # (V, d)
    assert ((start[:, None, :] - vocab[None]).abs().amax(-1).amin(-1) < 1e-5).all(), (
        "start value: for e = 0 the prompt rows are not token embeddings: start the output "
        "layer's bias at m vocabulary embeddings, flattened (lopa.vocab_init), and the first "
        "layer's bias at 0 (lopa.mlp does)")
    idpg.train()
    label_logits(model, idpg(ids, lengths), torch.tensor([1, 2])).logsumexp(-1).sum().backward()
    assert all(p.grad is None for p in model.parameters()), (
        "the frozen model got gradients: only the MLP should train")
    missed = [name for name, p in idpg.named_parameters() if p.requires_grad and p.grad is None]
    assert not missed, f"no gradient reached {missed}: prompt() should use every trainable tensor"


def test_idpg_trains_through_train_py(ex, tiny_gpt2, tmp_path):
    idpg = ex("idpg")
    status, out = quiet(idpg.main, ["--task", "rte", *quick(tiny_gpt2, tmp_path / "idpg")])
    assert status == 0 and "method: my_idpg;" in out and "done in" in out, (
        f"idpg.py (train.py --method my_idpg) did not finish a run; it printed: {tail(out)}")
    method = json.loads((tmp_path / "idpg" / "adapter.json").read_text())["method"]
    assert method == "my_idpg", f"the adapter is saved as method {method!r}, not 'my_idpg'"
    assert METHODS["my_idpg"].tuner is idpg.IDPG, (
        "--method my_idpg is not your IDPG: keep the register() line")


# ----------------------------------------------------------------------------- 10: serve two

def test_serve_two_tasks_in_one_batch_equals_each_alone(ex, tiny_gpt2):
    serve = ex("serve_two").serve
    model, tokenizer = load_model(tiny_gpt2)
    torch.manual_seed(0)
    for p in model.parameters():  # as in small(): let the prompts matter
        if p.dim() == 2:
            p.data.normal_(std=0.3)
    # LOPA reads e with its own copy of the model, so that the passes of `model` itself are the
    # ones with prompts, which the exercise asks to be one for all the requests
    lopa = LOPA(model, LOPAConfig(m=4, r=2, hidden=8), encoder=copy.deepcopy(model)).eval()
    adapters = [(lopa, data.TASKS["sst2"]), (PromptTuning(model, PromptConfig(m=4)),
                                             data.TASKS["rte"])]
    requests = [(0, "a gripping, funny film"), (1, "A man sleeps.\tA person is asleep."),
                (0, "dull"), (1, "It rains.")]
    passes = []  # every pass of the model ends in its final LayerNorm, whichever path it takes
    hook = model.transformer.ln_f.register_forward_hook(lambda *_: passes.append(1))
    try:
        answers = serve(model, tokenizer, adapters, requests)
    finally:
        hook.remove()
    assert len(answers) == len(requests), (
        f"serve() gave {len(answers)} answers for {len(requests)} requests: one per request, in "
        f"their order")
    assert len(passes) <= 1, (
        f"serve() ran the frozen model {len(passes)} times for {len(requests)} requests; the "
        f"exercise asks for one pass: tokenize every request, pad them into one batch and call "
        f"mixed_batch_hidden once")
    assert passes, "serve() never ran the model it was given: score the rows with its hidden states"
    for i, ((k, text), (word, prob)) in enumerate(zip(requests, answers)):
        tuner, task = adapters[k]
        parts = tuple(text.split("\t")) + ("",) * (len(task.text_cols) - len(text.split("\t")))
        ids = data.tokenize(task, parts, tokenizer, 124)
        with torch.no_grad():
            h = tuner(torch.tensor([ids]), torch.tensor([len(ids)]))
        label_ids = torch.tensor(data.label_token_ids(task, tokenizer))
        probs = label_logits(model, h, label_ids).softmax(-1)[0]
        right = task.label_words[int(probs.argmax())].strip()
        assert word != task.label_words[int(probs.argmax())], (
            f"request {i}: answered {word!r}: give the label word without its leading space")
        assert word == right, (
            f"request {i} ({text!r}, adapter {k}): answered {word!r}, the row alone gives "
            f"{right!r}: each row with its own task's template, prompt and label words, read at "
            f"its own last real token")
        assert abs(prob - probs.max().item()) < 1e-5, (
            f"request {i}: probability {prob:.4f}, the row alone gives {probs.max().item():.4f}: "
            f"a softmax over the task's label words only")


def test_serve_two_command(ex, tiny_gpt2, tmp_path):
    main = ex("serve_two").main
    model, _ = load_model(tiny_gpt2)
    save_adapter(LOPA(model, LOPAConfig(m=4, r=2, hidden=8)), tmp_path / "a", model=tiny_gpt2,
                 task="sst2")
    save_adapter(PromptTuning(model, PromptConfig(m=4)), tmp_path / "b", model=tiny_gpt2,
                 task="cola")
    status, out = quiet(main, [str(tmp_path / "a"), str(tmp_path / "b"), "--ask", "0", "fine film",
                               "--ask", "1", "The cat sat on mat the."])
    lines = [line.split("\t") for line in out.splitlines()]
    assert status == 0 and [(line[0], line[-1]) for line in lines] == [
        ("0", "fine film"), ("1", "The cat sat on mat the.")], (
        f"serve_two.py should print one line per --ask, in order; it printed: {tail(out)}")
    assert lines[0][1] in ("negative", "positive") and lines[1][1] in ("No", "Yes"), (
        f"the answers should be the tasks' label words without their space, got {lines[0][1]!r} "
        f"(sst2) and {lines[1][1]!r} (cola)")
    with pytest.raises(UserError, match="adapter number"):
        main([str(tmp_path / "a"), "--ask", "1", "no such adapter"])
    info = json.loads((tmp_path / "b" / "adapter.json").read_text())
    (tmp_path / "b" / "adapter.json").write_text(json.dumps({**info, "model": "gpt2"}))
    with pytest.raises(UserError, match="different base models"):
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--ask", "0", "x"])


# ----------------------------------------------------------------------------- 16: beam search

def continuation_logp(model, ids, prompt, tokens):
    """The oracle: the summed log-probability of tokens after [prompt ; ids], by one plain pass."""
    x = torch.cat([prompt[None], model.embed(torch.cat([ids, torch.tensor(tokens)])[None])], 1)
    with torch.no_grad():
        logp = model(embeds=x)[0].float().log_softmax(-1)                     # (m + T + n, vocab)
    start = prompt.size(0) + len(ids) - 1
    return sum(logp[start + j, t].item() for j, t in enumerate(tokens))


def test_beam_search_with_one_beam_is_greedy_decoding(ex):
    from generate import generate
    model, (ids, lengths) = small(), batch(B=3, T=6)
    torch.manual_seed(0)
    prompts = torch.randn(3, 4, TINY.n_embd)
    eos = generate(model, ids[:1], 3, prompt=prompts[0])[0, 2].item()  # row 0 makes it third
    for i in range(3):
        row = ids[i, :lengths[i]]
        want = generate(model, row[None], 8, prompt=prompts[i], eos=eos)[0].tolist()
        want = want[:want.index(eos) + 1] if eos in want else want
        tokens, logp = ex("beam").beam_search(model, row, 1, 8, prompts[i], eos)
        assert tokens == want, (
            f"row {i}: one beam gave {tokens}, greedy decoding {want}: with beams=1 each step keeps "
            f"the single most likely token, and a continuation ends at its eos, which it includes")
        assert logp == pytest.approx(continuation_logp(model, row, prompts[i], tokens), abs=1e-4), (
            f"row {i}: the log-probability returned is not the sum of the tokens' log-softmax")


def test_beam_search_with_a_beam_per_token_finds_the_best_two_tokens(ex):
    model, ids = small(), torch.tensor([5, 17, 42])
    torch.manual_seed(1)
    prompt = torch.randn(4, TINY.n_embd)
    x = torch.cat([prompt[None], model.embed(ids[None])], 1)                   # (1, m + T, d)
    V = TINY.vocab_size
    with torch.no_grad():
        first = model(embeds=x)[0, -1].log_softmax(-1)                         # (V,)
        x2 = torch.cat([x.expand(V, -1, -1), model.embed(torch.arange(V)[:, None])], 1)
        second = model(embeds=x2)[:, -1].log_softmax(-1)                       # (V, V)
    eos = first.argsort(descending=True)[1].item()  # the second most likely first token
    both = first[:, None] + second
    both[eos] = -float("inf")                       # after eos, nothing
    a, b = divmod(both.argmax().item(), V)
    want = max([([eos], first[eos].item()), ([a, b], both[a, b].item())], key=lambda w: w[1])
    tokens, logp = ex("beam").beam_search(model, ids, V, 2, prompt, eos)
    assert tokens == want[0] and logp == pytest.approx(want[1], abs=1e-4), (
        f"with {V} beams (one per token) and 2 new tokens every continuation is kept, so the best "
        f"must be {want}; got {(tokens, logp)}")


def reference_beam_search(model, ids, prompt, beams, n, eos):
    """The oracle: the same search, every candidate scored by a whole forward pass, no cache."""
    alive, done = [([], 0.0)], []
    for _ in range(n):
        candidates = []
        for tokens, score in alive:
            seq = torch.cat([ids, torch.tensor(tokens, dtype=torch.long)])
            x = torch.cat([prompt[None], model.embed(seq[None])], 1)
            with torch.no_grad():
                logp = model(embeds=x)[0, -1].float().log_softmax(-1)
            candidates += [(tokens + [t], score + logp[t].item()) for t in range(len(logp))]
        top = sorted(candidates, key=lambda c: -c[1])[:beams]
        done += [c for c in top if c[0][-1] == eos]
        alive = [c for c in top if c[0][-1] != eos]
        if not alive:
            break
    else:
        done += alive
    return max(done, key=lambda c: c[1])


def test_beam_search_keeps_the_best_beams_and_finishes_them_at_eos(ex):
    from generate import generate
    model, ids = small(), torch.tensor([8, 3, 61, 27])
    torch.manual_seed(3)
    prompt = torch.randn(4, TINY.n_embd)
    for step in (1, 2):  # an eos that the greedy path makes at its second, then third token
        eos = generate(model, ids[None], 3, prompt=prompt)[0, step].item()
        want = reference_beam_search(model, ids, prompt, 2, 4, eos)
        tokens, logp = ex("beam").beam_search(model, ids, 2, 4, prompt, eos)
        assert tokens == want[0] and logp == pytest.approx(want[1], abs=1e-4), (
            f"2 beams, 4 new tokens, eos {eos}: got {(tokens, logp)}, want {want}: keep the 2 best "
            f"of every kept continuation times every token; one ending in eos is finished")


def test_beam_search_keeps_each_beams_own_cache(ex):
    model, (ids, lengths) = small(), batch(B=2, T=7)
    torch.manual_seed(2)
    prompt = torch.randn(4, TINY.n_embd)
    for i in range(2):
        row = ids[i, :lengths[i]]
        tokens, logp = ex("beam").beam_search(model, row, 3, 6, prompt)
        assert len(tokens) == 6, f"no eos was given, so the continuation has all 6 tokens: {tokens}"
        assert logp == pytest.approx(continuation_logp(model, row, prompt, tokens), abs=1e-4), (
            "the returned score is not the continuation's log-probability: after each step the "
            "cache's rows (keys_values and real) must follow the beams that survived")


# ----------------------------------------------------------------------------- the stubs

def defined(module):
    """{name: function or class} that the module itself defines (not what it imports)."""
    return {k: v for k, v in vars(module).items()
            if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module.__name__}


def still_a_stub(name):
    """True while every "Exercise N." function of exercises/NAME.py still raises
    NotImplementedError: nobody has started on that file yet."""
    with open(os.path.join(ROOT, "exercises", f"{name}.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    todo = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)
            and (ast.get_docstring(node) or "").startswith("Exercise ")]

    def raises(fn):
        return any(isinstance(n, ast.Raise) and n.exc is not None
                   and "NotImplementedError" in ast.unparse(n.exc) for n in ast.walk(fn))
    return bool(todo) and all(raises(fn) for fn in todo)


def started(name):
    return (f"exercises/{name}.py is no longer an untouched stub (an \"Exercise N\" function of it "
            f"no longer raises NotImplementedError), and this check is for untouched stubs only: "
            f"`python -m pytest tests/test_exercises.py --student -k {name}` checks your answer")


def test_every_stub_has_its_solutions_names_and_signatures(reference):
    assert STUBS == names(os.path.join("exercises", "solutions"))
    for name in STUBS:
        with unittest.mock.patch.dict(METHODS):  # the stub's register() is undone on the way out
            stub = importlib.import_module(f"exercises.{name}")
        solution = importlib.import_module(f"exercises.solutions.{name}")
        mine, theirs, stubbed = defined(stub), defined(solution), still_a_stub(name)
        # a filled-in file may add helpers of its own; it must keep what the tests call
        assert (mine.keys() == theirs.keys()) if stubbed else (mine.keys() >= theirs.keys()), (
            f"exercises/{name}.py defines {sorted(mine)}, its solution {sorted(theirs)}")
        for key in theirs:
            obj = mine[key]
            if inspect.isfunction(obj):
                assert inspect.signature(obj) == inspect.signature(theirs[key]), (
                    f"exercises/{name}.py: {key}{inspect.signature(obj)} is called by the tests as "
                    f"{key}{inspect.signature(theirs[key])}")
                continue
            assert obj.method == theirs[key].method, f"{name}.{key}.method"
            assert issubclass(theirs[key], obj.__bases__[0]), f"{name}.{key}'s base class"
            for attr, fn in vars(obj).items():
                if inspect.isfunction(fn) and (stubbed or hasattr(theirs[key], attr)):
                    want = inspect.signature(getattr(theirs[key], attr))
                    assert inspect.signature(fn) == want, (
                        f"exercises/{name}.py: {key}.{attr}{inspect.signature(fn)} is called by "
                        f"the tests as {key}.{attr}{want}")


@pytest.fixture(scope="module")
def on_the_stubs(tmp_path_factory):
    """() -> {test: None if it passed, else its failure message}: this file's tests run with
    --student, in a child pytest, on the exercises that are still stubs (one run, on first use)."""
    runs = []

    def run():
        if runs:
            return runs[0]
        report = tmp_path_factory.mktemp("student") / "report.xml"
        todo = [name for name in STUBS if still_a_stub(name)]
        p = subprocess.run([sys.executable, "-m", "pytest", "tests/test_exercises.py", "--student",
                            "-k", " or ".join(todo), "-p", "no:cacheprovider",
                            f"--junitxml={report}"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
        said = (p.stderr or p.stdout)[-2000:]
        assert report.exists(), f"the child pytest wrote no report: {said}"
        ran = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("skipped") is None:
                bad = case.find("failure")
                bad = case.find("error") if bad is None else bad
                ran[case.get("name")] = None if bad is None else bad.get("message", "")
        runs.append(ran)
        return ran
    return run


@pytest.mark.parametrize("name", STUBS)
def test_every_exercise_test_stops_at_not_implemented_error_on_the_stubs(reference, on_the_stubs,
                                                                         name):
    # What a student sees on an untouched stub: every test of theirs fails, and says why.
    if not still_a_stub(name):
        pytest.skip(started(name))
    ran = {test: message for test, message in on_the_stubs().items() if name in test}
    assert ran, f"no test checks exercises/{name}.py"
    for test, message in ran.items():
        assert message is not None, f"{test} passes on the stub: it checks no student code"
        assert message.startswith("NotImplementedError"), f"{test} fails on the stub with {message}"


# ----------------------------------------------------------------------------- the answers

class Console(code.InteractiveConsole):
    """The plain Python prompt, but an error stops the test instead of being printed."""

    def showsyntaxerror(self, filename=None, **kwargs):
        raise

    def showtraceback(self):
        raise


def test_answers_paste_into_python_and_run_in_order(reference, monkeypatch, tmp_path):
    with open(ANSWERS, encoding="utf-8") as f:
        snippets = [c for lang, c, *_ in blocks(f.read()) if lang == "python"]
    assert len(snippets) >= 10, "fewer python blocks than expected: was a fence renamed?"
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp() folders land here
    handler = signal.getsignal(signal.SIGINT)  # train.main installs its own Ctrl-C handler
    console = Console({"__name__": "answers"})
    try:
        with unittest.mock.patch.dict(METHODS), contextlib.redirect_stdout(io.StringIO()):
            for snippet in snippets:  # line by line, as a paste into `python` feeds them
                for line in snippet.splitlines():
                    console.push(line)
                assert not console.push(""), f"a block does not end where it should:\n{snippet}"
    finally:
        signal.signal(signal.SIGINT, handler)


def test_answers_name_only_what_exists(reference):
    with open(ANSWERS, encoding="utf-8") as f:
        text = f.read()
    modules = {name.rsplit(".", 1)[-1]: importlib.import_module(name)
               for name in ("plumbing.adapters", "data", "lopa", "train", "plumbing.loading", "llama",
                            "plumbing.cli", "plumbing.methods", "benchmarks.variants")}
    spans = re.findall(r"`([^`\n]+)`", text)
    for span in spans:
        for owner, attr in re.findall(r"\b(\w+)\.(\w+)", span):
            if owner in modules and attr not in ("py", "md"):
                assert hasattr(modules[owner], attr), f"README.md names {owner}.{attr}: not there"
    for span in spans:  # file names in code spans are relative to the repository root
        for path in re.findall(r"^[\w/]+\.(?:py|md)$", span):
            assert os.path.exists(os.path.join(ROOT, path)), f"README.md names {path}: not there"
    for link in re.findall(r"\]\(([^)#]+)", text):  # links, to this file's folder
        assert os.path.exists(os.path.join(os.path.dirname(ANSWERS), link)), f"broken link {link}"
