"""Crash safety, tested the SQLite way: a run made to die at every write it makes, then resumed, ends
with the adapter of a run that never died, bit for bit; SIGTERM at every step likewise; one run per
folder; a full disk keeps the previous files; and damaged files, odd paths and bad flags end in one
`error:` line and exit status 2, never a traceback."""
import contextlib
import errno
import io
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import predict
import train
from plumbing import adapters, checkpoints
from plumbing.checkpoints import CHECKPOINT, own_folder, read_checkpoint
from plumbing.cli import UserError, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.usefixtures("one_thread")


class Crash(BaseException):
    """The process dying: nothing after it runs (not even an `except Exception`)."""


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in handlers.items():
        signal.signal(s, h)


def flags(model, out, *extra):
    # 16 rows in batches of 8 over 2 epochs: 4 steps, a checkpoint after each, 8 held-out rows
    return ["--task", "sst2", "--model", model, "--out", str(out), "--max-train-examples", "16",
            "--holdout", "8", "--batch-size", "8", "--epochs", "2", "--m", "4", "--hidden", "16",
            "--checkpoint-every", "1", "--dtype", "float32", "--seed", "2", *extra]


def adapter(out):
    return load_file(os.path.join(out, "adapter.safetensors"))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def finish(model, out):
    """Run again after a crash: --resume where a checkpoint exists, else afresh."""
    with contextlib.redirect_stdout(io.StringIO()):
        if os.path.exists(os.path.join(out, CHECKPOINT)):
            code = train.main(flags(model, out, "--resume"))
        else:
            code = train.main(flags(model, out, "--overwrite"))
    assert code == 0


def test_a_crash_at_every_write_resumes_to_the_adapter_of_a_whole_run(tiny_gpt2, tmp_path,
                                                                      monkeypatch):
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main(flags(tiny_gpt2, tmp_path / "whole")) == 0
    whole = adapter(tmp_path / "whole")
    real_replace, writes = os.replace, []

    def counting(src, dst):
        writes.append(dst)
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", counting)
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main(flags(tiny_gpt2, tmp_path / "count")) == 0
    assert len(writes) >= 12, writes  # every checkpoint, metrics.jsonl, the adapter's two files
    for k in range(len(writes)):
        out, calls = tmp_path / f"crash{k}", []

        def dies_at_k(src, dst):
            calls.append(dst)
            if len(calls) == k + 1:
                raise Crash(f"write {k}: {os.path.basename(dst)}")
            real_replace(src, dst)
        monkeypatch.setattr(os, "replace", dies_at_k)
        with pytest.raises(Crash), contextlib.redirect_stdout(io.StringIO()):
            train.main(flags(tiny_gpt2, out))
        monkeypatch.setattr(os, "replace", real_replace)
        finish(tiny_gpt2, out)
        assert same(adapter(out), whole), f"a crash at write {k} ({writes[k]}) changed the adapter"
        assert not [f for f in os.listdir(out) if ".tmp" in f], os.listdir(out)


def test_sigterm_at_every_step_saves_and_resumes_exactly(tiny_gpt2, tmp_path, monkeypatch):
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main(flags(tiny_gpt2, tmp_path / "whole")) == 0
    whole, real_lr_at = adapter(tmp_path / "whole"), train.lr_at
    for k in range(4):
        out, sent = tmp_path / f"term{k}", []

        def lr_at(step, lr, warmup):
            if step == k and not sent:  # SIGTERM arrives during step k
                sent.append(os.kill(os.getpid(), signal.SIGTERM))
            return real_lr_at(step, lr, warmup)
        monkeypatch.setattr(train, "lr_at", lr_at)
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            assert train.main(flags(tiny_gpt2, out)) == 128 + signal.SIGTERM
        assert f"interrupted at step {k + 1}/4" in err.getvalue() and "--resume" in err.getvalue()
        assert read_checkpoint(out)[0]["step"] == k + 1
        monkeypatch.setattr(train, "lr_at", real_lr_at)
        finish(tiny_gpt2, out)
        assert same(adapter(out), whole), f"SIGTERM at step {k} changed the adapter"
        # and the log: each epoch's mean loss over all its steps, before the stop and after
        assert history(out) == history(tmp_path / "whole"), f"SIGTERM at step {k}"


