"""Train LOPA (or prompt tuning, LoRA, IDPG) on a GLUE task with a frozen language model.

    python train.py --task sst2                     # LOPA; GPT-2 if reachable, else SmolLM2 offline
    python train.py --task rte --method prompt --epochs 3 --max-train-examples all
    torchrun --nproc_per_node 4 train.py --task sst2  # 4 processes, one batch: see distributed.py

One plain loop: zero-shot baseline, then epochs of AdamW steps on the label words' cross-entropy at
the last real token, an evaluation on dev after each epoch, the best-on-dev adapter kept in --out.
Ctrl-C saves a checkpoint that --resume continues from, exactly. `main` reads as the steps below.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import distributed
import metrics
from adapters import save_adapter, trains_encoder
from checkpoints import (check_out_folder, identify_run, save_checkpoint, start_or_resume,
                         stop_on_ctrl_c)
from common import UserError, atomic_write, autocast, cli, pick_device, pick_dtype, write_text
# train.Split, train.holdout_rows... still name what data.py now holds
from data import CPU_TRAIN_EXAMPLES, Split, choose_rows, holdout_rows, tokenize_split  # noqa: F401
from loading import choose_model, load_model
from lopa import METHODS, InstanceTuner, label_logits, last_hidden
from methods import add_method_flags, method_config, method_flags


# ----------------------------------------------------------------------------- the command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help=f"one of: {', '.join(data.TASKS)}")
    p.add_argument("--model", default="auto", help="hub id, folder, .gguf file, smollm2, or auto")
    p.add_argument("--method", default="lopa", help=", ".join(METHODS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train-examples", default=None,
                   help=f"N or 'all' (default: all on a GPU, {CPU_TRAIN_EXAMPLES} on a CPU)")
    p.add_argument("--holdout", type=int, default=0, help="evaluate on N training examples held "
                   "out of training instead of dev: to choose settings without touching dev")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="default: the method's own ("
                   + ", ".join(f"{name} {m.lr:g}" for name, m in METHODS.items()) + ")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/TASK-METHOD)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--dtype", default="auto", help="forward passes in float32 or bfloat16 "
                   "(autocast; default bfloat16 on a GPU that has it)")
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
    if a.task not in data.TASKS:
        raise UserError(f"unknown task {a.task!r}; choose one of: {', '.join(data.TASKS)}")
    if a.method not in METHODS:
        raise UserError(f"unknown method {a.method!r}; choose one of: {', '.join(METHODS)}")
    if a.holdout < 0:
        raise UserError(f"--holdout must be >= 0, got {a.holdout}")
    for name in ("epochs", "batch_size", "max_len", "checkpoint_every"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, "
                            f"got {getattr(a, name)}")
    pick_dtype(a.dtype, "cpu")  # an unknown --dtype fails here, before any work
    if a.lr is not None and not a.lr > 0:
        raise UserError(f"--lr must be positive, got {a.lr}")
    n = a.max_train_examples
    if n not in (None, "all") and not (n.isdigit() and int(n) > 0):
        raise UserError(f"--max-train-examples must be a positive integer or 'all', got {n!r}")


# ----------------------------------------------------------------------------- passes over a split

@torch.no_grad()
def per_example(fn, split, device, batch_size, desc, world=distributed.World()):
    """(N, d): fn(ids, lengths, index) -> (B, d) for every example, in length-sorted batches (each
    process of a world its share of each, then all of them gathered), in float32."""
    out = None
    batches = data.batches(split.ids, split.labels, batch_size, shuffle=False)
    for b in tqdm(world.shares(batches), desc=desc, leave=False,
                  total=math.ceil(len(split.ids) / batch_size)):
        index = b["index"].to(device)
        h = fn(b["ids"].to(device), b["lengths"].to(device), index).float()
        out = h.new_zeros(len(split.ids), h.size(1)) if out is None else out
        out[index] = h
    return world.gather_rows(out, len(split.ids))


def cache_encoder(tuner, model, train, dev, dev_h, device, batch_size, world=distributed.World()):
    """e = Enc(x) for every example, once: a frozen encoder gives every epoch the same e (see
    lopa.InstanceTuner.encode). The default encoder is this model read without a prompt, which is
    exactly the zero-shot pass: its dev_h is dev's e."""
    def encode(ids, lengths, index):
        return tuner.encode(ids, lengths)
    train.e = per_example(encode, train, device, batch_size, "encode", world)
    default = type(tuner).encode is InstanceTuner.encode and tuner.encoder is model
    dev.e = dev_h if default else per_example(encode, dev, device, batch_size,
                                              f"encode {dev.name}", world)


# ----------------------------------------------------------------------------- training

def lr_at(step, lr, warmup):
    # linear warm-up over the first 6% of steps, then flat
    return lr * min(1.0, (step + 1) / warmup)


