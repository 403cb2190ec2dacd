"""Beam search: keep the `beams` most likely continuations at every step, not only the best token.

    python exercises/solutions/beam.py --adapter runs/e2e-lopa --beams 4 --mrs 50

The beams are the rows of one batch behind one KV cache. After each step the cache's rows are
reordered to follow the beams that survived (a beam that two survivors extend is copied), so the
prompt and the input are still computed once. The command compares greedy decoding with beam search
on E2E's first test MRs, by BLEU against every reference.
"""
import argparse
import os
import sys

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import generate  # noqa: E402
from generate import KVCache  # noqa: E402
from plumbing.adapters import load_with_model  # noqa: E402
from plumbing.cli import autocast, cli, pick_device, pick_dtype  # noqa: E402
from plumbing.metrics import bleu  # noqa: E402


@torch.no_grad()
def beam_search(model, ids, beams, max_new_tokens, prompt=None, eos=None):
    """One input, ids (T,), behind an optional soft prompt (m, d). Returns (tokens, log-probability)
    of the most likely continuation found: the `beams` best partial continuations by summed
    log-probability are kept at each step; one that ends in eos is finished (eos included)."""
    x = model.embed(ids[None])                                                 # (1, T, d)
    if prompt is not None:
        x = torch.cat([prompt[None].to(x.dtype), x], dim=1)                  # (1, m + T, d)
    cache, alive, scores, done = KVCache(), [[]], torch.zeros(1, device=ids.device), []
    real = torch.ones(1, x.size(1), dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        h = model(embeds=x, cache=cache.add(real), return_hidden=True)[:, -1]  # (k, d)
        logp = model.lm_head(h).float().log_softmax(-1)                       # (k, vocab)
        top = (scores[:, None] + logp).flatten().topk(min(beams, logp.numel()))
        src, token = top.indices // logp.size(1), top.indices % logp.size(1)  # (k',) each
        keep = [i for i in range(len(token)) if token[i] != eos]
        done += [(alive[src[i]] + [eos], top.values[i].item()) for i in range(len(token))
                 if token[i] == eos]
        if not keep:
            break
        keep = torch.tensor(keep, device=ids.device)
        src, token, scores = src[keep], token[keep], top.values[keep]
        alive = [alive[s] + [t] for s, t in zip(src.tolist(), token.tolist())]
        cache.keys_values = {layer: (k[src], v[src]) for layer, (k, v) in cache.keys_values.items()}
        cache.real = cache.real[src]
        x, real = model.embed(token[:, None]), real.new_ones(len(token), 1)
    else:
        done += list(zip(alive, scores.tolist()))
    return max(done, key=lambda d: d[1])


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
