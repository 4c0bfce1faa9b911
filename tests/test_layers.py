"""The layers of the project, read from the source (``ast``; nothing is imported): no import runs up the layers,
no import cycle, the foundation (``utils/core/``) imports the standard library, numpy and torch only, and every
import inside a function is an optional dependency or a named start-up case below. The layers and the functions
that read them are in ``tools/import_layers.py`` (``python tools/import_layers.py --list`` prints the figures)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools.import_layers import GROUPS, all_imports, cycles, group_of, project_modules, statements, upward

#: imported inside the functions that need them, anywhere: dependencies that only some runs use, each a long import
#: (milliseconds measured on the 2-core development machine, after torch, the best of two fresh interpreters)
OPTIONAL = {
    "matplotlib": "plots only (matplotlib.pyplot: 1400 ms)",
    "scipy": "the sweep tables' statistics only; a development requirement (scipy.stats: 2300 ms)",
    "submitit": "SLURM sweeps only; a development requirement (40 ms)",
    "optuna": "reproduce.py --tune only; a development requirement (70 ms)",
    "h5py": "NYU-Depth-V2 only (25 ms)",
    "torch.utils.tensorboard": "--record only (160 ms)",
    "data_preprocess.ravdess": "RAVDESS's actor split only: the file-name parser of the preprocessing package",
}

#: (importing module, imported module): a start-up that must not pay for what the function imports
#: (milliseconds: the import in a fresh interpreter, best of three)
START_UP = {
    # `import utils` stays cheap: the scripts' entry points load the engine and torch when called (4100 ms)
    ("utils", "utils.engine"): "utils.main / utils.indices_main",
    ("utils", "utils.mfh_experiments"): "utils.mfh_main (3800 ms)",
    # a sweep node's wrapper process imports utils.sweep.node only (75 ms), not the runner (220 ms)
    ("utils.sweep", "utils.sweep.runner"): "utils.sweep.main",
    # reproduce.py refuses a bad name from utils/core/names.py before torch and the registries load (4400 ms; the
    # graph module itself 90 ms), and writes the tables' statistics only at the end (aggregate: 4000 ms)
    ("utils.sweep.runner", "utils.sweep.aggregate"): "the tables, after the runs",
    ("utils.sweep.graph", "kd_methods"): "the graph of a checked sweep",
    ("utils.sweep.graph", "datasets"): "the graph of a checked sweep",
    ("utils.sweep.graph", "datasets.splits"): "the graph of a checked sweep",
    ("utils.sweep.graph", "utils.cli"): "the graph of a checked sweep",
    ("utils.sweep.graph", "utils.provenance"): "the graph of a checked sweep",
    ("utils.sweep.graph", "utils.resume"): "the graph of a checked sweep",
}

THIRD_PARTY_OF_THE_FOUNDATION = ("numpy", "torch")


def _listed(imports) -> str:
    return "\n".join(f"  {imp.source}:{imp.line} imports {imp.name or imp.target}" for imp in imports)


def test_every_module_has_a_layer():
    assert {group for group, _layer, _prefixes in GROUPS} >= {group_of(m) for m in project_modules()}
    assert None not in {group_of(m) for m in project_modules()}


def test_no_import_runs_up_the_layers():
    up = statements(upward(all_imports()))
    assert not up, "imports that run up the layers (tools/import_layers.py):\n" + _listed(up)


def test_no_import_cycle():
    assert cycles(all_imports()) == []


def test_the_foundation_imports_nothing_of_the_project_above_it():
    outside = [imp for imp in all_imports() if group_of(imp.source) == "core" and (
        (imp.project and group_of(imp.target) != "core") or
        (not imp.project and imp.target not in sys.stdlib_module_names
         and imp.target not in THIRD_PARTY_OF_THE_FOUNDATION))]
    assert not outside, "utils/core/ imports beyond the standard library, numpy and torch:\n" + _listed(outside)


def _allowed(imp) -> bool:
    if any(imp.name == name or imp.name.startswith(name + ".") for name in OPTIONAL):
        return True
    return imp.project and (imp.source, imp.target) in START_UP


def test_imports_inside_functions_are_optional_dependencies_or_named_start_up_cases():
    inside = [imp for imp in all_imports() if imp.in_function and not _allowed(imp)]
    assert not inside, ("imports inside functions that belong at the top of their module (or, for an optional "
                        "dependency or a start-up case, into tests/test_layers.py with its cost):\n"
                        + _listed(statements(inside)))


def test_the_allow_lists_name_real_modules():
    modules = project_modules()
    assert all(source in modules and target in modules for source, target in START_UP)


def test_import_utils_stays_cheap():
    """The scripts' entry point and the foundation load without torch (or any dataset, model or method module)."""
    heavy = ("torch", "numpy", "datasets", "models", "kd_methods")
    code = ("import json, sys\nimport utils, utils.sweep, utils.core.names, utils.core.errors, utils.core.atomic\n"
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
