"""Train LOPA (or prompt tuning, LoRA, IDPG) on a GLUE task or E2E with a frozen language model.

    python train.py --task sst2                     # LOPA; GPT-2 if reachable, else SmolLM2 offline
    python train.py --task rte --method prompt --epochs 3 --max-train-examples all
    python train.py --task e2e                      # writes text: generate.py
    torchrun --nproc_per_node 4 train.py --task sst2  # 4 processes: plumbing/distributed.py

One plain loop: zero-shot baseline, then epochs of AdamW steps on the label words' (E2E: the target
text's) cross-entropy, an evaluation on dev after each epoch, the best-on-dev adapter kept in --out.
Ctrl-C or SIGTERM saves a checkpoint that --resume continues from, exactly. `train` reads as the
steps below.
"""
import argparse
import json
import math
import os
import signal
import sys
import time
from collections import ChainMap

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import generate
from lopa import InstanceTuner, label_logits, last_hidden
from plumbing import distributed, metrics
from plumbing.adapters import note_trained_encoder, save_adapter
from plumbing.checkpoints import (CHECKPOINT, check_out_folder, identify_run, own_folder, resume,
                                  save_checkpoint, stop_on_signals)
from plumbing.cli import UserError, atomic_write, autocast, cli, pick_device, pick_dtype, write_text
from plumbing.loading import choose_model, load_model
from plumbing.methods import METHODS, add_method_flags, method_config, method_flags

TASKS = ChainMap(generate.TASKS, data.TASKS)  # both, and any task added since (exercise 7)


# ----------------------------------------------------------------------------- the command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help=f"one of: {', '.join(TASKS)}")
    p.add_argument("--model", default="auto", help="hub id, folder, .gguf file, smollm2, or auto")
    p.add_argument("--method", default="lopa", help=", ".join(METHODS))
    p.add_argument("--epochs", type=int, default=2)
    cpu = ", ".join(f"{n} in {str(t)[6:]}" for t, n in data.CPU_TRAIN_EXAMPLES.items())
    p.add_argument("--max-train-examples", default=None,
                   help=f"N or 'all' (default: all on a GPU; on a CPU {cpu})")
    p.add_argument("--holdout", type=int, default=0, help="evaluate on N training examples (E2E: "
                   "MRs) held out of training, not dev: to choose settings without touching dev")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default: the method's own ("
                   + ", ".join(f"{name} {m.lr:g}" for name, m in METHODS.items()) + ")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/TASK-METHOD)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", default="auto", help="float32 or bfloat16 (default: bfloat16 on a "
                   "GPU that has it and on a CPU with AVX-512 BF16 or AMX)")
    p.add_argument("--max-len", type=int, default=256,
                   help="longest input in tokens (sentences are cut, never the template)")
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints")
    flags = method_flags()  # one flag for each option() field of every method's config
    add_method_flags(p, flags)
    a = p.parse_args(argv)
    check_args(a)
    a.config = method_config(a, flags)  # validates
    a.lr = a.lr or METHODS[a.method].lr
    a.out = a.out or os.path.join("runs", f"{a.task}-{a.method}")
    return a


def check_args(a):
    if a.task not in TASKS:
        raise UserError(f"unknown task {a.task!r}; choose one of: {', '.join(TASKS)}")
    if a.method not in METHODS:
        raise UserError(f"unknown method {a.method!r}; choose one of: {', '.join(METHODS)}")
    if a.holdout < 0:
        raise UserError(f"--holdout must be >= 0, got {a.holdout}")
    for name in ("epochs", "batch_size", "max_len", "checkpoint_every"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, "
                            f"got {getattr(a, name)}")
    pick_dtype(a.dtype, "cpu")  # an unknown --dtype fails here, before any work
    if a.lr is not None and not (math.isfinite(a.lr) and a.lr > 0):
        raise UserError(f"--lr must be positive and finite, got {a.lr}")
    n = a.max_train_examples
    if n not in (None, "all") and not (n.isdigit() and int(n) > 0):
        raise UserError(f"--max-train-examples must be a positive integer or 'all', got {n!r}")


# ----------------------------------------------------------------------------- passes over a split

@torch.no_grad()
def per_example(fn, split, device, batch_size, desc):
    """(N, d): fn(ids, lengths, index) -> (B, d) for every example, in length-sorted batches (under
    torchrun each process its share of each, then all of them gathered), in float32."""
    out = None
    batches = data.batches(split.ids, split.labels, batch_size, shuffle=False)
    for b in tqdm(distributed.my_shares(batches), desc=desc, leave=False,
                  total=math.ceil(len(split.ids) / batch_size)):
        index = b["index"].to(device)
        h = fn(b["ids"].to(device), b["lengths"].to(device), index).float()
        out = h.new_zeros(len(split.ids), h.size(1)) if out is None else out
        out[index] = h
    return distributed.gather_rows(out, len(split.ids), device)


