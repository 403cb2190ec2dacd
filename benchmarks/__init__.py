"""Research, not the lesson: the study (study.py, diagnose.py, variants.py: the study's variants of
LOPA), the speed benchmark (speed.py, ddp_speed.py), the results table and the figures, with their
records. docs/study.md and docs/speed.md report them."""
