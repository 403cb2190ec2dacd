"""GPT-2 from scratch: a decoder-only transformer that loads real Hugging Face checkpoints.

Follows Radford et al. 2019 ("Language Models are Unsupervised Multitask Learners") and keeps the
module names of Hugging Face's GPT2LMHeadModel, so a checkpoint loads key for key.

    model, tokenizer = load_model("gpt2")           # plumbing/loading.py: hub id, folder, .gguf
    logits = model(ids)                             # (B, T) LongTensor -> (B, T, vocab_size)
    hidden = model(embeds=x, return_hidden=True)    # (B, T, d) embeddings in -> (B, T, d) out

Every model in this project (GPT-2 here, the Llama family in llama.py) offers that same interface:
`config.n_embd`, `config.vocab_size`, `config.n_positions`, `embed(ids)`, `forward(...)`, `lm_head`
(whose weight rows a caller can pick to score only a few words), and two speed paths at the end of
the class, `hidden_at` and `hidden_at_behind_prefix`, that give forward()'s numbers for less work.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing.cli import UserError


@dataclass
class GPTConfig:
    vocab_size: int = 50257          # GPT-2's byte-level BPE vocabulary
    n_positions: int = 1024          # longest sequence the learned position table covers
    n_embd: int = 768                # model width d
    n_layer: int = 12                # transformer blocks
    n_head: int = 12                 # attention heads; head size = n_embd // n_head
    layer_norm_epsilon: float = 1e-5


def attention(q, k, v, mask):
    """softmax(q kᵀ / √hs) v: queries (B, nh, T, hs) read the keys and values (B, nh, S, hs) where
    mask, (T, S) or (B, 1, T, S), is True (one at least). Plain steps: on a CPU, in bfloat16, they
    beat torch's fused F.scaled_dot_product_attention."""
    scores = q @ k.transpose(-2, -1) * q.size(-1) ** -0.5                # (B, nh, T, S)
    return scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v       # (B, nh, T, hs)


