"""The package layout's one-way boundaries: methods describe stages, the engine runs them. No module under
``kd_methods/`` imports the training loop (``utils.engine``) or the command line (``utils.cli``); drivers that need
both (``utils/mfh_experiments.py``, ``utils/offline.py``) live outside ``kd_methods/``."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("utils.engine", "utils.cli")
METHOD_MODULES = sorted((ROOT / "kd_methods").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included): ``from utils import cli``
    counts as ``utils.cli``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_scan_sees_function_level_and_from_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from utils import cli, engine\n    import utils.engine as e\n")
    assert {"utils.cli", "utils.engine"} <= imported_modules(sample)


@pytest.mark.parametrize("path", METHOD_MODULES, ids=lambda p: p.name)
def test_methods_do_not_import_the_engine_or_the_command_line(path):
    bad = sorted(name for name in imported_modules(path) if name in FORBIDDEN or name.startswith(
        tuple(f"{f}." for f in FORBIDDEN)))
    assert not bad, f"kd_methods/{path.name} imports {', '.join(bad)}: methods stay on their side of the boundary"


def test_mst_distill_module_stays_small():
    lines = len((ROOT / "kd_methods" / "mst.py").read_text().splitlines())
    assert lines <= 800, f"kd_methods/mst.py has {lines} lines; split a concern out (segments, losses, caching)"
