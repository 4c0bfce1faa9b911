"""Method cards: what the command line, the sweep and the tables know about a method, declared beside its
``nn.Module`` and read without importing torch.

A method module gives each of its :class:`~kd_methods.base.Method` subclasses a ``card = MethodCard(...)`` whose
arguments are literals (strings, numbers, tuples, dicts, True/False/None). :func:`discover_cards` reads those
declarations from the source of the method packages with ``ast`` (nothing is imported), so ``reproduce.py --help``
and its refusal of an unknown name take milliseconds; importing the module builds the same cards
(``tests/test_names.py`` checks that they agree).

The method packages: ``kd_methods`` and every module or package named in the environment variable
``CMKD_METHODS`` (comma-separated importable names, e.g. ``CMKD_METHODS=my_methods``; a package contributes its
top-level modules). ``kd_methods.get_method`` imports the module a name's card was read from, which registers it.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import os
import pkgutil
import textwrap
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from utils.core.errors import UserError
from utils.core.search_space import Param, parse_space

#: the environment variable naming the method packages besides kd_methods
PACKAGES_VARIABLE = "CMKD_METHODS"
BUILTIN_PACKAGE = "kd_methods"

TEACHER_HELP = {
    "multimodal": "pre-trained multimodal teacher: a best.pth from main-T.py or a reference state dict "
                  "(checkpoints/tea/...)",
    "crossmodal": "pre-trained teacher of the other modality: a best.pth from main-S.py --mode <other> or a "
                  "reference state dict (checkpoints/stu/wo_kd/...)",
}
GENERIC_CHECKPOINT_HELP = "pre-trained teacher: a best.pth of ours or a reference-style bare state dict"


def fill_unset(args, values: dict) -> None:
    """Set each option of ``values`` that ``args`` (a Namespace) leaves at None."""
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


@dataclass(frozen=True)
class MethodCard:
    """A method's declaration: its command line, its place in the sweep and the comparison table.

    ``roles``: the model flags its script takes (``teacher`` -> ``--Tmodel``, ``student`` -> ``--Smodel``,
    ``aux`` -> ``--AUXmodel``). ``teacher_kind``: ``"multimodal"`` (fusion teacher on both modalities) or
    ``"crossmodal"`` (unimodal teacher on the other modality); with ``needs_checkpoint`` ``--ckpt_name`` is
    mandatory and the sweep gives it that teacher's ``best.pth``.
    """

    name: str
    #: the script's description (``--help``)
    summary: str = ""
    roles: tuple[str, ...] = ("student",)
    teacher_kind: str | None = None
    needs_checkpoint: bool = False
    #: help of ``--ckpt_name``; None: the text for ``teacher_kind`` (:data:`TEACHER_HELP`)
    checkpoint_help: str | None = None
    #: the test-script role: the method evaluates the model of ``--ckpt_name`` (test-T/test-S); its database, mode,
    #: dataset options, seed and model name default to the checkpoint's (utils.cli), so the test split is the one it
    #: was trained beside
    evaluates_checkpoint: bool = False
    #: help of ``--epochs`` (a method whose stages have their own epoch flags says which stages it sets)
    epochs_help: str = "epochs (default: per dataset)"
    #: per-dataset option defaults that differ from the dataset spec, e.g. {"batch_size": 32}
    defaults: dict = field(default_factory=dict)
    #: a row of the comparison table of ``reproduce.py`` (utils/sweep); False for the teachers and tools
    in_comparison: bool = True
    #: row group of that table; None derives it from ``teacher_kind`` / ``needs_checkpoint`` (:attr:`group`)
    table_group: str | None = None
    #: flags the sweep adds to this method's runs, e.g. switching off a built-in comparison baseline
    sweep_flags: tuple[str, ...] = ()
    #: where the method stands in listings and in its table group (the built-in methods: the paper's order); methods
    #: of equal position follow in discovery order (package, module name, place in the module)
    position: int = 1000
    #: the student-side options a tuning search may change (``reproduce.py --tune``), option name -> range, in the
    #: form of utils/core/search_space.py, e.g. ``{"lr": ("log", 0.1, 10.0, "relative")}``; checked when built
    search_space: dict = field(default_factory=dict)
    #: the module that declares the card (set by :func:`discover_cards`; not part of the declaration)
    module: str = field(default="", compare=False)

    def __post_init__(self):
        parse_space(self.name, self.search_space)  # a malformed space fails where the card is declared

    @property
    def search_params(self) -> tuple[Param, ...]:
        """The parsed :attr:`search_space`, in declaration order."""
        return parse_space(self.name, self.search_space)

    def dataset_defaults(self, spec) -> dict:
        """Option defaults on the dataset ``spec`` (a ``DatasetSpec``): its batch size, learning rate and epochs,
        overridden by :attr:`defaults`, then by what the dataset states for this method (``spec.method_defaults``)."""
        return {"batch_size": spec.batch_size, "lr": spec.lr, "epochs": spec.epochs, **self.defaults,
                **spec.method_defaults.get(self.name, {})}

    def default_models(self, spec, mode: str) -> dict[str, str]:
        """Default model names per role on the dataset ``spec`` for the student modality ``mode``: the dataset's
        student of each modality, and its fusion teacher unless :attr:`teacher_kind` is cross-modal (then the
        student of the other modality)."""
        other = spec.other_modality(mode)
        defaults = {"student": spec.students[mode], "aux": spec.students[other]}
        defaults["teacher"] = spec.teacher if self.teacher_kind != "crossmodal" else spec.students[other]
        return defaults

    @property
    def group(self) -> str:
        """The table group: methods distilling a pre-trained multimodal or cross-modal teacher, else teacher-free."""
        if self.table_group:
            return self.table_group
        if self.needs_checkpoint and self.teacher_kind in ("multimodal", "crossmodal"):
            return f"{self.teacher_kind}-teacher"
        return "teacher-free"

    @property
    def checkpoint_text(self) -> str:
        """The help of ``--ckpt_name``."""
        return self.checkpoint_help or TEACHER_HELP.get(self.teacher_kind, GENERIC_CHECKPOINT_HELP)


_FIELDS = tuple(f.name for f in fields(MethodCard) if f.name != "module")


def method_packages() -> tuple[str, ...]:
    """``kd_methods`` and the packages of ``$CMKD_METHODS``, in that order."""
    extra = [name.strip() for name in os.environ.get(PACKAGES_VARIABLE, "").split(",") if name.strip()]
    return (BUILTIN_PACKAGE, *dict.fromkeys(extra))


def discover_cards() -> dict[str, MethodCard]:
    """Every declared method card by name, ordered by :attr:`MethodCard.position`, then in discovery order."""
    return _discover(method_packages())


@functools.lru_cache(maxsize=4)
def _discover(packages: tuple[str, ...]) -> dict[str, MethodCard]:
    cards: dict[str, MethodCard] = {}
    for module, path in (item for package in packages for item in _modules_of(package)):
        for card in _cards_in(path, module):
            if card.name in cards:
                raise UserError(f"method '{card.name}' is declared twice: in {cards[card.name].module} and {module}; "
                                f"rename one of them")
            cards[card.name] = card
    return {card.name: card for card in sorted(cards.values(), key=lambda card: card.position)}


#: the heading of the section of docs/tuning.md that :func:`search_spaces_section` writes
SEARCH_SPACES_HEADING = "## Search spaces"
#: its first paragraph
SEARCH_SPACES_INTRO = (
    "What a tuning search may change, per method: each method declares it on its card (`search_space` in its "
    "module in `kd_methods/`, in the form of `utils/core/search_space.py`), and the `--help` of its script ends "
    "with the same list. Only the student's side is searched: pre-trained teachers keep their defaults (the no-KD "
    "student `S` of one modality is the other modality's cross-modal teacher), and epochs, batch size and seeds "
    "are never searched. A range \"x its default\" is in multiples of the option's default on the run's dataset "
    "(the per-dataset learning rates of [scripts.md](scripts.md#per-dataset-defaults)), so every default, the "
    "search's first trial, lies inside its range. This section is generated from the cards: "
    "`.venv/bin/python tools/search_spaces.py` rewrites it.")


def search_spaces_section(cards: dict[str, MethodCard] | None = None) -> str:
    """The section of docs/tuning.md listing every method's search space (default: the cards of ``kd_methods``, not
    those of ``$CMKD_METHODS``), heading included, as Markdown: what ``tools/search_spaces.py`` writes there and
    ``tests/test_search_spaces_registry.py`` compares with the page, so the page never drifts from the cards."""
    rows = []
    for name, card in (_discover((BUILTIN_PACKAGE,)) if cards is None else cards).items():
        for index, param in enumerate(card.search_params):
            rows.append(f"| {name if index == 0 else ''} | `--{param.name}` | {param.range_text} |")
    return "\n".join([
        SEARCH_SPACES_HEADING,
        "",
        textwrap.fill(SEARCH_SPACES_INTRO, width=118, break_on_hyphens=False, break_long_words=False),
        "",
        "| method | option | range |",
        "|---|---|---|",
        *rows,
        "",
    ])


def _modules_of(package: str) -> list[tuple[str, Path]]:
    """(module name, source file) of ``package`` (its top-level modules) or of the module ``package`` names."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise UserError(f"${PACKAGES_VARIABLE} names '{package}', which Python cannot find; put its folder on "
                        f"PYTHONPATH or correct the name")
    if spec.submodule_search_locations is None:
        return [(package, Path(spec.origin))] if spec.origin and spec.origin.endswith(".py") else []
    found = []
    for location in spec.submodule_search_locations:
        for info in pkgutil.iter_modules([location]):
            path = Path(location) / f"{info.name}.py"
            if not info.ispkg and path.is_file():
                found.append((f"{package}.{info.name}", path))
    return found


def _cards_in(path: Path, module: str) -> list[MethodCard]:
    """The ``MethodCard(...)`` declarations of a source file, in source order."""
    source = path.read_text(encoding="utf-8")
    if "MethodCard(" not in source:
        return []
    calls = [node for node in ast.walk(ast.parse(source, filename=str(path))) if isinstance(node, ast.Call)
             and getattr(node.func, "id", getattr(node.func, "attr", None)) == "MethodCard"]
    return [_card_of(call, path, module) for call in sorted(calls, key=lambda c: (c.lineno, c.col_offset))]


def _card_of(call: ast.Call, path: Path, module: str) -> MethodCard:
    where = f"{path}:{call.lineno}"
    if call.args or any(keyword.arg not in _FIELDS for keyword in call.keywords):
        raise UserError(f"{where}: MethodCard takes keyword arguments only, of {', '.join(_FIELDS)}")
    values = {}
    for keyword in call.keywords:
        try:
            values[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise UserError(f"{where}: MethodCard's {keyword.arg} must be a literal (the cards are read without "
                            f"importing the module)") from None
    if "name" not in values:
        raise UserError(f"{where}: MethodCard needs name=")
    return replace(MethodCard(**values), module=module)
