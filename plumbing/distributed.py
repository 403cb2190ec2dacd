"""Data-parallel training on PyTorch's own engine (torch.distributed), for torchrun:

    torchrun --nproc_per_node 4 train.py --task sst2 --max-train-examples all

Every process holds the frozen model, the same tuner (the same seed makes it) and the same batches
in the same order. Each takes its share of every batch, rows rank, rank + size, ... of it, and
weights its mean loss by its share's size over the batch's; after loss.backward(),
sum_gradients() adds the processes' gradients up (one all-reduce): so every process takes the step
that one process takes on the whole batch, and --batch-size stays the global batch. Evaluation and
the encoder cache are shared out the same way and gathered, so that every process holds every row.
Only rank 0 prints and writes files.

Without torchrun every function here is the identity: one process, whose share is the whole batch.
Dropout draws its masks in each process, so two runs with dropout agree in distribution, not bit for
bit.
"""
import os
import sys
import traceback

import torch
import torch.distributed as dist

from plumbing.cli import UserError


def setup(device):
    """The device to run on. Under torchrun (which sets RANK), join its processes: CPUs talk through
    gloo, GPUs through NCCL, and process LOCAL_RANK takes GPU LOCAL_RANK. Other processes than
    rank 0 write to nowhere from then on, tracebacks excepted."""
    if "RANK" not in os.environ:
        return device
    if device not in ("cpu", "cuda"):
        raise UserError(f"torchrun trains on CPUs or CUDA GPUs, not on {device}")
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # train.main may run more than once in a process (tests do)
        dist.init_process_group("gloo" if device == "cpu" else "cpu:gloo,cuda:nccl")
    if dist.get_rank() and sys.stdout is sys.__stdout__:
        sys.stdout = sys.stderr = open(os.devnull, "w")
        sys.excepthook = lambda *e: traceback.print_exception(*e, file=sys.__stderr__)
    return device


def rank_and_size():
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main():  # the process that prints and writes files
    return rank_and_size()[0] == 0


def my_share(b):
    """This process's rows of batch b: rank, rank + size, ... (b's tensors are all (B, ...))."""
    rank, size = rank_and_size()
    return b if size == 1 else {k: v[rank::size] for k, v in b.items()}


def my_shares(batches):
    # a batch smaller than the world leaves the last processes nothing
    return (mine for b in batches if len((mine := my_share(b))["index"]))


def sum_gradients(params, loss):
    """After loss.backward() in every process: each parameter's .grad and the loss become their sums
    over the processes, in one all-reduce. A process whose share was empty adds zeros."""
    if not dist.is_initialized():
        return loss
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    flat = torch.cat([g.flatten() for g in grads] + [loss.detach().float().view(1)])
    dist.all_reduce(flat)  # a sum
    for p, g in zip(params, flat[:-1].split([p.numel() for p in params])):
        p.grad = g.view_as(p)
    return flat[-1]


def any_process(flag, device):
    """Whether any process's flag is set: Ctrl-C reaches each process at its own moment."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([float(bool(flag))], device=device)
    dist.all_reduce(t, dist.ReduceOp.MAX)
    return bool(t.item())


def gather_rows(out, n, device):
    """out (n, d) holds this process's rows and zeros elsewhere, or is None where a split has fewer
    examples than there are processes: the sum over processes holds every row."""
    if not dist.is_initialized():
        return out
    d = torch.tensor([0 if out is None else out.size(1)], device=device)
    dist.all_reduce(d, dist.ReduceOp.MAX)
    out = torch.zeros(n, int(d), device=device) if out is None else out
    dist.all_reduce(out)
    return out


def all_gather(t):
    """[t of process 0, t of process 1, ...]"""
    if not dist.is_initialized():
        return [t]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def own_rng(seed):
    """Dropout draws its masks from each process's own generator; rank 0 keeps the seed's."""
    rank = rank_and_size()[0]
    if rank:
        torch.manual_seed(seed * 1000 + rank)
