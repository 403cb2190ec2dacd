"""The code exercises of tutorial.md (section 8), on tiny random models.

    python -m pytest tests/test_exercises.py                          # the reference solutions
    python -m pytest tests/test_exercises.py --student -k mean_pool   # your exercises/mean_pool.py

Each exercise's tests carry its file's name (so -k picks them) and read the module `ex` gives:
exercises/solutions/NAME.py, or with --student exercises/NAME.py. Without --student this file also
checks the stubs in exercises/ (the solutions' names and signatures; every exercise test run on
them stops at NotImplementedError) and pastes the python blocks of exercises/solutions/README.md
into a Python console, in order.
"""
import code
import contextlib
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


# ----------------------------------------------------------------------------- 1: count by hand

def test_count_params_by_hand_is_what_lopa_trains(ex):
    by_hand = ex("count_params").by_hand
    with torch.device("meta"):  # shapes only: no memory, no time
        narrow = GPT(GPTConfig(vocab_size=100, n_positions=8, n_embd=16, n_layer=1, n_head=2))
        for model in (GPT(GPTConfig()), Llama(LlamaConfig()), GPT(TINY)):  # GPT-2 small, SmolLM2
            d = model.config.n_embd
            for m, r, H in ((10, 4, 256), (10, 1, 256), (10, 2, 256), (4, 2, 16), (25, 3, 64)):
                tuner = LOPA(model, LOPAConfig(m=m, r=r, hidden=H))
                assert by_hand(d, m=m, r=r, H=H) == count(tuner), f"d = {d}, m = {m}, r = {r}"
            tuner = LOPA(model, LOPAConfig(m=4, r=2, hidden=8), encoder=narrow)   # h_enc = 16
            assert by_hand(d, m=4, r=2, H=8, h_enc=16) == count(tuner), f"d = {d}, h_enc = 16"
    assert by_hand(576) == 903_592              # what train.py prints for SmolLM2 (README's table)


# ----------------------------------------------------------------------------- 6: nearest tokens

def test_nearest_tokens_recover_vocabulary_rows(ex):
    nearest_tokens = ex("nearest_tokens").nearest_tokens
    model = small()
    rows = torch.tensor([5, 17, 42, 99, 0])
    sims, nearest = nearest_tokens(model, model.embed(rows), k=2)
    assert sims.shape == nearest.shape == (5, 2)
    assert torch.equal(nearest[:, 0], rows) and torch.allclose(sims[:, 0], torch.ones(5))
    assert (sims[:, 1] < 1 - 1e-3).all()
    torch.manual_seed(0)
    pt = PromptTuning(model, PromptConfig(m=4))          # vocab_init: copies of vocabulary rows
    sims, nearest = nearest_tokens(model, pt.z_s * 3.0, k=1)            # scale does not matter
    assert torch.allclose(sims, torch.ones_like(sims))
    assert torch.equal(model.embed(nearest[:, 0]), pt.z_s)
    sims, nearest = nearest_tokens(model, -model.embed(rows), k=1)      # the opposite is far
    assert not (nearest[:, 0] == rows).any()


def test_nearest_tokens_command(ex, tiny_gpt2, tmp_path):
    main = ex("nearest_tokens").main
    model, _ = load_model(tiny_gpt2)
    torch.manual_seed(0)
    save_adapter(LOPA(model, LOPAConfig(m=3, r=2, hidden=8)), tmp_path / "lopa", model=tiny_gpt2,
                 task="sst2")
    status, out = quiet(main, [str(tmp_path / "lopa"), "a gripping film", "-k", "2"])
    lines = out.splitlines()
    assert status == 0 and lines[0] == "Z_S, shared by every input:"
    assert lines[4] == "Z for 'a gripping film':" and len(lines) == 8
    assert all(line.startswith("  row ") and line.count("|") == 1 for line in lines[1:4])
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


def test_new_task_loads_encodes_and_trains(ex, tiny_gpt2, tmp_path):
    new_task = ex("new_task")
    rows = [("what a lovely day", "pos"), ("the soup was cold", "neg"),
            ("a warm, kind film", "pos"), ("it broke after a week", "neg")]
    write_tsv(tmp_path / "toy", rows)
    task = new_task.tsv_task(tmp_path / "toy")
    assert task.name == "tsv" and task.metric == "acc"
    with unittest.mock.patch.dict(data.TASKS, {task.name: task}):
        assert data.load_split("tsv", "dev") == [((t,), int(y == "pos")) for t, y in rows]
    tokenizer = load_model(tiny_gpt2)[1]
    assert len(data.label_token_ids(task, tokenizer)) == 2    # one token each, and different
    ids = data.tokenize(task, ("what a lovely day",), tokenizer, 64)
    assert tokenizer.decode(ids) == task.fill("what a lovely day")
    before = dict(data.TASKS)
    status, out = quiet(new_task.main, [str(tmp_path / "toy"), *quick(tiny_gpt2, tmp_path / "run")])
    assert status == 0 and "training on 4 of 4 examples; dev: 4" in out
    assert json.loads((tmp_path / "run" / "adapter.json").read_text())["task"] == "tsv"
    assert data.TASKS == before and "tsv" not in data.TASKS
    write_tsv(tmp_path / "bad", rows + [("no label here", "maybe")])
    with pytest.raises(UserError, match=r"train\.tsv:6: unknown label 'maybe'"):
        new_task.main([str(tmp_path / "bad"), *quick(tiny_gpt2, tmp_path / "run2")])
    with pytest.raises(UserError, match="usage"):
        new_task.main([])


