"""Every registered method's search space (its card's ``search_space``), over the registry, so a new method is covered
the moment it is declared: each searched name is an option of the method's script, the defaults lie inside the ranges
on every dataset, the ends of each range are values the script accepts, ``--help`` and docs/tuning.md list the spaces,
and the knobs that became flags for a space default to the reference's values."""
from __future__ import annotations

import runpy

import pytest

from conftest import ROOT
from datasets import DATASETS
from kd_methods import get_method
from utils import cli
from utils.core.cards import MethodCard, discover_cards, search_spaces_section
from utils.core.search_space import NEVER_SEARCHED, contains

CARDS = discover_cards()
#: the methods whose trials a tuned comparison runs: the compared ones and the no-KD student
TUNED = [name for name, card in CARDS.items() if card.in_comparison or name == "S"]


def _parser(name: str):
    return cli.build_parser(get_method(name))


def _actions(name: str) -> dict:
    return {action.dest: action for action in _parser(name)._actions}


def _filled_defaults(name: str, spec):
    """The options of an empty command line with the dataset's defaults filled, as a run on ``spec`` starts."""
    method = get_method(name)
    args = _parser(name).parse_args([])
    method.fill_defaults(args, spec)
    return args


def _supported_specs(name: str) -> list:
    """The dataset specs the method runs on (the feature- and relation-based ones refuse segmentation up front)."""
    dense = getattr(get_method(name), "supports_dense", True)
    return [spec for spec in DATASETS.values() if dense or not spec.is_segmentation]


@pytest.mark.parametrize("name", list(CARDS))
def test_each_searched_name_is_an_option_of_the_methods_script_with_the_kind_of_its_range(name):
    actions = _actions(name)
    for param in CARDS[name].search_params:
        assert param.name in actions, f"{name}: --{param.name} is in its search space but not a flag of its script"
        action = actions[param.name]
        if param.kind == "int":
            assert action.type is int, f"{name}: --{param.name} is searched as an integer but parses as {action.type}"
        elif param.kind in ("float", "log"):
            assert action.type is float, f"{name}: --{param.name} is searched as a number but parses as {action.type}"
        elif action.choices is not None:
            assert set(param.choices) <= set(action.choices), f"{name}: --{param.name} searches values it refuses"


@pytest.mark.parametrize("name", TUNED)
def test_every_compared_method_and_the_no_kd_student_search_their_learning_rate(name):
    assert "lr" in CARDS[name].search_space, f"{name} is tuned in a comparison: its space needs the learning rate"


@pytest.mark.parametrize("name", list(CARDS))
def test_no_space_holds_the_budget_the_seed_or_an_option_the_sweep_sets(name):
    card = CARDS[name]
    for param in card.search_params:
        assert param.name not in NEVER_SEARCHED and "epochs" not in param.name.split("_"), (name, param.name)
    flags = {flag: action.dest for action in _parser(name)._actions for flag in action.option_strings}
    swept = {flags[flag] for flag in card.sweep_flags}
    assert not swept & set(card.search_space), f"{name}: the sweep sets {sorted(swept)}; a search must not"


@pytest.mark.parametrize("name", [name for name in CARDS if CARDS[name].search_space])
def test_the_default_of_each_searched_option_lies_inside_its_range_on_every_dataset(name):
    for spec in _supported_specs(name):
        args = _filled_defaults(name, spec)
        for param in CARDS[name].search_params:
            default = getattr(args, param.name)
            resolved = param.resolved(default)
            assert contains(resolved, default), \
                f"{name} on {spec.name}: the default --{param.name} {default} is outside {resolved.describe()}"


@pytest.mark.parametrize("name", [name for name in CARDS if CARDS[name].search_space])
@pytest.mark.parametrize("end", ["low", "high"])
def test_each_end_of_each_range_is_a_value_the_script_accepts(name, end):
    """All searched options at one end of their ranges at once (resolved on UCI-MFeat): the script's parser and the
    method's checks accept the command line."""
    card = CARDS[name]
    spec = DATASETS["UCI-MFeat"]
    defaults = _filled_defaults(name, spec)
    argv = ["--database", spec.name] + (["--ckpt_name", "teacher.pth"] if card.needs_checkpoint else [])
    for param in card.search_params:
        resolved = param.resolved(getattr(defaults, param.name))
        value = resolved.choices[0 if end == "low" else -1] if param.kind == "choice" else getattr(resolved, end)
        argv += [f"--{param.name}", str(value)]
    args = cli.parse_args(get_method(name), argv)
    for param in card.search_params:
        assert contains(param.resolved(getattr(defaults, param.name)), getattr(args, param.name)), param.name


#: the knobs that were constants of the methods before they were searched: (methods, option, reference value)
REFERENCE_KNOBS = [
    (("KD", "KD-UU", "FitNets", "FitNets-UU", "MGDFR"), "kd_temperature", 4.0),
    (("RKD", "RKD-UU"), "rkd_distance_weight", 1.0),
    (("RKD", "RKD-UU"), "rkd_angle_weight", 2.0),
]


@pytest.mark.parametrize("methods, option, reference", REFERENCE_KNOBS)
def test_the_flags_made_for_the_spaces_default_to_the_reference_values(methods, option, reference):
    for name in methods:
        args = _parser(name).parse_args([])
        assert getattr(args, option) == reference, f"{name}: --{option} must default to the reference's {reference}"
        assert option in CARDS[name].search_space


@pytest.mark.parametrize("name", list(CARDS))
def test_help_lists_the_search_space_one_option_a_line(name):
    text = _parser(name).format_help()
    params = CARDS[name].search_params
    assert (cli.SEARCH_SPACE_TITLE in text) == bool(params)
    lines = text.splitlines()
    for param in params:
        assert f"  {param.describe()}" in lines, f"{name}: --help lacks the line '{param.describe()}'"


def test_docs_tuning_lists_every_space_as_the_cards_declare_them():
    tool = runpy.run_path(str(ROOT / "tools" / "search_spaces.py"), run_name="search_spaces")
    page = (ROOT / "docs" / "tuning.md").read_text(encoding="utf-8")
    assert tool["section_of"](page) == search_spaces_section(), \
        "docs/tuning.md's section 'Search spaces' differs from the cards; run: .venv/bin/python tools/search_spaces.py"


def test_the_section_has_one_row_per_searched_option_and_rewrites_in_place():
    cards = {"A": MethodCard(name="A", search_space={"lr": ("log", 0.1, 10.0, "relative"), "k": ("int", 1, 3)}),
             "B": MethodCard(name="B"),
             "C": MethodCard(name="C", search_space={"how": ("choice", ("x", "y"))})}
    rows = [line for line in search_spaces_section(cards).splitlines() if line.startswith("| ")]
    assert rows[1:] == ["| A | `--lr` | log-uniform in [0.1, 10] x its default |",
                        "|  | `--k` | an integer in [1, 3] |",
                        "| C | `--how` | one of x, y |"]
    tool = runpy.run_path(str(ROOT / "tools" / "search_spaces.py"), run_name="search_spaces")
    page = "# Page\n\nIntro.\n\n## Search spaces\n\nold\n\n## Later\n\nkept\n"
    rewritten = tool["rewritten"](page)
    assert rewritten == "# Page\n\nIntro.\n\n" + search_spaces_section() + "\n## Later\n\nkept\n"
    assert tool["section_of"](rewritten) == search_spaces_section()
    assert tool["rewritten"]("# Page\n") == "# Page\n\n" + search_spaces_section()
