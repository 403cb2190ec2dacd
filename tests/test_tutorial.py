"""tutorial.md cannot drift from the code: its python blocks run in order in one namespace and paste
into the plain Python prompt, its quotes of the code are verbatim, the `python lopa.py` output it
shows is what lopa.py prints, and the names, files and flags it mentions exist."""
import code
import contextlib
import importlib
import io
import os
import re
import runpy
import signal
import tempfile
import unittest.mock

import pytest

from plumbing import methods, notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIAL = os.path.join(ROOT, "tutorial.md")
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\S*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)
MARKER = re.compile(r"<!-- (quote|output): (.+?) -->")


def read():
    with open(TUTORIAL, encoding="utf-8") as f:
        return f.read()


def blocks(text=None):
    """(language, code, line of the code's first line, the marker comment just above the fence or None)."""
    text = read() if text is None else text
    for m in FENCE.finditer(text):
        indent = len(m["indent"])
        code = "".join(line[indent:] for line in m["code"].splitlines(keepends=True))
        above = text[:m.start()].rstrip().rsplit("\n", 1)[-1].strip()
        yield m["lang"], code, text.count("\n", 0, m.start("code")) + 1, MARKER.fullmatch(above)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_notebook_is_the_tutorial_and_runs_top_to_bottom(monkeypatch, capsys, tmp_path):
    """tutorial.ipynb is what `python -m plumbing.notebook` makes of tutorial.md now, and its code
    cells (the tutorial's python blocks, in order) run in one namespace, as a kernel runs them."""
    with open(os.path.join(ROOT, "tutorial.ipynb"), encoding="utf-8") as f:
        assert f.read() == notebook.render(read()), "tutorial.ipynb is stale: python -m plumbing.notebook"
    cells = [c for c in notebook.notebook(read())["cells"] if c["cell_type"] == "code"]
    assert cells[0]["source"][-1].startswith("%pip install")  # the set-up cell, not run here
    python = [(code, line) for lang, code, line, _ in blocks() if lang == "python"]
    assert ["".join(c["source"]) for c in cells[1:]] == [code.rstrip("\n") for code, _ in python]
    assert len(python) >= 10, "fewer python blocks than expected: was a fence renamed?"
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the snippets' mkdtemp() folders land here
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # train.main's own
    namespace = {"__name__": "tutorial"}
    try:
        for code, line in python:
            # Padding with newlines makes a traceback point at the failing line of tutorial.md.
            exec(compile("\n" * (line - 1) + code, TUTORIAL, "exec"), namespace)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    assert "refused:" in capsys.readouterr().out


class Console(code.InteractiveConsole):
    """The plain Python prompt, but an error stops the test instead of being printed."""

    def showsyntaxerror(self, filename=None, **kwargs):
        raise

    def showtraceback(self):
        raise


def test_every_python_block_pastes_into_the_plain_prompt(monkeypatch, tmp_path):
    # The prompt reads a paste line by line: an indented block ends only at a blank line, and a
    # blank line inside a def or a for ends it early. exec() above forgives both.
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    handler = signal.getsignal(signal.SIGINT)
    console = Console({"__name__": "tutorial"})
    python, shown = [], {}
    for lang, text, line, marker in blocks():
        if lang == "python":
            python.append((text, line))
        elif marker and marker.groups() == ("output", "the python block above"):
            shown[python[-1][1]] = text
    assert len(shown) >= 4
    try:
        with unittest.mock.patch.dict(methods.METHODS):
            for snippet, first in python:
                printed = io.StringIO()
                with contextlib.redirect_stdout(printed):
                    for i, line in enumerate(snippet.splitlines()):
                        try:
                            console.push(line)
                        except Exception as err:
                            raise AssertionError(f"tutorial.md line {first + i}, pasted: {line!r}: "
                                                 f"{type(err).__name__}: {err}") from err
                    assert not console.push(""), f"the block at tutorial.md line {first} is left open"
                check_printed(printed.getvalue(), shown.get(first), first)
    finally:
        signal.signal(signal.SIGINT, handler)


def check_printed(printed, shown, first):
    """What a pasted block printed is what the text shows below it (`…` stands for anything), and a
    block with nothing shown prints nothing: no echo of a value the text does not mention."""
    got = printed.rstrip("\n").splitlines()
    if shown is None:
        assert not got, f"the block at tutorial.md line {first} prints, but the text shows nothing:\n{printed}"
        return
    want = shown.rstrip("\n").splitlines()
    assert len(got) == len(want), f"the block at tutorial.md line {first} printed:\n{printed}"
    for g, w in zip(got, want):
        pattern = ".*".join(re.escape(part) for part in w.split("…"))
        assert re.fullmatch(pattern, g), f"tutorial.md line {first}: printed {g!r}, the text shows {w!r}"


def test_fences_are_labelled():
    # An unlabelled or misspelt fence would silently drop a snippet from the run above.
    langs = [lang for lang, *_ in blocks()]
    assert set(langs) <= {"python", "bash", "text"}, sorted(set(langs))  # a diagram is an image


