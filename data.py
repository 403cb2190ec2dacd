"""GLUE tasks as label-word classification for a frozen causal LM: templates, loading (the files
themselves are read by plumbing/glue_files.py), a run's splits, batching. plumbing/metrics.py
scores them.

Follows the verbaliser framing of LOPA's GLUE experiments (Jain et al., NeurIPS 2024), adapted
to a causal LM: the filled template ends where the label word would come, and the LM's next-token
logits for the label words at the last real token are the class scores.

    task = TASKS["sst2"]
    rows = load_split("sst2", "dev")                          # [(texts, label), ...]
    ids = [tokenize(task, texts, tokenizer, 256) for texts, _ in rows]
    # b["ids"], b["lengths"], ...
    for b in batches(ids, [y for _, y in rows], 16, shuffle=True): ...
"""
import os
import re
from dataclasses import dataclass, field

import torch

from plumbing.cli import UserError
from plumbing.glue_files import read_parquet, read_tsv

HERE = os.path.dirname(os.path.abspath(__file__))
DATA_DIR = os.path.join(HERE, "assets", "glue")  # the bundled files (plumbing/glue_files.py)
# train.py's subset on a CPU, by the run's dtype: docs/study.md, "Choosing the CPU budget"
CPU_TRAIN_EXAMPLES = {torch.float32: 2000, torch.bfloat16: 4000}


@dataclass
class Task:
    name: str              # GLUE task name, the key in TASKS
    text_cols: tuple       # column(s) holding the input text(s), in template slot order {0}, {1}
    label_col: str         # column holding the raw label (test files have none)
    labels: tuple          # raw TSV label of each label id; parquet files store the id itself
    label_words: list      # what the LM should say next for each label id: 1 token, leading space
    template: str          # prompt with slots {0}, {1}; the label word is the token right after it
    metric: str            # GLUE's main metric: "acc", "f1" (positive class 1) or "mcc"
    files: dict = field(default_factory=dict)  # split -> a .tsv here (<name>/<split>.tsv) or hub
    columns: tuple = ()    # column names of train/dev files that have no header line (CoLA)
    generates = False      # a class label is the answer, not text (generate.TextTask: True)
    literals: list = field(init=False, repr=False)  # the template's text around the slots
    slots: list = field(init=False, repr=False)     # (text number, space before it?) per slot

    def __post_init__(self):
        if self.metric not in ("acc", "f1", "mcc"):
            raise UserError(f"task {self.name}: metric {self.metric!r} is not one of acc, f1, mcc")
        if len(self.label_words) != len(self.labels):
            raise UserError(f"task {self.name}: {len(self.label_words)} label words for "
                            f"{len(self.labels)} labels")
        parts = re.split(r"\{(\d)\}", self.template)  # literal, slot, literal, ..., literal
        slots = [int(s) for s in parts[1::2]]
        if sorted(slots) != list(range(len(self.text_cols))):
            raise UserError(f"task {self.name}: template needs slots "
                            f"{{0}}..{{{len(self.text_cols) - 1}}} once each")
        # BPE tokenizers attach a space to the word after it ("Ġgreat"), so the space before a slot
        # travels with the text: each piece then tokenizes exactly as inside the whole prompt.
        lits = parts[0::2]
        self.slots = [(s, lit.endswith(" ")) for s, lit in zip(slots, lits)]
        self.literals = [lit.removesuffix(" ") for lit in lits[:-1]] + lits[-1:]
        self.files = {s: f"{self.name}/{s}.tsv" for s in ("train", "dev", "test")} | self.files

    def fill(self, *texts):
        """The prompt as text (for reading; tokenize() is what the model sees)."""
        return self.template.format(*map(clean, texts))


