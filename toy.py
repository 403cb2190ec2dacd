"""Why prompts that depend on the input exist, shown in seconds on a toy (tutorial section 3).

    python toy.py                  # one frozen layer: prompt tuning stalls, LOPA and IDPG fit
    python toy.py --layers 2       # a stronger frozen model: prompt tuning fits as well

The task: the input is two numbers, a in 1..16 and b in 17..32 (one token each), and the label is
whether a + b is odd. Flip either number's parity and the answer flips, so no single feature of
the input decides it. The frozen model is a small random GPT-2. Prompt tuning puts the same m
vectors in front of every input, so the frozen model itself must work the rule out, and one random
layer cannot, whatever the prompt. LOPA and IDPG read e, the frozen model's own summary of the
input, through trained MLPs: the rule can be computed there, and each input gets its own prompt.
Replace every e by the mean e (benchmarks/diagnose.py's ablation) and LOPA is back at chance.

Accuracy is measured on the 256 pairs the tuners train on: the toy shows what each method can
express, not how it generalises. A trained foundation model already computes much of what a task
needs, and then a fixed prompt only has to point at it; that is the case the study
measures on SST-2 (docs/study.md).
"""
import argparse
import statistics

import torch
import torch.nn.functional as F

from lopa import IDPG, LOPA, IDPGConfig, LOPAConfig, PromptConfig, PromptTuning, label_logits
from model import GPT, GPTConfig

LABELS = torch.tensor([60, 61])  # the label words' token ids: "even", "odd"
TUNERS = {  # name: how to build it on a frozen model
    "prompt": lambda model: PromptTuning(model, PromptConfig(m=4)),
    "prompt, m = 32": lambda model: PromptTuning(model, PromptConfig(m=32)),
    "lopa": lambda model: LOPA(model, LOPAConfig(m=4, r=2, hidden=64, dropout=0.0)),
    "idpg": lambda model: IDPG(model, IDPGConfig(m=4, hidden=64, dropout=0.0)),
}


def frozen_model(layers, seed):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=64, n_positions=64, n_embd=32, n_layer=layers, n_head=4))
    for p in model.parameters():  # larger than GPT-2's 0.02, so that a random model reads its input
        if p.dim() == 2:
            p.data.normal_(std=0.3)
    return model.eval()


def parity_task():
    a = torch.arange(1, 17).repeat_interleave(16)                     # (256,)
    b = torch.arange(17, 33).repeat(16)                               # (256,)
    ids = torch.stack([a, b], dim=1)                                  # (256, 2): every pair once
    return ids, torch.full((256,), 2), (a + b) % 2                    # ids, lengths, 1 = odd


def train(tuner, ids, lengths, y, steps, lr=1e-2):
    """Full-batch AdamW on the whole table; returns the cached e (None for prompt tuning)."""
    e = tuner.encode(ids, lengths) if tuner.caches_encoder else None  # (256, d), computed once
    opt = torch.optim.AdamW(tuner.trainable_parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        loss = F.cross_entropy(label_logits(tuner.model, tuner(ids, lengths, e), LABELS), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return e


@torch.no_grad()
def accuracy(tuner, ids, lengths, y, e):
    logits = label_logits(tuner.model, tuner.eval()(ids, lengths, e), LABELS)  # (256, 2)
    return (logits.argmax(-1) == y).float().mean().item()


def run(layers=1, seed=0, steps=300):
    """{name: (trainable parameters, accuracy)} for each tuner, and for LOPA with every e replaced
    by the mean e: the same trained adapter with the instance information taken away."""
    ids, lengths, y = parity_task()
    out = {}
    for name, make in TUNERS.items():
        model = frozen_model(layers, seed)
        torch.manual_seed(seed)
        tuner = make(model)
        e = train(tuner, ids, lengths, y, steps)
        size = sum(p.numel() for p in tuner.trainable_parameters())
        out[name] = size, accuracy(tuner, ids, lengths, y, e)
        if name == "lopa":
            out["lopa, every e = mean e"] = size, accuracy(tuner, ids, lengths, y,
                                                           e.mean(0).expand_as(e))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=1, help="layers of the frozen random model")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (model, init)")
    p.add_argument("--steps", type=int, default=300, help="full-batch training steps")
    args = p.parse_args()
    torch.set_num_threads(1)  # matmuls this small only wait for a second thread
    runs = [run(args.layers, s, args.steps) for s in range(args.seeds)]
    print(f"task: is a + b odd? (all 256 pairs); frozen model: {args.layers} random GPT-2 "
          f"layer(s), d = 32\n{args.steps} full-batch steps; accuracy on the pairs trained on")
    print(f"{'method':<24}{'trainable':>10}   accuracy per seed   mean")
    for name in runs[0]:
        accs = [r[name][1] for r in runs]
        seeds = " ".join(f"{a:.2f}" for a in accs)
        print(f"{name:<24}{runs[0][name][0]:>10,}   {seeds:<19} {statistics.mean(accs):.2f}")


if __name__ == "__main__":
    main()
