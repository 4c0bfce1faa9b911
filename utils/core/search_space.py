"""Search spaces: the hyper-parameters a tuning search may change for a method (``reproduce.py --tune``), declared as
plain data on its card (``MethodCard.search_space``), so that method modules never import a search library.

A space maps an option's name (its flag without the dashes: ``"lr"`` for ``--lr``) to its range:

- ``("float", low, high)``: uniform in [low, high];
- ``("log", low, high)``: log-uniform in [low, high], for a value spanning orders of magnitude (learning rates,
  loss weights);
- ``("int", low, high)``: an integer in [low, high], both ends included;
- ``("choice", (a, b, ...))``: one of the values.

A numeric range may end with ``"relative"``: its ends are then multiples of the option's default on the run's dataset
(``"lr": ("log", 0.1, 10.0, "relative")`` searches a tenth to ten times each dataset's learning rate); a search
resolves it with :meth:`Param.resolved` once the defaults are filled.

Only student-side options belong in a space: a teacher keeps its defaults (the no-KD student of one mode is also the
other mode's cross-modal teacher), and the training budget is never searched (no option with an ``epochs`` part such
as ``epochs_s1`` or ``hint_epochs``, no seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from utils.core.errors import UserError

KINDS = ("float", "log", "int", "choice")
#: options a space never holds: the budget and the run's identity are fixed by the comparison, not searched
NEVER_SEARCHED = ("seed", "init_seed", "max_steps", "batch_size")


@dataclass(frozen=True)
class Param:
    """One searched option: its name (``--<name>``), kind (one of :data:`KINDS`) and range."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    #: the ends are multiples of the option's default on the run's dataset (:meth:`resolved`)
    relative: bool = False

    @property
    def log(self) -> bool:
        return self.kind == "log"

    def describe(self) -> str:
        """One line for ``--help``, ``--dry_run`` and the docs, e.g. ``--lr log-uniform in [0.0001, 0.01]``."""
        return f"--{self.name} {self.range_text}"

    @property
    def range_text(self) -> str:
        """The range in words, e.g. ``log-uniform in [0.1, 10] x its default`` (:meth:`describe` without the flag)."""
        if self.kind == "choice":
            return f"one of {', '.join(map(str, self.choices))}"
        what = {"float": "uniform", "log": "log-uniform", "int": "an integer"}[self.kind]
        if self.relative:
            return f"{what} in [{self.low:g}, {self.high:g}] x its default"
        return f"{what} in [{self.low:g}, {self.high:g}]"

    def resolved(self, default) -> Param:
        """The absolute range for an option whose default on the run's dataset is ``default`` (itself when the range
        is not relative)."""
        if not self.relative:
            return self
        if not isinstance(default, (int, float)) or isinstance(default, bool) or default <= 0:
            raise UserError(f"--{self.name}: a relative search range needs a positive default, got {default!r}")
        low, high = self.low * default, self.high * default
        if self.kind == "int":
            low, high = max(1, math.floor(low)), max(1, math.ceil(high))
        return Param(self.name, self.kind, low, high)


def parse_space(method: str, space: dict) -> tuple[Param, ...]:
    """The :class:`Param` of each entry of ``space`` (a card's ``search_space``), in declaration order; a malformed
    entry raises :class:`UserError` naming the method, the option and the expected form."""
    return tuple(_param(method, name, value) for name, value in space.items())


def _param(method: str, name: str, value) -> Param:
    where = f"method '{method}': search space entry '{name}'"
    if not isinstance(name, str) or not name.isidentifier():
        raise UserError(f"{where}: the key must be an option name without dashes, e.g. 'lr' for --lr")
    if name in NEVER_SEARCHED or "epochs" in name.split("_"):
        raise UserError(f"{where}: {name} is fixed by the comparison and never searched; remove it from the space")
    if not isinstance(value, tuple) or not value or value[0] not in KINDS:
        raise UserError(f"{where}: expected (kind, low, high) or ('choice', (values...)) with kind one of "
                        f"{', '.join(KINDS)}")
    kind = value[0]
    if kind == "choice":
        if len(value) != 2 or not isinstance(value[1], tuple) or len(value[1]) < 2:
            raise UserError(f"{where}: expected ('choice', (a, b, ...)) with at least two values")
        return Param(name, kind, choices=value[1])
    relative = len(value) == 4 and value[3] == "relative"
    numbers = value[1:3] if relative else value[1:]
    if len(numbers) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
        raise UserError(f"{where}: expected ('{kind}', low, high) or ('{kind}', low, high, 'relative') with numbers")
    low, high = numbers
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise UserError(f"{where}: expected finite low < high, got {low}, {high}")
    if (kind == "log" or relative) and low <= 0:
        raise UserError(f"{where}: a log-uniform or relative range needs low > 0, got {low}")
    if kind == "int" and not relative and not (float(low).is_integer() and float(high).is_integer()):
        raise UserError(f"{where}: an integer range needs integer ends, got {low}, {high}")
    if kind == "int" and not relative:
        return Param(name, kind, int(low), int(high))
    return Param(name, kind, float(low), float(high), relative=relative)


def contains(param: Param, value) -> bool:
    """Whether ``value`` (e.g. the option's default, enqueued as a search's first trial) lies in ``param``'s range."""
    if param.kind == "choice":
        return value in param.choices
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    if param.kind == "int" and not float(value).is_integer():
        return False
    return param.low <= value <= param.high