def zero_shot(model, dev, label_ids, tokenizer, task, device, batch_size):
    """The template alone, no prompt: its score, and dev's final hidden states (N, d) or None."""
    if task.generates:
        return generate.score(model, dev, lambda *_: None, tokenizer, device, batch_size,
                              task.max_new_tokens), None
    dev_h = per_example(lambda ids, lengths, index: last_hidden(model, ids, lengths), dev,
                        device, batch_size, "zero-shot")
    preds = label_logits(model, dev_h, label_ids).argmax(-1).tolist()
    return metrics.score(task, preds, dev.labels), dev_h


def cache_encoder(tuner, model, train, dev, dev_h, device, batch_size):
    """(train's e, dev's e): e = Enc(x) for every example, once, since a frozen encoder gives every
    epoch the same e (lopa.InstanceTuner.encode). The default encoder is this model read without a
    prompt, which is exactly the zero-shot pass: its dev_h is dev's e."""
    def encode(ids, lengths, index):
        return tuner.encode(ids, lengths)
    train_e = per_example(encode, train, device, batch_size, "encode")
    # unless a subclass reads e its own way (exercise 8's mean pooling) or from another model
    if dev_h is not None and tuner.encoder is model and type(tuner).encode is InstanceTuner.encode:
        return train_e, dev_h
    return train_e, per_example(encode, dev, device, batch_size, f"encode {dev.name}")


def evaluate(task, tuner, split, e, label_ids, tokenizer, device, batch_size):
    """The task metric of the tuned model on a split (e: its cached encoder vectors, or None). A
    task that writes is written greedily behind each row's prompt and scored by BLEU."""
    def hidden(ids, lengths, index):
        return tuner(ids, lengths, None if e is None else e[index])
    def prompt(ids, lengths, index):
        return tuner.prompt(ids, lengths, None if e is None else e[index])
    tuner.eval()
    if task.generates:
        out = generate.score(tuner.model, split, prompt, tokenizer, device, batch_size,
                             task.max_new_tokens)
    else:
        h = per_example(hidden, split, device, batch_size, split.name)
        preds = label_logits(tuner.model, h, label_ids).argmax(-1).tolist()
        out = metrics.score(task, preds, split.labels)
    tuner.train()
    return out


# ----------------------------------------------------------------------------- training

def lr_at(step, lr, warmup):  # linear warm-up over the first 6% of steps, then flat
    return lr * min(1.0, (step + 1) / warmup)


def batch_loss(tuner, b, train_e, label_ids, device):
    """The mean cross-entropy of the label words over batch b (train_e: the cached e, or None)."""
    if not len(b["index"]):  # under torchrun, a batch smaller than the world leaves some nothing
        return torch.zeros((), device=device, requires_grad=True)
    e = None if train_e is None else train_e[b["index"].to(device)]             # (B, h_enc)
    if label_ids is None:  # a task that writes: the target text's cross-entropy
        return generate.target_loss(tuner, b, e, device)
    h = tuner(b["ids"].to(device), b["lengths"].to(device), e)                   # (B, d)
    logits = label_logits(tuner.model, h, label_ids)                           # (B, n_labels)
    return F.cross_entropy(logits, b["labels"].to(device))


