"""Tiny random models and batches for the tests."""
import torch

from model import GPT, GPTConfig

TINY = GPTConfig(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def tiny_lm(seed=0):
    torch.manual_seed(seed)
    model = GPT(TINY).eval()
    for p in model.parameters():  # GPT-2's std 0.02 makes a tiny random model ignore everything but the
        if p.dim() == 2:          # last token; larger weights let the prompt matter, as in a trained model
            p.data.normal_(std=0.3)
    return model


def padded_batch(B=4, T=9, seed=1, vocab=100):
    """Random ids (B, T), right-padded with 0, and their lengths (B,); row 0 is full length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = 0
    return ids, lengths
