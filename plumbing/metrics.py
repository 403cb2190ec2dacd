"""GLUE's metrics on a task's predictions: accuracy, F1 of class 1 (MRPC, QQP), Matthews correlation
(CoLA). `score` gives a run's numbers; train.py and benchmarks/diagnose.py use it. And corpus BLEU
for generated text (E2E), written from its definition, checked against sacrebleu in the tests."""
import math
import re
from collections import Counter

import torch


def as_pair(preds, labels):
    p, y = torch.as_tensor(preds).cpu().view(-1), torch.as_tensor(labels).cpu().view(-1)
    if p.shape != y.shape:
        raise ValueError(f"{len(p)} predictions for {len(y)} labels")
    return p, y


def confusion(preds, labels):
    """(tp, tn, fp, fn) of a binary task, class 1 positive."""
    p, y = (t == 1 for t in as_pair(preds, labels))
    return [(a & b).sum().item() for a, b in ((p, y), (~p, ~y), (p, ~y), (~p, y))]


def accuracy(preds, labels):
    p, y = as_pair(preds, labels)
    return (p == y).float().mean().item() if len(y) else 0.0


def f1(preds, labels):
    """F1 of the positive class 1 (GLUE's MRPC and QQP metric); 0 when there is no true positive."""
    tp, _, fp, fn = confusion(preds, labels)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews(preds, labels):
    """Matthews correlation of a binary task (GLUE's CoLA metric); 0 when undefined."""
    tp, tn, fp, fn = confusion(preds, labels)
    denom = float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) ** 0.5
    return (tp * tn - fp * fn) / denom if denom else 0.0


def score(task, preds, labels):
    """{"metric": the task's main metric, <its name>: same, "acc": accuracy}."""
    main = {"acc": accuracy, "f1": f1, "mcc": matthews}[task.metric](preds, labels)
    return {"metric": main, task.metric: main, "acc": accuracy(preds, labels)}


# ----------------------------------------------------------------------------- BLEU

# mteval-v13a's tokenisation, as WMT and the E2E challenge score (sacrebleu's default, "13a"):
# split off every ASCII symbol but "-", ".", "," and "'"; then "." and "," unless between digits,
# and "-" after a digit. Case is kept.
SYMBOLS = re.compile(r"([{-~\[-` -&(-+:-@/])")
STEPS = [(SYMBOLS, r" \1 "), (re.compile(r"([^0-9])([.,])"), r"\1 \2 "),
         (re.compile(r"([.,])([^0-9])"), r" \1 \2"), (re.compile(r"([0-9])(-)"), r"\1 \2 ")]


def bleu_tokens(text):
    text = text.replace("-\n", "").replace("\n", " ")
    for entity, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(entity, char)
    text = f" {text} "
    for pattern, replacement in STEPS:
        text = pattern.sub(replacement, text)
    return text.split()


def ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses, references, max_n=4):
    """Corpus BLEU (Papineni et al. 2002), in percent: the geometric mean of the n-gram precisions,
    n = 1..4, pooled over the corpus, each n-gram's count clipped to its most in any one
    reference of that hypothesis; times the brevity penalty, from each hypothesis's closest
    reference length (the shorter on a tie). references[i] lists every reference of hypothesis i.
    No smoothing."""
    matched, total, hyp_len, ref_len = [0] * max_n, [0] * max_n, 0, 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        h, rs = bleu_tokens(hyp), [bleu_tokens(r) for r in refs]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]
        for n in range(1, max_n + 1):
            most = Counter()
            for r in rs:
                most |= ngrams(r, n)  # | keeps each n-gram's larger count
            matched[n - 1] += sum(min(c, most[g]) for g, c in ngrams(h, n).items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    return 100 * math.exp(min(0.0, 1 - ref_len / hyp_len) + log_precision)
