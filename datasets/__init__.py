"""Databases by name. Importing this package registers every :class:`DatasetSpec`."""
from __future__ import annotations

from datasets.base import Batch, BatchLoader, DataSource, DatasetSpec, TensorSource
from utils.core.errors import UserError

DATASETS: dict[str, DatasetSpec] = {}
ALIASES: dict[str, str] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in DATASETS:
        raise ValueError(f"dataset registered twice: {spec.name}")
    DATASETS[spec.name] = spec
    for alias in spec.aliases:
        ALIASES[alias] = spec.name
    return spec


def dataset_names(with_aliases: bool = True) -> list[str]:
    return list(DATASETS) + (list(ALIASES) if with_aliases else [])


def get_spec(name: str) -> DatasetSpec:
    name = ALIASES.get(name, name)
    if name not in DATASETS:
        raise UserError(f"unknown database '{name}'; valid databases: {', '.join(dataset_names())}")
    return DATASETS[name]


from datasets import avmnist, cmmd, nyu, paired, ravdess, synthetic, uci_mfeat, vggsound  # noqa: E402

for _module in (synthetic, avmnist, ravdess, vggsound, cmmd, nyu, uci_mfeat, paired):
    register_dataset(_module.SPEC)

__all__ = ["Batch", "BatchLoader", "DataSource", "DatasetSpec", "TensorSource", "DATASETS", "get_spec",
           "register_dataset", "dataset_names"]
