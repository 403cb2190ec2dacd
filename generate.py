"""Text from a frozen model behind a soft prompt: batched decoding with a KV cache.

    new = generate(model, ids, 30, lengths=lengths, prompt=z, eos=eos_id)   # (B, <= 30) new tokens

A batch is right-padded, as everywhere in this project: row b's real tokens are ids[b, :lengths[b]].
The prompt is one soft prompt for every row (m, d), as prompt tuning's, or one per row (B, m, d), as
LOPA's and IDPG's: both decode in the same batch.

How it works. The first step runs [prompt ; ids] through the model once, as training does, and
keeps every layer's keys and values (the cache); its logits at each row's last real token give the
first new token. Every later step runs only the B newest tokens, one per row: their queries read the
cached keys and values, and their own keys and values join the cache. So the prompt and the input
are computed once, not once per new token.

Padding and positions. Rows differ in length, so the new tokens of all rows are appended at the
same cache index, after row b's pads. KVCache remembers which cached entries are real tokens and
masks the pads out of every later query, so a row attends exactly to what it would attend to alone.
A token's position counts the real tokens before it (soft prompt included), so row b's first new
token sits at position m + lengths[b] whatever the padding; pads never take a position. The result
equals decoding each row alone, and recomputing the whole sequence at every step (use_cache=False),
token for token (tests/test_generate.py).
"""
import math

import torch
import torch.nn.functional as F

from plumbing.cli import UserError


class KVCache:
    """What decoding keeps between steps: every attention layer's keys and values, (B, nh, S, hs)
    each, and which of the S cached entries hold a real token, (B, S). A model's
    forward(..., cache=cache) reads `positions` and calls `extend` once in each attention layer."""

    def __init__(self):
        self.keys_values = {}   # attention layer -> (keys, values), each (B, nh, S, hs)
        self.real = None        # (B, S) bool: False where a row holds a pad
        self.positions = None   # (B, t): the positions of the t tokens being added
        self.mask = None        # (B, 1, t, S): which entries each new token may read

    def add(self, real):
        """Announce t more tokens per row; real (B, t) is False at pads. Returns the cache."""
        self.real = real if self.real is None else torch.cat([self.real, real], dim=1)  # (B, S)
        (S, t), device = (self.real.size(1), real.size(1)), real.device
        self.positions = self.real.cumsum(1)[:, -t:] - 1                   # (B, t)
        # new token i reads the real entries up to itself; every layer reads the same mask
        causal = torch.ones(t, S, dtype=torch.bool, device=device).tril(diagonal=S - t)
        self.mask = (causal & self.real[:, None, :])[:, None]             # (B, 1, t, S)
        return self

    def extend(self, layer, k, v):
        """The t new tokens' keys and values (B, nh, t, hs) join layer's cached ones. Returns all of
        them and which each new query may read, (B, 1, t, S)."""
        if layer in self.keys_values:
            k0, v0 = self.keys_values[layer]
            k, v = torch.cat([k0, k], dim=2), torch.cat([v0, v], dim=2)    # (B, nh, S, hs)
        self.keys_values[layer] = k, v
        return k, v, self.mask


def next_token(logits, temperature=0.0, top_k=None):
    """(B, vocab) -> (B,): greedy when temperature == 0, else sampled (from the top k if given)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    return torch.multinomial(F.softmax(logits, dim=-1), 1)[:, 0]


@torch.no_grad()
def generate(model, ids, max_new_tokens, temperature=0.0, top_k=None, *, lengths=None,
             prompt=None, eos=None, use_cache=True):
    """Continue (B, T) right-padded token ids behind an optional soft prompt, (m, d) or (B, m, d).
    Returns the new tokens (B, n), n <= max_new_tokens: decoding stops when every row has made eos
    (a finished row repeats eos). use_cache=False recomputes the whole sequence at every step."""
    B, T = ids.shape
    lengths = torch.full((B,), T, device=ids.device) if lengths is None else lengths
    x, real = model.embed(ids), torch.arange(T, device=ids.device) < lengths[:, None]  # (B, T)
    if prompt is not None:
        prompt = prompt.to(x.dtype).expand(B, -1, -1)                      # (B, m, d)
        x, real = torch.cat([prompt, x], 1), torch.cat([real.new_ones(B, prompt.size(1)), real], 1)
    read = real.sum(1) - 1                                                 # last real token (B,)
    if read.min() < 0:
        raise UserError("a row to continue has no token and no prompt: give it one or more")
    if read.max() + max_new_tokens > model.config.n_positions:
        raise UserError(f"{read.max() + 1} tokens + {max_new_tokens} new ones exceed the model's "
                        f"{model.config.n_positions} positions: ask for fewer new tokens")
    rows, cache, seq = torch.arange(B, device=ids.device), KVCache(), (x, real)
    new, done = ids.new_zeros(B, 0), torch.zeros(B, dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        h = model(embeds=x, cache=cache.add(real), return_hidden=True)    # (B, t, d)
        nxt = next_token(model.lm_head(h[rows, read]), temperature, top_k)  # (B,)
        if eos is not None:
            nxt = nxt.masked_fill(done, eos)
            done |= nxt == eos
        new = torch.cat([new, nxt[:, None]], dim=1)                        # (B, n)
        if done.all():
            break
        x, real = model.embed(nxt[:, None]), real.new_ones(B, 1)           # (B, 1, d), (B, 1)
        read = torch.zeros_like(read)                                      # the one new token
        if not use_cache:  # no cache kept: the whole sequence again, its newest token read
            seq = torch.cat([seq[0], x], 1), torch.cat([seq[1], real], 1)  # (B, S + 1, d), ...
            cache, (x, real), read = KVCache(), seq, torch.full_like(read, seq[1].size(1) - 1)
    return new
