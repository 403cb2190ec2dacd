"""Shared fixtures: a tiny GPT-2 checkpoint on disk, single-threaded torch for tiny models, and
float32 as --dtype auto's choice on every CPU."""
import json

import pytest
import torch
from safetensors.torch import save_file

import plumbing.cli
from model import GPT, GPTConfig


def pytest_addoption(parser):
    parser.addoption("--student", action="store_true",
                     help="tests/test_exercises.py: check your exercises/*.py, not the solutions")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer, width-32 GPT-2 with the real vocabulary, saved as the hub stores GPT-2 (Conv1D layout)."""
    torch.manual_seed(0)
    cfg = GPTConfig(n_positions=128, n_embd=32, n_layer=2, n_head=4)
    conv1d = ("c_attn.weight", "c_proj.weight", "c_fc.weight")
    sd = {k: (v.t() if k.endswith(conv1d) else v).contiguous() for k, v in GPT(cfg).state_dict().items()
          if k != "lm_head.weight"}
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    save_file(sd, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", **vars(cfg)}))
    return str(folder)


@pytest.fixture
def one_thread():
    # Tiny models gain nothing from threads, and on a busy machine the threads only wait for each other.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def float32_on_every_cpu(monkeypatch):
    """In-process runs see a CPU without bfloat16 hardware: --dtype auto is float32, so pinned and
    compared numbers do not depend on the machine. tests/test_dtype.py tests the choice itself;
    subprocess runs that compare numbers pass --dtype float32."""
    monkeypatch.setattr(plumbing.cli, "native_bfloat16", lambda: None)
