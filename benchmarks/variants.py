"""The study's variants of LOPA (docs/study.md), kept apart from the paper's lines in lopa.py and
reached by the same flags as always, so every study record reproduces from its command:

    train.py --method lopa --combine 2sigmoid   Z = Z_S ⊙ 2σ(Z_I): starts at Z_S, not Z_S / 2
    train.py --method lopa --combine add        Z = Z_S + Z_I, a variant of the official code
    train.py --method lopa --encoder-norm l2    e scaled to unit length before the MLPs read it
    train.py --method lopa --encoder-lr LR      the encoder a trained copy of the model, at rate LR,
                                                as the published NLU code has it

`--method lopa` without them builds lopa.LOPA itself (build_lopa).
"""
import copy
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

from lopa import LOPA, LOPAConfig
from plumbing.cli import UserError, check_choice, option

COMBINE = {  # name: (the instance term t made from Z_I, Z from Z_S and t)
    "sigmoid": (torch.sigmoid, lambda z_s, t: z_s * t),        # the paper's: Z = Z_S ⊙ σ(Z_I)
    "2sigmoid": (torch.sigmoid, lambda z_s, t: 2 * z_s * t),   # Z = Z_S ⊙ 2σ(Z_I): starts at Z_S
    "add": (lambda z_i: z_i, lambda z_s, t: z_s + t),          # Z = Z_S + Z_I, an official variant
}


@dataclass
class LOPAVariantConfig(LOPAConfig):
    combine: str = option("sigmoid", "how Z_I enters Z: sigmoid (the paper's), 2sigmoid or add "
                          "(benchmarks/variants.py)")
    encoder_norm: str = option("none", "e as the MLPs see it: none, or l2 (unit length)")
    encoder_lr: float = option(0.0, "> 0: train a copy of the model as LOPA's encoder at this rate")

    def __post_init__(self):
        super().__post_init__()
        if self.encoder_lr < 0:
            raise UserError(f"LOPA needs encoder_lr >= 0; got {self.encoder_lr}")
        check_choice("combine", self.combine, COMBINE)
        check_choice("encoder_norm", self.encoder_norm, ("none", "l2"))


def build_lopa(model, config=LOPAVariantConfig(), encoder=None):
    """lopa.LOPA when every study field is at its default (the paper's method), else LOPAVariant."""
    paper = {f.name: getattr(config, f.name) for f in fields(LOPAConfig)}
    if asdict(config) == asdict(LOPAVariantConfig(**paper)):
        return LOPA(model, LOPAConfig(**paper), encoder)
    return LOPAVariant(model, config, encoder)


class LOPAVariant(LOPA):
    """LOPA with the study's switches. With a trained encoder (encoder_lr > 0) e changes as the
    encoder learns, so it is computed anew at every step, and the copy is saved with the adapter."""

    def __init__(self, model, config, encoder=None):
        trained = config.encoder_lr > 0
        super().__init__(model, config, copy.deepcopy(encoder or model) if trained else encoder)
        if trained:  # a registered module: trained by AdamW, saved in checkpoints
            self.encoder = self.encoder.requires_grad_(True)
            self.caches_encoder = False

    def own_parameters(self):  # Z_S and the MLPs, without a trained encoder's
        return [p for n, p in self.named_parameters() if not n.startswith("encoder.")]

    def trainable_parameters(self):  # the encoder's first, the order its clipped norm sums them in
        own = self.own_parameters()
        return own if self.caches_encoder else list(self.encoder.parameters()) + own

    def param_groups(self, lr):
        if self.caches_encoder:
            return super().param_groups(lr)
        return [{"params": self.own_parameters(), "base_lr": lr},
                {"params": list(self.encoder.parameters()), "base_lr": self.config.encoder_lr}]

    def instance_term(self, e):
        """t from e (B, h_enc): σ(Z_I) for the sigmoid gates, Z_I itself for add. (B, m, d)"""
        if self.config.encoder_norm == "l2":
            e = F.normalize(e, dim=-1)
        B, (m, r), d = e.size(0), (self.config.m, self.config.r), self.z_s.size(1)
        u = self.mlp_u(e).view(B, m, r)                               # (B, h_enc) -> (B, m, r)
        v = self.mlp_v(e).view(B, d, r)                               # (B, h_enc) -> (B, d, r)
        return COMBINE[self.config.combine][0](u @ v.transpose(1, 2))  # from Z_I: (B, m, d)

    def combine(self, t):
        return COMBINE[self.config.combine][1](self.z_s, t)          # -> (B, m, d)

    def prompt(self, ids, lengths, e=None):
        e = self.encode(ids, lengths) if e is None else e             # (B, h_enc)
        return self.combine(self.instance_term(e))


def as_variant(tuner):
    """A LOPA tuner as a LOPAVariant with the same tensors: diagnose.py and figures.py read the
    gate σ(Z_I) of any LOPA adapter through its instance_term()."""
    if isinstance(tuner, LOPAVariant):
        return tuner
    variant = LOPAVariant(tuner.model, LOPAVariantConfig(**asdict(tuner.config)), tuner.encoder)
    variant.load_state_dict(tuner.state_dict())
    return variant.train(tuner.training)
