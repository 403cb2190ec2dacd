"""Is LOPA just gated prompt tuning here? Does a trained adapter use its input-dependent part?

    python benchmarks/diagnose.py --adapter runs/sst2-lopa
    python benchmarks/diagnose.py --adapter runs/sst2-lopa --json diagnose.json

On the task's dev set it scores the adapter three ways and counts the predictions that move:
  real e      the adapter as trained: each example's own encoder vector e = Enc(x)
  mean e      every e replaced by the mean e over dev: the same prompt for every input (no instance
              information left), so what changes is what the instance part did
  mean gate   (LOPA) Z = Z_S ⊙ mean over dev of σ(Z_I): the gate kept at its average instead of e
and reports how much σ(Z_I) (Z_I for combine=add) varies across examples. An adapter whose mean-e
score and predictions match the real ones works as prompt tuning with a fixed prompt.
"""
import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from plumbing import metrics  # noqa: E402
from plumbing.adapters import load_with_model  # noqa: E402
from plumbing.cli import UserError, atomic_write, cli, pick_device, write_text  # noqa: E402
from lopa import LOPA, InstanceTuner, label_logits, last_hidden  # noqa: E402
from data import tokenize_split  # noqa: E402
from train import per_example  # noqa: E402
from benchmarks.variants import as_variant  # noqa: E402


def diagnose(tuner, model, task, dev, label_ids, device, batch_size=32):
    """{"real", "mean_e", "mean_gate": {"metric", "changed"}, "term", "n"}: each way's metric and
    how many of the n predictions differ from the real ones; "term": σ(Z_I)'s spread."""
    tuner = as_variant(tuner) if isinstance(tuner, LOPA) else tuner  # with instance_term()
    def each(fn, desc):  # fn(ids, lengths, index) -> (B, ...) for every dev example: (N, ...)
        return per_example(fn, dev, device, batch_size, desc)
    e = each(lambda ids, lengths, index: tuner.encode(ids, lengths), "encode")       # (N, h_enc)
    ways = {"real": lambda index: tuner.prompt(None, None, e[index]),               # -> (B, m, d)
            "mean_e": lambda index: tuner.prompt(None, None, e.mean(0).expand(len(index), -1))}
    out = {"n": len(dev.ids), "e": encoder_stats(tuner, e)}
    if isinstance(tuner, LOPA):
        t = each(lambda ids, lengths, index: tuner.instance_term(e[index]).flatten(1), "gate")
        t_mean = t.mean(0).view(1, tuner.config.m, -1)                       # (N, m d) -> (1, m, d)
        ways["mean_gate"] = lambda index: tuner.combine(t_mean.expand(len(index), -1, -1))
        out["term"] = {"mean": t.mean().item(), "std_across_examples": t.std(0).mean().item(),
                       "min": t.min().item(), "max": t.max().item(),
                       "near_0_or_1": ((t < 0.01) | (t > 0.99)).float().mean().item()}
    real = None
    for name, prompt_of in ways.items():
        h = each(lambda ids, lengths, index: last_hidden(model, ids, lengths, prompt_of(index)),
                 name)                                                                 # (N, d)
        preds = label_logits(model, h, label_ids).argmax(-1).tolist()
        real = real or preds
        out[name] = {"metric": metrics.score(task, preds, dev.labels)["metric"],
                     "changed": sum(p != q for p, q in zip(preds, real))}
    return out


@torch.no_grad()
def encoder_stats(tuner, e):
    """How e (N, h_enc) reaches the MLPs: its size, how much it varies across examples, and the
    share of the first MLP layer's tanh units at |tanh| > 0.99 (saturated: almost no gradient)."""
    first = (tuner.mlp_u if isinstance(tuner, LOPA) else tuner.mlp)[1]   # Linear(h_enc, H)
    x = F.normalize(e, dim=-1) if getattr(tuner.config, "encoder_norm", "none") == "l2" else e
    features = torch.tanh(first(x))                                        # (N, H)
    return {"norm": e.norm(dim=-1).mean().item(), "mean_abs": e.abs().mean().item(),
            "spread": e.std(0).mean().item(), "largest_dim": e.abs().mean(0).max().item(),
            "saturated": (features.abs() > 0.99).float().mean().item(),
            "feature_spread": features.std(0).mean().item()}


def report(out, task, split):
    n, name = out["n"], task.metric
    lines = [f"{'':34s}{split + ' ' + name:>12s}   predictions changed"]
    for key, label in (("real", "real e"), ("mean_e", "every e = the mean e"),
                       ("mean_gate", "gate fixed at its mean")):
        if key in out:
            changed = "-" if key == "real" else f"{out[key]['changed']} of {n}"
            lines.append(f"{label:34s}{out[key]['metric']:12.4f}   {changed}")
    s = out["e"]
    lines.append(f"e: norm {s['norm']:.1f}, mean |e| {s['mean_abs']:.2f}, largest dimension "
                 f"{s['largest_dim']:.1f}, spread across examples {s['spread']:.2f} (std per "
                 f"dimension); first MLP layer: {100 * s['saturated']:.0f}% of tanh units "
                 f"saturated, features spread {s['feature_spread']:.3f}")
    if "term" in out:
        t = out["term"]
        lines.append(f"instance term (σ(Z_I), or Z_I for add): mean {t['mean']:.3f}, std across "
                     f"examples {t['std_across_examples']:.4f} (mean over entries), "
                     f"range [{t['min']:.3f}, {t['max']:.3f}], "
                     f"{100 * t['near_0_or_1']:.0f}% of entries below 0.01 or above 0.99")
    share = out["mean_e"]["changed"] / n
    verdict = ("the input-dependent part is hardly used: this adapter acts as prompt tuning"
               if share < 0.01 else "the input-dependent part is in use")
    lines.append(f"verdict: removing the instance information changes {100 * share:.1f}% of the "
                 f"predictions; {verdict}.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--adapter", required=True, help="a LOPA or IDPG folder written by train.py")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=256, help="as train.py's --max-len of the run")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    tuner, info, tokenizer = load_with_model(args.adapter, device)
    model = tuner.model
    if not isinstance(tuner, InstanceTuner):
        raise UserError(f"the adapter in {args.adapter} is {info['method']!r}, whose prompt does "
                        f"not depend on the input: diagnose a lopa or idpg adapter")
    tuner.to(device)
    task = data.TASKS[info["task"]]
    label_ids = torch.tensor(data.label_token_ids(task, tokenizer), device=device)
    dev = tokenize_split("dev", task, data.load_split(info["task"], "dev"), tokenizer,
                         min(args.max_len, model.config.n_positions - tuner.config.m))
    print(f"adapter: {args.adapter} ({info['method']}, {info['task']}, {info['model']}); "
          f"dev: {len(dev.ids)} examples")
    out = diagnose(tuner, model, task, dev, label_ids, device, args.batch_size)
    print(report(out, task, "dev"))
    if args.json:
        atomic_write(args.json, lambda p: write_text(p, json.dumps(out, indent=1) + "\n"))
    return 0


if __name__ == "__main__":
    cli(main)