# ----------------------------------------------------------------------------- 8: mean pooling

def test_mean_pool_ignores_padding(ex):
    mean_pool = ex("mean_pool")
    model = small()
    ids, lengths = batch(B=5, T=8)
    assert (lengths < 8).any()
    pooled = mean_pool.mean_hidden(model, ids, lengths)                 # (B, d)
    for i in range(5):
        alone = model(ids[i:i + 1, :lengths[i]], return_hidden=True)    # (1, n, d): no pads at all
        torch.testing.assert_close(pooled[i], alone[0].mean(0), atol=1e-5, rtol=1e-5)
    noisy = ids.clone()
    noisy[torch.arange(8)[None, :] >= lengths[:, None]] = 42            # other pad tokens: same e
    torch.testing.assert_close(mean_pool.mean_hidden(model, noisy, lengths), pooled, atol=1e-6,
                               rtol=1e-6)
    tuner = mean_pool.MeanPoolLOPA(model, LOPAConfig(m=3, r=2, hidden=8)).eval()
    assert torch.equal(tuner.encode(ids, lengths), pooled)
    last = LOPA(model, LOPAConfig(m=3)).encode(ids, lengths)  # what train.py caches for a LOPA
    assert not torch.allclose(pooled, last)


def test_mean_pool_is_a_method_of_train_py_with_its_own_cached_e(ex, tiny_gpt2, tmp_path):
    mean_pool = ex("mean_pool")
    status, out = quiet(mean_pool.main, ["--task", "rte", *quick(tiny_gpt2, tmp_path / "mp")])
    assert status == 0 and "method: lopa_mean;" in out and "done in" in out
    info = json.loads((tmp_path / "mp" / "adapter.json").read_text())
    assert info["method"] == "lopa_mean" and info["config"]["m"] == 4
    assert METHODS["lopa_mean"].tuner is mean_pool.MeanPoolLOPA
    seen, real = [], mean_pool.MeanPoolLOPA.prompt

    def spy(self, ids, lengths, e=None):  # the e train.py hands the tuner: the pooled one, cached
        seen.append(e is not None)
        want = mean_pool.mean_hidden(self.encoder, ids, lengths)
        torch.testing.assert_close(e, want, atol=1e-4, rtol=1e-4)
        return real(self, ids, lengths, e)
    with unittest.mock.patch.object(mean_pool.MeanPoolLOPA, "prompt", spy):
        quiet(mean_pool.main, ["--task", "rte", *quick(tiny_gpt2, tmp_path / "mp2")])
    assert seen and all(seen)


# ----------------------------------------------------------------------------- 9: IDPG

def test_idpg_size_shape_start_and_frozen_model(ex):
    IDPG = ex("idpg").IDPG
    with torch.device("meta"):
        for cfg in (GPTConfig(), TINY):
            model = GPT(cfg)
            for m, H in ((10, 256), (4, 16), (25, 64)):
                n = count(IDPG(model, IDPGConfig(m=m, hidden=H)))
                assert n == closed_form("idpg", cfg.n_embd, cfg.n_embd, m=m, H=H)
    model = small()
    torch.manual_seed(0)
    idpg = IDPG(model, IDPGConfig(m=3, hidden=8)).eval()
    ids, lengths = batch()
    z = idpg.prompt(ids, lengths)                                       # (B, m, d)
    assert z.shape == (4, 3, 32) and not torch.allclose(z[0], z[1])     # one prompt per input
    e = idpg.encode(ids, lengths)                                       # (B, h_enc)
    assert torch.equal(idpg.prompt(ids, lengths, e), z)                 # a cached e: the same
    start = idpg.prompt(ids, lengths, torch.zeros_like(e))[0]           # (m, d): e = 0
    vocab = model.embed(torch.arange(TINY.vocab_size))                  # (V, d)
    assert ((start[:, None, :] - vocab[None]).abs().amax(-1).amin(-1) < 1e-5).all()  # real tokens
    idpg.train()
    label_logits(model, idpg(ids, lengths), torch.tensor([1, 2])).logsumexp(-1).sum().backward()
    assert all(p.grad is None for p in model.parameters())              # the model stays frozen
    assert all(p.grad is not None for p in idpg.trainable_parameters())