def evaluate(task, tuner, split, label_ids, device, batch_size, world=distributed.World()):
    """The task metric of the tuned model on a split."""
    def hidden(ids, lengths, index):
        return tuner(ids, lengths, None if split.e is None else split.e[index])
    tuner.eval()
    h = per_example(hidden, split, device, batch_size, split.name, world)
    tuner.train()
    preds = label_logits(tuner.model, h, label_ids).argmax(-1).tolist()
    return metrics.score(task, preds, split.labels)


def batch_loss(run, b):
    """The mean cross-entropy of the label words over batch b, its forward pass in --dtype."""
    tuner, train = run.tuner, run.train
    with autocast(run.device, run.dtype):
        e = None if train.e is None else train.e[b["index"].to(run.device)]
        h = tuner(b["ids"].to(run.device), b["lengths"].to(run.device), e)          # (B, d)
        logits = label_logits(tuner.model, h, run.label_ids)                       # (B, n_labels)
        loss = F.cross_entropy(logits, b["labels"].to(run.device))
    return loss


def train_epoch(run, epoch, stop):
    """One epoch of AdamW steps from run.state["step"]; False if Ctrl-C stopped it (saved)."""
    a, opt, train = run.args, run.opt, run.train
    # the epoch's order, rebuilt on resume
    gen = torch.Generator().manual_seed(a.seed * 1000 + epoch)
    batches = list(data.batches(train.ids, train.labels, a.batch_size, shuffle=True, generator=gen))
    done = run.state["step"] - epoch * run.steps_per_epoch  # > 0 only when resuming mid-epoch
    bar = tqdm(batches[done:], desc=f"epoch {epoch + 1}/{a.epochs}", initial=done,
               total=run.steps_per_epoch, leave=False)
    for b in bar:
        step = run.state["step"]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, g["base_lr"], run.warmup)
        opt.zero_grad(set_to_none=True)
        # under torchrun: this process's share of b, the gradients summed over processes
        loss = run.world.backward(lambda share: batch_loss(run, share), b, run.params)
        if not torch.isfinite(loss):
            kept = os.path.exists(os.path.join(a.out, "checkpoint.json"))
            kept = "the last good checkpoint is kept" if kept else "no checkpoint yet"
            raise UserError(f"loss became {loss.item()} at step {step + 1}; {kept}. "
                            f"Lower --lr (now {a.lr:g})")
        torch.nn.utils.clip_grad_norm_(run.params, 1.0)
        opt.step()
        run.state["step"] = step + 1
        run.losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(run.losses[-20:]) / len(run.losses[-20:]):.3f}")
        stopping = run.world.any(stop)  # every process stops at the same step
        if stopping or (step + 1) % a.checkpoint_every == 0:
            save_checkpoint(run)
        if stopping:
            print(f"\ninterrupted at step {step + 1}/{a.epochs * run.steps_per_epoch}; checkpoint "
                  f"saved in {a.out}. Continue with the same command plus --resume",
                  file=sys.stderr)
            return False
    bar.close()
    return True


# ----------------------------------------------------------------------------- main

class Run:
    """What the steps of one run share: args, world (distributed.py), device, dtype, model_name,
    label_ids, train and dev (Splits), tuner, params, n_params, opt, steps_per_epoch, warmup, state
    (saved in checkpoints), losses."""


def record_epoch(run, epoch, metric, t_epoch):
    """Log the epoch, write metrics.jsonl, keep the adapter if it is the best so far, checkpoint."""
    a, state, task = run.args, run.state, data.TASKS[run.args.task]
    loss = sum(run.losses) / max(1, len(run.losses))
    row = {"epoch": epoch + 1, "step": state["step"], "loss": loss,
           **{f"dev_{k}": v for k, v in metric.items()}}
    state["history"].append(row)
    print(f"epoch {epoch + 1}/{a.epochs} | step {state['step']}/{a.epochs * run.steps_per_epoch} | "
          f"loss {loss:.3f} | {run.dev.name} {task.metric} {metric['metric']:.4f} | "
          f"lr {run.opt.param_groups[0]['lr']:.1e} | "
          f"{1000 * (time.time() - t_epoch) / max(1, len(run.losses)):.0f} ms/step")
    new_best = state["best"] is None or metric["metric"] > state["best"]["metric"]
    state["best"] = {**metric, "epoch": epoch + 1} if new_best else state["best"]
    if run.world.main:  # every process keeps the state; one writes the files
        atomic_write(os.path.join(a.out, "metrics.jsonl"), lambda p: write_text(
            p, "".join(json.dumps(r) + "\n" for r in state["history"])))
    if new_best and run.world.main:
        save_adapter(run.tuner, a.out, model=run.model_name, task=a.task, seed=a.seed, lr=a.lr,
                     n_train=len(run.train.ids), holdout=a.holdout, trainable=run.n_params,
                     metric_name=task.metric, best_epoch=epoch + 1,
                     metrics={"dev": metric, "zero_shot": state["zero_shot"]})
    save_checkpoint(run)


