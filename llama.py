"""The Llama family from scratch (Touvron et al. 2023), with model.py's interface, so LOPA runs on
it unchanged.

Against GPT-2 it swaps LayerNorm for RMSNorm, learned positions for rotary embeddings applied to q
and k, the GELU MLP for SwiGLU, and lets groups of query heads share one key/value head
(grouped-query attention). Module names follow Hugging Face's LlamaForCausalLM, so its safetensors
load key for key.

    model, tokenizer = load_model("smollm2")   # plumbing/loading.py: SmolLM2-135M-Instruct, offline
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import attention, causal, pick
from plumbing.cli import UserError


@dataclass
class LlamaConfig:
    vocab_size: int = 49152           # SmolLM2's byte-level BPE vocabulary
    n_positions: int = 8192  # longest context (max_position_embeddings); RoPE itself has no table
    n_embd: int = 576                 # model width d
    n_layer: int = 30                 # transformer blocks
    n_head: int = 9                   # query heads; head size = n_embd // n_head
    n_kv_head: int = 3  # key/value heads, each shared by n_head // n_kv_head query heads
    n_inner: int = 1536               # SwiGLU hidden size (intermediate_size)
    rope_theta: float = 100000.0  # RoPE base: pair i turns at rate rope_theta ** (-2i / head size)
    rms_norm_eps: float = 1e-5
    # lm_head shares embed_tokens' matrix (SmolLM2); Llama 3 8B does not
    tie_word_embeddings: bool = True

    @classmethod
    def from_hf(cls, cfg: dict):
        # transformers 5 / 4 spelling
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        bad = [f"{k}={cfg[k]!r}"
               for k, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False))
               if cfg.get(k, ok) != ok]
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            bad.append(f"rope type {rope.get('rope_type', rope.get('type'))!r}")
        if cfg.get("head_dim") not in (None, cfg["hidden_size"] // cfg["num_attention_heads"]):
            bad.append("head_dim != hidden_size // num_attention_heads")
        if bad:
            raise UserError(f"config.json asks for {', '.join(bad)}, "
                            f"which this Llama does not support")
        return cls(vocab_size=cfg["vocab_size"],
                   n_positions=cfg.get("max_position_embeddings", 2048),
                   n_embd=cfg["hidden_size"], n_layer=cfg["num_hidden_layers"],
                   n_head=cfg["num_attention_heads"],
                   n_kv_head=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                   n_inner=cfg["intermediate_size"],
                   rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
                   rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
                   tie_word_embeddings=cfg.get("tie_word_embeddings", False))


class RMSNorm(nn.Module):
    """LayerNorm without the mean and the bias: scale x to unit root-mean-square, then by a learned
    gain."""
    def __init__(self, d, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        # Hugging Face's order
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate(x, cos, sin):
    # "Rotate half": pair i is (x[i], x[i + hs/2]), turned by angle pos * freq_i.
    # Hugging Face's layout.
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head, hs = cfg.n_head, cfg.n_kv_head, cfg.n_embd // cfg.n_head
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * hs, bias=False)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * hs, bias=False)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * hs, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * hs, cfg.n_embd, bias=False)

    def heads(self, x, cos, sin):
        B, T, C = x.size()
        q = self.q_proj(x).view(B, T, self.n_head, -1).transpose(1, 2)     # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, -1).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, -1).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # Query head h reads key/value head h // (nh // nkv); repeating them keeps torch < 2.5
        # (no enable_gqa) working.
        # (B, nh, T, hs)
        k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))
        return q, k, v

    def forward(self, x, cos, sin, cache=None):
        q, k, v = self.heads(x, cos, sin)                                  # 3 x (B, nh, T, hs)
        if cache is None:  # causal masking is enough: batches are right-padded, as in model.py
            mask = causal(q.size(2), q.size(2), x.device)                  # (T, T)
        else:  # generate.py: these keys and values join the cached ones, as in model.py
            k, v, mask = cache.extend(self, k, v)                          # mask (B, 1, T, S)
        y = attention(q, k, v, mask)                                       # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).flatten(2))                   # (B, T, d)

    def at(self, x, cos, sin, at):  # speed path: one query per row (model.py's GPT.hidden_at)
        q, k, v = self.heads(x, cos, sin)                                  # 3 x (B, nh, T, hs)
        q = pick(q.transpose(1, 2), at).transpose(1, 2)                    # (B, nh, 1, hs)
        mask = causal(x.size(1), x.size(1), x.device)[at][:, None, None]  # (B, 1, 1, T)
        y = attention(q, k, v, mask)                                       # (B, nh, 1, hs)
        return self.o_proj(y.transpose(1, 2).flatten(2))                   # (B, 1, d)

    def behind_prefix(self, x, prefix, rope, rope_prefix, at=None):
        """Speed path, as model.py's: x (B, T, C) behind a prefix (1, m, C) that every row shares,
        computed once. rope, rope_prefix: (cos, sin) at the rows' positions m.. and the prefix's
        0..m-1."""
        (q, k, v), (qp, kp, vp) = self.heads(x, *rope), self.heads(prefix, *rope_prefix)
        B, T, m = x.size(0), x.size(1), prefix.size(1)
        yp = attention(qp, kp, vp, causal(m, m, x.device))                 # (1, nh, m, hs)
        k, v = (torch.cat([p.expand(B, -1, -1, -1), t], dim=2) for p, t in ((kp, k), (vp, v)))
        # each row's token i sees the whole prefix, then its own tokens 0..i
        mask = causal(T, m + T, x.device)                                  # (T, m + T)
        if at is not None:  # as at(): only row b's token at[b]
            q = pick(q.transpose(1, 2), at).transpose(1, 2)            # (B, nh, 1, hs)
            mask = mask[at][:, None, None]                             # (B, 1, 1, m + T)
        y = attention(q, k, v, mask)                                       # (B, nh, T|1, hs)
        return self.o_proj(y.transpose(1, 2).flatten(2)), self.o_proj(yp.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.n_embd, cfg.n_inner, bias=False)
        self.up_proj = nn.Linear(cfg.n_embd, cfg.n_inner, bias=False)
        self.down_proj = nn.Linear(cfg.n_inner, cfg.n_embd, bias=False)

    def forward(self, x):  # SwiGLU: a SiLU-gated linear unit
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.n_embd, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None):  # pre-norm residual block
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)  # (B, T, d)
        return x + self.mlp(self.post_attention_layernorm(x))

    def at(self, x, cos, sin, at):  # speed path: the block at one position per row (B, 1, d)
        x = pick(x, at) + self.self_attn.at(self.input_layernorm(x), cos, sin, at)
        return x + self.mlp(self.post_attention_layernorm(x))

    def behind_prefix(self, x, prefix, rope, rope_prefix, at=None):  # speed path: (x, a prefix)
        norm, norm_2 = self.input_layernorm, self.post_attention_layernorm
        a, a_prefix = self.self_attn.behind_prefix(norm(x), norm(prefix), rope, rope_prefix, at)
        x, prefix = pick(x, at) + a, prefix + a_prefix
        return x + self.mlp(norm_2(x)), prefix + self.mlp(norm_2(prefix))


class Llama(nn.Module):
    # LoRA's default targets in this family (lopa.py): the separate q, k, v projections.
    lora_targets = ("q_proj", "k_proj", "v_proj")

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            layers=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            norm=RMSNorm(cfg.n_embd, cfg.rms_norm_eps),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # GPT-2's init (norms stay at 1), so random models in tests are sane
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def embed(self, ids):
        return self.model.embed_tokens(ids)  # (B, T) -> (B, T, d): the input a soft prompt joins

    def rope(self, T, device, dtype, positions=None):
        """(cos, sin), each (T, hs): the rotary angles of positions 0..T-1, soft prompt included,
        computed in float32 as Hugging Face does; or (B, 1, T, hs) at a cache's positions (B, T)."""
        if T > self.config.n_positions:
            raise UserError(f"sequence of {T} tokens is longer than the model's "
                            f"{self.config.n_positions} positions")
        hs = self.config.n_embd // self.config.n_head
        inv_freq = 1.0 / self.config.rope_theta ** (
            torch.arange(0, hs, 2, device=device).float() / hs)              # (hs/2,)
        pos = torch.arange(T, device=device) if positions is None else positions[:, None]
        angles = pos.float()[..., None] * inv_freq                          # (.., T, hs/2)
        angles = torch.cat([angles, angles], dim=-1)                        # (.., T, hs)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, ids=None, *, embeds=None, return_hidden=False, cache=None):
        """Token ids (B, T), or their embeddings (B, T, d), -> logits (B, T, vocab_size), or the
        final hidden states (B, T, d) with return_hidden: model.py's GPT.forward, cache included."""
        x = self.embed(ids) if embeds is None else embeds                   # (B, T, d)
        positions = None if cache is None else cache.positions                 # (B, T)
        cos, sin = self.rope(x.size(1), x.device, x.dtype, positions)
        for block in self.model.layers:
            x = block(x, cos, sin, cache)
        x = self.model.norm(x)                                              # (B, T, d)
        return x if return_hidden else self.lm_head(x)                      # (B, T, vocab_size)

    # ------------------------------------------------------------------------- speed paths
    # forward()'s numbers for less work, as model.py's GPT has them (tests/test_lopa.py checks).

    def hidden_at(self, embeds, at):
        """(B, d): forward(embeds=embeds, return_hidden=True)[b, at[b]]; the last block computes
        only there."""
        cos, sin = self.rope(embeds.size(1), embeds.device, embeds.dtype)
        x = embeds                                                          # (B, T, d)
        for block in self.model.layers[:-1]:
            x = block(x, cos, sin)
        return self.model.norm(self.model.layers[-1].at(x, cos, sin, at)[:, 0])  # (B, d)

    def hidden_at_behind_prefix(self, ids, prefix, at):
        """(B, d): hidden_at(cat([prefix] * B, embed(ids)), m + at) for a prefix (m, d) that
        every row shares, computed once."""
        x, m = self.embed(ids), prefix.size(0)                              # (B, T, d)
        cos, sin = self.rope(m + x.size(1), x.device, x.dtype)
        rope, rope_prefix, p = (cos[m:], sin[m:]), (cos[:m], sin[:m]), prefix[None]  # (1, m, d)
        for block in self.model.layers:
            read = at if block is self.model.layers[-1] else None           # the last block reads
            x, p = block.behind_prefix(x, p, rope, rope_prefix, read)
        return self.model.norm(x[:, 0])                                     # (B, d)
