"""A new classification task from your own TSV files, trained by train.py unchanged.

FOLDER holds train.tsv and dev.tsv: UTF-8, tab-separated, a header line naming the columns `text`
and `label`, each label `neg` or `pos`. For other data, change tsv_task below: the columns, the raw
labels, one label word per label (each a single token with its leading space), and a template whose
last token is where the model should say the label word.

    python exercises/solutions/new_task.py FOLDER --epochs 2   # any train.py flag; the task: "tsv"
"""
import os
import sys
from unittest.mock import patch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import data  # noqa: E402
import train  # noqa: E402
from plumbing.cli import UserError  # noqa: E402


def tsv_task(folder, name="tsv"):
    # load_split joins the data folder with this, and an absolute path wins
    folder = os.path.abspath(folder)
    return data.Task(name, text_cols=("text",), label_col="label", labels=("neg", "pos"),
                     label_words=[" bad", " good"], template="Text: {0}\nOverall, it was",
                     metric="acc", files={"train": os.path.join(folder, "train.tsv"),
                                          "dev": os.path.join(folder, "dev.tsv")})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        raise UserError("usage: python exercises/solutions/new_task.py FOLDER [train.py flags]")
    task = tsv_task(argv[0])
    with patch.dict(data.TASKS, {task.name: task}):  # registered for this run only
        return train.main(["--task", task.name, *argv[1:]])


if __name__ == "__main__":
    from plumbing.cli import cli
    cli(main)