def train_epoch(a, tuner, opt, train, train_e, label_ids, epoch, state, stop, device, dtype):
    """One epoch of AdamW steps from state["step"]: (the epoch's losses, ms per step run here), or
    None if Ctrl-C or SIGTERM stopped it (a checkpoint saved)."""
    params, t0 = tuner.trainable_parameters(), time.time()
    steps_per_epoch = math.ceil(len(train.ids) / a.batch_size)
    warmup = max(1, round(0.06 * a.epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(a.seed * 1000 + epoch)  # the epoch's order, again on resume
    batches = list(data.batches(train.ids, train.labels, a.batch_size, shuffle=True, generator=gen))
    done = state["step"] - epoch * steps_per_epoch  # > 0 only when resuming mid-epoch
    losses = state["losses"] = state.get("losses", [])[:done]  # the epoch's, kept in checkpoints
    bar = tqdm(batches[done:], desc=f"epoch {epoch + 1}/{a.epochs}", initial=done,
               total=steps_per_epoch, leave=False)
    for b in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(state["step"], g["base_lr"], warmup)
        opt.zero_grad(set_to_none=True)
        rows = distributed.my_share(b)  # under torchrun this process's rows of b; else all of b
        with autocast(device, dtype):  # the forward pass in --dtype
            loss = batch_loss(tuner, rows, train_e, label_ids, device)
        loss = loss * (len(rows["index"]) / len(b["index"]))  # its share (E2E: by rows, not tokens)
        loss.backward()
        loss = distributed.sum_gradients(params, loss)  # torchrun: the sums over all processes
        check_finite(loss, state["step"], a)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["step"] += 1
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        stopping = distributed.any_process(stop, device)  # every process stops at the same step
        if stopping or state["step"] % a.checkpoint_every == 0:
            save_checkpoint(a.out, tuner, opt, state)
        if stopping:
            print(f"\ninterrupted at step {state['step']}/{a.epochs * steps_per_epoch}; checkpoint "
                  f"saved in {a.out}. Continue with the same command plus --resume",
                  file=sys.stderr)
            return None
    bar.close()
    return losses, 1000 * (time.time() - t0) / max(1, len(losses) - done)  # not the evaluation


def check_finite(loss, step, a):
    if not torch.isfinite(loss):
        kept = os.path.exists(os.path.join(a.out, CHECKPOINT))
        kept = "the last good checkpoint is kept" if kept else "no checkpoint yet"
        raise UserError(f"loss became {loss.item()} at step {step + 1}; {kept}. "
                        f"Lower --lr (now {a.lr:g})")


# ----------------------------------------------------------------------------- main

def load_data(a, task, model_name, train_rows, dev_rows, split, device, dtype):
    """The model (held in dtype), its tokenizer, the label words' token ids (None for a task that
    writes), train and dev tokenized for it."""
    model, tokenizer = load_model(model_name)
    max_len = min(a.max_len, model.config.n_positions - getattr(a.config, "m", 0))
    tokenize = generate.tokenize_pairs if task.generates else data.tokenize_split
    label_ids = (None if task.generates else
                 torch.tensor(data.label_token_ids(task, tokenizer), device=device))
    train = tokenize("train", task, train_rows, tokenizer, max_len)
    dev = tokenize(split, task, dev_rows, tokenizer, max_len)
    return model.to(device, dtype), tokenizer, label_ids, train, dev


def build_tuner(a, model, device):
    """The method's tuner on the frozen model, its optimizer, and its trainable weights: how many,
    and what share of the model's."""
    torch.manual_seed(a.seed)
    # --method lopa builds lopa.LOPA; with a study flag (--combine, ...) benchmarks/variants.py's
    tuner = METHODS[a.method].tuner(model, a.config).to(device).train()
    n_params = sum(p.numel() for p in tuner.trainable_parameters())
    n_model = sum(p.numel() for p in model.parameters())
    share = 100 * n_params / n_model  # over 100 with a trained encoder: a whole model more
    share = f"{share:.2g}%" if share < 10 else f"{share:.2f}%"  # 0.67%, 100.67% (not 1e+02%)
    print(f"method: {a.method}; trainable parameters: {n_params:,} ({share} of {n_model:,})")
    note_trained_encoder(tuner, a.out)  # benchmarks/variants.py's --encoder-lr only
    opt = torch.optim.AdamW(tuner.param_groups(a.lr), lr=a.lr, weight_decay=0.0)
    return tuner, opt, n_params, share


def record_epoch(a, epoch, metric, losses, ms_per_step, state, dev_name, opt):
    """Print the epoch's line and add it to the history (and metrics.jsonl); True if its score is
    the best so far."""
    task, loss = TASKS[a.task], sum(losses) / max(1, len(losses))
    lr = opt.param_groups[0]["lr"]
    total = a.epochs * state["step"] // (epoch + 1)  # all steps: epoch k ends at step k x steps
    print(f"epoch {epoch + 1}/{a.epochs} | step {state['step']}/{total} | loss {loss:.3f} | "
          f"{dev_name} {task.metric} {metric['metric']:.4f} | lr {lr:.1e} | "
          f"{ms_per_step:.0f} ms/step")
    state["history"].append({"epoch": epoch + 1, "step": state["step"], "loss": loss,
                             **{f"dev_{k}": v for k, v in metric.items()}})
    if distributed.is_main():  # every process keeps the state; one writes the files
        atomic_write(os.path.join(a.out, "metrics.jsonl"), lambda p: write_text(
            p, "".join(json.dumps(r) + "\n" for r in state["history"])))
    new_best = state["best"] is None or metric["metric"] > state["best"]["metric"]
    state["best"] = {**metric, "epoch": epoch + 1} if new_best else state["best"]
    return new_best


def new_state(run_key):
    """What a checkpoint keeps besides tensors (train_epoch adds the epoch's "losses")."""
    return {"run": run_key, "step": 0, "history": [], "best": None, "zero_shot": None,
            "done": False}


def main(argv=None):
    t0, a = time.time(), parse_args(argv)
    device = distributed.setup(pick_device(a.device))  # torchrun's process group, or one process
    with own_folder(a.out, distributed.is_main()):  # one run at a time in --out
        return train(a, device, t0)


def train(a, device, t0):
    (dtype, dtype_why), (model_name, why) = pick_dtype(a.dtype, device), choose_model(a.model)
    print(f"model: {model_name} ({why}); device: {device}; {str(dtype)[6:]} ({dtype_why})")
    task, bs = TASKS[a.task], 2 * a.batch_size  # no gradients to keep: evaluation fits twice
    choose_rows = generate.choose_pairs if task.generates else data.choose_rows
    train_rows, dev_rows, split = choose_rows(a, device, dtype)
    run_key = identify_run(a, model_name, len(train_rows))
    check_out_folder(a, run_key)
    model, tokenizer, label_ids, train, dev = load_data(a, task, model_name, train_rows, dev_rows,
                                                        split, device, dtype)
    stop = stop_on_signals()  # a list that Ctrl-C and SIGTERM append their signal to
    tuner, opt, n_params, share = build_tuner(a, model, device)
    distributed.own_rng(a.seed)
    steps = a.epochs * math.ceil(len(train.ids) / a.batch_size)
    state = resume(a, tuner, opt, steps) if a.resume else new_state(run_key)
    with autocast(device, dtype):
        zero, dev_h = zero_shot(model, dev, label_ids, tokenizer, task, device, bs)
        state["zero_shot"] = state["zero_shot"] or zero  # a resumed run keeps its first
        print(f"zero-shot {dev.name} {task.metric} {state['zero_shot']['metric']:.4f} "
              f"(template alone, no prompt)")
        train_e, dev_e = (cache_encoder(tuner, model, train, dev, dev_h, device, bs)
                          if tuner.caches_encoder else (None, None))
    for epoch in range(len(state["history"]), a.epochs):  # epochs already evaluated are done
        trained = train_epoch(a, tuner, opt, train, train_e, label_ids, epoch, state, stop, device,
                              dtype)
        if trained is None:
            return 128 + (stop[0] if stop else signal.SIGINT)  # 130: Ctrl-C, 143: SIGTERM
        with autocast(device, dtype):
            metric = evaluate(task, tuner, dev, dev_e, label_ids, tokenizer, device, bs)
        if record_epoch(a, epoch, metric, *trained, state, dev.name, opt):
            keep_adapter(a, tuner, model_name, n_params, len(train.ids), state)
        save_checkpoint(a.out, tuner, opt, state)
    state["done"] = True
    save_checkpoint(a.out, tuner, opt, state)
    if distributed.is_main():
        summary(a, state, dev.name, f"{n_params:,} ({share})", time.time() - t0)
    return 0


def keep_adapter(a, tuner, model_name, n_params, n_train, state):
    """The best adapter so far into --out (adapter.safetensors + adapter.json), by rank 0."""
    if distributed.is_main():
        task, best = TASKS[a.task], state["best"]
        save_adapter(tuner, a.out, model=model_name, task=a.task, seed=a.seed, lr=a.lr,
                     n_train=n_train, holdout=a.holdout, trainable=n_params,
                     metric_name=task.metric, best_epoch=best["epoch"],
                     metrics={"dev": {k: v for k, v in best.items() if k != "epoch"},
                              "zero_shot": state["zero_shot"]})


def summary(a, state, dev_name, trainable, seconds):
    best, task = state["best"], TASKS[a.task]
    size = os.path.getsize(os.path.join(a.out, "adapter.safetensors"))
    print(f"\ndone in {seconds:.0f} s | {dev_name} {task.metric} {best['metric']:.4f} "
          f"(epoch {best['epoch']}) | zero-shot {state['zero_shot']['metric']:.4f} | trainable "
          f"{trainable} | adapter {size / 1e6:.2f} MB in {a.out}/adapter.safetensors")


if __name__ == "__main__":
    cli(main)
