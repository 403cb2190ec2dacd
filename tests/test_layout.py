"""The textbook's promises about its own shape: the root holds the lesson only, the four core files
fit an evening (<= 900 non-blank lines, no function over 40 lines), no attribute-bag class, no
import circle anywhere, and README.md is a guide of at most 150 lines."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LESSON = {"model.py", "llama.py", "lopa.py", "data.py", "train.py", "predict.py", "toy.py",
          "generate.py"}
CORE = ("model.py", "lopa.py", "data.py", "train.py")


def source(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def test_the_root_holds_the_lesson_only():
    assert {f for f in os.listdir(ROOT) if f.endswith(".py")} == LESSON


def test_the_core_fits_an_evening():
    assert sum(1 for f in CORE for line in source(f).splitlines() if line.strip()) <= 900
    for f in CORE:
        for node in ast.walk(ast.parse(source(f))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                assert n <= 40, f"{f}: {node.name} is {n} lines long"


def test_no_class_is_an_empty_bag_of_attributes():
    # a class with no fields, no methods and no base but object, filled in from outside
    for f in CORE:
        for node in ast.walk(ast.parse(source(f))):
            if isinstance(node, ast.ClassDef):
                body = [n for n in node.body if not (isinstance(n, ast.Expr)
                                                     and isinstance(n.value, ast.Constant))]
                assert body or node.bases, f"{f}: class {node.name} holds nothing of its own"


def modules():
    """{module name: its file} for the root, plumbing/ and benchmarks/."""
    found = {}
    for folder in ("", "plumbing", "benchmarks"):
        for name in os.listdir(os.path.join(ROOT, folder or ".")):
            if name.endswith(".py"):
                stem = name[:-3]
                module = (f"{folder}.{stem}" if stem != "__init__" else folder) if folder else stem
                found[module] = os.path.join(folder, name)
    return found


def imports(module, path, known):
    """The project's modules that `module` imports, wherever in the file the import stands."""
    out = set()
    folder = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(ast.parse(source(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            # scripts in benchmarks/ import their neighbours by bare name
            for candidate in (name, f"{folder}.{name}" if folder else name):
                if candidate in known and candidate != module:
                    out.add(candidate)
    return out


def test_no_import_circle():
    known = modules()
    graph = {m: imports(m, path, known) for m, path in known.items()}
    state = {}

    def visit(m, trail):
        state[m] = "open"
        for n in sorted(graph[m]):
            assert state.get(n) != "open", f"import circle: {' -> '.join(trail + [m, n])}"
            if n not in state:
                visit(n, trail + [m])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert "plumbing.loading" in graph["train"] and "model" in graph["plumbing.loading"]


def test_readme_is_a_guide():
    assert len(source("README.md").splitlines()) <= 150
