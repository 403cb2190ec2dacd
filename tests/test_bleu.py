"""plumbing/metrics.py's corpus BLEU against sacrebleu (a test-only oracle), on E2E's references."""
import csv
import os
import random

import pytest
import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from plumbing.metrics import bleu, bleu_tokens

E2E = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "e2e")


def e2e_references():
    """{mr: [its references]} of E2E's official development set."""
    out = {}
    with open(os.path.join(E2E, "devset.csv"), encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["mr"], []).append(row["ref"])
    return out


def sacre(hyps, refs):
    """sacrebleu's corpus BLEU, its reference streams padded with None where an MR has fewer."""
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(max(map(len, refs)))]
    return sacrebleu.corpus_bleu(hyps, streams, tokenize="13a", smooth_method="none").score


def test_tokens_are_mteval_13a():
    texts = ["The Eagle is a 5-star pub near Café Brazil, priced £20-25.",
             "It's 3.5 km, 1,000 m.",
             'He said "fine" (maybe); a-b & c/d <e> {f}|~', "&quot;x&quot; &amp; y", "end."]
    texts += [r for refs in e2e_references().values() for r in refs]
    for text in texts:
        assert bleu_tokens(text) == Tokenizer13a()(text).split(), text


def test_corpus_bleu_equals_sacrebleu():
    refs = list(e2e_references().values())
    rng = random.Random(0)
    for trial in range(3):
        hyps, kept = [], []
        for rs in refs:  # a reference as the hypothesis, shuffled or cut; the others its references
            words = rs[0].split()
            if rng.random() < 0.5:
                rng.shuffle(words)
            hyps.append(" ".join(words[:rng.randint(1, len(words))] if trial else words))
            kept.append(rs[1:] or rs)
        assert bleu(hyps, kept) == pytest.approx(sacre(hyps, kept), abs=1e-9)
    assert bleu([refs[0][0]], [refs[0]]) == pytest.approx(100)
    short = ["The Eagle is a pub", "a pub near the river"]  # brevity penalty; a tie: the shorter
    two = [["The Eagle is a pub in the city centre", "The Eagle pub"], ["a pub near the river"]]
    assert bleu(short, two) == pytest.approx(sacre(short, two), abs=1e-9)
    assert bleu(["pub"], [["a pub"]]) == 0.0  # no 4-gram: no smoothing, as sacrebleu's "none"
