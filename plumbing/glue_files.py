"""Reading GLUE's files into rows [(texts, label id), ...]: the bundled TSVs in assets/glue, and the
hub's parquet files for the tasks not bundled. data.load_split chooses the file; these read it, and
name the file and line of anything malformed. check_sha256 checks the bundled files.
"""
import hashlib
import re
from pathlib import Path

from plumbing.cli import UserError

HUB_REPO = "nyu-mll/glue"  # Hugging Face dataset repo with GLUE as parquet, for tasks not bundled
BUNDLED = "sst2, mrpc, rte, cola (and qnli dev/test)"


def read_tsv(task, path, labelled):
    # Split on tabs ourselves: GLUE's fields hold bare `"`, which CSV quoting would swallow
    # across lines.
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror}); bundled tasks: {BUNDLED}") from None
    lines = data.removeprefix(b"\xef\xbb\xbf").split(b"\n")  # MRPC's header starts with a UTF-8 BOM
    if lines[-1] == b"":
        lines.pop()  # the final newline (CoLA's dev.tsv has none)
    header = list(task.columns) if labelled and task.columns else None
    want = list(task.text_cols) + ([task.label_col] if labelled else [])
    rows = []
    for n, raw in enumerate(lines, 1):
        try:
            fields = raw.decode("utf-8").removesuffix("\r").split("\t")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}:{n}: not valid UTF-8 (byte {e.start} of the line); "
                            f"save the file as UTF-8") from None
        if header is None:
            header = fields
            if missing := [c for c in want if c not in header]:
                raise UserError(f"{path}:{n}: header lacks column(s) {missing}; "
                                f"it has {header[:8]}")
            continue
        if len(fields) != len(header):
            raise UserError(f"{path}:{n}: {len(fields)} tab-separated fields, "
                            f"expected {len(header)} ({', '.join(header)})")
        row = dict(zip(header, fields))
        label = -1
        if labelled:
            if (raw_label := row[task.label_col]) not in task.labels:
                raise UserError(f"{path}:{n}: unknown label {raw_label[:40]!r}, "
                                f"expected one of {list(task.labels)}")
            label = task.labels.index(raw_label)
        rows.append((tuple(row[c] for c in task.text_cols), label))
    if not rows:
        raise UserError(f"{path}:{max(len(lines), 1)}: no data rows")
    return rows


def read_parquet(task, split, name):
    try:
        from huggingface_hub import hf_hub_download
        # cached: later calls work offline
        path = hf_hub_download(HUB_REPO, name, repo_type="dataset")
    except Exception as e:
        raise UserError(f"cannot get {task.name} {split} ({name}) from the hub dataset {HUB_REPO}, "
                        f"and it is not in the cache ({type(e).__name__}); "
                        f"offline, use a bundled task: {BUNDLED}") from None
    try:
        import pyarrow.parquet as pq  # optional: only the hub tasks need it
    except ImportError:
        raise UserError(f"reading {task.name} {split} needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path, columns=[*task.text_cols, "label"]).to_pydict()
    except Exception as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e)[:120]}); "
                        f"delete it to download again") from None
    lowest = -1 if split == "test" else 0
    for i, y in enumerate(table["label"]):
        if y is None or not lowest <= y < len(task.labels):
            raise UserError(f"{path}: row {i}: label {y} is not in "
                            f"{lowest}..{len(task.labels) - 1}")
    return [(tuple(table[c][i] or "" for c in task.text_cols), int(y))
            for i, y in enumerate(table["label"])]


def check_sha256(data_dir):
    """Check every bundled file against the sha256 in its SOURCE.md table; return those checked."""
    checked = []
    for source in sorted(Path(data_dir).glob("*/SOURCE.md")):
        for name, want in re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$",
                                     source.read_text("utf-8"), re.M):
            path = source.parent / name
            if (got := hashlib.sha256(path.read_bytes()).hexdigest()) != want:
                raise UserError(f"{path}: sha256 {got[:12]}... is not {want[:12]}... as SOURCE.md "
                                f"says: the file was changed (git checkout restores it)")
            checked.append(str(path))
    return checked
