"""Exercise 16: beam search. Keep the `beams` most likely continuations at every step, not only the
best token, and return the most likely one found.

    python exercises/beam.py --adapter runs/e2e-lopa --beams 4 --mrs 50      # greedy against beams
    python -m pytest tests/test_exercises.py --student -k beam              # checks it

Write beam_search() below; main() already works. Make the beams the rows of one batch behind one
KVCache (generate.py): after each step, reorder the cache's rows (its keys_values and real) to
follow the beams that survived, so that the prompt and the input are still computed once.
"""
import argparse
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import generate  # noqa: E402
from generate import KVCache  # noqa: E402, F401 (the cache your beams share)
from plumbing.adapters import load_with_model  # noqa: E402
from plumbing.cli import autocast, cli, pick_device, pick_dtype  # noqa: E402
from plumbing.metrics import bleu  # noqa: E402


@torch.no_grad()
def beam_search(model, ids, beams, max_new_tokens, prompt=None, eos=None):
    """Exercise 16. One input, ids (T,), behind an optional soft prompt (m, d). Returns (tokens,
    log-probability) of the most likely continuation found: at each step, of every kept
    continuation extended by every token, keep the `beams` best by summed log-probability (natural
    log, float32); one that ends in eos is finished (eos included) and is not extended. Stop after
    max_new_tokens or when nothing unfinished is kept; return the best finished or unfinished
    one."""
    raise NotImplementedError("exercise 16: beam_search() is yours to write")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="a folder of `train.py --task e2e`")
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--mrs", type=int, default=50, help="how many of the test set's MRs")
    a = p.parse_args(argv)
    device = pick_device("cpu")
    dtype = pick_dtype("auto", device)[0]
    tuner, info, tokenizer = load_with_model(a.adapter, device)
    tuner.model.to(device, dtype)
    tuner.eval()
    task = generate.TASKS[info["task"]]
    rows = list(task.read("test").items())[:a.mrs]
    test = generate.tokenize_pairs("test", task, rows, tokenizer, 256)
    eos, beam = generate.end_of_text(tokenizer), []
    with autocast(device, dtype):
        greedy = generate.write(tuner.model, test, lambda ids, lengths, index: tuner.prompt(
            ids, lengths), tokenizer, device, 16, task.max_new_tokens)      # batched, cached
        for ids in tqdm(test.ids, desc=f"{a.beams} beams", leave=False):
            ids = torch.tensor(ids)
            prompt = tuner.prompt(ids[None], torch.tensor([len(ids)]))
            prompt = None if prompt is None else prompt[0]
            tokens, _ = beam_search(tuner.model, ids, a.beams, task.max_new_tokens, prompt, eos)
            beam.append(generate.as_text(tokenizer, tokens, eos))  # as generate.write does
    print(f"{len(rows)} test MRs | greedy BLEU {bleu(greedy, test.labels):.2f} | beam search "
          f"({a.beams} beams) BLEU {bleu(beam, test.labels):.2f}")
    print(f"{rows[0][0]}\n  greedy: {greedy[0]}\n  beams:  {beam[0]}")
    return 0


if __name__ == "__main__":
    cli(main)
