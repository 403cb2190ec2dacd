"""Exercise 10: one frozen model answering requests for two (or more) tasks in one batch, each row
with its own adapter: what adapters.mixed_batch_hidden makes possible, and what a server would do
with LOPA or prompt-tuning clients.

    python exercises/serve_two.py runs/ex3-sigmoid runs/ex10-cola-prompt \
        --ask 0 "a gripping, funny film" --ask 1 "The cat sat on mat the."
    python -m pytest tests/test_exercises.py --student -k serve_two      # checks your serve()

Every adapter must come from the same base model and use the same prompt length m. Pair tasks take
their two texts separated by a tab. Write serve() below; main() loads the adapters and prints its
answers.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from plumbing.adapters import load_adapter  # noqa: E402
from plumbing.cli import UserError  # noqa: E402
from plumbing.loading import load_model  # noqa: E402


def serve(model, tokenizer, adapters, requests, max_len=256):
    """Exercise 10. adapters: [(tuner, task)]; requests: [(k, text)] for adapters[k]. Returns
    [(label word without its space, probability)] in request order, from ONE call of
    adapters.mixed_batch_hidden over all requests: each text tokenized with its own task's template
    (data.tokenize, at most max_len tokens and never more than the model's positions minus m), the
    batch right-padded with 0, and each row scored with its own task's label words
    (lopa.label_logits, softmax over those words only)."""
    raise NotImplementedError("exercise 10: serve() is yours to write")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("adapters", nargs="+",
                   help="folders written by train.py, all on the same base model")
    p.add_argument("--ask", nargs=2, action="append", metavar=("K", "TEXT"), required=True,
                   help="a request for adapter number K (0 = the first folder)")
    args = p.parse_args(argv)
    names = set()
    for folder in args.adapters:
        try:
            with open(os.path.join(folder, "adapter.json")) as f:
                names.add(json.load(f)["model"])
        except (OSError, ValueError, KeyError):
            raise UserError(f"{folder} has no readable adapter.json naming its model") from None
    if len(names) > 1:
        raise UserError(f"the adapters come from different base models {sorted(names)}; "
                        f"one batch needs one model")
    model, tokenizer = load_model(names.pop())
    adapters = []
    for folder in args.adapters:
        tuner, info = load_adapter(folder, model)
        adapters.append((tuner, data.TASKS[info["task"]]))
    requests = []
    for k, text in args.ask:
        if not (k.isdigit() and int(k) < len(adapters)):
            raise UserError(f"--ask {k!r}: K must be an adapter number "
                            f"from 0 to {len(adapters) - 1}")
        requests.append((int(k), text))
    for (k, text), (word, prob) in zip(requests, serve(model, tokenizer, adapters, requests)):
        print(f"{k}\t{word}\t{prob:.3f}\t{text}")
    return 0


if __name__ == "__main__":
    from plumbing.cli import cli
    cli(main)