def causal(T, S, device):  # (T, S): T queries, the last T of S tokens; query i reads 0..S-T+i
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)  # q, k, v for all heads in one matmul
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def heads(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)                       # 3 x (B, T, C)
        return (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def forward(self, x, cache=None):
        q, k, v = self.heads(x)                                        # 3 x (B, nh, T, hs)
        if cache is None:  # causal alone: batches are right-padded, so no real token reads a pad
            mask = causal(q.size(2), q.size(2), x.device)              # (T, T)
        else:  # generate.py: these keys and values join the cached ones, (B, nh, S, hs)
            k, v, mask = cache.extend(self, k, v)                      # mask (B, 1, T, S)
        y = attention(q, k, v, mask)                                   # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).flatten(2))              # (B, T, C)

    def at(self, x, at):  # speed path: one query per row, at its position at (B,)
        q, k, v = self.heads(x)                                        # 3 x (B, nh, T, hs)
        q = pick(q.transpose(1, 2), at).transpose(1, 2)                # (B, nh, 1, hs)
        mask = causal(x.size(1), x.size(1), x.device)[at][:, None, None]  # (B, 1, 1, T)
        y = attention(q, k, v, mask)                                   # (B, nh, 1, hs)
        return self.c_proj(y.transpose(1, 2).flatten(2))              # (B, 1, C)

    def behind_prefix(self, x, prefix, at=None):
        """Speed path: x (B, T, C) behind a prefix (1, m, C) that every row shares. The prefix never
        sees what follows it, so its queries, keys and values are computed once, for one row."""
        (q, k, v), (qp, kp, vp) = self.heads(x), self.heads(prefix)    # (B|1, nh, T|m, hs)
        B, T, m = x.size(0), x.size(1), prefix.size(1)
        yp = attention(qp, kp, vp, causal(m, m, x.device))             # (1, nh, m, hs)
        k, v = (torch.cat([p.expand(B, -1, -1, -1), t], dim=2) for p, t in ((kp, k), (vp, v)))
        # each row's token i sees the whole prefix, then its own tokens 0..i
        mask = causal(T, m + T, x.device)                              # (T, m + T)
        if at is not None:  # as at(): only row b's token at[b]
            q = pick(q.transpose(1, 2), at).transpose(1, 2)            # (B, nh, 1, hs)
            mask = mask[at][:, None, None]                             # (B, 1, 1, m + T)
        y = attention(q, k, v, mask)                                   # (B, nh, T|1, hs)
        return self.c_proj(y.transpose(1, 2).flatten(2)), self.c_proj(yp.transpose(1, 2).flatten(2))


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

    def forward(self, x, cache=None):  # pre-LayerNorm residual block
        x = x + self.attn(self.ln_1(x), cache)                        # (B, T, C)
        return x + self.mlp(self.ln_2(x))

    def at(self, x, at):  # speed path: the block at one position per row (B, 1, C)
        x = pick(x, at) + self.attn.at(self.ln_1(x), at)
        return x + self.mlp(self.ln_2(x))

    def behind_prefix(self, x, prefix, at=None):  # speed path: (x, a prefix every row shares)
        a, a_prefix = self.attn.behind_prefix(self.ln_1(x), self.ln_1(prefix), at)
        x, prefix = pick(x, at) + a, prefix + a_prefix
        return x + self.mlp(self.ln_2(x)), prefix + self.mlp(self.ln_2(prefix))


def pick(x, at):
    """(B, T, C) -> (B, 1, C): row b at position at[b]; all of x when at is None."""
    return x if at is None else x[torch.arange(x.size(0), device=x.device), at][:, None]


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
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix reads, writes tokens
        self.apply(self._init_weights)  # GPT-2's init, so random models in tests are sane

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def embed(self, ids):
        return self.transformer.wte(ids)  # (B, T) -> (B, T, d): the input a soft prompt joins

    def positions(self, T, device):  # (T, d): the learned position vectors 0..T-1
        if T > self.config.n_positions:
            raise UserError(f"sequence of {T} tokens is longer than the model's "
                            f"{self.config.n_positions} positions")
        return self.transformer.wpe(torch.arange(T, device=device))

    def forward(self, ids=None, *, embeds=None, return_hidden=False, cache=None):
        """Token ids (B, T), or their embeddings (B, T, d) with a soft prompt in front, -> logits
        (B, T, vocab_size), or the final hidden states (B, T, d) with return_hidden. With a cache
        (generate.py), the T tokens follow those cached, at the positions it gives (B, T)."""
        x = self.embed(ids) if embeds is None else embeds                 # (B, T, d)
        x = x + (self.positions(x.size(1), x.device) if cache is None
                 else self.transformer.wpe(cache.positions))
        for block in self.transformer.h:
            x = block(x, cache)
        x = self.transformer.ln_f(x)                                      # (B, T, d)
        return x if return_hidden else self.lm_head(x)                    # (B, T, vocab_size)

    # ------------------------------------------------------------------------- speed paths
    # The same numbers as forward(), for less work (tests/test_lopa.py checks each against it).
    # A classifier reads one position per row, so the last block need compute nothing else; and a
    # soft prompt that every row shares need not be computed once per row. Training and prediction
    # run through them (lopa.last_hidden); read forward() first, then these as forward() again.

    def hidden_at(self, embeds, at):
        """(B, d): forward(embeds=embeds, return_hidden=True)[b, at[b]] for every row b. The last
        block computes its query, attention and MLP at that position alone (its keys and values
        still cover every position)."""
        x = embeds + self.positions(embeds.size(1), embeds.device)         # (B, T, d)
        for block in self.transformer.h[:-1]:
            x = block(x)
        return self.transformer.ln_f(self.transformer.h[-1].at(x, at)[:, 0])  # (B, d)

    def hidden_at_behind_prefix(self, ids, prefix, at):
        """(B, d): row b's final hidden state at its own position at[b] behind a prefix (m, d) that
        every row shares, as hidden_at(cat([prefix] * B, embed(ids)), m + at) gives it, with the
        prefix computed once, not B times."""
        x, m = self.embed(ids), prefix.size(0)                            # (B, T, d)
        pos = self.positions(m + x.size(1), x.device)                     # (m + T, d)
        x, p = x + pos[m:], (prefix + pos[:m])[None]                      # (B, T, d), (1, m, d)
        for block in self.transformer.h:
            read = at if block is self.transformer.h[-1] else None        # the last block reads
            x, p = block.behind_prefix(x, p, read)
        return self.transformer.ln_f(x[:, 0])                             # (B, d)
