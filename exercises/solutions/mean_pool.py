"""LOPA with another encoder pooling: e = the mean of the frozen model's final hidden states over
the real tokens of x, instead of the hidden state at the last real token (InstanceTuner.encode).

    e = (1 / n) Σ_{t < n} h_t      n = lengths: the right padding after position n - 1 never counts

A causal model's last real token has already read the whole input, while early positions have read
only a prefix; whether averaging them helps the prompt generator is the exercise's question.

    python exercises/solutions/mean_pool.py --task sst2    # train.py --method lopa_mean, its flags

Registering the class makes it a method of train.py: its flags, its own learning rate, and the cache
of e, which train.py fills by calling this class's encode once per example. The adapter is saved as
method "lopa_mean"; predict.py, which does not import this file, refuses it rather than misread it.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import train  # noqa: E402
from lopa import LOPA, LOPAConfig  # noqa: E402
from plumbing.methods import register  # noqa: E402


@torch.no_grad()
def mean_hidden(model, ids, lengths):
    """(B, d): each row's final hidden states averaged over its first lengths[i] positions."""
    h = model(ids, return_hidden=True)                                          # (B, T, d)
    # (B, T), False on the pads
    real = torch.arange(ids.size(1), device=ids.device) < lengths[:, None]
    return (h * real[..., None].to(h.dtype)).sum(1) / lengths[:, None]  # (B, T, d) -> (B, d)


class MeanPoolLOPA(LOPA):
    method = "lopa_mean"

    @torch.no_grad()
    def encode(self, ids, lengths):
        return mean_hidden(self.encoder, ids, lengths)                          # (B, h_enc)


register(MeanPoolLOPA, LOPAConfig, lr=1e-3)


def main(argv=None):
    return train.main([*(sys.argv[1:] if argv is None else argv), "--method", "lopa_mean"])


if __name__ == "__main__":
    from plumbing.cli import cli
    cli(main)
