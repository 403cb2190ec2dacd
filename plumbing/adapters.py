"""Adapters on disk and on a server: what a client keeps after training (save_adapter,
load_adapter), and one frozen model answering for many adapters in one batch (mixed_batch_hidden).
"""
import json
import os
from dataclasses import asdict

import safetensors.torch
import torch
from safetensors.torch import load_file, save_file

from plumbing.cli import UserError, atomic_write, write_text
from plumbing.loading import load_model
from lopa import InstanceTuner, last_hidden
from plumbing.methods import METHODS


def trains_encoder(tuner):
    return isinstance(tuner, InstanceTuner) and not tuner.caches_encoder


def note_trained_encoder(tuner, out):
    """Say what a trained encoder (benchmarks/variants.py, --encoder-lr) costs a client."""
    if trains_encoder(tuner):
        n = sum(p.numel() for p in tuner.encoder.parameters())
        print(f"of which {n:,} are the trained encoder's: a client keeps that whole model to make "
              f"its prompts (saved as {out}/encoder.safetensors); the server's model stays frozen")


def save_adapter(tuner, folder, **meta):
    """adapter.safetensors (the trainable tensors) + adapter.json (method, config, and whatever meta
    says: base model, task, metrics...), and encoder.safetensors for a trained encoder. No pickle: a
    client can read them all without trusting code."""
    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in tuner.named_parameters()
             if not k.startswith("encoder.")}
    atomic_write(os.path.join(folder, "adapter.safetensors"), lambda p: save_file(state, p))
    if trains_encoder(tuner):  # tied weights (embeddings = LM head) are stored once
        atomic_write(os.path.join(folder, "encoder.safetensors"),
                     lambda p: safetensors.torch.save_model(tuner.encoder, p))
    info = {"method": tuner.method, "config": asdict(tuner.config),
            "d_model": tuner.model.config.n_embd, **meta}
    atomic_write(os.path.join(folder, "adapter.json"),
                 lambda p: write_text(p, json.dumps(info, indent=2) + "\n"))


def load_adapter(folder, model):
    """(tuner, info) from a folder written by save_adapter, for the same base model."""
    for name in ("adapter.json", "adapter.safetensors"):
        if not os.path.exists(os.path.join(folder, name)):
            raise UserError(f"{folder} is not an adapter folder: {name} is missing")
    try:
        with open(os.path.join(folder, "adapter.json")) as f:
            info = json.load(f)
        state = load_file(os.path.join(folder, "adapter.safetensors"))
        method = METHODS[info["method"]]
        config = method.config(**info["config"])
    except Exception as e:
        raise UserError(f"cannot read the adapter in {folder} "
                        f"({type(e).__name__}: {str(e)[:100]})") from None
    if info.get("d_model") != model.config.n_embd:
        raise UserError(f"adapter in {folder} was trained on {info.get('model')!r} (width "
                        f"{info.get('d_model')}); this model has width {model.config.n_embd}: load "
                        f"the base model the adapter names")
    tuner = method.tuner(model, config)
    try:
        if trains_encoder(tuner):
            safetensors.torch.load_model(tuner.encoder, os.path.join(folder, "encoder.safetensors"))
            state.update({f"encoder.{k}": v for k, v in tuner.encoder.state_dict().items()})
        tuner.load_state_dict(state)  # strict: the same names and shapes, or an error
    except (RuntimeError, FileNotFoundError):
        raise UserError(f"adapter in {folder} does not fit this model, or its encoder.safetensors "
                        f"is missing; was it trained on {info.get('model')!r}?") from None
    return tuner.eval(), info


def load_with_model(folder, device):
    """(tuner, info, tokenizer): the adapter in folder, on the base model its adapter.json names."""
    path = os.path.join(folder, "adapter.json")
    if not os.path.exists(path):
        raise UserError(f"{folder} has no adapter.json: point --adapter at a folder written by "
                        f"train.py")
    try:
        with open(path) as f:
            name = json.load(f)["model"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path} is damaged ({type(e).__name__}: {str(e)[:80]}); train the adapter "
                        f"again, or put back a good copy") from None
    model, tokenizer = load_model(name)
    tuner, info = load_adapter(folder, model.to(device))
    return tuner.to(device), info, tokenizer


@torch.no_grad()
def mixed_batch_prompt(model, tuners, ids, lengths, which):
    """(B, m, d): row i's soft prompt made by tuners[which[i]], for rows from different tasks that
    share one pass of the frozen model (mixed_batch_hidden; generate.generate's per-row prompt)."""
    if any(t.method == "lora" for t in tuners):
        raise UserError("only input-side tuners (lopa, prompt, idpg) can share a batch this way; "
                        "LoRA changes the model's weights")
    if len({t.config.m for t in tuners}) > 1:
        raise UserError("tuners in one batch must use the same prompt length m")
    prompt = torch.empty(ids.size(0), tuners[0].config.m, model.config.n_embd, device=ids.device)
    for k, t in enumerate(tuners):
        rows = (which == k).nonzero().squeeze(1)
        if len(rows):
            prompt[rows] = t.prompt(ids[rows], lengths[rows])
    return prompt


@torch.no_grad()
def mixed_batch_hidden(model, tuners, ids, lengths, which):
    """One forward pass of the frozen model over rows from different tasks: row i carries the prompt
    of tuners[which[i]]. The computation is the same for every row; only the input differs."""
    prompt = mixed_batch_prompt(model, tuners, ids, lengths, which)  # (B, m, d)
    return last_hidden(model, ids, lengths, prompt)                   # (B, d)