def test_fence_parser_sees_indented_blocks():
    text = "1. item\n\n   <!-- quote: x.py -->\n   ```text\n       a = 1\n   ```\n```python\nb = 2\n```\n"
    found = list(blocks(text))
    assert [(lang, code) for lang, code, *_ in found] == [("text", "    a = 1\n"), ("python", "b = 2\n")]
    assert found[0][3].groups() == ("quote", "x.py") and found[1][3] is None


def contiguous_in(quote, source):
    want = [line.strip() for line in quote.splitlines() if line.strip()]
    have = [line.strip() for line in source.splitlines() if line.strip()]
    return any(have[i:i + len(want)] == want for i in range(len(have) - len(want) + 1))


def test_quotes_of_the_code_are_verbatim():
    quotes = [(code, marker[2]) for lang, code, _, marker in blocks() if marker and marker[1] == "quote"]
    assert len(quotes) >= 5
    for quoted, name in quotes:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            assert contiguous_in(quoted, f.read()), f"tutorial.md quotes lines that {name} no longer has:\n{quoted}"
    assert not contiguous_in("x = 1\ny = 2", "x = 1\nz = 3\ny = 2")


def test_shown_lopa_py_output_is_what_it_prints():
    (shown,) = [code for lang, code, _, marker in blocks() if marker and marker.groups() == ("output", "python lopa.py")]
    out = io.StringIO()
    # lopa.py run as a script registers its classes again: undo that on the way out
    with contextlib.redirect_stdout(out), unittest.mock.patch.dict(methods.METHODS):
        runpy.run_path(os.path.join(ROOT, "lopa.py"), run_name="__main__")
    assert shown == out.getvalue()


def test_sections_mirror_the_code():
    titles = re.findall(r"^## (\d)\. (.+)$", read(), re.M)
    assert titles == [("1", "GPT-2 in a page"), ("2", "Prompt tuning"), ("3", "LOPA"),
                      ("4", "Classification with label words"), ("5", "The training loop"),
                      ("6", "Does prompt tuning strike back here?"), ("7", "One frozen model, many tasks, one batch"),
                      ("8", "Soft prompts that write text"), ("9", "Exercises")]


