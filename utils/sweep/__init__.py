"""The comparison sweep of ``reproduce.py``: every run of the paper's comparison table as a dependency graph.

``graph`` builds the nodes from the method registry (teachers, no-KD baselines, every method with its teacher's
``best.pth``), ``node`` runs one node's real ``main-*.py`` in a subprocess (resuming it from its checkpoint when it
died), ``runner`` executes the graph in dependency order (local processes or SLURM jobs through submitit),
``aggregate`` collects the run directories into ``runs.csv`` / ``table.csv`` with paired statistics and ``report``
writes ``table.md``, ``table.tex`` and ``table.png``. See docs/sweep.md.

``import utils.sweep`` stays light (no torch): the per-node wrapper process imports only ``utils.sweep.node``.
"""


def main(argv=None):
    """Entry point of ``reproduce.py``: bad input ends with one line and exit code 2."""
    from utils.sweep.runner import main as _main

    return _main(argv)
