"""Shared code of every script: CLI, seeding and device, the run directory, the training loop, metrics.

``import utils`` stays cheap and cycle-free; the loop is imported when a script calls :func:`main`.
"""


def main(method_name: str, argv=None):
    """Parse the command line for ``method_name``, run it, and exit 2 with one line on bad input."""
    from utils.engine import main as _main

    return _main(method_name, argv)


def mfh_main(argv=None):
    """Entry point of ``main-MFH.py``: the MFH experiments (:mod:`utils.mfh_experiments`)."""
    from utils.mfh_experiments import main as _main

    return _main(argv)


def indices_main(argv=None):
    """Entry point of ``indices_gen.py``."""
    from utils.engine import indices_main as _indices_main

    return _indices_main(argv)
