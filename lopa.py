"""LOPA, Low-rank Prompt Adaptation (Jain et al., "Prompt Tuning Strikes Back", NeurIPS 2024), and
the baselines it is measured against: prompt tuning (Lester et al. 2021), IDPG (Wu et al. 2022) and
LoRA (Hu et al. 2022).

LOPA prepends to the input of a frozen model a soft prompt Z that depends on the input x:

    e   = Enc(x)                  encode()            (B, h_enc)  frozen encoder, last real token
    u   = MLP_u(e) -> (m, r)      self.mlp_u           (B, m, r)
    v   = MLP_v(e) -> (d, r)      self.mlp_v           (B, d, r)
    Z_I = u vᵀ                    z_i                  (B, m, d)   instance-specific, rank r
    Z   = Z_S ⊙ σ(Z_I)            self.z_s * ...       (B, m, d)   Z_S is task-shared, (m, d)
    X   = [Z ; E(x)]              last_hidden()        (B, m + T, d)

with MLP = Dropout -> Linear(h_enc, H) -> tanh -> Linear(H, out). Trainable: Z_S, MLP_u, MLP_v.
Prompt tuning is Z = Z_S alone. Both only change the input, so one frozen model on a server can
serve every user's task; LoRA instead changes the server's weights.

Every tuner has the same small interface: `prompt(ids, lengths, e=None)` returns the (B, m, d)
soft prompt (None for LoRA), `trainable_parameters()` what AdamW trains. plumbing/adapters.py saves
them; plumbing/methods.py makes each a `train.py --method` with its default learning rate.
`--method lopa` builds the LOPA below; only a study flag (--combine, --encoder-norm, --encoder-lr)
makes it build benchmarks/variants.py's subclass instead.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from plumbing.cli import UserError, check_choice, option


def last_hidden(model, ids, lengths, prompt=None):
    """Final hidden state at each row's last real token (B, d), behind an optional soft prompt:
    one per row (B, m, d), or one for all (m, d). Batches are right-padded, so that token sits at
    m + lengths - 1, never at position -1. The model's speed paths compute only what is read."""
    if prompt is None:
        return model.hidden_at(model.embed(ids), lengths - 1)                   # (B, d)
    prompt = prompt.to(model.lm_head.weight.dtype)  # float32 joins a bfloat16 model's dtype
    if prompt.dim() == 2:  # every row's prompt: the model computes it once, not B times
        return model.hidden_at_behind_prefix(ids, prompt, lengths - 1)          # (B, d)
    x = model.embed(ids)                                              # (B, T, d)
    x = torch.cat([prompt, x], dim=1)                                # X = [Z ; E(x)]: (B, m+T, d)
    return model.hidden_at(x, prompt.size(1) + lengths - 1)           # (B, d)


def label_logits(model, hidden, label_ids):
    """Score only the label words, not the vocabulary: (B, d) -> (B, n_labels), in float32."""
    return (hidden @ model.lm_head.weight[label_ids].T).float()


def vocab_init(model, m):
    # Real token embeddings (PEFT's SAMPLE_VOCAB): a start in the input space the model knows.
    rows = torch.randint(0, model.config.vocab_size, (m,))
    return model.embed(rows.to(model.lm_head.weight.device)).detach().float().clone()  # (m, d)


def init_prompt(model, m, init):
    """Z_S's start: "vocab" (above) or "random", N(0, 1) as the paper's code starts it."""
    if init == "random":
        return torch.randn(m, model.config.n_embd, device=model.lm_head.weight.device)  # (m, d)
    return vocab_init(model, m)


class Tuner(nn.Module):
    """Common plumbing. The frozen model is kept out of the module tree (a plain attribute in
    __dict__), so parameters(), state_dict() and the saved adapter hold the tuner's tensors only."""
    method = None            # the name that train.py's --method and adapter.json know it by
    caches_encoder = False   # True: e = Enc(x) never changes, so train.py computes it once

    def __init__(self, model, config):
        super().__init__()
        self.__dict__["model"] = model.requires_grad_(False)
        self.config = config

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self, lr):
        """AdamW's parameter groups; "base_lr" is each group's rate after warm-up."""
        return [{"params": self.trainable_parameters(), "base_lr": lr}]

    def prompt(self, ids, lengths, e=None):
        return None

    def forward(self, ids, lengths, e=None):
        return last_hidden(self.model, ids, lengths, self.prompt(ids, lengths, e))  # (B, d)


# ----------------------------------------------------------------------------- prompt tuning

@dataclass
class PromptConfig:
    m: int = option(10, "number of virtual tokens prepended to the input")
    init: str = option("vocab", "Z_S's start: vocab (token embeddings) or random (N(0, 1))")

    def __post_init__(self):
        if self.m < 1:
            raise UserError(f"prompt length m must be >= 1, got {self.m}")
        check_choice("init", self.init, ("vocab", "random"))


