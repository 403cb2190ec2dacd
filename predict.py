"""Classify text with a trained adapter (one line per text: the label word, its probability, the
text), or with an E2E adapter write a description (one line per MR: the description, the MR).

    python predict.py --adapter runs/sst2-lopa "a gripping, funny film" "dull and far too long"
    cut -f1 my_reviews.tsv | python predict.py --adapter runs/sst2-lopa       # one text per line
    python predict.py --adapter runs/e2e-lopa "name[The Eagle], eatType[pub], area[riverside]"
Pair tasks (rte, mrpc, ...) take the two sentences separated by a tab.
"""
import argparse
import sys

import torch

import data
import generate
from plumbing.adapters import load_with_model
from plumbing.cli import cli, pick_device
from lopa import label_logits


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True,
                   help="folder written by train.py (adapter.json + adapter.safetensors)")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("text", nargs="*",
                   help="texts to classify; read from stdin, one per line, when none are given")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    tuner, info, tokenizer = load_with_model(args.adapter, device)
    model = tuner.model
    texts = args.text or [line.rstrip("\n") for line in sys.stdin]
    m = getattr(tuner.config, "m", 0)
    if info["task"] in generate.TASKS:
        return describe(tuner, generate.TASKS[info["task"]], texts, tokenizer, device,
                        min(args.max_len, model.config.n_positions - m))
    task = data.TASKS[info["task"]]
    label_ids = torch.tensor(data.label_token_ids(task, tokenizer), device=device)
    for text in texts:
        parts = tuple(text.split("\t", len(task.text_cols) - 1))
        parts += ("",) * (len(task.text_cols) - len(parts))       # a pair task given one sentence
        ids = data.tokenize(task, parts, tokenizer, min(args.max_len, model.config.n_positions - m))
        with torch.no_grad():
            h = tuner(torch.tensor([ids], device=device), torch.tensor([len(ids)], device=device))
            probs = label_logits(model, h, label_ids).softmax(-1)[0]  # over the label words only
        k = int(probs.argmax())
        print(f"{task.label_words[k].strip()}\t{probs[k]:.3f}\t{text}")
    return 0


def describe(tuner, task, texts, tokenizer, device, max_len, batch_size=16):
    """A task that writes: each text (an MR) described, greedily, in batches behind its prompt."""
    split = generate.tokenize_pairs("input", task, [(t, []) for t in texts], tokenizer, max_len)
    written = generate.write(tuner.model, split, lambda ids, lengths, index: tuner.prompt(
        ids, lengths), tokenizer, device, batch_size, task.max_new_tokens)
    for text, mr in zip(written, texts):
        print(f"{text}\t{mr}")
    return 0


if __name__ == "__main__":
    cli(main)
