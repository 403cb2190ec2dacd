"""LOPA, Low-rank Prompt Adaptation (Jain et al., "Prompt Tuning Strikes Back", NeurIPS 2024),
and the two baselines it is measured against: prompt tuning (Lester et al. 2021) and LoRA (Hu et al. 2022).

LOPA prepends to the input of a frozen model a soft prompt Z that depends on the input x:

    e   = Enc(x)                  encode()            (B, h_enc)  frozen encoder, last real token
    u   = MLP_u(e) -> (m, r)      self.mlp_u           (B, m, r)
    v   = MLP_v(e) -> (d, r)      self.mlp_v           (B, d, r)
    Z_I = u vᵀ                    z_i                  (B, m, d)   instance-specific, rank r
    Z   = Z_S ⊙ σ(Z_I)            self.z_s, z          (B, m, d)   Z_S is task-shared, (m, d)
    X   = [Z ; E(x)]              prompt_and_embed()   (B, m + T, d)

with MLP = Dropout -> Linear(h_enc, H) -> tanh -> Linear(H, out). Trainable: Z_S, MLP_u, MLP_v.
Prompt tuning is Z = Z_S alone. Both only change the input, so one frozen model on a server can
serve every user's task; LoRA instead changes the server's weights.

Every tuner here has the same small interface: `prompt(ids, lengths, enc=None)` returns the
(B, m, d) soft prompt (None for LoRA), `trainable_parameters()`, and `save_adapter`/`load_adapter`.
"""
import json
import math
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from common import UserError, atomic_write, write_text


def last_hidden(model, ids, lengths, prompt=None):
    """Final hidden state at each row's last real token, with an optional soft prompt in front.
    Batches are right-padded, so that token sits at m + lengths - 1, never at position -1."""
    x = model.embed(ids)                                              # (B, T, d)
    m = 0 if prompt is None else prompt.size(1)
    if prompt is not None:
        x = torch.cat([prompt.to(x.dtype), x], dim=1)                 # (B, m, d) ; (B, T, d) -> (B, m + T, d)
    h = model(embeds=x, return_hidden=True)                           # (B, m + T, d)
    return h[torch.arange(h.size(0), device=h.device), m + lengths - 1]  # (B, d)


def label_logits(model, hidden, label_ids):
    """Score only the label words: (B, d) @ (d, n_labels) -> (B, n_labels), not the full vocabulary."""
    return hidden @ model.lm_head.weight[label_ids].T


def vocab_init(model, m):
    # Start from real token embeddings (PEFT's SAMPLE_VOCAB): the prompt begins inside the region of
    # input space the frozen model was trained on, instead of noise it has never seen.
    rows = torch.randint(0, model.config.vocab_size, (m,))
    return model.embed(rows.to(model.lm_head.weight.device)).detach().clone()  # (m, d)


def init_prompt(model, m, init):
    """Z_S's start: "vocab" (above) or "random", N(0, 1) as the paper's code starts it."""
    if init == "random":
        return torch.randn(m, model.config.n_embd, device=model.lm_head.weight.device)  # (m, d)
    return vocab_init(model, m)


def check_init(init):
    if init not in ("vocab", "random"):
        raise UserError(f"init must be 'vocab' or 'random', got {init!r}")


class Tuner(nn.Module):
    """Common plumbing. The frozen model is kept out of the module tree (plain attribute in __dict__),
    so parameters(), state_dict() and the saved adapter hold the tuner's own tensors only."""
    method = None

    def __init__(self, model, config):
        super().__init__()
        self.__dict__["model"] = model.requires_grad_(False)
        self.config = config

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def prompt(self, ids, lengths, enc=None):
        return None

    def forward(self, ids, lengths, enc=None):
        return last_hidden(self.model, ids, lengths, self.prompt(ids, lengths, enc))  # (B, d)


# ----------------------------------------------------------------------------- prompt tuning

@dataclass
class PromptConfig:
    m: int = 10            # number of virtual tokens prepended to the input
    init: str = "vocab"    # Z_S's start: "vocab" (token embeddings) or "random" (N(0, 1), the paper's)

    def __post_init__(self):
        if self.m < 1:
            raise UserError(f"prompt length m must be >= 1, got {self.m}")
        check_init(self.init)