def slug(heading):
    """The anchor GitHub gives a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_exercises_say_what_they_need_and_take_show_and_link_their_solution():
    text = read()
    section = text[text.index("## 9. Exercises"):text.index("## Appendix")]
    exercises = re.split(r"^### Exercise (\d+): ", section, flags=re.M)[1:]
    numbers, bodies = exercises[0::2], exercises[1::2]
    assert len(bodies) >= 15 and numbers == [str(i) for i in range(1, len(bodies) + 1)]
    parts = ("**Needs.**", "**Time.**", "**Goal.**", "**Run.**", "**What you should see.**",
             "**Solution.**")
    for n, body in zip(numbers, bodies):
        assert all(p in body for p in parts), f"exercise {n} lacks one of {parts}"
        assert [body.index(p) for p in parts] == sorted(body.index(p) for p in parts), n
        assert "<details>" not in body, f"exercise {n} prints its solution"
        assert "exercises/solutions/" in body[body.index("**Solution.**"):], n
    outs = []
    for line in inline_code(section):
        if re.search(r"python (train\.py|exercises/(mean_pool|idpg|new_task)\.py) .*--", line):
            # a run that trains: the model of the measured numbers, and a folder of its own
            assert "--model smollm2" in line and re.search(r"--out runs/ex\d+", line), line
            outs.append(re.search(r"--out (\S+)", line)[1])
    assert len(outs) >= 10 and len(outs) == len(set(outs)), outs
    for path, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", section):
        assert os.path.exists(os.path.join(ROOT, path)), f"section 9 links {path}: not there"
        if anchor:
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                headings = [slug(h) for h in re.findall(r"^#+ (.+)$", f.read(), re.M)]
            assert anchor in headings, f"section 9 links {path}#{anchor}, which is no heading there"


def inline_code(text):
    """Inline `code` spans outside fenced blocks, and the lines of bash blocks."""
    for lang, block, *_ in blocks(text):
        if lang == "bash":
            yield from block.splitlines()
    yield from re.findall(r"`([^`\n]+)`", FENCE.sub("", text))


def test_mentioned_files_flags_and_names_exist():
    text = read()
    spans = list(inline_code(text))
    # a path inside another folder (the official repositories' utils/model.py) is not this project's file
    folders = r"(?:(?:exercises/solutions|exercises|benchmarks|tests|plumbing|docs)/)?"
    for path in set(re.findall(rf"(?<![/\w]){folders}\w+\.py\b", text)):
        assert os.path.exists(os.path.join(ROOT, path)), f"tutorial.md mentions {path}, which does not exist"
    with open(os.path.join(ROOT, "tests", "conftest.py"), encoding="utf-8") as f:
        sources = f.read()  # --student
    for folder in (".", "exercises", "exercises/solutions", "benchmarks", "plumbing"):
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith(".py"):
                with open(os.path.join(ROOT, folder, name), encoding="utf-8") as f:
                    sources += f.read()
    import train
    method_flags = set(train.method_flags())  # made from the methods' configs, not written out
    for flag in {f for span in spans for f in re.findall(r"(?<![\w-])--[a-z][a-z-]*", span)} - {"--no-deps"}:
        assert f'"{flag}"' in sources or flag in method_flags, f"tutorial.md mentions {flag}, which no script defines"
    names = ("data", "lopa", "model", "train", "llama", "generate", "torch", "benchmarks.variants",
             *(f"plumbing.{name}" for name in ("adapters", "checkpoints", "cli", "distributed",
                                              "glue_files", "loading", "methods", "metrics")),
             *(f"exercises.solutions.{name}" for name in
               ("count_params", "mean_pool", "nearest_tokens", "new_task", "serve_two", "idpg", "beam")),
             "builtins")
    modules = {name.rsplit(".", 1)[-1]: importlib.import_module(name) for name in names}
    snippets = "".join(code for lang, code, *_ in blocks(text) if lang == "python")
    defined = tuple(re.findall(r"^def (\w+)", snippets, re.M))
    owners = {**modules, **{name: getattr(modules["lopa"], name)
                            for name in ("LOPA", "LoRA", "PromptTuning", "Tuner", "InstanceTuner")},
              "GPT": modules["model"].GPT, "CausalSelfAttention": modules["model"].CausalSelfAttention}
    for span in spans:
        if re.fullmatch(r"\w*_\w*(\(\))?", span):  # a name like `base_hidden` or `CPU_TRAIN_EXAMPLES`
            assert re.search(rf"\b{span.removesuffix('()')}\b", sources), f"tutorial.md mentions {span}, found nowhere"
        for owner, attr in re.findall(r"\b(\w+)\.(\w+)", span):
            if owner in owners and attr not in ("py", "tsv", "json", "jsonl", "md"):  # model.py: a file
                # `model` names the module and the snippets' model alike: model.hidden_at is GPT's
                found = hasattr(owners[owner], attr) or owner == "model" and hasattr(owners["GPT"], attr)
                assert found, f"tutorial.md mentions {owner}.{attr}, which does not exist"
        call = re.match(r"([a-z_]+)\(", span)
        if call and call[1] not in ("model", "loaded", "tuner") + defined:  # variables, and the snippets' own functions
            assert any(hasattr(m, call[1]) for m in owners.values()), f"tutorial.md mentions {call[1]}(), found nowhere"


def table_cells(text):
    """The inline code spans of markdown tables' cells, outside fenced blocks."""
    for line in FENCE.sub("", text).splitlines():
        if line.startswith("|") and not re.fullmatch(r"[|\-: ]+", line):
            for cell in line.strip("|").split("|"):
                yield from re.findall(r"`([^`\n]+)`", cell)


def code_sources():
    text = ""
    for folder in (".", "plumbing", "benchmarks", "exercises/solutions"):
        for name in sorted(os.listdir(os.path.join(ROOT, folder))):
            if name.endswith(".py"):
                with open(os.path.join(ROOT, folder, name), encoding="utf-8") as f:
                    text += f.read()
    return text


def test_code_quoted_in_prose_and_tables_is_in_the_code():
    """An inline quote of a tuner's code (`self....`) is a line the code has, whitespace aside; a bare
    name in a table cell (`z_i`, `encode`) is a name the code defines or uses."""
    text, sources = read(), code_sources()
    squeezed = re.sub(r"\s+", " ", sources)
    quotes = [span for span in inline_code(text) if "self." in span]
    assert len(quotes) >= 3
    for span in quotes:
        if "LatentPromptAttentionGenerator" in span:  # the official code's, named as it is there
            continue
        assert re.sub(r"\s+", " ", span) in squeezed, f"tutorial.md quotes `{span}`, which no file has"
    cells = list(table_cells(text))
    assert len(cells) >= 20, "fewer table cells than expected: did the table parser break?"
    for span in cells:
        for name in re.findall(r"(?<![\w.-])([A-Za-z_]\w*)(?![\w.(])", span):
            if not span.startswith("--") and name not in ("is", "e"):
                assert re.search(rf"\b{name}\b", sources), f"a table in tutorial.md names {name}: not in the code"


def test_one_line_commands_import_what_exists():
    """`python -c "..."` lines in bash blocks are not run (they need a real model), but the names
    they import must exist where they import them from."""
    commands = []
    for path in (TUTORIAL, os.path.join(ROOT, "exercises", "solutions", "README.md")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        commands += re.findall(r'python -c "([^"]+)"', "".join(
            block for lang, block, *_ in blocks(text) if lang == "bash"))
    assert len(commands) >= 2
    for command in commands:
        for module, names in re.findall(r"from ([\w.]+) import ([\w, ]+)", command):
            imported = importlib.import_module(module)
            for name in names.replace(" ", "").split(","):
                assert hasattr(imported, name), f"`python -c` imports {name} from {module}: not there"
