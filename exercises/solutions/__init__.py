"""Reference solutions to the code exercises of tutorial.md (section 9), one file per exercise, with
the same names as the stubs in exercises/; README.md here answers every exercise.

`python -m pytest tests/test_exercises.py` checks these files on tiny random models.
"""