class PromptTuning(Tuner):
    """Z = Z_S: one prompt shared by every input of the task."""
    method = "prompt"

    def __init__(self, model, config=PromptConfig()):
        super().__init__(model, config)
        self.z_s = nn.Parameter(init_prompt(model, config.m, config.init))  # (m, d)

    def prompt(self, ids, lengths, e=None):
        return self.z_s.expand(ids.size(0), -1, -1)                   # (m, d) -> (B, m, d)

    def forward(self, ids, lengths, e=None):  # Z_S is every row's: the model computes it once
        return last_hidden(self.model, ids, lengths, self.z_s)        # (B, d)


# ----------------------------------------------------------------------------- prompts made from e

class InstanceTuner(Tuner):
    """A tuner whose prompt is made from e = Enc(x), one vector per input (LOPA, IDPG). The encoder
    is frozen: by default the foundation model itself, read without a prompt."""
    caches_encoder = True

    def __init__(self, model, config, encoder=None):
        super().__init__(model, config)
        self.__dict__["encoder"] = (encoder or model).requires_grad_(False)  # not saved either

    def encode(self, ids, lengths):
        # A frozen encoder's e depends on the input alone: train.py computes it once per example for
        # all epochs, and no graph reaches the encoder. (benchmarks/variants.py can train one.)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.caches_encoder):
            return last_hidden(self.encoder, ids, lengths)            # (B, h_enc)


def mlp(h_enc, H, out, p):
    net = nn.Sequential(nn.Dropout(p), nn.Linear(h_enc, H), nn.Tanh(), nn.Linear(H, out))
    for layer in (net[1], net[3]):  # the official code's init: N(0, 0.02) weights, zero biases
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    return net