YES_NO = "\nQuestion: {}? Yes or No?\nAnswer:"
hub = lambda task, split: f"{task}/{split}-00000-of-00001.parquet"  # a GLUE file on the hub
TASKS = {t.name: t for t in [
    Task("sst2", ("sentence",), "label", ("0", "1"), [" negative", " positive"],
         "Review: {0}\nSentiment:", "acc"),
    Task("cola", ("sentence",), "label", ("0", "1"), [" No", " Yes"],
         "Sentence: {0}" + YES_NO.format("Is this sentence grammatically correct"), "mcc",
         columns=("source", "label", "mark", "sentence")),
    Task("mrpc", ("#1 String", "#2 String"), "Quality", ("0", "1"), [" No", " Yes"],
         "Sentence 1: {0}\nSentence 2: {1}"
         + YES_NO.format("Is sentence 2 a paraphrase of sentence 1"), "f1"),
    Task("rte", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"),
         [" Yes", " No"],
         "Sentence 1: {0}\nSentence 2: {1}" + YES_NO.format("Does sentence 1 imply sentence 2"),
         "acc"),
    # Hub tasks: label ids follow the hub's ClassLabel order, which bundled QNLI dev.tsv maps onto.
    Task("qnli", ("question", "sentence"), "label", ("entailment", "not_entailment"),
         [" Yes", " No"],
         "Question: {0}\nSentence: {1}" + YES_NO.format("Does the sentence answer the question"),
         "acc", {"train": hub("qnli", "train")}),
    Task("mnli", ("premise", "hypothesis"), "label", ("entailment", "neutral", "contradiction"),
         [" Yes", " Maybe", " No"],
         "Premise: {0}\nHypothesis: {1}\n"
         "Question: Does the premise imply the hypothesis? Yes, No or Maybe?\nAnswer:",
         "acc", {"train": hub("mnli", "train"), "dev": hub("mnli", "validation_matched"),
                 "test": hub("mnli", "test_matched")}),
    Task("qqp", ("question1", "question2"), "label", ("0", "1"), [" No", " Yes"],
         "Question 1: {0}\nQuestion 2: {1}" + YES_NO.format("Do both questions ask the same thing"),
         "f1", {"train": hub("qqp", "train"), "dev": hub("qqp", "validation"),
                "test": hub("qqp", "test")}),
]}


def get_task(name):
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
    return TASKS[name]


# ----------------------------------------------------------------------------- loading

def load_split(task_name, split, data_dir=DATA_DIR):
    """[(texts, label id), ...] for split "train", "dev" or "test" (test labels are -1)."""
    task = get_task(task_name)
    if split not in task.files:
        raise UserError(f"task {task_name} has no split {split!r}: "
                        f"use one of {', '.join(task.files)}")
    name = task.files[split]
    if name.endswith(".parquet"):
        return read_parquet(task, split, name)
    return read_tsv(task, os.path.join(data_dir, name), labelled=split != "test")


def holdout_rows(train_rows, dev_rows, n):
    """Indices of n training rows whose lengths follow dev's, the same for every seed: one per dev
    row (in a fixed random order) from the training rows of its length bin, 4 words wide. A uniform
    slice would be easier than dev where train is shorter: 42.5% of SST-2's training rows are
    phrases of at most 5 words, against 2.8% of its dev sentences."""
    def length_bin(texts):
        return min(len(" ".join(texts).split()) // 4, 12)
    g, pools = torch.Generator().manual_seed(12345), {}
    for i in torch.randperm(len(train_rows), generator=g).tolist():
        pools.setdefault(length_bin(train_rows[i][0]), []).append(i)
    dev_order, held = torch.randperm(len(dev_rows), generator=g).tolist(), []
    for k in range(n):
        want = length_bin(dev_rows[dev_order[k % len(dev_rows)]][0])
        nearest = min((b for b in pools if pools[b]), key=lambda b: abs(b - want))
        held.append(pools[nearest].pop())
    return held


def choose_rows(args, device, dtype):
    """(training rows, evaluation rows, evaluation split's name): a seeded subset of train (on a
    CPU, dtype's budget), and dev or, under --holdout, a slice of train held out (the same for
    every seed)."""
    train_rows, dev_rows = load_split(args.task, "train"), load_split(args.task, "dev")
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(args.seed))
    if args.holdout:
        if args.holdout >= len(train_rows):
            raise UserError(f"--holdout {args.holdout} leaves no training examples "
                            f"(train has {len(train_rows)})")
        held = holdout_rows(train_rows, dev_rows, args.holdout)
        keep = torch.tensor(sorted(set(range(len(train_rows))) - set(held)))
        dev_rows = [train_rows[i] for i in held]
        order = keep[torch.randperm(len(keep), generator=torch.Generator().manual_seed(args.seed))]
    limit = args.max_train_examples or (CPU_TRAIN_EXAMPLES[dtype] if device == "cpu" else "all")
    n_train = len(order) if limit == "all" else min(int(limit), len(order))
    hint = ("" if n_train == len(order) else
            " (a random subset; --max-train-examples all trains on every one)")
    split = "held-out" if args.holdout else "dev"
    print(f"task: {args.task}; training on {n_train:,} of {len(order):,} examples{hint}; "
          f"{split}: {len(dev_rows):,}")
    return [train_rows[i] for i in order[:n_train].tolist()], dev_rows, split


