"""Shared code of every script: CLI, seeding and device, the run directory, the training loop, metrics.

``import utils`` stays cheap and cycle-free; the loop is imported when a script calls :func:`main`.
"""
import argparse
import sys

from utils.core.names import GENERIC_SCRIPT, method_names


def main(method_name: str, argv=None):
    """Parse the command line for ``method_name``, run it, and exit 2 with one line on bad input."""
    from utils.engine import main as _main

    return _main(method_name, argv)


def main_named(argv=None):
    """Entry point of ``main.py``: ``main.py NAME [flags]`` runs any registered method, also one without a
    ``main-<NAME>.py`` of its own (the sweep runs such a method this way)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = _OneLineParser(prog=GENERIC_SCRIPT, add_help=False, usage=f"python {GENERIC_SCRIPT} METHOD [flags]",
                            description=f"Run a registered method; python {GENERIC_SCRIPT} METHOD --help lists its "
                                        f"flags. Methods: {', '.join(method_names())}.")
    parser.add_argument("method", metavar="METHOD")
    if argv[:1] in (["-h"], ["--help"]):
        parser.print_help()
        sys.exit(0)
    known, _ = parser.parse_known_args(argv[:1])
    return main(known.method, argv[1:])


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}; usage: {self.usage} (python {GENERIC_SCRIPT} --help lists the methods)",
              file=sys.stderr)
        sys.exit(2)


def mfh_main(argv=None):
    """Entry point of ``main-MFH.py``: the MFH experiments (:mod:`utils.mfh_experiments`)."""
    from utils.mfh_experiments import main as _main

    return _main(argv)


def indices_main(argv=None):
    """Entry point of ``indices_gen.py``."""
    from utils.engine import indices_main as _indices_main

    return _indices_main(argv)
