"""Methods by name. Each method module declares its methods' cards (:mod:`utils.core.cards`) and registers its
:class:`~kd_methods.base.Method` subclasses; nothing here lists the modules.

The method modules are discovered from their cards (the modules of ``kd_methods`` and of the packages named in
``$CMKD_METHODS``, read without importing them); a name is imported when it is asked for, so ``import kd_methods``
stays light. docs/extending.md, "Adding a method", says how to add one.
"""
from __future__ import annotations

import importlib

from utils.core.cards import discover_cards
from utils.core.errors import UserError

METHODS: dict[str, type] = {}


def register_method(cls):
    if cls.card.name in METHODS:
        raise ValueError(f"method registered twice: {cls.card.name}")
    METHODS[cls.card.name] = cls
    return cls


def all_methods() -> dict[str, type]:
    """Every registered method, by name, in the order of the cards (imports every method module)."""
    cards = discover_cards()
    for module in dict.fromkeys(card.module for card in cards.values()):
        importlib.import_module(module)
    order = {name: index for index, name in enumerate(cards)}
    ordered = sorted(METHODS.items(), key=lambda item: order.get(item[0], len(order)))  # stable: later ones last
    METHODS.clear()
    METHODS.update(ordered)
    return METHODS


def get_method(name: str):
    """The method class of ``name``, importing the module its card was read from."""
    cards = discover_cards()
    if name not in METHODS and name in cards:
        importlib.import_module(cards[name].module)
        if name not in METHODS:
            raise UserError(f"{cards[name].module} declares the card of method '{name}' but registers no method of "
                            f"that name; decorate its class with @register_method")
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; valid methods: {', '.join(sorted({*cards, *METHODS}))}")
    return METHODS[name]
