"""Data-parallel training on PyTorch's own engine (torch.distributed), for torchrun:

    torchrun --nproc_per_node 4 train.py --task sst2 --max-train-examples all

Every process holds the frozen model, the same tuner (the same seed makes it) and the same batches
in the same order. Each takes its share of every batch, rows rank, rank + size, ... of it, and the
tuner's gradients are summed over the processes, each share's mean loss weighted by its size over
the batch's: so every process takes the step that one process takes on the whole batch, and
--batch-size stays the global batch. Evaluation and the encoder cache are shared out the same way
and gathered, so that every process holds every row. Only rank 0 prints and writes files.

Without torchrun, train.py gets World(): one process, whose methods add nothing. Dropout draws its
masks in each process, so two runs with dropout agree in distribution, not bit for bit.
"""
import os
import sys
import traceback

import torch
import torch.distributed as dist

from common import UserError


class World:
    """One process: every batch is all its own, and there is nothing to sum or gather."""
    rank, size = 0, 1

    @property
    def main(self):  # the process that prints and writes files
        return self.rank == 0

    def shares(self, batches):
        yield from batches

    def backward(self, loss_of, b, params):
        """loss_of(b), the mean loss over batch b; its gradients land in params' .grad."""
        loss = loss_of(b)
        loss.backward()
        return loss

    def any(self, flag):
        return bool(flag)

    def gather_rows(self, out, n):
        return out

    def all_gather(self, t):
        return [t]

    def own_rng(self, seed):
        pass


class Torchrun(World):
    """The processes torchrun started; this one is number `rank` of `size`."""

    def __init__(self, device):
        self.rank, self.size, self.device = dist.get_rank(), dist.get_world_size(), device

    def share(self, b):
        """This process's rows of batch b: rank, rank + size, ... (b's tensors are all (B, ...))"""
        return {k: v[self.rank::self.size] for k, v in b.items()}

    def shares(self, batches):
        # a batch smaller than the world leaves the last processes nothing
        return (mine for b in batches if len((mine := self.share(b))["index"]))

    def backward(self, loss_of, b, params):
        """The gradients of the mean loss over all of b, in every process: each process's share
        weighted by its size (its loss is then its sum over b's size), summed over processes in one
        all-reduce, with the loss. A process whose share is empty adds zeros."""
        mine = self.share(b)
        loss = torch.zeros((), device=self.device)
        if len(mine["index"]):
            loss = loss_of(mine) * (len(mine["index"]) / len(b["index"]))
            loss.backward()
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([g.flatten() for g in grads] + [loss.detach().float().view(1)])
        dist.all_reduce(flat)  # a sum
        for p, g in zip(params, flat[:-1].split([p.numel() for p in params])):
            p.grad = g.view_as(p)
        return flat[-1]

    def any(self, flag):
        """Whether any process's flag is set: Ctrl-C reaches each process at its own moment."""
        t = torch.tensor([float(bool(flag))], device=self.device)
        dist.all_reduce(t, dist.ReduceOp.MAX)
        return bool(t.item())

    def gather_rows(self, out, n):
        """out (n, d) holds this process's rows and zeros elsewhere, or is None where a split has
        fewer examples than there are processes: the sum over processes holds every row."""
        d = torch.tensor([0 if out is None else out.size(1)], device=self.device)
        dist.all_reduce(d, dist.ReduceOp.MAX)
        out = torch.zeros(n, int(d), device=self.device) if out is None else out
        dist.all_reduce(out)
        return out

    def all_gather(self, t):
        out = [torch.empty_like(t) for _ in range(self.size)]
        dist.all_gather(out, t)
        return out

    def own_rng(self, seed):
        """Dropout draws its masks from each process's own generator; rank 0 keeps the seed's."""
        if self.rank:
            torch.manual_seed(seed * 1000 + self.rank)


def setup(device):
    """(World, device). Under torchrun (which sets RANK), join its processes: CPUs talk through
    gloo, GPUs through NCCL, and process LOCAL_RANK takes GPU LOCAL_RANK. Other processes than
    rank 0 write to nowhere from then on, tracebacks excepted."""
    if "RANK" not in os.environ:
        return World(), device
    if device not in ("cpu", "cuda"):
        raise UserError(f"torchrun trains on CPUs or CUDA GPUs, not on {device}")
    if device == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():  # train.main may run more than once in a process (tests do)
        dist.init_process_group("gloo" if device == "cpu" else "cpu:gloo,cuda:nccl")
    world = Torchrun(device)
    if not world.main and sys.stdout is sys.__stdout__:
        sys.stdout = sys.stderr = open(os.devnull, "w")
        sys.excepthook = lambda *e: traceback.print_exception(*e, file=sys.__stderr__)
    return world, device
