"""Measured numbers quoted in the lesson cannot drift from the records they come from: every
"mean ± std" in tutorial.md, exercises/solutions/README.md and README.md is a row of a results or
study record (benchmarks/*.json) at the precision written, and every paired 95% interval is one the
study computed (or its negation, for "how much better" read the other way round)."""
import glob
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LESSON = ("tutorial.md", os.path.join("exercises", "solutions", "README.md"), "README.md")


def recorded():
    """({(mean, std, decimals)}, {(low, high)}) in percent, from every record."""
    spreads, intervals = set(), set()
    for path in glob.glob(os.path.join(ROOT, "benchmarks", "*.json")):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        scale = 1 if record.get("unit") == "percent" else 100  # BLEU is kept in percent already
        for row in record.get("rows", []):
            if "mean" in row and "std" in row:
                spreads |= {(round(scale * row["mean"], n), round(scale * row["std"], n), n)
                            for n in (1, 2)}
            for key, pair in row.items():
                if key.startswith("minus_") and isinstance(pair, dict) and pair["low"] is not None:
                    low, high = round(scale * pair["low"], 2), round(scale * pair["high"], 2)
                    intervals |= {(low, high), (-high, -low)}
    return spreads, intervals


def quoted(text):
    text = text.replace("−", "-")
    spreads = [(float(a), float(b), len(a.split(".")[1]))
               for a, b in re.findall(r"(\d+\.\d+) ± (\d+\.\d+)", text)]
    intervals = [(float(a), float(b))
                 for a, b in re.findall(r"interval ([+-]?\d+\.\d+) to ([+-]?\d+\.\d+)", text)]
    return spreads, intervals


def test_quoted_spreads_and_intervals_are_recorded():
    spreads, intervals = recorded()
    assert len(spreads) > 20 and len(intervals) > 20
    seen = 0
    for name in LESSON:
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read()
        got_spreads, got_intervals = quoted(text)
        for s in got_spreads:
            assert s in spreads, f"{name} quotes {s[0]} ± {s[1]}, which no record in benchmarks/ has"
        for i in got_intervals:
            assert i in intervals, f"{name} quotes the interval {i[0]} to {i[1]}: no record has it"
        seen += len(got_spreads) + len(got_intervals)
    assert seen >= 8


def test_a_drifted_number_is_caught():
    spreads, intervals = recorded()
    got_spreads, got_intervals = quoted("86.67 ± 0.81 and the interval −3.02 to +0.13")
    assert got_spreads[0] not in spreads and got_intervals[0] not in intervals
    got_spreads, got_intervals = quoted("86.66 ± 0.81 and the interval −3.02 to +0.12")
    assert got_spreads[0] in spreads and got_intervals[0] in intervals
