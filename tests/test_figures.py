"""benchmarks/figures.py on the tiny GPT-2; every image tutorial.md and README.md show exists."""
import os
import re
import sys
import xml.etree.ElementTree as ET

import pytest
import torch

from plumbing.adapters import save_adapter
from plumbing.cli import UserError
from lopa import LOPA, LOPAConfig, closed_form
from plumbing.loading import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import figures  # noqa: E402


def svg_texts(path):
    return ["".join(t.itertext()) for t in ET.parse(path).getroot().iter(
        "{http://www.w3.org/2000/svg}text")]


@pytest.mark.parametrize("strength", [0.0, 3.0])
def test_figures_of_a_lopa_adapter(tiny_gpt2, tmp_path, one_thread, capsys, strength):
    pytest.importorskip("matplotlib")
    model, _ = load_model(tiny_gpt2)
    torch.manual_seed(0)
    tuner = LOPA(model, LOPAConfig(m=4, r=2, hidden=16))
    with torch.no_grad():  # strength 0: Z_I = 0, σ(Z_I) = 0.5 for every input; 3: a large Z_I
        for net in (tuner.mlp_u, tuner.mlp_v):
            net[1].weight.normal_(std=strength)
            net[3].weight.normal_(std=strength)
    save_adapter(tuner, tmp_path / "a", model=tiny_gpt2, task="sst2")
    out = tmp_path / "figures"
    assert figures.main(["--adapter", str(tmp_path / "a"), "--out", str(out), "--toy-seeds", "1",
                         "--toy-steps", "30"]) == 0
    assert sorted(os.listdir(out)) == ["gate.svg", "lopa_diagram.svg", "lopa_params.svg",
                                       "lopa_prompt.png", "padding.svg", "serving.svg",
                                       "toy_task.svg"]
    assert (out / "lopa_prompt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    gate = re.search(r"σ\(Z_I\): mean ([\d.]+), (\d+)% of entries .* largest ([\d.]+)", printed)
    mean, saturated, largest = float(gate[1]), int(gate[2]), float(gate[3])
    if strength == 0:
        assert (mean, saturated, largest) == (0.5, 0, 0.0)
    else:  # a gate that is on or off, and differs between the positive and the negative sentence
        assert saturated > 50 and largest > 0.5

    bars = svg_texts(out / "lopa_params.svg")
    total = closed_form("lopa", d=32, h_enc=32, m=4, r=2, H=16)
    assert any(f"{total:,} trainable parameters" in t for t in bars)
    assert f" {16 * 32 * 2 + 32 * 2:,} ({100 * (16 * 32 * 2 + 32 * 2) / total:.1f}%)" in bars
    assert "read h at 3 + 4 − 1 = 6" in " ".join(svg_texts(out / "padding.svg"))
    assert any("one frozen" in t for t in svg_texts(out / "serving.svg"))
    assert any("Z = Z_S ⊙ σ(Z_I)" in t for t in svg_texts(out / "lopa_diagram.svg"))
    assert any("(0.5: chance)" in t for t in svg_texts(out / "toy_task.svg"))
    toy_gate = re.search(r"toy gate after 30 steps: (\d+)% near 0 or 1", printed)
    assert toy_gate and 0 <= int(toy_gate[1]) <= 100


def test_figures_refuses_other_adapters_and_a_missing_matplotlib(tiny_gpt2, tmp_path, monkeypatch):
    model, _ = load_model(tiny_gpt2)
    from lopa import PromptTuning
    save_adapter(PromptTuning(model), tmp_path / "p", model=tiny_gpt2, task="sst2")
    with pytest.raises(UserError, match="'prompt' adapter; figures needs lopa"):
        figures.main(["--adapter", str(tmp_path / "p"), "--out", str(tmp_path / "f")])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    with pytest.raises(UserError, match="pip install matplotlib"):
        figures.main(["--adapter", str(tmp_path / "p"), "--out", str(tmp_path / "f")])
    assert not (tmp_path / "f").exists()


def test_every_image_the_docs_show_exists_and_every_figure_is_shown():
    shown = set()
    docs = ["tutorial.md", "README.md"] + [os.path.join("docs", f)
                                           for f in os.listdir(os.path.join(ROOT, "docs"))]
    for doc in docs:
        with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
            text = f.read()
        for path in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", text):
            path = os.path.normpath(os.path.join(os.path.dirname(doc), path))  # relative to the doc
            assert os.path.exists(os.path.join(ROOT, path)), f"{doc} shows {path}: not there"
            shown.add(path)
    figures_dir = os.path.join("assets", "figures")
    for name in os.listdir(os.path.join(ROOT, figures_dir)):
        assert os.path.join(figures_dir, name) in shown, f"{figures_dir}/{name} is shown nowhere"
    assert os.path.join("benchmarks", "results.svg") in shown