def history(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return f.read()


def test_one_run_owns_its_folder_and_a_killed_one_leaves_no_lock(tiny_gpt2, tmp_path):
    out = tmp_path / "o"
    with own_folder(str(out)):  # as a run in progress holds it
        with pytest.raises(UserError, match=f"in use by another run \\(process {os.getpid()}\\)"):
            train.main(flags(tiny_gpt2, out))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from plumbing.checkpoints import own_folder\n"
         "with own_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(UserError, match=f"process {holder.pid}"):
        train.main(flags(tiny_gpt2, out))
    holder.kill()  # SIGKILL: no handler runs, and the OS drops the lock
    holder.wait()
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main(flags(tiny_gpt2, out)) == 0


@pytest.mark.parametrize("module,nth", [(checkpoints, 3), (adapters, 2)])
def test_a_full_disk_keeps_the_previous_checkpoint_and_adapter(tiny_gpt2, tmp_path, monkeypatch,
                                                               module, nth):
    out, real, calls, before = tmp_path / "o", module.save_file, [], {}

    def full_disk(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) < nth:
            return real(tensors, path, metadata=metadata)
        before.update({f: (out / f).read_bytes() for f in os.listdir(out) if ".tmp" not in f})
        real(tensors, path, metadata=metadata)
        with open(path, "r+b") as f:  # half of it reached the disk
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(module, "save_file", full_disk)
    code, err = as_command(train.main, flags(tiny_gpt2, out))
    assert code == 2 and err.count("\n") == 1 and "no space left on the disk" in err, err
    assert "--resume" in err and "adapter.safetensors" in before and CHECKPOINT in before
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before  # no .tmp file either


def as_command(main, argv):
    """(exit status, stderr) of main(argv) run as the command line runs it."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as e:
            cli(lambda: main(argv))
    return e.value.code, err.getvalue()


def damage(out, name, how):
    path = os.path.join(out, name)
    if how == "garbage":
        with open(path, "wb") as f:
            f.write(b"\x00garbage{")
    elif how == "empty":
        open(path, "wb").close()
    else:  # truncated
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 9)


BAD_TRAIN = {  # name: (extra flags, or a function (model, tmp) -> argv; what the line must say)
    "lr inf": (["--lr", "inf"], "--lr must be positive and finite"),
    "lr nan": (["--lr", "nan"], "--lr must be positive and finite"),
    "lr negative": (["--lr", "-1"], "--lr must be positive"),
    "lr zero": (["--lr", "0"], "--lr must be positive"),
    "batch size 0": (["--batch-size", "0"], "--batch-size must be a positive integer"),
    "epochs -1": (["--epochs", "-1"], "--epochs must be a positive integer"),
    "max-len 0": (["--max-len", "0"], "--max-len must be a positive integer"),
    "checkpoint-every 0": (["--checkpoint-every", "0"], "--checkpoint-every must be"),
    "holdout -1": (["--holdout", "-1"], "--holdout must be >= 0"),
    "holdout all": (["--holdout", "100000"], "leaves no training examples"),
    "max examples 0": (["--max-train-examples", "0"], "--max-train-examples must be"),
    "max examples x": (["--max-train-examples", "x"], "--max-train-examples must be"),
    "unknown task": (["--task", "nope"], "unknown task 'nope'"),
    "unknown method": (["--method", "ia3"], "unknown method 'ia3'"),
    "unknown dtype": (["--dtype", "float16"], "unknown dtype 'float16'"),
    "unknown device": (["--device", "tpu"], "unknown device 'tpu'"),
    "m 0": (["--m", "0"], "m must be >= 1"),
    "r 0": (["--r", "0"], "r must be >= 1"),
    "dropout 1": (["--dropout", "1"], "dropout"),
    "combine max": (["--combine", "max"], "combine must be one of"),
    "encoder-lr -1": (["--encoder-lr", "-1"], "encoder_lr >= 0"),
    "lora r 0": (["--method", "lora", "--lora-r", "0"], "LoRA needs r >= 1"),
    "no model": (["--model", "no/such/model/x"], "no model folder or known model"),
    "max-len below template": (["--max-len", "3"], "too short for the sst2 template"),
}


@pytest.mark.parametrize("case", BAD_TRAIN)
def test_bad_flags_end_in_one_line(tiny_gpt2, tmp_path, case):
    extra, message = BAD_TRAIN[case]
    argv = flags(tiny_gpt2, tmp_path / "o") + extra  # a later flag wins
    code, err = as_command(train.main, argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err


@pytest.fixture(scope="module")
def finished(tiny_gpt2, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "o"
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main(flags(tiny_gpt2, out, "--epochs", "1", "--checkpoint-every", "3")) == 0
    return out


def copy_of(folder, tmp_path):
    import shutil
    shutil.copytree(folder, tmp_path / "c")
    return tmp_path / "c"


@pytest.mark.parametrize("how", ["garbage", "empty", "truncated"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tiny_gpt2, finished, tmp_path, how):
    out = copy_of(finished, tmp_path)
    damage(out, CHECKPOINT, how)
    code, err = as_command(train.main, flags(tiny_gpt2, out, "--epochs", "1", "--checkpoint-every",
                                             "3", "--resume"))
    assert code == 2 and err.count("\n") == 1 and f"{CHECKPOINT} is damaged" in err, err
    assert "delete it" in err


@pytest.mark.parametrize("name,how,message", [
    ("adapter.json", "garbage", "adapter.json is damaged"),
    ("adapter.json", "empty", "adapter.json is damaged"),
    ("adapter.safetensors", "garbage", "cannot read the adapter"),
    ("adapter.safetensors", "truncated", "cannot read the adapter"),
])
def test_a_damaged_adapter_is_refused_in_one_line(finished, tmp_path, name, how, message):
    out = copy_of(finished, tmp_path)
    damage(out, name, how)
    code, err = as_command(predict.main, ["--adapter", str(out), "a fine film"])
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_odd_output_paths_are_refused_in_one_line(tiny_gpt2, tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "is a file"),
                         (tmp_path / "none", "nothing to resume")):
        extra = ["--resume"] if "none" in str(out) else []
        code, err = as_command(train.main, flags(tiny_gpt2, out, *extra))
        assert code == 2 and err.count("\n") == 1 and message in err, (out, err)


def test_resume_of_another_or_a_finished_run_is_refused(finished, tiny_gpt2, tmp_path):
    out = copy_of(finished, tmp_path)
    cases = ((flags(tiny_gpt2, out, "--epochs", "1", "--checkpoint-every", "3", "--resume"),
              "already finished"),
             (flags(tiny_gpt2, out, "--epochs", "1", "--resume", "--seed", "5"), "different run"),
             (flags(tiny_gpt2, out), "already holds a run"))
    for argv, message in cases:
        code, err = as_command(train.main, argv)
        assert code == 2 and err.count("\n") == 1 and message in err, err
