"""Started by tests/test_distributed.py under torchrun: train.main for each run of the JSON list
[[argv, stop_at], ...] in argv[1], in these same processes. A run with stop_at > 0 is stopped the
way Ctrl-C stops it, with SIGINT reaching rank 1 alone just before step stop_at."""
import json
import os
import signal
import sys

import torch.distributed as dist

import train


def main(runs):
    real_lr_at = train.lr_at
    for argv, stop_at in runs:
        sent = []

        def lr_at(step, lr, warmup):
            if stop_at and step == stop_at and dist.get_rank() == 1 and not sent:
                sent.append(os.kill(os.getpid(), signal.SIGINT))
            return real_lr_at(step, lr, warmup)
        train.lr_at = lr_at
        code = train.main(argv)
        assert code == (130 if stop_at else 0), (argv, code)
        dist.barrier()  # rank 0 has written every file before the next run reads them


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
    dist.destroy_process_group()
