"""Exercise 8: LOPA with another encoder pooling. e = the mean of the frozen model's final hidden
states over the real tokens of x, instead of the hidden state at the last real token
(InstanceTuner.encode).

    e = (1 / n) Σ_{t < n} h_t      n = lengths: the right padding after position n - 1 never counts

    python exercises/mean_pool.py --task sst2 --model smollm2 --out runs/ex8-mean   # train.py flags
    python -m pytest tests/test_exercises.py --student -k mean_pool                 # checks it

Write mean_hidden() and MeanPoolLOPA.encode() below. The register() line makes the class a method
of train.py, `--method lopa_mean`, with LOPA's flags; train.py then fills its cache of e by calling
this class's encode once per example.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from lopa import LOPA, LOPAConfig  # noqa: E402
from plumbing.methods import register  # noqa: E402


@torch.no_grad()
def mean_hidden(model, ids, lengths):
    """Exercise 8. (B, d): row i's final hidden states, model(ids, return_hidden=True) of shape
    (B, T, d), averaged over its first lengths[i] positions only. ids (B, T) is right-padded."""
    raise NotImplementedError("exercise 8: mean_hidden() is yours to write")


class MeanPoolLOPA(LOPA):
    method = "lopa_mean"

    @torch.no_grad()
    def encode(self, ids, lengths):
        """Exercise 8. (B, h_enc): e for each input, pooled by mean_hidden over self.encoder, the
        frozen model that reads the input without a prompt."""
        raise NotImplementedError("exercise 8: MeanPoolLOPA.encode() is yours to write")


register(MeanPoolLOPA, LOPAConfig, lr=1e-3)


def main(argv=None):
    return train.main([*(sys.argv[1:] if argv is None else argv), "--method", "lopa_mean"])


if __name__ == "__main__":
    from plumbing.cli import cli
    cli(main)
