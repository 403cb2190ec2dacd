"""benchmarks/study.py: records that resume the study, paired intervals, the table; train.py faked."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import results, study


def test_paired_difference_and_its_95_percent_interval():
    p = study.paired([0.86, 0.87, 0.85], [0.85, 0.85, 0.86])  # differences 0.01, 0.02, -0.01
    sd = (((0.01 - 0.02 / 3) ** 2 + (0.02 - 0.02 / 3) ** 2 + (-0.01 - 0.02 / 3) ** 2) / 2) ** 0.5
    assert p["n"] == 3 and p["mean"] == pytest.approx(0.02 / 3)
    assert p["high"] - p["mean"] == pytest.approx(4.303 * sd / 3 ** 0.5)  # t(0.975, 2 df) = 4.303
    assert study.interval(p).endswith(", n.s.")                            # the interval holds 0
    assert not study.interval(study.paired([0.9, 0.91, 0.92], [0.8, 0.8, 0.81])).endswith("n.s.")
    assert study.paired([0.9], [0.8])["low"] is None


def test_majority_class_is_the_score_of_one_label_for_every_dev_input():
    labels = [y for _, y in study.data.load_split("mrpc", "dev")]
    pos = sum(labels)                                  # MRPC: most pairs are paraphrases (label 1)
    assert pos > len(labels) / 2                       # F1 of always 1: tp = pos, fp = the rest
    always = study.majority("mrpc")
    assert always["metric"] == pytest.approx(2 * pos / (2 * pos + len(labels) - pos))
    assert always["acc"] == pytest.approx(pos / len(labels))
    labels = [y for _, y in study.data.load_split("sst2", "dev")]
    most = max(sum(labels), len(labels) - sum(labels))
    assert study.majority("sst2")["metric"] == pytest.approx(most / len(labels))  # accuracy


def fake_processes(calls, score, fail_at=None):
    """subprocess.run for train.py and diagnose.py: writes what they would, records the flags."""
    real = subprocess.run

    def run(cmd, **kw):
        if cmd[1:2] not in (["train.py"], ["benchmarks/diagnose.py"]):
            return real(cmd, **kw)                                     # platform.processor() asks uname
        flag = {a: b for a, b in zip(cmd, cmd[1:]) if a.startswith("--")}
        if cmd[1] == "benchmarks/diagnose.py":
            with open(flag["--json"], "w") as f:
                json.dump({"n": 10, "real": {"metric": 0.8, "changed": 0},
                           "mean_e": {"metric": 0.7, "changed": 3}}, f)
            return subprocess.CompletedProcess(cmd, 0)
        calls.append((flag["--method"], int(flag["--seed"]), "--resume" in cmd))
        os.makedirs(flag["--out"], exist_ok=True)
        if len(calls) == fail_at:                                      # a run cut off midway
            open(os.path.join(flag["--out"], "checkpoint.safetensors"), "w").write("{}")
            return subprocess.CompletedProcess(cmd, 130, stderr="interrupted\n")
        with open(os.path.join(flag["--out"], "adapter.json"), "w") as f:
            json.dump({"metrics": {"dev": {"metric": score(flag), "acc": 0.5},
                                   "zero_shot": {"metric": 0.5}},
                       "trainable": 7}, f)
        open(os.path.join(flag["--out"], "adapter.safetensors"), "wb").write(bytes(8))
        return subprocess.CompletedProcess(cmd, 0, stderr="")
    return run


def test_study_records_resume_and_report(tmp_path, monkeypatch):
    calls = []
    gain = {"prompt": 0.80, "lopa": 0.85}
    fake = fake_processes(calls, lambda f: gain[f["--method"]] + int(f["--seed"]) / 100, fail_at=2)
    monkeypatch.setattr(results.subprocess, "run", fake)
    monkeypatch.setattr(study.subprocess, "run", fake)
    monkeypatch.setattr(study, "HERE", str(tmp_path))
    argv = ["study.py", "--arms", "prompt,lopa", "--seeds", "0,1,2", "--runs", str(tmp_path / "runs"),
            "--records", str(tmp_path / "records")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="failed: interrupted"):      # lopa seed 0 is cut off
        study.main()
    assert calls[:2] == [("prompt", 0, False), ("lopa", 0, False)]
    study.main()                                                       # continues: resumes lopa 0
    assert calls.count(("lopa", 0, True)) == 1 and len(calls) == 7    # 6 runs, one of them in 2 parts
    assert len(os.listdir(tmp_path / "records")) == 6
    for r in os.listdir(tmp_path / "records"):                         # committed: no local path
        assert str(tmp_path) not in (tmp_path / "records" / r).read_text()
    out = json.loads((tmp_path / "study.json").read_text())
    lopa = next(r for r in out["rows"] if r["arm"] == "lopa")
    assert lopa["mean"] == pytest.approx(0.86) and lopa["minus_prompt"]["mean"] == pytest.approx(0.05)
    assert lopa["minus_prompt"]["low"] == pytest.approx(0.05)          # the same gain on every seed
    assert lopa["diagnose"]["0"]["mean_e"]["changed"] == 3
    md = (tmp_path / "study.md").read_text()
    always = 100 * out["majority"]["metric"]                           # the score to beat
    assert f"label for every input): {always:.2f}." in md
    assert "| lopa | 86.00 ± 1.00 | 85.00, 86.00, 87.00 | +5.00 [+5.00, +5.00] | - | -10.00, 3 of 10" in md
    n = len(calls)
    study.main()                                                       # everything is reused
    assert len(calls) == n
    monkeypatch.setattr(sys, "argv", argv + ["--report", "--max-train-examples", "8000"])
    study.main()                                                       # another budget: own table
    assert len(calls) == n and (tmp_path / "study.md").read_text() == md
    assert "8000 examples x 2 epochs" in (tmp_path / "study-sst2-n8000-e2.md").read_text()


def test_a_task_scored_by_f1_gets_an_accuracy_column():
    row = {"arm": "lora", "flags": ["--method", "lora"], "question": "q", "trainable": 7,
           "scores": {"0": 0.82, "1": 0.84}, "acc": {"0": 0.70, "1": 0.74}, "zero_shot": 0.66}
    row["mean"], row["std"] = study.mean_std(row["scores"].values())     # as report() sets them
    out = {"task": "mrpc", "metric": "f1", "model": "m", "budget": "b", "hardware": "h",
           "majority": {"metric": 0.8122, "f1": 0.8122, "acc": 0.6838}, "command": "c",
           "rows": [row]}
    md = study.markdown(out)
    assert "every input): 81.22 (F1), accuracy 68.38." in md
    assert "| dev F1, mean ± std |" in md and md.count("dev accuracy") == 1
    assert "| lora | 83.00 ± 1.41 | 82.00, 84.00 | - | - | - | 7 | 72.00 ± 2.83 |" in md
    out["metric"], out["majority"]["metric"] = "acc", 0.6838                # scored by accuracy:
    assert "dev accuracy" in study.markdown(out) and "72.00" not in study.markdown(out)  # no column


def test_figure_draws_every_arm(tmp_path):
    pytest.importorskip("matplotlib")
    from benchmarks import plot_study
    diag = {"0": {"n": 872, "mean_e": {"changed": 3}}}
    rows = [{"arm": "prompt", "scores": {"0": 0.86, "1": 0.87}, "zero_shot": 0.78,
             "minus_prompt": None},
            {"arm": "lopa", "scores": {"0": 0.85, "1": 0.84}, "zero_shot": 0.78, "diagnose": diag,
             "minus_prompt": {"n": 2, "mean": -0.02, "low": -0.05, "high": 0.01}}]
    path = tmp_path / "study.svg"
    plot_study.draw({"task": "sst2", "model": "m", "budget": "b", "rows": rows}, str(path))
    svg = path.read_text()
    assert "prompt (2)" in svg and "lopa (2)" in svg and "of 872" in svg
    assert "> 3<" in svg  # the bar's number: an arm whose mean e changes nothing still shows "0"
    assert "majority" not in svg
    plot_study.draw({"task": "mrpc", "model": "m", "budget": "b", "rows": rows,
                     "majority": {"metric": 0.8122}}, str(path))
    assert "majority class 81.2" in path.read_text()