class PromptTuning(Tuner):
    """Z = Z_S: one prompt shared by every input of the task."""
    method = "prompt"

    def __init__(self, model, config=PromptConfig()):
        super().__init__(model, config)
        self.z_s = nn.Parameter(init_prompt(model, config.m, config.init))  # (m, d)

    def prompt(self, ids, lengths, enc=None):
        return self.z_s.expand(ids.size(0), -1, -1)                   # (m, d) -> (B, m, d)


# ----------------------------------------------------------------------------- LOPA

@dataclass
class LOPAConfig:
    m: int = 10                # number of virtual tokens
    r: int = 4                 # rank of the instance-specific part Z_I = u vᵀ
    hidden: int = 256          # H, the width of MLP_u and MLP_v
    dropout: float = 0.1       # on the encoder vector e, the MLPs' only regulariser
    combine: str = "sigmoid"   # how Z_I enters Z: see COMBINE
    init: str = "vocab"        # Z_S's start: "vocab" (token embeddings) or "random" (N(0, 1))
    encoder_norm: str = "none"  # e as the MLPs see it: "none", or "l2" (unit length, as the codegen code)

    def __post_init__(self):
        for name in ("m", "r", "hidden"):
            if getattr(self, name) < 1:
                raise UserError(f"LOPA's {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.combine not in COMBINE:
            raise UserError(f"combine must be one of {', '.join(COMBINE)}; got {self.combine!r}")
        check_init(self.init)
        if self.encoder_norm not in ("none", "l2"):
            raise UserError(f"encoder_norm must be 'none' or 'l2', got {self.encoder_norm!r}")


COMBINE = {  # name: (the instance term t made from Z_I, Z from Z_S and t)
    "sigmoid": (torch.sigmoid, lambda z_s, t: z_s * t),              # the paper's: Z = Z_S ⊙ σ(Z_I)
    "2sigmoid": (torch.sigmoid, lambda z_s, t: 2 * z_s * t),         # Z = Z_S ⊙ 2σ(Z_I): starts at Z_S
    "add": (lambda z_i: z_i, lambda z_s, t: z_s + t),                # Z = Z_S + Z_I, an official variant
}


def mlp(h_enc, H, out, p):
    net = nn.Sequential(nn.Dropout(p), nn.Linear(h_enc, H), nn.Tanh(), nn.Linear(H, out))
    for layer in (net[1], net[3]):  # the official code's init: N(0, 0.02) weights, zero biases
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)
    return net


class InstanceTuner(Tuner):
    """A tuner whose prompt is made from e = Enc(x), one vector per input (LOPA, IDPG)."""

    def __init__(self, model, config, encoder=None):
        super().__init__(model, config)
        # The encoder is frozen too: by default the foundation model itself (read without the prompt).
        self.__dict__["encoder"] = (encoder or model).requires_grad_(False)

    @torch.no_grad()
    def encode(self, ids, lengths):
        # e = Enc(x) depends on the input alone, never on trainable parameters, and the encoder is
        # frozen: the same example always gives the same e. So the trainer computes it once per
        # example and reuses it every epoch, and no graph (nor gradient) ever reaches the encoder.
        return last_hidden(self.encoder, ids, lengths)                # (B, h_enc)


class LOPA(InstanceTuner):
    method = "lopa"

    def __init__(self, model, config=LOPAConfig(), encoder=None):
        super().__init__(model, config, encoder)
        c, d, h_enc = config, model.config.n_embd, self.encoder.config.n_embd
        self.z_s = nn.Parameter(init_prompt(model, c.m, c.init))      # (m, d)
        self.mlp_u = mlp(h_enc, c.hidden, c.m * c.r, c.dropout)
        self.mlp_v = mlp(h_enc, c.hidden, d * c.r, c.dropout)

    def instance_term(self, e):
        """t(Z_I) from e (B, h_enc): σ(Z_I) for the sigmoid gates, Z_I itself for add. (B, m, d)"""
        if self.config.encoder_norm == "l2":
            e = F.normalize(e, dim=-1)
        B, (m, r), d = e.size(0), (self.config.m, self.config.r), self.z_s.size(1)
        u = self.mlp_u(e).view(B, m, r)                               # (B, h_enc) -> (B, m, r)
        v = self.mlp_v(e).view(B, d, r)                               # (B, h_enc) -> (B, d, r)
        z_i = u @ v.transpose(1, 2)                                   # (B, m, r) @ (B, r, d) -> (B, m, d)
        return COMBINE[self.config.combine][0](z_i)

    def combine(self, t):
        return COMBINE[self.config.combine][1](self.z_s, t)          # (m, d), (B, m, d) -> (B, m, d)

    def prompt(self, ids, lengths, enc=None):
        e = self.encode(ids, lengths) if enc is None else enc         # (B, h_enc)
        return self.combine(self.instance_term(e))


