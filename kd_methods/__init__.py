"""Methods by name. Each module registers its :class:`~kd_methods.base.Method` subclasses."""
from __future__ import annotations

from utils.errors import UserError

METHODS: dict[str, type] = {}


def register_method(cls):
    if cls.name in METHODS:
        raise ValueError(f"method registered twice: {cls.name}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str):
    _import_all()
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


_MODULES = ("supervised", "kd", "mlld", "dml", "rkd", "crd", "ofa", "fitnets", "c2kd", "mgdfr", "mst", "mfh")


def _import_all() -> None:
    import importlib

    for module in _MODULES:
        try:
            importlib.import_module(f"kd_methods.{module}")
        except ModuleNotFoundError as error:  # methods land one by one during development
            if error.name != f"kd_methods.{module}":
                raise
