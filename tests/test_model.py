"""model.py: the from-scratch GPT-2 gives the same numbers as Hugging Face's, from the same files."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from plumbing.cli import UserError
from generate import generate
from model import GPT, GPTConfig
from plumbing.loading import load_model

transformers = pytest.importorskip("transformers")
CFG = dict(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)


def reference(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**CFG, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def save_hub_layout(hf, folder, fmt):
    """What the hub's gpt2 files look like: no "transformer." prefix, causal-mask buffers, no lm_head."""
    sd = {k.removeprefix("transformer."): v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    n = CFG["n_positions"]
    for i in range(CFG["n_layer"]):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if fmt == "safetensors":
        save_file(sd, os.path.join(folder, "model.safetensors"))
    else:
        torch.save(sd, os.path.join(folder, "pytorch_model.bin"))
    hf.config.to_json_file(os.path.join(folder, "config.json"))


def save(hf, folder, layout):
    if layout == "save_pretrained":
        hf.save_pretrained(folder)
    elif layout == "bin":  # the old format: a pickled state dict, lm_head.weight included
        torch.save(hf.state_dict(), os.path.join(folder, "pytorch_model.bin"))
        hf.config.to_json_file(os.path.join(folder, "config.json"))
    else:
        save_hub_layout(hf, folder, layout.removeprefix("hub-"))


@pytest.mark.parametrize("layout", ["save_pretrained", "hub-safetensors", "hub-bin", "bin"])
def test_logits_and_greedy_continuation_match_transformers(tmp_path, layout):
    hf = reference()
    save(hf, tmp_path, layout)
    ours, tok = load_model(str(tmp_path))
    ids = torch.randint(0, CFG["vocab_size"], (3, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), hf(ids).logits, atol=1e-4, rtol=0)
        prompt = torch.tensor([tok.encode("Hello world, this is").ids])
        mine = generate(ours, prompt, max_new_tokens=12)                # the 12 new tokens
        theirs = hf.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert mine.tolist() == theirs[:, prompt.size(1):].tolist()


def test_gpt2_small_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig())
    assert sum(p.numel() for p in model.parameters()) == 124_439_808  # tied head counted once


def test_shapes_of_logits_hidden_states_and_prefixed_embeddings():
    model = GPT(GPTConfig(**CFG)).eval()
    ids = torch.randint(0, 100, (2, 5))
    assert model(ids).shape == (2, 5, CFG["vocab_size"])
    assert model(ids, return_hidden=True).shape == (2, 5, 32)
    prefix = torch.randn(2, 3, 32)
    x = torch.cat([prefix, model.embed(ids)], dim=1)
    assert model(embeds=x).shape == (2, 8, CFG["vocab_size"])
    assert model(embeds=x, return_hidden=True).shape == (2, 8, 32)


def test_shipped_tokenizer():
    from tokenizers import Tokenizer

    from plumbing.loading import GPT2_TOKENIZER
    assert Tokenizer.from_file(GPT2_TOKENIZER).encode("Hello world").ids == [15496, 995]


def test_sampling_is_reproducible_with_a_seed():
    model = GPT(GPTConfig(**CFG)).eval()
    ids = torch.zeros(1, 1, dtype=torch.long)
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append(generate(model, ids, 8, temperature=0.8, top_k=5))
    assert torch.equal(*runs) and runs[0].shape == (1, 8)


def test_loading_errors_are_one_clear_message(tmp_path):
    with pytest.raises(UserError, match="no model folder or known model"):
        load_model(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path))
    hf = reference()
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="truncated"):
        load_model(str(tmp_path))
    weights.write_bytes(good)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_embd": 64}))
    with pytest.raises(UserError, match="config.json does not match"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "n_layer": 3}))
    with pytest.raises(UserError, match="missing"):
        load_model(str(tmp_path))
    weights.unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        load_model(str(tmp_path))


def test_truncated_bin_is_a_clear_error(tmp_path):
    save(reference(), tmp_path, "bin")
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(UserError, match="truncated"):
        load_model(str(tmp_path))
