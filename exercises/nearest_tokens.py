"""Exercise 6: read a soft prompt as words. For each row of Z, the vocabulary tokens whose input
embeddings point the same way (cosine similarity), the probe Lester et al. (2021) used on learned
prompts.

    python exercises/nearest_tokens.py runs/ex3-sigmoid                       # the rows of Z_S
    python exercises/nearest_tokens.py runs/ex3-sigmoid "a gripping film"     # LOPA: Z for it
    python -m pytest tests/test_exercises.py --student -k nearest_tokens      # checks your code

Prompts start as copies of random vocabulary rows (lopa.vocab_init), so before training every row's
nearest token is the one it was copied from, at similarity 1. Write nearest_tokens() below; show()
and main() print its answer.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from plumbing.adapters import load_adapter  # noqa: E402
from plumbing.cli import UserError  # noqa: E402
from plumbing.loading import load_model  # noqa: E402


@torch.no_grad()
def nearest_tokens(model, prompt, k=3):
    """Exercise 6. (values, indices), both (m, k): for each row of prompt (m, d), the cosine
    similarities to the k closest rows of the model's input embedding matrix, model.embed(ids) for
    every id below model.config.vocab_size, and those rows' token ids, closest first."""
    raise NotImplementedError("exercise 6: nearest_tokens() is yours to write")


def show(title, prompt, model, tokenizer, k):
    print(title)
    sims, ids = nearest_tokens(model, prompt, k)
    for row, (s, i) in enumerate(zip(sims.tolist(), ids.tolist())):
        words = " | ".join(f"{tokenizer.decode([t])!r} {v:.2f}" for t, v in zip(i, s))
        print(f"  row {row:2d}: {words}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("adapter", help="folder written by train.py")
    p.add_argument("text", nargs="*",
                   help="inputs to show LOPA's per-input prompt Z for (pair tasks: tab between)")
    p.add_argument("-k", type=int, default=3, help="neighbours per row")
    args = p.parse_args(argv)
    try:
        with open(os.path.join(args.adapter, "adapter.json")) as f:
            model_name = json.load(f)["model"]
    except (OSError, ValueError, KeyError):
        raise UserError(f"{args.adapter} has no readable adapter.json naming its model") from None
    model, tokenizer = load_model(model_name)
    tuner, info = load_adapter(args.adapter, model)
    if not hasattr(tuner, "z_s"):
        raise UserError(f"a {info['method']} adapter has no soft prompt to read")
    if args.text and info["method"] != "lopa":
        raise UserError(f"a {info['method']} prompt is the same for every input: "
                        f"drop the texts to see it")
    show("Z_S, shared by every input:", tuner.z_s, model, tokenizer, args.k)
    task = data.TASKS[info["task"]]
    for text in args.text:
        parts = tuple(text.split("\t", len(task.text_cols) - 1))
        parts += ("",) * (len(task.text_cols) - len(parts))
        ids = data.tokenize(task, parts, tokenizer, 256)
        with torch.no_grad():
            z = tuner.prompt(torch.tensor([ids]), torch.tensor([len(ids)]))[0]    # (m, d)
        show(f"Z for {text!r}:", z, model, tokenizer, args.k)
    return 0


if __name__ == "__main__":
    from plumbing.cli import cli
    cli(main)
