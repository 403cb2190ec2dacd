"""What every command line of the project shares: the user-facing error, the way a CLI reports it,
the device and the dtype it runs in, atomic writes, and the config fields that become flags."""
import contextlib
import errno
import os
import sys
from dataclasses import field

import torch


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, bad file). The CLIs print it as one line."""


def option(default, help, flag=""):
    """A config field that train.py offers as the flag --NAME (or `flag`; None: no flag)."""
    return field(default=default, metadata={"help": help, "flag": flag})


def check_choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def cli(fn):
    """Run fn() as a command: a UserError is one `error:` line and exit status 2, no traceback."""
    try:
        sys.exit(fn())
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process meets it; one says it
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted; files already in --out are complete "
              "(a checkpoint there continues with --resume)", file=sys.stderr)
        sys.exit(130)


def atomic_write(path, write):
    """write(tmp_path), then make it durable and rename it into place, as SQLite's users do: the
    file is fsynced before the rename and its folder after, so a crash or a power cut leaves the old
    file or the new one at `path`, never half of one. A failed write (a full disk, say) leaves the
    old file as it was, no temporary file behind, and ends in one UserError line."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        sync_folder(os.path.dirname(path) or ".")
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        why = "no space left on the disk" if e.errno == errno.ENOSPC else e.strerror or str(e)
        raise UserError(f"cannot write {path} ({why}); what was there before is kept. Free space "
                        f"or fix the folder, then run again (a training run: add --resume)") \
            from None


def sync_folder(folder):
    """fsync a folder, so that a rename in it survives a power cut (not possible on Windows)."""
    if os.name == "posix":
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def pick_device(name):
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but PyTorch sees no CUDA GPU here: use --device cpu/auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps, but this PyTorch has no Apple GPU; use --device cpu or auto")
    if name not in ("cuda", "mps", "cpu"):
        raise UserError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return name


def native_bfloat16():
    """"AMX" or "AVX-512 BF16" when this CPU multiplies bfloat16 in hardware, else None. The
    answer is torch's own CPU feature check (cpuinfo), the one its kernels consult."""
    features = getattr(torch._C._cpu, "_get_cpu_capability", dict)()
    return ("AMX" if features.get("amx_bf16") else
            "AVX-512 BF16" if features.get("avx512_bf16") else None)


def pick_dtype(name, device):
    """--dtype's torch dtype and why: "auto" is bfloat16 on a CUDA GPU that has it and on a CPU
    that multiplies bfloat16 in hardware (about twice float32's speed there), else float32."""
    if name not in ("auto", "float32", "bfloat16"):
        raise UserError(f"unknown dtype {name!r}; choose auto, float32 or bfloat16")
    if name != "auto":
        return getattr(torch, name), "--dtype"
    if device.startswith("cuda"):
        has = torch.cuda.is_bf16_supported()
        return (torch.bfloat16, "this GPU has it") if has else (torch.float32, "this GPU lacks it")
    if device != "cpu":
        return torch.float32, f"bfloat16 is not chosen on {device}"
    feature = native_bfloat16()  # one CPU feature query, its answer also the reason
    return (torch.bfloat16, f"this CPU has {feature}") if feature else (
        torch.float32, "this CPU has no AVX-512 BF16 or AMX")


def autocast(device, dtype):
    """Forward passes in dtype. In bfloat16 the frozen model is held in bfloat16 (train.py casts
    it once); autocast runs the tuner's matrix products in bfloat16 too while its parameters stay
    float32. For float32, nothing at all."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
