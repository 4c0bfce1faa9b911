"""utils/core/names.py: the torch-free name lists equal the registries, and reproduce.py refuses an unknown name
(and prints --help) without importing torch or any dataset or method module."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT
from utils.core import names

HEAVY = ("torch", "numpy", "datasets", "kd_methods", "models")


def test_name_lists_equal_the_registries():
    import datasets
    import kd_methods

    registered = kd_methods.all_methods()  # its order is the order of first import, which other tests change
    assert names.DATABASES == tuple(datasets.DATASETS), "utils/core/names.py DATABASES differs from datasets.DATASETS"
    assert names.DATABASE_ALIASES == datasets.ALIASES
    assert names.database_names() == datasets.dataset_names()
    assert sorted(names.method_names()) == sorted(registered), \
        "utils/core/names.py METHODS differs from kd_methods.all_methods()"
    assert len(set(names.method_names())) == len(names.method_names())
    compared = {n for n, cls in registered.items() if cls.card.in_comparison}
    assert sorted(names.comparison_method_names()) == sorted(compared), "utils/core/names.py COMPARISON_METHODS differs"


def test_name_lists_in_registration_order():
    """In a fresh interpreter, where kd_methods imports its modules in its own order: the same order as the lists."""
    code = ("import json, datasets, kd_methods\n"
            "print(json.dumps([list(datasets.DATASETS), list(kd_methods.all_methods())]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    databases, methods = json.loads(proc.stdout.strip().splitlines()[-1])
    assert names.DATABASES == tuple(databases) and names.method_names() == tuple(methods)
    assert names.comparison_method_names() == tuple(m for m in methods if m in names.comparison_method_names())


def _in_fresh_interpreter(argv: list[str]) -> tuple[subprocess.CompletedProcess, dict]:
    """``reproduce.py ARGV`` in a new interpreter; returns its output and which heavy modules it had imported."""
    code = ("import json, sys\nimport utils.sweep\ncode = 0\n"
            "try:\n    code = utils.sweep.main(sys.argv[1:])\nexcept SystemExit as exit_:\n    code = exit_.code\n"
            f"print(json.dumps({{'heavy': [m for m in {HEAVY!r} if m in sys.modules], 'code': code}}))\n")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv, message", [
    (["--database", "Nope"], "error: unknown database 'Nope'; valid databases: Synthetic-MVD, AV-MNIST,"),
    (["--database", "UCI-MFeat", "--methods", "KD", "Nope"], "error: unknown method 'Nope'; valid methods: KD, KD-UU,"),
])
def test_unknown_name_refused_before_torch_is_imported(argv, message):
    proc, seen = _in_fresh_interpreter([*argv, "--dry_run"])
    assert seen == {"heavy": [], "code": 2}, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_help_lists_databases_and_methods_without_torch():
    proc, seen = _in_fresh_interpreter(["--help"])
    assert seen == {"heavy": [], "code": 0}, proc.stderr
    text = " ".join(proc.stdout.split())  # argparse wraps the help text
    for name in (*names.database_names(), *names.comparison_method_names()):
        assert name.replace("-", "- ") in text or name in text, name


def test_cards_read_from_the_source_equal_the_imported_ones():
    """utils/core/cards.py reads each card with ``ast``; importing the module builds the same card."""
    import kd_methods
    from utils.core.cards import discover_cards

    methods = kd_methods.all_methods()
    for name, card in discover_cards().items():
        assert methods[name].card == card, name
        assert methods[name].__module__ == card.module, name
