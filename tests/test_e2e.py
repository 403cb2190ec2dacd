"""The E2E task (generate.py's second half): the split by MR, the loss of the target tokens only,
writing with a trained adapter, and `train.py --task e2e` then `predict.py` end to end."""
import json
import os
import subprocess
import sys
from argparse import Namespace

import pytest
import torch

import generate
from helpers import tiny_lm
from lopa import LOPA, LOPAConfig, LoRA, LoRAConfig, PromptConfig, PromptTuning
from plumbing.metrics import bleu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
E2E = generate.TASKS["e2e"]


def args(**kw):
    return Namespace(**{"task": "e2e", "seed": 0, "holdout": 0, "max_train_examples": "all", **kw})


def test_the_split_is_by_mr_and_its_held_out_mrs_do_not_depend_on_the_seed():
    by_mr = E2E.read("train")
    assert len(by_mr) == 547 and sum(map(len, by_mr.values())) == 4672  # SOURCE.md's counts
    assert len(E2E.read("test")) == 630
    runs = [generate.choose_pairs(args(seed=s), "cpu", torch.float32) for s in (0, 1)]
    (train0, held0, name), (train1, held1, _) = runs
    assert name == "held-out" and held0 == held1 and len(held0) == E2E.held_out
    assert {mr for mr, _ in held0}.isdisjoint(mr for mr, _ in train0)
    assert all(refs == by_mr[mr] for mr, refs in held0)  # every reference of a held-out MR
    assert sorted(train0) == sorted(train1) != train0 != train1  # the same pairs, in seeds' orders
    assert len(train0) == 4672 - sum(len(refs) for _, refs in held0)
    few = generate.choose_pairs(args(holdout=5, max_train_examples=None), "cpu", torch.float32)
    assert len(few[1]) == 5 and len(few[0]) == E2E.cpu_train_examples[torch.float32]


class Words:
    """A stand-in tokenizer for tiny models: one token per character, end of text 99."""
    def encode(self, s, add_special_tokens=False):
        return [1 + ord(c) % 97 for c in s]

    def token_to_id(self, token):
        return 99 if token == "<|endoftext|>" else None

    def decode(self, ids):
        return "".join(chr(96 + i % 26) if i != 26 else "\n" for i in ids)


def alone(tuner, ids, target):
    """The oracle: one row, no pads, the whole vocabulary's logits; the summed cross-entropy of
    target given [its prompt ; ids ; target's earlier tokens], and the number of target tokens."""
    n = torch.tensor([len(ids)])
    prompt = tuner.prompt(torch.tensor([ids]), n)
    x = tuner.model.embed(torch.tensor([ids + target]))
    m = 0 if prompt is None else prompt.size(1)
    x = x if prompt is None else torch.cat([prompt, x], dim=1)
    logits = tuner.model(embeds=x)[0, m + len(ids) - 1:-1]                   # (len(target), vocab)
    return torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction="sum")


@pytest.mark.parametrize("method", ["prompt", "lopa", "lora"])
def test_target_loss_is_each_rows_target_cross_entropy_and_nothing_else(method):
    model = tiny_lm()
    tuner = {"prompt": lambda: PromptTuning(model, PromptConfig(m=3)),
             "lopa": lambda: LOPA(model, LOPAConfig(m=3, r=2, hidden=8)),
             "lora": lambda: LoRA(model, LoRAConfig(r=2))}[method]()
    for p in tuner.parameters():  # LoRA starts as the identity: make every method matter
        torch.nn.init.normal_(p, std=0.5)
    tuner.eval()
    rows = [([5, 6, 7, 8, 9], [11, 12, 99]), ([3, 4], [21, 22, 23, 24, 99]), ([7], [99])]
    b = next(generate.batches([r[0] for r in rows], [r[1] for r in rows], 3, shuffle=False))
    got = generate.target_loss(tuner, b, None, "cpu")
    sums = [alone(tuner, rows[i][0], rows[i][1]) for i in b["index"].tolist()]
    want = sum(sums) / sum(len(t) for _, t in rows)
    assert torch.allclose(got, want, atol=1e-5), (got, want)


def test_tokenized_pairs_end_in_end_of_text_and_held_out_rows_keep_their_references():
    split = generate.tokenize_pairs("train", E2E, [("name[A]", "An A.")], Words(), 256)
    assert split.labels == [Words().encode(" An A.") + [99]]
    assert split.ids == [Words().encode("Restaurant: name[A]\nDescription:")]
    held = generate.tokenize_pairs("held-out", E2E, [("name[A]", ["An A.", "A is."])], Words(), 8)
    assert held.labels == [["An A.", "A is."]] and len(held.ids[0]) == 8  # the MR's end is kept


