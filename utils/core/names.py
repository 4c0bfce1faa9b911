"""The names of the registered databases and methods, known without importing torch or any dataset or method module.

The registries (``datasets.DATASETS``, ``kd_methods.all_methods()``) build the objects and stay the truth; these
tuples are their names in registration order, for what must list or check a name before the heavy imports
(``reproduce.py --help`` and its refusal of an unknown name take milliseconds instead of torch's 3-5 s of
imports). ``tests/test_names.py`` checks that they equal the registries: a database or method registered anew is
added here too (the test names what is missing).
"""
from __future__ import annotations

#: ``datasets.DATASETS``, in registration order
DATABASES = ("Synthetic-MVD", "AV-MNIST", "RAVDESS", "VGGSound-50k", "CMMD-V2", "NYU-Depth-V2", "UCI-MFeat", "Paired")
#: ``datasets.ALIASES``: another name -> the registered one
DATABASE_ALIASES = {"CrisisMMD-V2": "CMMD-V2"}
#: ``kd_methods.all_methods()``, in registration order
METHODS = ("T", "S", "test-T", "test-S", "KD", "KD-UU", "MLLD", "MLLD-UU", "DML", "RKD", "RKD-UU", "CRD", "CRD-UU",
           "OFA", "OFA-UU", "FitNets", "FitNets-UU", "C2KD", "MGDFR", "MST-Distill", "MFH-KD")
#: the methods of the comparison table (``Method.in_comparison``), in registration order
COMPARISON_METHODS = ("KD", "KD-UU", "MLLD", "MLLD-UU", "DML", "RKD", "RKD-UU", "CRD", "CRD-UU", "OFA", "OFA-UU",
                      "FitNets", "FitNets-UU", "C2KD", "MGDFR", "MST-Distill")


def database_names(with_aliases: bool = True) -> list[str]:
    """The valid ``--database`` values (as ``datasets.dataset_names``)."""
    return list(DATABASES) + (list(DATABASE_ALIASES) if with_aliases else [])


def script_of(method: str) -> str:
    """The script that runs ``method``: ``main-<method>.py``, ``test-T.py`` / ``test-S.py`` for the test methods."""
    return f"{method}.py" if method.startswith("test-") else f"main-{method}.py"
