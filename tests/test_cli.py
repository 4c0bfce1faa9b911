"""The command-line contract of every script: thin entry points, one registered method each, a self-documenting
``--help`` fed by the registries, booleans as ``--x/--no-x``, defaults filled from the dataset and ``--mode``."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from datasets import DATASETS, dataset_names, get_spec
from kd_methods import all_methods, get_method
from models import MODELS
from utils import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in ROOT.glob("main-*.py")) + ["test-S.py", "test-T.py"]


def script_method(script: str) -> str:
    match = re.search(r'utils\.main\("([^"]+)"\)', (ROOT / script).read_text())
    assert match, f"{script} must end in one call utils.main(NAME)"
    return match.group(1)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_thin_and_name_a_registered_method(script):
    lines = (ROOT / script).read_text().splitlines()
    code = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    assert len(code) <= 30, f"{script} holds logic ({len(code)} lines)"
    if script != "main-MFH.py":  # MFH's experiments have their own entry point (utils/mfh_experiments.py)
        assert script_method(script) in all_methods()


@pytest.mark.parametrize("name", sorted(n for n in all_methods() if not n.startswith("test-nan")))
def test_help_lists_the_registries_and_booleans_are_switchable(name):
    method = get_method(name)
    parser = cli.build_parser(method)
    text = parser.format_help()
    for database in DATASETS:
        assert database in text
    for role, flag in (("teacher", "--Tmodel"), ("student", "--Smodel"), ("aux", "--AUXmodel")):
        assert (flag in text) == (role in method.card.roles), flag
    for action in parser._actions:
        if action.type is bool:
            pytest.fail(f"{name}: {action.option_strings} parses with bool(), so 'False' would be True; use BooleanOptionalAction")
        if isinstance(action, argparse.BooleanOptionalAction):
            assert any(s.startswith("--no-") for s in action.option_strings)
        if action.choices and "--Smodel" in action.option_strings:
            assert set(action.choices) == set(MODELS)
        if action.choices and "--database" in action.option_strings:
            assert list(action.choices) == dataset_names()


@pytest.mark.parametrize("database", list(DATASETS))
@pytest.mark.parametrize("mode", ["m1", "m2"])
def test_defaults_come_from_the_dataset_and_mode(database, mode):
    spec = get_spec(database)
    args = cli.parse_args(get_method("KD-UU"), ["--database", database, "--mode", mode, "--ckpt_name", "x.pth"])
    other = spec.other_modality(mode)
    assert (args.Tmodel, args.Smodel) == (spec.students[other], spec.students[mode])
    assert (args.batch_size, args.lr, args.epochs) == (spec.batch_size, spec.lr, spec.epochs)
    args = cli.parse_args(get_method("KD"), ["--database", database, "--mode", mode, "--ckpt_name", "x.pth",
                                             "--batch_size", "7", "--cuda_id", "1"])
    assert args.Tmodel == spec.teacher and args.batch_size == 7 and args.device == "cuda:1"


def test_alias_resolves_to_the_canonical_name():
    args = cli.parse_args(get_method("S"), ["--database", "CrisisMMD-V2"])
    assert args.database == "CMMD-V2" and args.Smodel == "MLP-Vb"
