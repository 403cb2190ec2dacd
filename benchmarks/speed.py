"""Training-step speed: this project against Hugging Face transformers + PEFT, in one process and
one run.

    pip install transformers peft          # optional extras, for this script only
    python benchmarks/speed.py             # GPT-2 small shape, random weights, float32 and bfloat16

    python benchmarks/speed.py --tokens 24 # an SST-2-like shape: short inputs

Same configuration for everyone: batch 16, 64 input tokens, 10 virtual tokens, every base weight
frozen, AdamW over the tuner only, cross-entropy on two label words at the last token. The
contenders take turns, one step each per round (A B C A B C ...), after warm-up rounds: a slow
spell on a shared machine then slows every contender of that round, and each ratio is the median
of its per-round ratios, printed with their range. This machine's own matmul speed is measured in
the same rounds, as one more contender, in float32 and in bfloat16.

bfloat16 rows run as train.py runs on a CPU with bfloat16 hardware (plumbing.cli.autocast): the model
held in bfloat16, the tuner's parameters, AdamW and the loss in float32. HF+PEFT's bfloat16 row gets
the same: its model in bfloat16, under the same autocast, with its "eager" attention (written out as
ours is, and faster here in bfloat16 than its fused one), with the whole LM head and with
logits_to_keep=1. (In bfloat16 on a CPU, torch 2.13 runs HF's last-position head,
(B, 1, d) sliced from (B, T, d), as a batched product that first copies the (d, vocab) weight once
per row, which makes logits_to_keep=1 the slower of the two there.)
"""
import argparse
import copy
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plumbing.cli import autocast  # noqa: E402
from plumbing.loading import load_gpt2_weights  # noqa: E402
from lopa import LOPA, PromptConfig, PromptTuning, label_logits  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def interleaved(steps, warmup, rounds):
    """{name: seconds of each round's step}, the contenders taking turns within every round."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    return times


def ratio(slow, fast):
    """Median of the per-round ratios slow / fast, with their min and max."""
    r = sorted(s / f for s, f in zip(slow, fast))
    return statistics.median(r), r[0], r[-1]


def shown(r, unit="x", digits=2):
    return f"{r[0]:.{digits}f}{unit} (range {r[1]:.{digits}f}-{r[2]:.{digits}f})"


def activation_mb(label_scores, frozen):
    """Memory the autograd graph keeps for the backward pass (the step's peak above the weights),
    counted tensor by tensor, so it does not depend on the allocator. Frozen weights are not
    counted."""
    seen, skip = {}, {p.data_ptr() for p in frozen}
    def pack(t):
        if t.data_ptr() not in skip:
            seen[t.data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        label_scores()
    return sum(seen.values()) / 2**20


def matmul(n=2048, repeats=3, dtype=torch.float32):
    """A step of pure matmuls in dtype, the machine's reference speed: returns (step, its FLOPs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    def step():
        for _ in range(repeats):
            a @ b
    return step, 2 * n**3 * repeats


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (one step each)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--layers", type=int, default=12, help="fewer layers for a quick look")
    a = p.parse_args()
    try:
        import peft
        import transformers
    except ImportError:
        sys.exit("error: this benchmark compares against transformers + peft: "
                 "pip install transformers peft")
    torch.manual_seed(0)
    B, T, m = a.batch, a.tokens, a.m
    # same math as ours
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=a.layers, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    ours = load_gpt2_weights(GPT(GPTConfig(n_layer=a.layers)), hf.state_dict()).eval()
    ids = torch.randint(0, 50257, (B, T))
    lengths = torch.full((B,), T)
    y = torch.randint(0, 2, (B,))
    words = torch.tensor([6635, 1049])  # " terrible", " great"
    print(f"GPT-2 small shape ({a.layers} layers), float32 and bfloat16, batch {B}, {T} tokens, m = {m}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def train_step(label_scores, params, dtype=torch.float32):
        """One AdamW step on the cross-entropy of label_scores() -> (B, 2), its forward in dtype."""
        opt = torch.optim.AdamW(params, lr=1e-3)
        def scores():
            with autocast("cpu", dtype):
                return label_scores().float()
        def step():
            loss = F.cross_entropy(scores(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step.label_scores = scores
        return step

    pt = PromptTuning(ours, PromptConfig(m=m))
    lopa = LOPA(ours)
    enc = lopa.encode(ids, lengths)
    ref = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                          num_virtual_tokens=m))
    with torch.no_grad():
        ref.prompt_encoder["default"].embedding.weight.copy_(pt.z_s)
    # bfloat16: the frozen models cast once; the tuners' parameters stay float32
    ours16 = copy.deepcopy(ours).to(torch.bfloat16)
    pt16, lopa16 = PromptTuning(ours16, PromptConfig(m=m)), LOPA(ours16)
    with torch.no_grad(), autocast("cpu", torch.bfloat16):
        enc16 = lopa16.encode(ids, lengths)
    hf16 = copy.deepcopy(hf).to(torch.bfloat16)
    hf16.set_attn_implementation("eager")  # attention written out, as ours; HF's faster one here
    ref16 = peft.get_peft_model(hf16, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                              num_virtual_tokens=m))
    for p in ref16.parameters():  # PEFT's prompt in float32, as ours
        if p.requires_grad:
            p.data = p.data.float()

    def forward_only(label_scores):
        @torch.no_grad()
        def step():
            label_scores().argmax(-1)
        return step

    def whole_last_block():  # LOPA's step without the `at` shortcut: every position, then read
        x = torch.cat([lopa.prompt(ids, lengths, enc), ours.embed(ids)], dim=1)  # (B, m + T, d)
        return ours(embeds=x, return_hidden=True)[:, -1]      # (B, d): every row is T long

    hf_params = [p for p in ref.parameters() if p.requires_grad]
    # the usual HF path: full LM head
    hf_scores = lambda **kw: ref(input_ids=ids, **kw).logits[:, -1, words]
    steps = {
        "ours prompt tuning": train_step(lambda: label_logits(ours, pt(ids, lengths), words),
                                         pt.trainable_parameters()),
        "HF+PEFT prompt tuning": train_step(hf_scores, hf_params),
        "HF+PEFT prompt tuning, logits_to_keep=1": train_step(lambda: hf_scores(logits_to_keep=1),
                                                              hf_params),
        "ours LOPA, encoder pass included": train_step(
            lambda: label_logits(ours, lopa(ids, lengths), words), lopa.trainable_parameters()),
        "ours LOPA, cached encoder vectors": train_step(
            lambda: label_logits(ours, lopa(ids, lengths, enc), words),
            lopa.trainable_parameters()),
        "ours LOPA, cached e, whole last block": train_step(
            lambda: label_logits(ours, whole_last_block(), words), lopa.trainable_parameters()),
        "ours eval (forward only)": forward_only(
            lambda: label_logits(ours, pt(ids, lengths), words)),
        "HF+PEFT eval (forward only)": forward_only(hf_scores),
        "ours prompt tuning, bfloat16": train_step(
            lambda: label_logits(ours16, pt16(ids, lengths), words), pt16.trainable_parameters(),
            torch.bfloat16),
        "ours LOPA, cached e, bfloat16": train_step(
            lambda: label_logits(ours16, lopa16(ids, lengths, enc16), words),
            lopa16.trainable_parameters(), torch.bfloat16),
        "HF+PEFT prompt tuning, bfloat16": train_step(
            lambda: ref16(input_ids=ids).logits[:, -1, words],
            [p for p in ref16.parameters() if p.requires_grad], torch.bfloat16),
        "HF+PEFT prompt tuning, keep=1, bfloat16": train_step(
            lambda: ref16(input_ids=ids, logits_to_keep=1).logits[:, -1, words],
            [p for p in ref16.parameters() if p.requires_grad], torch.bfloat16),
    }
    reference, reference_flops = matmul()
    reference16, _ = matmul(dtype=torch.bfloat16)
    times = interleaved({**steps, "matmul 2048 x 2048 (reference)": reference,
                         "matmul 2048 x 2048, bfloat16": reference16}, a.warmup, a.rounds)
    frozen = [p for x in (ours, ref, ours16, ref16) for p in x.parameters()]
    mem = {k: activation_mb(s.label_scores, frozen) for k, s in steps.items()
           if hasattr(s, "label_scores")}

    # FLOPs of our prompt-tuning step: a forward, and a backward that needs input gradients only
    # (the weights are frozen), about one more forward. Per layer: 12 d^2 per token in the linears,
    # plus attention's 2 (m+T) d per token for QK^T and again for AV.
    cfg, L = ours.config, B * (T + m)
    fwd = a.layers * (2 * 12 * cfg.n_embd**2 * L + 2 * 2 * (T + m) * cfg.n_embd * L)
    print(f"{a.rounds} rounds after {a.warmup} warm-up; medians, with the range over rounds")
    print(f"{'':42s} {'ms/step':>9s} {'range':>11s} {'examples/s':>11s} {'activations MB':>15s}")
    for k, t in times.items():
        med = statistics.median(t)
        print(f"{k:42s} {1000 * med:9.0f} {f'{1000 * min(t):.0f}-{1000 * max(t):.0f}':>11s} "
              f"{B / med:11.1f} {f'{mem[k]:.0f}' if k in mem else '-':>15}")
    pt, cached = times["ours prompt tuning"], times["ours LOPA, cached encoder vectors"]
    hf, keep = times["HF+PEFT prompt tuning"], times["HF+PEFT prompt tuning, logits_to_keep=1"]
    print(f"LOPA / prompt tuning step time: "
          f"{shown(ratio(times['ours LOPA, encoder pass included'], pt))} with the encoder pass, "
          f"{shown(ratio(cached, pt))} with cached e")
    print(f"the last block only where it is read (LOPA, cached e): "
          f"{shown(ratio(times['ours LOPA, cached e, whole last block'], cached))}")
    evals = ratio(times["HF+PEFT eval (forward only)"], times["ours eval (forward only)"])
    print(f"eval throughput, ours / HF+PEFT: {shown(evals)}")
    share = ratio([2 * fwd / p for p in pt],
                  [reference_flops / r for r in times["matmul 2048 x 2048 (reference)"]])
    print(f"achieved {2 * fwd / statistics.median(pt) / 1e9:.0f} GFLOP/s in our prompt-tuning "
          f"step, {shown([100 * x for x in share], '%', 0)} of this machine's float32 matmul")
    print(f"speedup vs HF+PEFT prompt tuning with logits_to_keep=1: {shown(ratio(keep, pt))}")
    print(f"speedup vs HF+PEFT prompt tuning: {shown(ratio(hf, pt))}")
    print(f"ours LOPA with cached e vs HF+PEFT prompt tuning with logits_to_keep=1: "
          f"{shown(ratio(keep, cached))}")
    pt16, cached16 = times["ours prompt tuning, bfloat16"], times["ours LOPA, cached e, bfloat16"]
    print(f"bfloat16 / float32 speedup: prompt tuning {shown(ratio(pt, pt16))}, "
          f"LOPA with cached e {shown(ratio(cached, cached16))}")
    print(f"bfloat16, ours prompt tuning vs HF+PEFT's with logits_to_keep=1: "
          f"{shown(ratio(times['HF+PEFT prompt tuning, keep=1, bfloat16'], pt16))}, "
          f"vs HF+PEFT's with the whole LM head: "
          f"{shown(ratio(times['HF+PEFT prompt tuning, bfloat16'], pt16))}")
    rate16 = [reference_flops / r for r in times["matmul 2048 x 2048, bfloat16"]]
    share16 = ratio([2 * fwd / p for p in pt16], rate16)
    print(f"achieved {2 * fwd / statistics.median(pt16) / 1e9:.0f} GFLOP/s in our bfloat16 "
          f"prompt-tuning step, {shown([100 * x for x in share16], '%', 0)} of this machine's "
          f"bfloat16 matmul ({statistics.median(rate16) / 1e9:.0f} GFLOP/s; float32 "
          f"{statistics.median([reference_flops / r for r in times['matmul 2048 x 2048 (reference)']]) / 1e9:.0f})")

if __name__ == "__main__":
    main()
