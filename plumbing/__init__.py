"""Plumbing: what the lesson calls by name and a student may skip.

The root's files (model.py, llama.py, lopa.py, data.py, train.py, predict.py, toy.py) are the
lesson; what they need around it lives here: loading models from hub folders and .gguf files
(loading), checkpoints and Ctrl-C (checkpoints), torchrun (distributed), the method registry and
its flags (methods), adapters on disk and mixed-batch serving (adapters), GLUE's files
(glue_files), GLUE's metrics (metrics), what every command line shares (cli), and the tutorial's
notebook, made from tutorial.md (notebook).
"""
