"""Resumable runs: a checkpoint holds everything train.py needs to continue exactly where it stopped
(the tuner, AdamW's moments, the RNG, the position, the history), as safetensors + JSON; Ctrl-C
saves one; and the rules that keep two different runs out of one folder.
"""
import json
import os
import signal
from dataclasses import asdict

import torch
from safetensors.torch import load_file, save_file

from plumbing import distributed
from plumbing.cli import UserError, atomic_write, write_text


def save_checkpoint(out, tuner, opt, state):
    """All a resumed run needs, as safetensors + JSON: tuner, AdamW moments, RNG, position (state).
    Under torchrun every process must call it (they hand rank 0 their generators); rank 0 writes."""
    # each process draws its own dropout masks: keep every one's generator ("rng" is rank 0's)
    rngs = distributed.all_gather(torch.get_rng_state())
    if not distributed.is_main():
        return
    # state_dict, not named_parameters: a trained encoder's tied weights come under both their names
    tensors = {f"tuner.{k}": v.detach().cpu().clone() for k, v in tuner.state_dict().items()}
    for i, s in opt.state_dict()["state"].items():
        tensors.update({f"opt.{i}.{k}": v.cpu() for k, v in s.items()})
    tensors.update({"rng" if rank == 0 else f"rng.{rank}": rng for rank, rng in enumerate(rngs)})
    atomic_write(os.path.join(out, "checkpoint.safetensors"), lambda p: save_file(tensors, p))
    atomic_write(os.path.join(out, "checkpoint.json"),
                 lambda p: write_text(p, json.dumps(state, indent=1)))


def load_checkpoint(out, tuner, opt):
    with open(os.path.join(out, "checkpoint.json")) as f:
        state = json.load(f)
    tensors = load_file(os.path.join(out, "checkpoint.safetensors"))
    tuner.load_state_dict({k.removeprefix("tuner."): v for k, v in tensors.items()
                           if k.startswith("tuner.")})
    sd = opt.state_dict()
    for i in range(sum(len(g["params"]) for g in sd["param_groups"])):
        sd["state"][i] = {k.split(".", 2)[2]: v for k, v in tensors.items()
                          if k.startswith(f"opt.{i}.")}
    opt.load_state_dict(sd)
    # a run resumed on more processes than it was saved from: the new ones keep their own seeds
    rank = distributed.rank_and_size()[0]
    torch.set_rng_state(tensors.get("rng" if rank == 0 else f"rng.{rank}", torch.get_rng_state()))
    return state


def stop_on_ctrl_c():
    """A list that Ctrl-C appends to: train.py then saves a checkpoint and stops after the current
    step. A second Ctrl-C kills at once."""
    stop = []

    def on_sigint(signum, frame):
        stop.append(True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGINT, on_sigint)
    return stop


def identify_run(args, model_name, n_train):
    """The run key: what makes two runs the same run, as JSON stores it (tuples become lists)."""
    return json.loads(json.dumps({"task": args.task, "model": model_name, "method": args.method,
                                  "seed": args.seed, "lr": args.lr, "epochs": args.epochs,
                                  "batch_size": args.batch_size, "n_train": n_train,
                                  "holdout": args.holdout, **asdict(args.config)}))


def check_out_folder(args, run_key):
    """Refuse to mix two runs in one folder; with --resume, insist it is the same run."""
    ckpt = os.path.join(args.out, "checkpoint.json")
    if args.resume:
        if not os.path.exists(ckpt):
            raise UserError(f"nothing to resume in {args.out} (no checkpoint.json); drop --resume "
                            f"to start afresh")
        with open(ckpt) as f:
            saved = json.load(f)["run"]
        if saved != run_key:
            diff = {k: (saved.get(k), v) for k, v in run_key.items() if saved.get(k) != v}
            raise UserError(f"{args.out} holds a different run (saved vs now: {diff}); use the "
                            f"same flags to resume")
    elif os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        raise UserError(f"{args.out} already holds a run; pass --resume to continue it, "
                        f"--overwrite to replace it, or choose another --out")
    os.makedirs(args.out, exist_ok=True)


def start_or_resume(args, tuner, opt, run_key, total_steps):
    state = {"run": run_key, "step": 0, "history": [], "best": None, "zero_shot": None,
             "done": False}
    if args.resume:
        state = load_checkpoint(args.out, tuner, opt)
        if state["done"]:
            raise UserError(f"the run in {args.out} already finished; its adapter is "
                            f"{args.out}/adapter.safetensors")
        print(f"resuming at step {state['step']}/{total_steps}")
    return state