# ----------------------------------------------------------------------------- IDPG

@dataclass
class IDPGConfig:
    m: int = 10                # number of virtual tokens
    hidden: int = 256          # H, the width of the generator
    dropout: float = 0.1       # on the encoder vector e, as in LOPA

    def __post_init__(self):
        if self.m < 1 or self.hidden < 1 or not 0 <= self.dropout < 1:
            raise UserError(f"IDPG needs m >= 1, hidden >= 1, 0 <= dropout < 1; "
                            f"got {self.m}, {self.hidden}, {self.dropout}")


class IDPG(InstanceTuner):
    """IDPG (Wu et al. 2022), the paper's instance-dependent baseline: Z = MLP(e) reshaped (m, d), one
    full-rank prompt per input, with no Z_S and no rank limit. Trainable: (h_enc H + H) + (H m d + m d)."""
    method = "idpg"

    def __init__(self, model, config=IDPGConfig(), encoder=None):
        super().__init__(model, config, encoder)
        d, h_enc = model.config.n_embd, self.encoder.config.n_embd
        self.mlp = mlp(h_enc, config.hidden, config.m * d, config.dropout)
        # The output bias is the prompt for e = 0; starting it at token embeddings puts the first
        # prompts where prompt tuning's start: in the input space the frozen model knows.
        self.mlp[3].bias = nn.Parameter(vocab_init(model, config.m).flatten())  # (m, d) -> (m d,)

    def prompt(self, ids, lengths, enc=None):
        e = self.encode(ids, lengths) if enc is None else enc         # (B, h_enc)
        return self.mlp(e).view(e.size(0), self.config.m, -1)         # (B, m d) -> (B, m, d)


# ----------------------------------------------------------------------------- LoRA

@dataclass
class LoRAConfig:
    r: int = 16                # rank of the weight update B A
    alpha: float = 32.0        # the update is scaled by alpha / r
    dropout: float = 0.1       # on the adapter's input only
    targets: tuple = ()        # names of the linear layers to adapt; () = the model's lora_targets

    def __post_init__(self):
        if self.r < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise UserError(f"LoRA needs r >= 1, alpha > 0, 0 <= dropout < 1; got {self.r}, {self.alpha}, {self.dropout}")
        self.targets = tuple(self.targets)


class LoRA(Tuner):
    """h = W x + (alpha / r) B A x on each target layer. B = 0 at init, so step 0 is the base model.
    This is the server-side adapter LOPA argues against: it lives inside the frozen model's weights
    (through forward hooks here), so a server needs one adapted copy of the computation per task and
    cannot mix tasks in one batch; merge() bakes it into the weights for good."""
    method = "lora"

    def __init__(self, model, config=LoRAConfig()):
        super().__init__(model, config)
        targets = config.targets or model.lora_targets
        self.layers = {n: mod for n, mod in model.named_modules() if n.rsplit(".", 1)[-1] in targets}
        if not self.layers:
            raise UserError(f"LoRA found no layer named {targets} in the model")
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for n, lin in self.layers.items():
            key = n.replace(".", "_")
            self.A[key] = nn.Parameter(torch.empty(config.r, lin.in_features))      # (r, in)
            nn.init.kaiming_uniform_(self.A[key], a=math.sqrt(5))                   # as nn.Linear (and PEFT)
            self.B[key] = nn.Parameter(torch.zeros(lin.out_features, config.r))     # (out, r)
        self.drop = nn.Dropout(config.dropout)
        self.scale = config.alpha / config.r
        self.hooks = [lin.register_forward_hook(self._hook(n.replace(".", "_"))) for n, lin in self.layers.items()]

    def _hook(self, key):
        def add_update(lin, inputs, out):
            return out + self.scale * (self.drop(inputs[0]) @ self.A[key].T @ self.B[key].T)  # (.., in) -> (.., out)
        return add_update

    @torch.no_grad()
    def merge(self):
        """W <- W + (alpha / r) B A in place; the hooks go. Inference then costs exactly the base model."""
        for (n, lin), h in zip(self.layers.items(), self.hooks):
            key = n.replace(".", "_")
            lin.weight += self.scale * self.B[key] @ self.A[key]      # (out, r) @ (r, in) -> (out, in)
            h.remove()
        self.hooks = []