def load_data(run, train_rows, dev_rows, split):
    """The model, and both splits tokenized with its tokenizer."""
    a, task = run.args, data.TASKS[run.args.task]
    model, tokenizer = load_model(run.model_name)
    model.to(run.device)
    run.label_ids = torch.tensor(data.label_token_ids(task, tokenizer), device=run.device)
    max_len = min(a.max_len, model.config.n_positions - getattr(a.config, "m", 0))
    run.train = tokenize_split("train", task, train_rows, tokenizer, max_len)
    run.dev = tokenize_split(split, task, dev_rows, tokenizer, max_len)
    return model


def build_tuner(run, model):
    a = run.args
    torch.manual_seed(a.seed)
    run.tuner = METHODS[a.method].tuner(model, a.config).to(run.device).train()
    run.params = run.tuner.trainable_parameters()
    run.n_params = sum(p.numel() for p in run.params)
    n_model = sum(p.numel() for p in model.parameters())
    share = 100 * run.n_params / n_model  # over 100 with a trained encoder: a whole model more
    run.share = f"{share:.2g}%" if share < 10 else f"{share:.2f}%"  # 0.67%, 100.67% (not 1e+02%)
    print(f"method: {a.method}; trainable parameters: {run.n_params:,} "
          f"({run.share} of {n_model:,})")
    if trains_encoder(run.tuner):
        n = sum(p.numel() for p in run.tuner.encoder.parameters())
        print(f"of which {n:,} are the trained encoder's: a client keeps that whole model to make "
              f"its prompts (saved as {a.out}/encoder.safetensors); the server's model stays "
              f"frozen")
    run.opt = torch.optim.AdamW(run.tuner.param_groups(a.lr), lr=a.lr, weight_decay=0.0)
    run.steps_per_epoch = math.ceil(len(run.train.ids) / a.batch_size)
    run.warmup = max(1, round(0.06 * a.epochs * run.steps_per_epoch))


def zero_shot(run, model, batch_size):
    """The template alone, no prompt: its score, and dev's final hidden states (B, d) on the way."""
    task, state = data.TASKS[run.args.task], run.state
    dev_h = per_example(lambda ids, lengths, index: last_hidden(model, ids, lengths), run.dev,
                        run.device, batch_size, "zero-shot", run.world)
    if state["zero_shot"] is None:
        preds = label_logits(model, dev_h, run.label_ids).argmax(-1).tolist()
        state["zero_shot"] = metrics.score(task, preds, run.dev.labels)
    print(f"zero-shot {run.dev.name} {task.metric} {state['zero_shot']['metric']:.4f} "
          f"(template alone, no prompt)")
    return dev_h


def main(argv=None):
    run, t0 = Run(), time.time()
    run.args = a = parse_args(argv)
    run.world, run.device = distributed.setup(pick_device(a.device))  # torchrun's, or one process
    run.dtype = pick_dtype(a.dtype, run.device)
    run.model_name, why = choose_model(a.model)
    mixed = "" if run.dtype == torch.float32 else f" ({str(run.dtype)[6:]} autocast)"
    print(f"model: {run.model_name} ({why}); device: {run.device}{mixed}")
    train_rows, dev_rows, split = choose_rows(a, run.device)
    run_key = identify_run(a, run.model_name, len(train_rows))
    check_out_folder(a, run_key)
    model = load_data(run, train_rows, dev_rows, split)
    stop = stop_on_ctrl_c()
    build_tuner(run, model)
    run.world.own_rng(a.seed)
    run.state = start_or_resume(a, run.tuner, run.opt, run_key, a.epochs * run.steps_per_epoch,
                                run.world.rank)
    bs = 2 * a.batch_size  # no gradients to keep: evaluation fits twice the batch
    with autocast(run.device, run.dtype):
        dev_h = zero_shot(run, model, bs)
        if run.tuner.caches_encoder:
            cache_encoder(run.tuner, model, run.train, run.dev, dev_h, run.device, bs, run.world)
    for epoch in range(len(run.state["history"]), a.epochs):  # epochs already evaluated are done
        run.losses, t_epoch = [], time.time()
        if not train_epoch(run, epoch, stop):
            return 130
        with autocast(run.device, run.dtype):
            metric = evaluate(data.TASKS[a.task], run.tuner, run.dev, run.label_ids, run.device,
                              bs, run.world)
        record_epoch(run, epoch, metric, t_epoch)
    run.state["done"] = True
    save_checkpoint(run)
    if run.world.main:
        summary(run, time.time() - t0)
    return 0


def summary(run, seconds):
    a, best, task = run.args, run.state["best"], data.TASKS[run.args.task]
    size = os.path.getsize(os.path.join(a.out, "adapter.safetensors"))
    print(f"\ndone in {seconds:.0f} s | {run.dev.name} {task.metric} {best['metric']:.4f} "
          f"(epoch {best['epoch']}) | zero-shot {run.state['zero_shot']['metric']:.4f} | trainable "
          f"{run.n_params:,} ({run.share}) | adapter {size / 1e6:.2f} MB in "
          f"{a.out}/adapter.safetensors")


if __name__ == "__main__":
    cli(main)
