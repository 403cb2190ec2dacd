"""generate.py: batched KV-cached decoding behind shared and per-row soft prompts equals decoding
each row alone with the plain forward pass, token for token, on tiny random models of both
families."""
import pytest
import torch

from generate import KVCache, generate
from llama import Llama, LlamaConfig
from model import GPT, GPTConfig
from plumbing.cli import UserError

VOCAB, D, M = 97, 32, 3


def tiny(family):
    torch.manual_seed(0)
    if family == "gpt2":
        model = GPT(GPTConfig(vocab_size=VOCAB, n_positions=64, n_embd=D, n_layer=2, n_head=4))
    else:
        model = Llama(LlamaConfig(vocab_size=VOCAB, n_positions=64, n_embd=D, n_layer=2, n_head=4,
                                  n_kv_head=2, n_inner=64))
    for p in model.parameters():  # larger weights than the init, and an untied head:
        if p.dim() == 2:           # varied, not repetitive, text
            torch.nn.init.normal_(p, std=0.3)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, D))
    return model.eval()


def alone(model, ids, prompt, n):
    """The oracle: one row, no pads, no cache: the whole sequence through forward() every step."""
    x, out = model.embed(ids[None]), []
    if prompt is not None:
        x = torch.cat([prompt[None], x], dim=1)
    with torch.no_grad():
        for _ in range(n):
            out.append(model(embeds=x)[0, -1].argmax().item())
            x = torch.cat([x, model.embed(torch.tensor([[out[-1]]]))], dim=1)
    return out


def batch():
    torch.manual_seed(1)
    lengths = torch.tensor([5, 2, 7, 1])
    ids = torch.randint(0, VOCAB, (4, 7)) * (torch.arange(7) < lengths[:, None])  # pads are 0
    return ids, lengths


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["none", "shared", "per-row"])
def test_batched_cached_decoding_equals_each_row_alone(family, kind):
    model, (ids, lengths), n = tiny(family), batch(), 12
    torch.manual_seed(2)
    prompt = {"none": None, "shared": torch.randn(M, D), "per-row": torch.randn(4, M, D)}[kind]

    def row_prompt(b):
        return None if prompt is None else prompt if prompt.dim() == 2 else prompt[b]

    want = [alone(model, ids[b, :lengths[b]], row_prompt(b), n) for b in range(4)]
    assert len({tuple(w) for w in want}) == 4 and len(set(sum(want, []))) > 10  # varied text
    got = generate(model, ids, n, lengths=lengths, prompt=prompt)
    assert got.tolist() == want
    recomputed = generate(model, ids, n, lengths=lengths, prompt=prompt, use_cache=False)
    assert recomputed.tolist() == want
    for b in range(4):  # one row at a time, no pads at all
        p = None if prompt is None else row_prompt(b)
        assert generate(model, ids[b:b + 1, :lengths[b]], n, prompt=p).tolist() == [want[b]]


def test_the_cache_masks_pads_and_gives_positions_that_skip_them():
    cache = KVCache().add(torch.tensor([[True, True, False], [True, True, True]]))
    assert cache.positions.tolist() == [[0, 1, 1], [0, 1, 2]]  # a pad repeats, never counts
    k = torch.randn(2, 1, 3, 4)
    _, _, mask = cache.extend("layer", k, k)
    assert mask[:, 0].tolist() == [[[1, 0, 0], [1, 1, 0], [1, 1, 0]],
                                   [[1, 0, 0], [1, 1, 0], [1, 1, 1]]]
    cache.add(torch.ones(2, 1, dtype=torch.bool))
    assert cache.positions.tolist() == [[2], [3]]  # the next token follows each row's real ones
    keys, _, mask = cache.extend("layer", k[:, :, :1], k[:, :, :1])
    assert keys.shape == (2, 1, 4, 4) and mask[:, 0].tolist() == [[[1, 1, 0, 1]], [[1, 1, 1, 1]]]


def test_eos_stops_a_row_and_the_batch():
    model, (ids, lengths) = tiny("gpt2"), batch()
    free = generate(model, ids, 10, lengths=lengths)
    eos = free[0, 2].item()  # row 0 makes this token third
    got = generate(model, ids, 10, lengths=lengths, eos=eos)
    for row, want in zip(got.tolist(), free.tolist()):
        stop = want.index(eos) if eos in want else len(want)
        assert row[:stop + 1] == want[:stop + 1] and set(row[stop:]) <= {eos}
    if all(eos in row for row in free.tolist()):
        assert got.size(1) < 10


def test_too_long_or_empty_is_one_clear_error():
    model = tiny("gpt2")
    with pytest.raises(UserError, match="exceed the model's 64 positions"):
        generate(model, torch.zeros(1, 60, dtype=torch.long), 6)
    with pytest.raises(UserError, match="no token and no prompt"):
        generate(model, torch.zeros(2, 3, dtype=torch.long), 5, lengths=torch.tensor([3, 0]))
    # the last new token is never fed back: positions 0..63 suffice for 60 + 5
    assert generate(model, torch.zeros(1, 60, dtype=torch.long), 5).shape == (1, 5)