@dataclass
class LOPAConfig:
    m: int = option(10, "number of virtual tokens")
    r: int = option(4, "rank of LOPA's instance-specific part Z_I = u vᵀ")
    hidden: int = option(256, "H, the width of the MLPs that read e")
    dropout: float = option(0.1, "dropout on the encoder vector e, the MLPs' only regulariser")
    init: str = option("vocab", "Z_S's start: vocab (token embeddings) or random (N(0, 1))")

    def __post_init__(self):
        for name in ("m", "r", "hidden"):
            if getattr(self, name) < 1:
                raise UserError(f"LOPA's {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"LOPA needs 0 <= dropout < 1; got {self.dropout}")
        check_choice("init", self.init, ("vocab", "random"))


class LOPA(InstanceTuner):
    """Z = Z_S ⊙ σ(u vᵀ), u and v made from e: the paper's method, line for line."""
    method = "lopa"

    def __init__(self, model, config=LOPAConfig(), encoder=None):
        super().__init__(model, config, encoder)
        c, d, h_enc = config, model.config.n_embd, self.encoder.config.n_embd
        self.z_s = nn.Parameter(init_prompt(model, c.m, c.init))      # (m, d)
        self.mlp_u = mlp(h_enc, c.hidden, c.m * c.r, c.dropout)
        self.mlp_v = mlp(h_enc, c.hidden, d * c.r, c.dropout)

    def prompt(self, ids, lengths, e=None):
        e = self.encode(ids, lengths) if e is None else e             # (B, h_enc)
        B, (m, r), d = e.size(0), (self.config.m, self.config.r), self.z_s.size(1)
        u = self.mlp_u(e).view(B, m, r)                               # (B, h_enc) -> (B, m, r)
        v = self.mlp_v(e).view(B, d, r)                               # (B, h_enc) -> (B, d, r)
        z_i = u @ v.transpose(1, 2)                                   # (B, m, r) @ (B, r, d)
        return self.z_s * torch.sigmoid(z_i)                          # Z_S ⊙ σ(Z_I): (B, m, d)


@dataclass
class IDPGConfig:
    m: int = option(10, "number of virtual tokens")
    hidden: int = option(256, "H, the width of the MLPs that read e")
    dropout: float = option(0.1, "dropout on the encoder vector e, the MLPs' only regulariser")

    def __post_init__(self):
        if self.m < 1 or self.hidden < 1 or not 0 <= self.dropout < 1:
            raise UserError(f"IDPG needs m >= 1, hidden >= 1, 0 <= dropout < 1; "
                            f"got {self.m}, {self.hidden}, {self.dropout}")


class IDPG(InstanceTuner):
    """IDPG, the paper's instance-dependent baseline: Z = MLP(e) reshaped (m, d), one full-rank
    prompt per input, no Z_S and no rank limit. Trainable: (h_enc H + H) + (H m d + m d)."""
    method = "idpg"

    def __init__(self, model, config=IDPGConfig(), encoder=None):
        super().__init__(model, config, encoder)
        d, h_enc = model.config.n_embd, self.encoder.config.n_embd
        self.mlp = mlp(h_enc, config.hidden, config.m * d, config.dropout)
        # The output bias is the prompt for e = 0: it starts where prompt tuning's does (vocab).
        self.mlp[3].bias = nn.Parameter(vocab_init(model, config.m).flatten())  # (m d,)

    def prompt(self, ids, lengths, e=None):
        e = self.encode(ids, lengths) if e is None else e             # (B, h_enc)
        return self.mlp(e).view(e.size(0), self.config.m, -1)         # (B, m d) -> (B, m, d)


# ----------------------------------------------------------------------------- LoRA

@dataclass
class LoRAConfig:
    r: int = option(16, "LoRA's rank of the weight update B A", flag="--lora-r")
    alpha: float = option(32.0, "LoRA's update is scaled by alpha / r", flag="--lora-alpha")
    dropout: float = option(0.1, "LoRA's dropout on the adapter's input", flag="--lora-dropout")
    targets: tuple = option((), "the layers to adapt; () = the model's lora_targets", flag=None)

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise UserError(f"LoRA needs r >= 1, alpha > 0, 0 <= dropout < 1; "
                            f"got {self.r}, {self.alpha}, {self.dropout}")
        self.targets = tuple(self.targets)


class LoRA(Tuner):
    """h = W x + (alpha / r) B A x on each target layer. B = 0 at init, so step 0 is the base model.
    The server-side adapter LOPA argues against: it lives inside the model (forward hooks here), so
    a server keeps every task's A and B and routes each row through its own. merge() bakes it in."""
    method = "lora"

    def __init__(self, model, config=LoRAConfig()):
        super().__init__(model, config)
        targets = config.targets or model.lora_targets
        self.layers = {n.replace(".", "_"): mod  # "." cannot be in a ParameterDict's key
                       for n, mod in model.named_modules() if n.rsplit(".", 1)[-1] in targets}
        if not self.layers:
            raise UserError(f"LoRA found no layer named {targets} in the model")
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for key, lin in self.layers.items():
            self.A[key] = nn.Parameter(torch.empty(config.r, lin.in_features))      # (r, in)
            nn.init.kaiming_uniform_(self.A[key], a=math.sqrt(5))               # as nn.Linear, PEFT
            self.B[key] = nn.Parameter(torch.zeros(lin.out_features, config.r))     # (out, r)
        self.drop, self.scale = nn.Dropout(config.dropout), config.alpha / config.r
        self.hooks = [lin.register_forward_hook(self._hook(key))
                      for key, lin in self.layers.items()]

    def _hook(self, key):
        def add_update(lin, inputs, out):                             # (.., in) -> (.., out)
            return out + self.scale * (self.drop(inputs[0]) @ self.A[key].T @ self.B[key].T)
        return add_update

    @torch.no_grad()
    def merge(self):
        """W <- W + (alpha / r) B A in place; the hooks go: inference costs the base model's."""
        for (key, lin), h in zip(self.layers.items(), self.hooks):
            lin.weight += self.scale * self.B[key] @ self.A[key]      # (out, r) @ (r, in)
            h.remove()
        self.hooks = []


# ----------------------------------------------------------------------------- counting parameters

def closed_form(method, d, h_enc, m=10, r=4, H=256, lora_r=16, lora_shapes=()):
    """Trainable parameters by formula; lora_shapes lists (in, out) of every adapted layer."""
    if method == "prompt":
        return m * d
    if method == "lopa":
        return m * d + 2 * (h_enc * H + H) + (H * m * r + m * r) + (H * d * r + d * r)
    if method == "idpg":
        return (h_enc * H + H) + (H * m * d + m * d)
    return sum(lora_r * (i + o) for i, o in lora_shapes)


if __name__ == "__main__":
    from llama import Llama, LlamaConfig
    from model import GPT, GPTConfig
    with torch.device("meta"):  # shapes without memory
        models = {"GPT-2 small (d = 768)": GPT(GPTConfig()),
                  "RoBERTa-large shape (d = 1024)": Llama(LlamaConfig(
                      n_embd=1024, n_layer=24, n_head=16, n_kv_head=16, n_inner=4096,
                      vocab_size=50265))}
    print(f"{'model':32s} {'method':8s} {'counted':>11s} {'formula':>11s}   "
          f"(m = 10, r = 4, H = 256; LoRA r = 16)")
    for label, model in models.items():
        d = model.config.n_embd
        for tuner in (PromptTuning(model), LOPA(model), LoRA(model), IDPG(model)):
            counted = sum(p.numel() for p in tuner.trainable_parameters())
            io = [(x.in_features, x.out_features) for x in getattr(tuner, "layers", {}).values()]
            formula = closed_form(tuner.method, d, d, lora_shapes=io)
            print(f"{label:32s} {tuner.method:8s} {counted:11,d} {formula:11,d}")
