"""The results scripts (benchmarks/results.py, plot_results.py) on made-up runs."""
import contextlib
import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from benchmarks import plot_results, results, speed


def quiet(fn, *args):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = fn(*args)
    return status, out.getvalue()


# ----------------------------------------------------------------------------- the results figure

def result(method, trainable, mean, task="sst2", metric="acc"):
    return {"task": task, "method": method, "metric_name": metric, "mean": mean, "std": 0.01,
            "n_seeds": 3, "trainable": trainable, "adapter_bytes": 4 * trainable, "model": "toy",
            "wall_s": 12.5}


@pytest.mark.parametrize("as_written_by_results_py", [True, False])
def test_plot_results_writes_an_svg_with_every_method(tmp_path, as_written_by_results_py):
    pytest.importorskip("matplotlib")
    rows = [result("zero-shot", 0, 0.55), result("prompt", 7_680, 0.7),
            result("lopa", 1_201_192, 0.8), result("lopa", 300_000, 0.78),
            result("lora", 589_824, 0.82), result("lopa", 1_201_192, 0.7, "mrpc", "f1")]
    notes = {"hardware": "a made-up CPU", "budget": "made-up budget", "command": "none"}
    written = {**notes, "rows": rows} if as_written_by_results_py else rows
    (tmp_path / "results.json").write_text(json.dumps(written))
    svg = tmp_path / "results.svg"
    status, out = quiet(plot_results.main, ["--input", str(tmp_path / "results.json"),
                                            "--output", str(svg)])
    assert status == 0 and out.strip() == f"wrote {svg}"
    root = ET.parse(svg).getroot()                                      # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    texts = ["".join(t.itertext()).strip() for t in root.iter(f"{ns}text")]  # text stays text
    for method in ("zero-shot", "prompt", "lopa", "lora"):
        assert texts.count(method) == 1                                 # the legend, once
    assert {"sst2", "mrpc", "toy", "dev acc", "dev f1"} <= set(texts)   # each panel's titles
    notes_shown = [t for t in texts if t.startswith(("budget", "hardware"))]
    assert notes_shown == (["budget: made-up budget", "hardware: a made-up CPU"]
                           if as_written_by_results_py else [])
    drawn = {g.get("id", "") for g in root.iter(f"{ns}g")}              # "task/method" groups
    assert {i for i in drawn if "/" in i} == {"sst2/zero-shot", "sst2/prompt", "sst2/lopa",
                                              "sst2/lora", "mrpc/lopa"}
    dashed = [g for g in root.iter(f"{ns}g") if g.get("id") == "sst2/zero-shot"]
    assert len(dashed) == 1 and "stroke-dasharray" in ET.tostring(dashed[0], encoding="unicode")


@pytest.mark.parametrize("content,message", [
    ("not json", "not valid JSON"), ("[]", "non-empty list"), ('{"rows": {}}', "non-empty list"),
    ('[{"task": "sst2"}]', "entry 0 lacks"),
    (json.dumps([{**result("lopa", 10, 0.5), "mean": "high"}]), "mean")])
