"""LOPA with another encoder pooling: e = the mean of the frozen model's final hidden states over the real
tokens of x, instead of the hidden state at the last real token (lopa.LOPA.encode).

    e = (1 / n) Σ_{t < n} h_t          n = lengths, so the right padding after position n - 1 never counts

A causal model's last real token has already read the whole input, while early positions have read only
a prefix; whether averaging them helps the prompt generator is the exercise's question.

    python exercises/mean_pool.py --task sst2     # train.py's loop and flags

train.py hands every LOPA its cached last-token e; MeanPoolLOPA ignores it and pools each batch itself. The
adapter is saved as method "lopa_mean", which predict.py does not know: it refuses the adapter instead of
reading it with the wrong pooling.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from exercises.in_place_of_lopa import train_in_place_of_lopa  # noqa: E402
from lopa import LOPA  # noqa: E402


@torch.no_grad()
def mean_hidden(model, ids, lengths):
    """(B, d): each row's final hidden states averaged over its first lengths[i] positions."""
    h = model(ids, return_hidden=True)                                          # (B, T, d)
    real = torch.arange(ids.size(1), device=ids.device) < lengths[:, None]      # (B, T), False on the pads
    return (h * real[..., None].to(h.dtype)).sum(1) / lengths[:, None]          # (B, T, d) -> (B, d)


class MeanPoolLOPA(LOPA):
    method = "lopa_mean"

    @torch.no_grad()
    def encode(self, ids, lengths):
        return mean_hidden(self.encoder, ids, lengths)                          # (B, h_enc)

    def prompt(self, ids, lengths, enc=None):
        # A cached e from train.py is LOPA's last-token vector: ignore it and pool here.
        return super().prompt(ids, lengths, None)


def main(argv=None):
    return train_in_place_of_lopa("lopa_mean", MeanPoolLOPA, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    from common import cli
    cli(main)
