"""Exercise 9: IDPG, the full-rank baseline, written by you: an MLP from e = Enc(x) to the whole
m x d prompt, with no Z_S and no rank limit (Wu et al. 2022; the paper compares with its S-IDPG).

    Z = MLP(e) reshaped (m, d)     MLP = Dropout -> Linear(h_enc, H) -> tanh -> Linear(H, m d)

    python exercises/idpg.py --task sst2 --model smollm2 --out runs/ex9-idpg   # any train.py flag
    python -m pytest tests/test_exercises.py --student -k idpg                 # checks your IDPG

Write IDPG.__init__ and IDPG.prompt below, before reading lopa.IDPG. lopa.InstanceTuner gives the
frozen encoder and encode(); lopa.mlp builds the MLP above with the official init; lopa.vocab_init
gives m token embeddings. The register() line makes the class `train.py --method my_idpg`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train  # noqa: E402
from lopa import IDPGConfig, InstanceTuner  # noqa: E402
from plumbing.methods import register  # noqa: E402


class IDPG(InstanceTuner):
    method = "my_idpg"

    def __init__(self, model, config=IDPGConfig(), encoder=None):
        """Exercise 9. After InstanceTuner's __init__ (it sets self.encoder: the frozen model
        itself unless `encoder` is given), build the MLP from h_enc = self.encoder.config.n_embd to
        m * d numbers (d = model.config.n_embd; config.m, config.hidden, config.dropout). Start its
        output layer's bias at m token embeddings, flattened: for e = 0 the prompt is then made of
        real tokens, where prompt tuning's starts."""
        super().__init__(model, config, encoder)
        raise NotImplementedError("exercise 9: IDPG.__init__() is yours to finish")

    def prompt(self, ids, lengths, e=None):
        """Exercise 9. (B, m, d): the MLP's output for e, reshaped. e is train.py's cached
        self.encode(ids, lengths), or None: then compute it."""
        raise NotImplementedError("exercise 9: IDPG.prompt() is yours to write")


register(IDPG, IDPGConfig, lr=1e-3)


def main(argv=None):
    return train.main([*(sys.argv[1:] if argv is None else argv), "--method", "my_idpg"])


if __name__ == "__main__":
    from plumbing.cli import cli
    cli(main)