# ----------------------------------------------------------------------------- tokens

def clean(text):
    # One space for any whitespace run: the template's own newlines are its structure, so a text
    # must not add its own, and SST-2's trailing space would otherwise merge with the "\n" after it.
    # Lone surrogates (from undecodable command-line bytes) become "?": the tokenizer rejects them.
    return " ".join(text.encode("utf-8", "replace").decode("utf-8").split())


def token_ids(tokenizer, s):  # a tokenizers.Tokenizer; no BOS: the prompt is ours
    out = tokenizer.encode(s, add_special_tokens=False)
    return list(getattr(out, "ids", out))


def label_token_ids(task, tokenizer):
    """Token id of each label word; each must be exactly one token, and all different."""
    ids, which = [], f"the {tokenizer.get_vocab_size()}-token {type(tokenizer).__name__}"
    for w in task.label_words:
        if len(t := token_ids(tokenizer, w)) != 1:
            raise UserError(f"task {task.name}: label word {w!r} is {len(t)} tokens for {which}; "
                            f"each must be one token")
        ids.append(t[0])
    if len(set(ids)) < len(ids):
        raise UserError(f"task {task.name}: label words {task.label_words} share a token id "
                        f"in {which}")
    return ids


def tokenize(task, texts, tokenizer, max_len):
    """Token ids of the filled template, at most max_len long. Truncation cuts the end of the input
    text(s), longest first, never the template: its last token is where the label word is read."""
    if len(texts) != len(task.text_cols):
        raise UserError(f"task {task.name} takes {len(task.text_cols)} text(s), got {len(texts)}")
    lit = [token_ids(tokenizer, s) if s else [] for s in task.literals]
    txt = []
    for slot, space in task.slots:
        # Cut absurdly long texts by characters first (no real text needs 64 characters per token):
        # a megabyte would be slow to tokenize only to be dropped.
        t = clean(texts[slot][:64 * max_len])
        txt.append(token_ids(tokenizer, " " * space + t) if t else [])
    budget = max_len - sum(map(len, lit))
    if budget < 0:
        raise UserError(f"max_len {max_len} is too short for the {task.name} template "
                        f"({max_len - budget} tokens)")
    lens = [len(t) for t in txt]
    while sum(lens) > budget:  # a token at a time from the longest text: a pair shares fairly
        lens[lens.index(max(lens))] -= 1
    ids = lit[0]
    for t, n, after in zip(txt, lens, lit[1:]):
        ids = ids + t[:n] + after
    return ids


@dataclass
class Split:
    """One set of examples, tokenized: what the loop trains on or scores."""
    name: str                # "train", "dev" or "held-out"
    ids: list                # one list of token ids per example
    labels: list             # one class index per example


def tokenize_split(name, task, rows, tokenizer, max_len):
    return Split(name, [tokenize(task, texts, tokenizer, max_len) for texts, _ in rows],
                 [label for _, label in rows])


def batches(examples_ids, labels, batch_size, shuffle, generator=None):
    """Yield dicts of ids (B, T) right-padded with 0, lengths (B,), labels (B,) and index (B,): the
    examples' positions in examples_ids. Every example exactly once; batches hold examples of
    similar length. Labels that are lists (a task that writes) stay a list."""
    if not examples_ids:
        return
    lengths = torch.tensor([len(x) for x in examples_ids], dtype=torch.long)  # (N,)
    if shuffle:
        # Shuffle, sort by length within chunks of 50 batches, then shuffle the batches: members of
        # a batch have similar lengths (little padding), yet batches differ from epoch to epoch.
        order = torch.randperm(len(lengths), generator=generator)
        order = torch.cat([c[lengths[c].argsort(stable=True)]
                           for c in order.split(50 * batch_size)])
        groups = order.split(batch_size)
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator)]
    else:  # the caller maps back through index
        groups = lengths.argsort(stable=True).split(batch_size)
    for index in groups:
        lens = lengths[index]                                                # (B,)
        ids = torch.zeros(len(index), int(lens.max()), dtype=torch.long)     # (B, T)
        for row, i in enumerate(index.tolist()):
            ids[row, :lens[row]] = torch.tensor(examples_ids[i], dtype=torch.long)
        ys = [labels[i] for i in index.tolist()]
        ys = ys if isinstance(ys[0], list) else torch.tensor(ys)
        yield {"ids": ids, "lengths": lens, "labels": ys, "index": index}
