"""The foundation every other part of the project builds on: errors, atomic file writes, checkpoint files, the run
lock, forward hooks, seeding and devices, metrics, content digests, the torch-free name lists, the scripts' error
handling.

Modules here import the standard library, numpy and torch only, never another part of the project
(``tests/test_layers.py`` checks it).
"""
