"""Solutions to the exercises at the end of tutorial.md, one small file each.

Each file runs from the repository root, e.g. `python exercises/mean_pool.py --task sst2`, and is
imported by tests/test_exercises.py, which checks it on tiny random models.
"""
