"""The code exercises of tutorial.md (section 9): each file here is a stub for you to fill in. The
functions marked "Exercise N" raise NotImplementedError until you write them; the rest of the file
(its command line, its registration as a method) already works and calls them.

    python -m pytest tests/test_exercises.py --student -k mean_pool     # checks your mean_pool.py

The reference solutions are in exercises/solutions/, with the same names; solutions/README.md
answers every exercise. Plain `python -m pytest` checks those, and that these stubs are still stubs:
a file you have started on is skipped there, with a note; `--student -k NAME` is what checks it.
"""
