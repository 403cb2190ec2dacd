"""The hub paths, offline: a Hugging Face cache folder laid out as huggingface_hub lays out what it
downloads (GLUE's parquet files from nyu-mll/glue, a tiny GPT-2 as the hub stores gpt2), read through the
same hf_hub_download calls that fetch them online. The file names, columns and weight names below are
the hub's own, written out here on purpose: code that asks for a renamed file or column fails a test."""
import json
import os
import shutil
import subprocess
import sys

import huggingface_hub.constants
import pyarrow
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

import data
from plumbing.cli import UserError
from plumbing.loading import GPT2_TOKENIZER
from model import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLUE = {  # file in the dataset repo nyu-mll/glue: its text columns (label and idx follow)
    "mnli/train-00000-of-00001.parquet": ("premise", "hypothesis"),
    "mnli/validation_matched-00000-of-00001.parquet": ("premise", "hypothesis"),
    "qnli/train-00000-of-00001.parquet": ("question", "sentence"),
    "qqp/train-00000-of-00001.parquet": ("question1", "question2"),
    "qqp/validation-00000-of-00001.parquet": ("question1", "question2"),
}


def snapshot(cache, repo):
    """The folder huggingface_hub keeps a repo's files in ("datasets--a--b" or "models--a")."""
    folder = cache / repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    folder.mkdir(parents=True)
    (cache / repo / "refs").mkdir()
    (cache / repo / "refs" / "main").write_text(folder.name)
    return folder


def write_glue(folder, name, text_cols, n=24, n_labels=2, rename=None):
    rows = {c: [f"{c} number {i} is here" for i in range(n)] for c in text_cols}
    rows |= {"label": [i % n_labels for i in range(n)], "idx": list(range(n))}
    if rename:
        rows[rename[1]] = rows.pop(rename[0])
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pyarrow.table(rows), folder / name)


def write_gpt2(folder):
    """A 2-layer GPT-2 as the hub stores gpt2: keys without "transformer.", Conv1D weights (in, out),
    the attention mask buffers h.N.attn.bias and masked_bias, the hub's config keys, tokenizer.json."""
    torch.manual_seed(0)
    cfg = GPTConfig(n_positions=64, n_embd=32, n_layer=2, n_head=4)
    conv1d = ("c_attn.weight", "c_proj.weight", "c_fc.weight")
    sd = {k.removeprefix("transformer."): (v.t() if k.endswith(conv1d) else v).contiguous()
          for k, v in GPT(cfg).state_dict().items() if k != "lm_head.weight"}
    for i in range(cfg.n_layer):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64)
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "bos_token_id": 50256, "eos_token_id": 50256, "layer_norm_epsilon": 1e-05, "n_ctx": 64,
        "n_embd": 32, "n_head": 4, "n_layer": 2, "n_positions": 64, "vocab_size": 50257}))
    shutil.copy(GPT2_TOKENIZER, folder / "tokenizer.json")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    glue = snapshot(cache, "datasets--nyu-mll--glue")
    for name, cols in GLUE.items():
        write_glue(glue, name, cols, n_labels=3 if name.startswith("mnli") else 2)
    write_gpt2(snapshot(cache, "models--gpt2"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_tasks_read_the_hubs_parquet_files(hub_cache):
    for task, split in [("mnli", "train"), ("mnli", "dev"), ("qnli", "train"), ("qqp", "train"), ("qqp", "dev")]:
        rows = data.load_split(task, split)
        assert len(rows) == 24 and rows[5][0][0].endswith("number 5 is here"), (task, split)
        assert {y for _, y in rows} == set(range(len(data.TASKS[task].labels)))


def test_a_renamed_column_or_a_missing_file_is_one_clear_error(hub_cache):
    glue = next((hub_cache / "datasets--nyu-mll--glue" / "snapshots").iterdir())
    write_glue(glue, "qnli/train-00000-of-00001.parquet", ("question", "sentence"), rename=("sentence", "text"))
    with pytest.raises(UserError, match="cannot read .*qnli/train-00000-of-00001.parquet"):
        data.load_split("qnli", "train")
    (glue / "qqp" / "validation-00000-of-00001.parquet").unlink()
    with pytest.raises(UserError, match=r"cannot get qqp dev \(qqp/validation-00000-of-00001.parquet\)"):
        data.load_split("qqp", "dev")


def test_train_py_offline_on_the_hubs_gpt2_and_mnli(hub_cache, tmp_path):
    # a fresh process, pointed at the cache as a user would: through the environment
    env = {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "train.py", "--task", "mnli", "--model", "auto", "--out", str(tmp_path / "o"),
                        "--max-train-examples", "8", "--batch-size", "4", "--epochs", "1", "--m", "2",
                        "--hidden", "8"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "model: gpt2 (GPT-2 is in the Hugging Face cache)" in p.stdout
    assert "training on 8 of 24 examples" in p.stdout and "dev: 24" in p.stdout and "done in" in p.stdout
