"""The names of the registered databases and methods, known without importing torch or any dataset or method module.

The registries (``datasets.DATASETS``, ``kd_methods.all_methods()``) build the objects and stay the truth. The
method names come from the method cards (:mod:`utils.core.cards`, read from the source of the method modules); the
database names are a list kept here, because a dataset is declared by code that imports torch (its spec holds the
loss and the model defaults), so there is nothing to read without running it. ``tests/test_names.py`` checks both
against the registries. What must list or check a name before the heavy imports (``reproduce.py --help`` and its
refusal of an unknown name) reads them here: milliseconds instead of torch's 3-5 s of imports.
"""
from __future__ import annotations

from pathlib import Path

from utils.core.cards import discover_cards

#: ``datasets.DATASETS``, in registration order
DATABASES = ("Synthetic-MVD", "AV-MNIST", "RAVDESS", "VGGSound-50k", "CMMD-V2", "NYU-Depth-V2", "UCI-MFeat", "Paired")
#: ``datasets.ALIASES``: another name -> the registered one
DATABASE_ALIASES = {"CrisisMMD-V2": "CMMD-V2"}
#: the folder of the scripts
REPOSITORY = Path(__file__).resolve().parents[2]
#: the script that runs a method without a script of its own: ``python main.py NAME [flags]``
GENERIC_SCRIPT = "main.py"


def database_names(with_aliases: bool = True) -> list[str]:
    """The valid ``--database`` values (as ``datasets.dataset_names``)."""
    return list(DATABASES) + (list(DATABASE_ALIASES) if with_aliases else [])


def method_names() -> tuple[str, ...]:
    """Every method with a card (``kd_methods.all_methods()``), in the registry's order."""
    return tuple(discover_cards())


def comparison_method_names() -> tuple[str, ...]:
    """The methods of the comparison table (``MethodCard.in_comparison``), in the registry's order."""
    return tuple(name for name, card in discover_cards().items() if card.in_comparison)


def script_command(method: str) -> list[str]:
    """The script (and its leading argument) that runs ``method``: its own ``main-<method>.py`` (``test-T.py`` /
    ``test-S.py`` for the test methods) where the repository has one, else ``main.py <method>``."""
    own = f"{method}.py" if method.startswith("test-") else f"main-{method}.py"
    return [own] if (REPOSITORY / own).is_file() else [GENERIC_SCRIPT, method]


def script_of(method: str) -> str:
    """:func:`script_command` as it is typed: ``main-KD.py``, ``main.py MyMethod``."""
    return " ".join(script_command(method))