METHODS = {"prompt": (PromptTuning, PromptConfig), "lopa": (LOPA, LOPAConfig), "lora": (LoRA, LoRAConfig),
           "idpg": (IDPG, IDPGConfig)}


# ----------------------------------------------------------------------------- one model, many tasks

@torch.no_grad()
def mixed_batch_hidden(model, tuners, ids, lengths, which):
    """One forward pass of the frozen model over rows from different tasks: row i carries the prompt of
    tuners[which[i]]. Possible only because prompts are input; a LoRA would need other weights per row."""
    if any(t.method == "lora" for t in tuners):
        raise UserError("only input-side tuners (lopa, prompt) can share a batch; LoRA changes the model's weights")
    if len({t.config.m for t in tuners}) > 1:
        raise UserError("tuners in one batch must use the same prompt length m")
    prompt = torch.empty(ids.size(0), tuners[0].config.m, model.config.n_embd, device=ids.device)  # (B, m, d)
    for k, t in enumerate(tuners):
        rows = (which == k).nonzero().squeeze(1)
        if len(rows):
            prompt[rows] = t.prompt(ids[rows], lengths[rows])
    return last_hidden(model, ids, lengths, prompt)                   # (B, d)


# ----------------------------------------------------------------------------- saving and loading

def save_adapter(tuner, folder, **meta):
    """adapter.safetensors (the trainable tensors) + adapter.json (method, config, and whatever meta says:
    base model, task, metrics...). No pickle: a client can read both without trusting code."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in tuner.named_parameters()}
    atomic_write(os.path.join(folder, "adapter.safetensors"), lambda p: save_file(state, p))
    info = {"method": tuner.method, "config": asdict(tuner.config), "d_model": tuner.model.config.n_embd, **meta}
    atomic_write(os.path.join(folder, "adapter.json"), lambda p: write_text(p, json.dumps(info, indent=2) + "\n"))


def load_adapter(folder, model):
    """(tuner, info) from a folder written by save_adapter, for the same base model."""
    for name in ("adapter.json", "adapter.safetensors"):
        if not os.path.exists(os.path.join(folder, name)):
            raise UserError(f"{folder} is not an adapter folder: {name} is missing")
    try:
        with open(os.path.join(folder, "adapter.json")) as f:
            info = json.load(f)
        state = load_file(os.path.join(folder, "adapter.safetensors"))
        cls, config_cls = METHODS[info["method"]]
        config = config_cls(**info["config"])
    except Exception as e:
        raise UserError(f"cannot read the adapter in {folder} ({type(e).__name__}: {str(e)[:100]})") from None
    if info.get("d_model") != model.config.n_embd:
        raise UserError(f"adapter in {folder} was trained on {info.get('model')!r} (width {info.get('d_model')}); "
                        f"this model has width {model.config.n_embd}: load the base model the adapter names")
    tuner = cls(model, config)
    try:
        tuner.load_state_dict(state)  # strict: the same names and shapes, or an error
    except RuntimeError:
        raise UserError(f"adapter in {folder} does not fit this model; was it trained on {info.get('model')!r}?") from None
    return tuner.eval(), info


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
    shapes = {  # built on the meta device: shapes without memory
        "GPT-2 small (d = 768)": lambda: GPT(GPTConfig()),
        "RoBERTa-large shape (d = 1024)": lambda: Llama(LlamaConfig(
            n_embd=1024, n_layer=24, n_head=16, n_kv_head=16, n_inner=4096, vocab_size=50265)),
    }
    print(f"{'model':32s} {'method':8s} {'counted':>11s} {'formula':>11s}   (m = 10, r = 4, H = 256; LoRA r = 16)")
    for label, build in shapes.items():
        with torch.device("meta"):
            model = build()
        d = model.config.n_embd
        for name, (cls, _) in METHODS.items():
            tuner = cls(model)
            counted = sum(p.numel() for p in tuner.trainable_parameters())
            lora_shapes = [(lin.in_features, lin.out_features) for lin in getattr(tuner, "layers", {}).values()]
            print(f"{label:32s} {name:8s} {counted:11,d} {closed_form(name, d, d, lora_shapes=lora_shapes):11,d}")
