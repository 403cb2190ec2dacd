"""One frozen model answering requests for two (or more) tasks in one batch, each row with its own
adapter: what adapters.mixed_batch_hidden makes possible, and what a server would do with LOPA or
prompt-tuning clients.

    python exercises/solutions/serve_two.py runs/sst2-lopa runs/cola-prompt \
        --ask 0 "a gripping, funny film" --ask 1 "The cat sat on mat the."

Every adapter must come from the same base model and use the same prompt length m. Pair tasks take
their two texts separated by a tab.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import data  # noqa: E402
from plumbing.adapters import load_adapter, mixed_batch_hidden  # noqa: E402
from plumbing.cli import UserError  # noqa: E402
from plumbing.loading import load_model  # noqa: E402
from lopa import label_logits  # noqa: E402


def serve(model, tokenizer, adapters, requests, max_len=256):
    """adapters: [(tuner, task)]; requests: [(k, text)] for adapters[k]. Returns [(label word,
    probability)] in request order, from one forward pass of the frozen model over all requests with
    their prompts (LOPA's encoder reads its own rows first)."""
    # room for the prompt
    max_len = min(max_len, model.config.n_positions - adapters[0][0].config.m)
    ids = []
    for k, text in requests:
        task = adapters[k][1]
        parts = tuple(text.split("\t", len(task.text_cols) - 1))
        parts += ("",) * (len(task.text_cols) - len(parts))
        ids.append(data.tokenize(task, parts, tokenizer, max_len))
    lengths = torch.tensor([len(x) for x in ids])                            # (B,)
    batch = torch.zeros(len(ids), int(lengths.max()), dtype=torch.long)      # (B, T), right-padded
    for i, x in enumerate(ids):
        batch[i, :len(x)] = torch.tensor(x)
    which = torch.tensor([k for k, _ in requests])                           # (B,)
    hidden = mixed_batch_hidden(model, [t for t, _ in adapters], batch, lengths, which)  # (B, d)
    answers = []
    for i, (k, _) in enumerate(requests):  # each row is scored with its own task's label words
        task = adapters[k][1]
        probs = label_logits(model, hidden[i],
                             torch.tensor(data.label_token_ids(task, tokenizer))).softmax(-1)
        j = int(probs.argmax())
        answers.append((task.label_words[j].strip(), probs[j].item()))
    return answers


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