def test_write_stops_at_end_of_text_and_at_a_line_break_and_score_is_its_bleu(monkeypatch):
    made = torch.tensor([[1, 2, 99, 3], [4, 26, 5, 6], [7, 8, 9, 99]])  # "ab", "d\ne", "ghi"
    monkeypatch.setattr(generate, "generate", lambda *a, **k: made[:len(a[1])])
    split = generate.Split("held-out", [[1], [1], [1]], [["ab"], ["d"], ["ghi jk"]])
    texts = generate.write(None, split, lambda *a: None, Words(), "cpu", 8, 4)
    assert texts == ["ab", "d", "ghi"]
    got = generate.score(None, split, lambda *a: None, Words(), "cpu", 8, 4)
    assert got == {"metric": bleu(texts, split.labels), "bleu": bleu(texts, split.labels)}


def run(*argv):
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def test_train_e2e_then_predict_writes_descriptions(tiny_gpt2, tmp_path):
    out = tmp_path / "e2e"
    p = run("train.py", "--task", "e2e", "--model", tiny_gpt2, "--out", str(out), "--holdout", "3",
            "--max-train-examples", "24", "--batch-size", "8", "--epochs", "1", "--m", "4",
            "--hidden", "16", "--dtype", "float32")
    assert "zero-shot held-out bleu" in p.stdout and "done in" in p.stdout, p.stdout
    info = json.loads((out / "adapter.json").read_text())
    assert info["task"] == "e2e" and info["metric_name"] == "bleu" and info["holdout"] == 3
    assert 0 <= info["metrics"]["dev"]["bleu"] <= 100
    p = run("predict.py", "--adapter", str(out), "name[The Eagle], eatType[pub]", "name[Zizzi]")
    lines = p.stdout.splitlines()
    assert len(lines) == 2 and all(line.count("\t") == 1 for line in lines), p.stdout
    assert [line.split("\t")[1] for line in lines] == ["name[The Eagle], eatType[pub]", "name[Zizzi]"]


def test_a_classifying_and_a_writing_adapter_share_one_batch(tiny_gpt2, tmp_path, one_thread):
    """Section 7's serving, with one task that writes: an SST-2 LOPA and an E2E LOPA on one frozen
    model, rows of both in one batch behind one per-row prompt, each row as it is alone."""
    import train
    from generate import end_of_text, tokenize_pairs
    from lopa import label_logits, last_hidden
    from plumbing.adapters import load_adapter, mixed_batch_prompt
    from plumbing.loading import load_model
    import data
    flags = ["--model", tiny_gpt2, "--max-train-examples", "16", "--batch-size", "8", "--epochs",
             "1", "--m", "4", "--hidden", "16", "--dtype", "float32"]
    for task in ("sst2", "e2e"):
        assert train.main(["--task", task, "--out", str(tmp_path / task), "--holdout", "3",
                           *flags]) == 0
    model, tokenizer = load_model(tiny_gpt2)
    tuners = [load_adapter(tmp_path / task, model)[0].eval() for task in ("sst2", "e2e")]
    texts = ["a gripping, funny film", "name[The Eagle], eatType[pub]", "name[Zizzi]"]
    ids = [data.tokenize(data.TASKS["sst2"], (texts[0],), tokenizer, 64)]
    ids += tokenize_pairs("x", generate.TASKS["e2e"], [(t, []) for t in texts[1:]], tokenizer,
                          64).ids
    lengths = torch.tensor([len(i) for i in ids])
    batch = torch.zeros(3, int(lengths.max()), dtype=torch.long)
    for r, row in enumerate(ids):
        batch[r, :len(row)] = torch.tensor(row)
    which = torch.tensor([0, 1, 1])
    prompt = mixed_batch_prompt(model, tuners, batch, lengths, which)            # (3, m, d)
    eos = end_of_text(tokenizer)
    with torch.no_grad():
        new = generate.generate(model, batch, 5, lengths=lengths, prompt=prompt, eos=eos)
        label_ids = torch.tensor(data.label_token_ids(data.TASKS["sst2"], tokenizer))
        mixed = label_logits(model, last_hidden(model, batch, lengths, prompt), label_ids)[0]
        one = torch.tensor([ids[0]])
        alone = label_logits(model, tuners[0](one, torch.tensor([len(ids[0])])), label_ids)[0]
        assert torch.allclose(mixed, alone, atol=1e-5)
        for r in (1, 2):
            row = torch.tensor([ids[r]])
            want = generate.generate(model, row, 5, prompt=tuners[1].prompt(row, lengths[r:r + 1]),
                                     eos=eos)
            assert torch.equal(new[r, :want.size(1)], want[0])
