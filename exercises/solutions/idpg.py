"""Exercise 9's reference: IDPG is lopa.IDPG (`train.py --method idpg`), read it there. This file
only registers that class under the exercise's name, my_idpg, so that the exercise's command and
tests run the same way on your exercises/idpg.py and on the reference.

    python exercises/solutions/idpg.py --task sst2    # = train.py --method idpg, under another name
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import lopa  # noqa: E402
import train  # noqa: E402
from lopa import IDPGConfig  # noqa: E402
from plumbing.methods import register  # noqa: E402


class IDPG(lopa.IDPG):
    method = "my_idpg"


register(IDPG, IDPGConfig, lr=1e-3)


def main(argv=None):
    return train.main([*(sys.argv[1:] if argv is None else argv), "--method", "my_idpg"])


if __name__ == "__main__":
    from plumbing.cli import cli
    cli(main)