def test_plot_results_bad_input_is_one_line(tmp_path, capsys, content, message):
    (tmp_path / "results.json").write_text(content)
    status = plot_results.main(["--input", str(tmp_path / "results.json"),
                                "--output", str(tmp_path / "r.svg")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "r.svg").exists()


def test_results_py_picks_lr_on_the_held_out_slice_reuses_runs_and_keeps_other_rows(tmp_path,
                                                                                    monkeypatch):
    old = {**result("lora", 5, 0.9), "budget": "old budget", "command": "old command",
           "hardware": "old CPU"}
    stale = {**old, "task": "mrpc", "method": "lopa"}   # measured again below: replaced in place
    (tmp_path / "results.json").write_text(json.dumps({"rows": [old, stale,
                                                                {**old, "task": "mrpc"}]}))
    calls, real_run = [], subprocess.run

    def fake_train_py(cmd, **kw):                       # stands in for one train.py process
        if cmd[1:2] != ["train.py"]:
            return real_run(cmd, **kw)                  # platform.processor() asks `uname`
        flag = {a: b for a, b in zip(cmd, cmd[1:]) if a.startswith("--")}
        seed, lr, holdout = int(flag["--seed"]), float(flag["--lr"]), int(flag.get("--holdout", 0))
        calls.append((seed, lr, holdout))
        score = lr if holdout else 0.5 + seed / 10      # the held-out slice favours the largest lr
        os.makedirs(flag["--out"], exist_ok=True)
        with open(os.path.join(flag["--out"], "adapter.json"), "w") as f:
            json.dump({"metrics": {"dev": {"metric": score}, "zero_shot": {"metric": 0.4}},
                       "metric_name": "f1", "trainable": 7}, f)
        with open(os.path.join(flag["--out"], "adapter.safetensors"), "wb") as f:
            f.write(bytes(28))
        return subprocess.CompletedProcess(cmd, 0, stderr="")
    monkeypatch.setattr(results, "HERE", str(tmp_path))
    monkeypatch.setattr(results.subprocess, "run", fake_train_py)
    argv = ["benchmarks/results.py", "--tasks", "mrpc", "--methods", "lopa", "--seeds", "0,1",
            "--runs", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    quiet(results.main)
    best = max(results.GRID["lopa"])
    assert calls == [(0, lr, 500) for lr in results.GRID["lopa"]] + [(0, best, 0), (1, best, 0)]
    written = json.loads((tmp_path / "results.json").read_text())
    rows = written["rows"]
    assert [(r["task"], r["method"]) for r in rows] == [("sst2", "lora"), ("mrpc", "lopa"),
                                                        ("mrpc", "lora"), ("mrpc", "zero-shot")]
    assert rows[0] == old and rows[2] == {**old, "task": "mrpc"} and rows[1]["lr"] == best
    assert rows[1]["scores"] == [0.5, 0.6] and rows[1]["command"] == "python " + " ".join(argv)
    assert rows[1]["adapter_bytes"] == 28
    md = (tmp_path / "results.md").read_text()
    assert "| sst2 | lora | acc 90.0 ± 1.0 | 3 | old budget |" in md and "`old command`" in md
    assert ("| mrpc | lopa | f1 55.0 ± 7.1 | 2 | 2000 examples x 2 epochs, lr chosen on 500 held "
            "out of train |") in md

    quiet(results.main)                                 # again: every run is reused, none retrained
    n = len(calls)
    assert n == len(results.GRID["lopa"]) + 2
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows

    monkeypatch.setattr(sys, "argv", argv[:-2] + ["--runs", str(tmp_path / "only"), "--select",
                                                  "only"])
    assert f"\"lr\": {best}" in quiet(results.main)[1]  # only the grid: no seed runs, no table
    assert calls[n:] == [(0, lr, 500) for lr in results.GRID["lopa"]]
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows

    monkeypatch.setattr(results.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 2, stderr="epoch 1/2: 10%\rerror: loss became nan at step 3\n"))
    monkeypatch.setattr(sys, "argv", argv[:-2] + ["--runs", str(tmp_path / "new")])
    with pytest.raises(SystemExit, match=r"^error: `python train.py --task mrpc .*` failed: "
                                         r"error: loss became nan"):
        results.main()


def test_speed_contenders_take_turns_and_ratios_are_per_round():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "ABC"}
    times = speed.interleaved(steps, warmup=1, rounds=2)
    assert calls == list("ABC") * 3 and all(len(t) == 2 for t in times.values())
    # a slow spell in round 2 slows both contenders: the per-round ratio stays 2
    assert speed.ratio([2.0, 20.0, 3.0], [1.0, 10.0, 1.0]) == (2.0, 2.0, 3.0)
