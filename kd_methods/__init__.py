"""Methods by name. Each module registers its :class:`~kd_methods.base.Method` subclasses."""
from __future__ import annotations

import importlib

from utils.core.errors import UserError

METHODS: dict[str, type] = {}


def register_method(cls):
    if cls.name in METHODS:
        raise ValueError(f"method registered twice: {cls.name}")
    METHODS[cls.name] = cls
    return cls


def all_methods() -> dict[str, type]:
    """Every registered method, by name (imports all method modules)."""
    _import_all()
    return METHODS


def get_method(name: str):
    _import_all()
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


_MODULES = ("supervised", "kd", "mlld", "dml", "rkd", "crd", "ofa", "fitnets", "c2kd", "mgdfr", "mst", "mfh")


def _import_all() -> None:
    """Import every method module (each registers its methods); lazily, so ``import kd_methods`` stays light."""
    for module in _MODULES:
        importlib.import_module(f"kd_methods.{module}")
