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
import csv
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data import Split, batches, clean, token_ids
from model import causal
from plumbing.cli import UserError
from plumbing.metrics import bleu


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
        self.mask = (causal(t, S, device) & self.real[:, None, :])[:, None]  # (B, 1, t, S)
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


# ----------------------------------------------------------------------------- a task that writes

E2E_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "e2e")


@dataclass
class TextTask:
    """A task whose answer is text: E2E NLG (Novikova, Dušek and Rieser 2017). A restaurant's
    meaning representation (MR) in, e.g. "name[The Eagle], eatType[pub], area[riverside]", a
    one-sentence description out. Each MR has several human references; BLEU reads them all."""
    name: str
    template: str               # the input, {} the MR; the description follows it after a space
    cpu_train_examples: dict    # train.py's subset on a CPU by dtype, as data.CPU_TRAIN_EXAMPLES
    metric: str = "bleu"        # corpus BLEU-4 in percent (plumbing/metrics.py)
    held_out: int = 47          # MRs of the training file held out to choose the epoch on
    max_new_tokens: int = 64    # the longest description (longer: 4 of 4,672 references)
    generates = True            # train.py's cue: the target's loss and BLEU, not label words

    def read(self, split):
        """{mr: [its references]} in file order. "train" is E2E's official development set (the
        official training set is not bundled); "test" is its official test set."""
        out, name = {}, {"train": "devset.csv", "test": "testset_w_refs.csv"}[split]
        with open(os.path.join(E2E_DIR, name), encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                out.setdefault(row["mr"], []).append(row["ref"])
        return out


TASKS = {"e2e": TextTask("e2e", "Restaurant: {}\nDescription:",
                         {torch.float32: 1000, torch.bfloat16: 2000})}


def choose_pairs(args, device, dtype):
    """(training (MR, reference) pairs, held-out (MR, [references]) rows, "held-out"): the training
    file split by MR, so that no MR is both trained on and held out. The held-out MRs are the same
    for every seed (--holdout N: N of them); the other MRs' pairs are shuffled by the seed and, on a
    CPU, cut to the task's budget for dtype."""
    task = TASKS[args.task]
    by_mr = task.read("train")
    mrs, n_held = list(by_mr), args.holdout or task.held_out
    if n_held >= len(mrs):
        raise UserError(f"--holdout {n_held} holds out every one of {len(mrs)} MRs; use fewer")
    order = torch.randperm(len(mrs), generator=torch.Generator().manual_seed(12345)).tolist()
    held = [(mrs[i], by_mr[mrs[i]]) for i in order[:n_held]]
    pairs = [(mrs[i], ref) for i in order[n_held:] for ref in by_mr[mrs[i]]]
    pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(args.seed)).tolist()
    budget = task.cpu_train_examples[dtype] if device == "cpu" else "all"
    limit = args.max_train_examples or budget
    n = len(pairs) if limit == "all" else min(int(limit), len(pairs))
    print(f"task: {args.task}; training on {n:,} of {len(pairs):,} (MR, reference) pairs of "
          f"{len(mrs) - n_held} MRs; held-out: {n_held} MRs (all from E2E's development set)")
    return [pairs[i] for i in pick[:n]], held, "held-out"


def tokenize_pairs(name, task, rows, tokenizer, max_len):
    """(MR, reference) pairs -> ids: the filled template; labels: the reference's tokens and end of
    text, the target. (MR, [references]) rows -> labels: the references, as text, for BLEU. An
    input over max_len tokens keeps its end, where the description starts (E2E's are < 62)."""
    eos, ids, labels = end_of_text(tokenizer), [], []
    for mr, ref in rows:
        ids.append(token_ids(tokenizer, task.template.format(clean(mr)))[-max_len:])
        labels.append(ref if isinstance(ref, list) else
                      token_ids(tokenizer, " " + clean(ref))[:task.max_new_tokens] + [eos])
    return Split(name, ids, labels)


def end_of_text(tokenizer):
    eos = tokenizer.token_to_id("<|endoftext|>")
    if eos is None:
        raise UserError("this tokenizer has no <|endoftext|> token to end a description with")
    return eos


def target_loss(tuner, b, e, device):
    """Teacher forcing: the mean cross-entropy of the target tokens (reference + end of text), each
    given [prompt ; input ; the target's earlier tokens]. The prompt, template and MR are never
    scored, and the prompt is made from the input alone (LOPA's e reads the MR, not the target)."""
    n_in, targets = b["lengths"], b["labels"]                         # (B,), B lists of ids
    n_all = n_in + torch.tensor([len(t) for t in targets])              # (B,)
    seq = torch.zeros(len(targets), int(n_all.max()), dtype=torch.long)  # (B, S): input, target
    for r, t in enumerate(targets):
        seq[r, :n_in[r]], seq[r, n_in[r]:n_all[r]] = b["ids"][r, :n_in[r]], torch.tensor(t)
    columns = torch.arange(seq.size(1))
    scored = (columns >= n_in[:, None]) & (columns < n_all[:, None])   # (B, S): target tokens
    seq, scored = seq.to(device), scored.to(device)
    x = tuner.model.embed(seq)                                         # (B, S, d)
    prompt = tuner.prompt(seq, n_in.to(device), e)                     # (B, m, d) or None
    if prompt is not None:  # row b's prompt reads its input: seq[b, :n_in[b]]
        x = torch.cat([prompt.to(x.dtype), x], dim=1)                  # (B, m + S, d)
    h = tuner.model(embeds=x, return_hidden=True)[:, x.size(1) - seq.size(1):]  # (B, S, d)
    # the token at column s is predicted from column s - 1's hidden state
    logits = tuner.model.lm_head(h[:, :-1][scored[:, 1:]]).float()     # (N targets, vocab)
    return F.cross_entropy(logits, seq[scored])


@torch.no_grad()
def write(model, split, prompt_of, tokenizer, device, batch_size, max_new_tokens):
    """A description of every example of split, in its order: greedy, batched and KV-cached, behind
    prompt_of(ids, lengths, index), a (B, m, d) prompt or None (zero-shot: the template alone). A
    description ends at end of text or at its first line break."""
    eos, texts = end_of_text(tokenizer), [None] * len(split.ids)
    for b in batches(split.ids, split.labels, batch_size, shuffle=False):
        ids, lengths, index = b["ids"].to(device), b["lengths"].to(device), b["index"].to(device)
        new = generate(model, ids, max_new_tokens, lengths=lengths,
                       prompt=prompt_of(ids, lengths, index), eos=eos)
        for i, row in zip(b["index"].tolist(), new.tolist()):
            texts[i] = as_text(tokenizer, row, eos)
    return texts


def as_text(tokenizer, tokens, eos):
    """A description from new tokens: up to end of text, its first line, spaces single."""
    text = tokenizer.decode(tokens[:tokens.index(eos)] if eos in tokens else tokens)
    return " ".join(text.strip().split("\n")[0].split())


def score(model, split, prompt_of, tokenizer, device, batch_size, max_new_tokens):
    """{"metric": corpus BLEU of split's descriptions against every reference of their MR, "bleu":
    the same}: the split's labels are its references."""
    value = bleu(write(model, split, prompt_of, tokenizer, device, batch_size, max_new_tokens),
                 split.labels)
    return {"metric": value, "bleu": value}
