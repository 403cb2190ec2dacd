"""Run train.py's loop, unchanged, on a tuner of your own: it is built wherever train.py would build LOPA.

train.py takes each method's tuner and config classes from lopa.METHODS. For one run, METHODS["lopa"] is
swapped for `make(model, config)`, which receives the LOPAConfig that train.py builds from --m, --r, --hidden
and --combine; afterwards METHODS is as before. train.py's own lines keep saying "method: lopa" (and hand
the tuner LOPA's cached e, the frozen model's last-token state); the saved adapter.json names the real
method, which predict.py does not know, so it refuses the adapter rather than misreading it.
"""
import argparse
import os
from unittest.mock import patch

import train
from lopa import METHODS, LOPAConfig


def train_in_place_of_lopa(name, make, argv):
    """train.main(argv + ["--method", "lopa"]) with make(model, config) as the tuner; --out defaults to
    runs/TASK-{name}, so that a real LOPA run in runs/TASK-lopa is left alone."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--task")
    p.add_argument("--out")
    known, _ = p.parse_known_args(argv)
    if known.out is None and known.task:
        argv = [*argv, "--out", os.path.join("runs", f"{known.task}-{name}")]
    print(f"{name}: train.py's loop, with {name} built where LOPA would be (so its lines say lopa)")
    with patch.dict(METHODS, {"lopa": (make, LOPAConfig)}):
        return train.main([*argv, "--method", "lopa"])
