"""IDPG, the full-rank baseline in LOPA's paper: an MLP maps the encoder vector e to the whole soft prompt.

    e = Enc(x)                    encode()      (B, h_enc)   the same frozen encoder as LOPA's
    Z = MLP(e) reshaped (m, d)    self.mlp      (B, m, d)    all of Z depends on x: no Z_S, no rank limit

with MLP = Dropout -> Linear(h_enc, H) -> tanh -> Linear(H, m d), as lopa.mlp builds it: the generator of
IDPG (Wu et al. 2022, "IDPG: An Instance-Dependent Prompt Generation Method") in its plain one-MLP form.
Trainable parameters:

    (h_enc H + H) + (H m d + m d)     against LOPA's  m d + 2(h_enc H + H) + (H m r + m r) + (H d r + d r)

    python exercises/idpg.py --task sst2          # train.py's loop and flags (--m, --hidden, --lr, ...)
"""
import os
import sys
from dataclasses import dataclass

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import UserError  # noqa: E402
from exercises.in_place_of_lopa import train_in_place_of_lopa  # noqa: E402
from lopa import Tuner, last_hidden, mlp, vocab_init  # noqa: E402


@dataclass
class IDPGConfig:
    m: int = 10                # number of virtual tokens
    hidden: int = 256          # H, the width of the generator
    dropout: float = 0.1       # on the encoder vector e, as in LOPA

    def __post_init__(self):
        if self.m < 1 or self.hidden < 1 or not 0 <= self.dropout < 1:
            raise UserError(f"IDPG needs m >= 1, hidden >= 1, 0 <= dropout < 1; "
                            f"got {self.m}, {self.hidden}, {self.dropout}")


class IDPG(Tuner):
    """Z = MLP(e): one full-rank (m, d) prompt per input."""
    method = "idpg"

    def __init__(self, model, config=IDPGConfig(), encoder=None):
        super().__init__(model, config)
        self.__dict__["encoder"] = (encoder or model).requires_grad_(False)
        d, h_enc = model.config.n_embd, self.encoder.config.n_embd
        self.mlp = mlp(h_enc, config.hidden, config.m * d, config.dropout)
        # The output bias is the prompt for e = 0; starting it at real token embeddings puts the first prompts
        # where LOPA's and prompt tuning's start: in the input space the frozen model knows.
        self.mlp[3].bias = nn.Parameter(vocab_init(model, config.m).flatten())  # (m, d) -> (m d,)

    @torch.no_grad()
    def encode(self, ids, lengths):
        return last_hidden(self.encoder, ids, lengths)                      # (B, h_enc), as LOPA.encode

    def prompt(self, ids, lengths, enc=None):
        e = self.encode(ids, lengths) if enc is None else enc               # (B, h_enc)
        return self.mlp(e).view(e.size(0), self.config.m, -1)               # (B, m d) -> (B, m, d)


def closed_form_idpg(d, h_enc, m=10, H=256):
    return (h_enc * H + H) + (H * m * d + m * d)


def main(argv=None):
    # train.py's cached e (the frozen model's last-token state) is exactly IDPG's e: the same encoder.
    def make(model, config):  # config: the LOPAConfig of --m, --r, --hidden, --combine; IDPG uses m and hidden
        return IDPG(model, IDPGConfig(m=config.m, hidden=config.hidden, dropout=config.dropout))
    return train_in_place_of_lopa("idpg", make, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    from common import cli
    cli(main)
