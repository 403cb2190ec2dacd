"""Resumable runs: a checkpoint holds everything train.py needs to continue exactly where it stopped
(the tuner, AdamW's moments, the RNG, the position, the history) in one file, written whole or not
at all; Ctrl-C and SIGTERM save one; one run at a time owns its folder; and the rules that keep two
different runs out of one folder.
"""
import contextlib
import json
import os
import signal
from dataclasses import asdict

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from plumbing import distributed
from plumbing.cli import UserError, atomic_write

CHECKPOINT = "checkpoint.safetensors"  # tensors, and the run's state as JSON in its metadata
LOCK = ".lock"                         # held by the process that trains in the folder
RUN_FILES = (CHECKPOINT, "checkpoint.json", "adapter.safetensors", "adapter.json",
             "encoder.safetensors", "metrics.jsonl")  # what a run writes (checkpoint.json: before)


def save_checkpoint(out, tuner, opt, state):
    """All a resumed run needs, in one safetensors file: tuner, AdamW moments, RNG, and the state
    (position, history, the run's flags) as JSON in its metadata. One file renamed into place is a
    checkpoint whole or absent, whenever a crash comes. Under torchrun every process must call it
    (they hand rank 0 their generators); rank 0 writes."""
    # each process draws its own dropout masks: keep every one's generator ("rng" is rank 0's)
    rngs = distributed.all_gather(torch.get_rng_state())
    if not distributed.is_main():
        return
    # state_dict, not named_parameters: a trained encoder's tied weights come under both their names
    tensors = {f"tuner.{k}": v.detach().cpu().clone() for k, v in tuner.state_dict().items()}
    for i, s in opt.state_dict()["state"].items():
        tensors.update({f"opt.{i}.{k}": v.cpu() for k, v in s.items()})
    tensors.update({"rng" if rank == 0 else f"rng.{rank}": rng for rank, rng in enumerate(rngs)})
    atomic_write(os.path.join(out, CHECKPOINT),
                 lambda p: save_file(tensors, p, metadata={"state": json.dumps(state)}))


def read_checkpoint(out, tensors=True):
    """(state, tensors) of the checkpoint in out (tensors None when not asked for: the state alone
    is read from the file's header); a damaged one is one UserError line."""
    path = os.path.join(out, CHECKPOINT)
    try:
        with safe_open(path, "pt") as f:
            state = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()} if tensors else None
        state["step"], state["history"]  # the keys every checkpoint has
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"the checkpoint {path} is damaged ({type(e).__name__}: {str(e)[:80]}); "
                        f"delete it and start afresh with --overwrite") from None
    return state, tensors


def load_checkpoint(out, tuner, opt):
    state, tensors = read_checkpoint(out)
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


def stop_on_signals():
    """A list that Ctrl-C (SIGINT) or SIGTERM (kill, docker stop, a scheduler's preemption) appends
    its signal number to: train.py then saves a checkpoint and stops after the current step. A
    second signal of the same kind stops at once."""
    stop = []

    def on_signal(signum, frame):
        stop.append(signum)
        signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM
                      else signal.default_int_handler)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    return stop


@contextlib.contextmanager
def own_folder(out, main=True):
    """Hold --out for one run: an advisory lock on out/.lock for the run's life, which the OS drops
    when the process ends, however it ends (so a killed run never leaves a stale lock). A second
    run on the folder is refused in one line. Under torchrun rank 0 (main) holds it."""
    make_folder(out)
    if not main:
        yield
        return
    try:
        import fcntl
    except ImportError:  # no advisory locks on this OS (Windows): one run per folder is up to you
        yield
        return
    with open(os.path.join(out, LOCK), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            raise UserError(f"{out} is in use by another run (process {f.read().strip() or '?'}); "
                            f"wait for it to end, or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        for name in os.listdir(out):  # what a crashed run of this folder left half-written
            if name.split(".tmp")[0] in RUN_FILES and ".tmp" in name:
                os.remove(os.path.join(out, name))
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def make_folder(out):
    try:
        os.makedirs(out, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {out} is a file, or lies under one; choose a folder") from None
    except OSError as e:
        raise UserError(f"cannot make the folder --out {out} ({e.strerror}); choose another") \
            from None
    if not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder; choose a folder")


def identify_run(args, model_name, n_train):
    """The run key: what makes two runs the same run, as JSON stores it (tuples become lists)."""
    return json.loads(json.dumps({"task": args.task, "model": model_name, "method": args.method,
                                  "seed": args.seed, "lr": args.lr, "epochs": args.epochs,
                                  "batch_size": args.batch_size, "n_train": n_train,
                                  "holdout": args.holdout, **asdict(args.config)}))


def check_out_folder(args, run_key):
    """Refuse to mix two runs in one folder; with --resume, insist it is the same run."""
    if args.resume:
        if not os.path.exists(os.path.join(args.out, CHECKPOINT)):
            raise UserError(f"nothing to resume in {args.out} (no {CHECKPOINT}); drop --resume "
                            f"to start afresh")
        saved = read_checkpoint(args.out, tensors=False)[0].get("run", {})
        if saved != run_key:
            diff = {k: (saved.get(k), v) for k, v in run_key.items() if saved.get(k) != v}
            raise UserError(f"{args.out} holds a different run (saved vs now: {diff}); use the "
                            f"same flags to resume")
    elif set(os.listdir(args.out)) - {LOCK} and not args.overwrite:
        raise UserError(f"{args.out} already holds a run; pass --resume to continue it, "
                        f"--overwrite to replace it, or choose another --out")
    elif args.overwrite:  # the old run's files go, so that nothing of it can be mistaken for this
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(args.out, name))


def resume(args, tuner, opt, total_steps):
    """The state of the checkpoint in --out, its tensors loaded into tuner and opt."""
    state = load_checkpoint(args.out, tuner, opt)
    if state["done"]:
        raise UserError(f"the run in {args.out} already finished; its adapter is "
                        f"{args.out}/adapter.safetensors")
    print(f"resuming at step {state['step']}/{total_steps}")
    return state
