"""Training-step speed: this project against Hugging Face transformers + PEFT, in one process and
one run.

    pip install transformers peft          # optional extras, for this script only
    python benchmarks/speed.py             # GPT-2 small shape, random weights, float32

Same configuration for everyone: batch 16, 64 input tokens, 10 virtual tokens, every base weight
frozen, AdamW over the tuner only, cross-entropy on two label words at the last token. Prints
medians over several steps after warm-up, ratios, and achieved GFLOP/s against this machine's own
matmul speed. Timings on shared machines are noisy: read the ratios, which are measured side by
side.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from loading import load_gpt2_weights  # noqa: E402
from lopa import LOPA, PromptConfig, PromptTuning, label_logits  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def timed(step, warmup, repeats):
    """Median seconds of step() after warm-up."""
    times = []
    for i in range(warmup + repeats):
        t = time.perf_counter()
        step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


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


def matmul_gflops(n=2048, repeats=5):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
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
    print(f"GPT-2 small shape ({a.layers} layers), float32, batch {B}, {T} tokens, m = {m}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def train_step(label_scores, params):
        """One AdamW step on the cross-entropy of label_scores() -> (B, 2)."""
        opt = torch.optim.AdamW(params, lr=1e-3)
        def step():
            loss = F.cross_entropy(label_scores(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step.label_scores = label_scores
        return step

    pt = PromptTuning(ours, PromptConfig(m=m))
    lopa = LOPA(ours)
    enc = lopa.encode(ids, lengths)
    ref = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                          num_virtual_tokens=m))
    with torch.no_grad():
        ref.prompt_encoder["default"].embedding.weight.copy_(pt.z_s)

    def forward_only(label_scores):
        @torch.no_grad()
        def step():
            label_scores().argmax(-1)
        return step

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
        "ours eval (forward only)": forward_only(
            lambda: label_logits(ours, pt(ids, lengths), words)),
        "HF+PEFT eval (forward only)": forward_only(hf_scores),
    }
    r = {k: timed(s, a.warmup, a.repeats) for k, s in steps.items()}
    frozen = list(ours.parameters()) + list(ref.parameters())
    mem = {k: activation_mb(s.label_scores, frozen) for k, s in steps.items()
           if hasattr(s, "label_scores")}
    peak = matmul_gflops()

    # FLOPs of our prompt-tuning step: a forward, and a backward that needs input gradients only
    # (the weights are frozen), about one more forward. Per layer: 12 d^2 per token in the linears,
    # plus attention's 2 (m+T) d per token for QK^T and again for AV.
    cfg, L = ours.config, B * (T + m)
    fwd = a.layers * (2 * 12 * cfg.n_embd**2 * L + 2 * 2 * (T + m) * cfg.n_embd * L)
    print(f"{'':42s} {'ms/step':>9s} {'examples/s':>11s} {'activations MB':>15s}")
    for k, sec in r.items():
        print(f"{k:42s} {1000 * sec:9.0f} {B / sec:11.1f} "
              f"{f'{mem[k]:.0f}' if k in mem else '-':>15}")
    pt_s, hf_s, hf_keep = (r["ours prompt tuning"], r["HF+PEFT prompt tuning"],
                           r["HF+PEFT prompt tuning, logits_to_keep=1"])
    print(f"LOPA / prompt tuning step time: "
          f"{r['ours LOPA, encoder pass included'] / pt_s:.2f}x with the encoder pass, "
          f"{r['ours LOPA, cached encoder vectors'] / pt_s:.2f}x with cached encoder vectors")
    print(f"eval throughput, ours / HF+PEFT: "
          f"{r['HF+PEFT eval (forward only)'] / r['ours eval (forward only)']:.2f}x")
    print(f"achieved {2 * fwd / pt_s / 1e9:.0f} GFLOP/s in our prompt-tuning step; "
          f"this machine's float32 matmul: "
          f"{peak:.0f} GFLOP/s ({100 * 2 * fwd / pt_s / 1e9 / peak:.0f}%)")
    print(f"speedup vs HF+PEFT prompt tuning with logits_to_keep=1: {hf_keep / pt_s:.2f}x")
    print(f"speedup vs HF+PEFT prompt tuning: {hf_s / pt_s:.2f}x")


if __name__ == "__main__":
    main()