def test_idpg_trains_through_train_py(ex, tiny_gpt2, tmp_path):
    idpg = ex("idpg")
    status, out = quiet(idpg.main, ["--task", "rte", *quick(tiny_gpt2, tmp_path / "idpg")])
    assert status == 0 and "method: my_idpg;" in out and "done in" in out
    assert json.loads((tmp_path / "idpg" / "adapter.json").read_text())["method"] == "my_idpg"
    assert METHODS["my_idpg"].tuner is idpg.IDPG


# ----------------------------------------------------------------------------- 10: serve two

def test_serve_two_tasks_in_one_batch_equals_each_alone(ex, tiny_gpt2):
    serve = ex("serve_two").serve
    model, tokenizer = load_model(tiny_gpt2)
    torch.manual_seed(0)
    for p in model.parameters():  # as in small(): let the prompts matter
        if p.dim() == 2:
            p.data.normal_(std=0.3)
    adapters = [(LOPA(model, LOPAConfig(m=4, r=2, hidden=8)).eval(), data.TASKS["sst2"]),
                (PromptTuning(model, PromptConfig(m=4)), data.TASKS["rte"])]
    requests = [(0, "a gripping, funny film"), (1, "A man sleeps.\tA person is asleep."),
                (0, "dull"), (1, "It rains.")]
    answers = serve(model, tokenizer, adapters, requests)
    assert len(answers) == len(requests)
    for (k, text), (word, prob) in zip(requests, answers):
        tuner, task = adapters[k]
        parts = tuple(text.split("\t")) + ("",) * (len(task.text_cols) - len(text.split("\t")))
        ids = data.tokenize(task, parts, tokenizer, 124)
        with torch.no_grad():
            h = tuner(torch.tensor([ids]), torch.tensor([len(ids)]))
        label_ids = torch.tensor(data.label_token_ids(task, tokenizer))
        probs = label_logits(model, h, label_ids).softmax(-1)[0]
        assert word == task.label_words[int(probs.argmax())].strip()
        assert abs(prob - probs.max().item()) < 1e-5
    assert {w for w, _ in answers[0::2]} <= {"negative", "positive"}
    assert {w for w, _ in answers[1::2]} <= {"Yes", "No"}


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
    assert status == 0
    assert [(k, text) for k, _, _, text in lines] == [("0", "fine film"),
                                                      ("1", "The cat sat on mat the.")]
    assert lines[0][1] in ("negative", "positive") and lines[1][1] in ("No", "Yes")
    with pytest.raises(UserError, match="adapter number"):
        main([str(tmp_path / "a"), "--ask", "1", "no such adapter"])
    info = json.loads((tmp_path / "b" / "adapter.json").read_text())
    (tmp_path / "b" / "adapter.json").write_text(json.dumps({**info, "model": "gpt2"}))
    with pytest.raises(UserError, match="different base models"):
        main([str(tmp_path / "a"), str(tmp_path / "b"), "--ask", "0", "x"])


# ----------------------------------------------------------------------------- the stubs

def defined(module):
    """{name: function or class} that the module itself defines (not what it imports)."""
    return {k: v for k, v in vars(module).items()
            if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module.__name__}


def test_every_stub_has_its_solutions_names_and_signatures(reference):
    assert STUBS == names(os.path.join("exercises", "solutions"))
    for name in STUBS:
        with unittest.mock.patch.dict(METHODS):  # the stub's register() is undone on the way out
            stub = importlib.import_module(f"exercises.{name}")
        solution = importlib.import_module(f"exercises.solutions.{name}")
        mine, theirs = defined(stub), defined(solution)
        assert mine.keys() == theirs.keys(), name
        for key, obj in mine.items():
            if inspect.isfunction(obj):
                assert inspect.signature(obj) == inspect.signature(theirs[key]), f"{name}.{key}"
                continue
            assert obj.method == theirs[key].method, f"{name}.{key}"
            assert issubclass(theirs[key], obj.__bases__[0]), f"{name}.{key}"
            for attr, fn in vars(obj).items():
                if inspect.isfunction(fn):
                    assert inspect.signature(fn) == inspect.signature(getattr(theirs[key], attr)), \
                        f"{name}.{key}.{attr}"


def test_every_exercise_test_stops_at_not_implemented_error_on_the_stubs(reference, tmp_path):
    # What a student sees on the untouched stubs: every test of theirs fails, and says why.
    report = tmp_path / "report.xml"
    p = subprocess.run([sys.executable, "-m", "pytest", "tests/test_exercises.py", "--student",
                        "-p", "no:cacheprovider", f"--junitxml={report}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert report.exists(), p.stdout + p.stderr
    ran = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("skipped") is None:
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            ran[case.get("name")] = None if bad is None else bad.get("message", "")
    for test, message in ran.items():
        assert message is not None, f"{test} passes on the stubs: it checks no student code"
        assert message.startswith("NotImplementedError"), f"{test} fails on a stub with {message}"
    for name in STUBS:
        assert any(name in test for test in ran), f"no test checks exercises/{name}.py"


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
