"""Shared pytest fixtures.

Puts the repository root and ``tests/`` on ``sys.path`` so both ``import datasets`` and
``from tests.fixtures import make_fixture`` / ``from fixtures import make_fixture`` work however pytest is run.
"""
from __future__ import annotations

import contextlib
import io
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for _path in (str(_TESTS.parent), str(_TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from fixtures import make_fixture  # noqa: E402


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory):
    """``fixture_root(database) -> data root`` holding the tiny fixture of ``database``.

    One data root per session; each database is written on first request and reused. Tests must not modify
    it (use ``make_fixture(database, tmp_path)`` to get a private copy to corrupt).
    """
    root = tmp_path_factory.mktemp("data_root")
    written: set[str] = set()

    def get(database: str) -> Path:
        if database not in written:
            make_fixture(database, root)
            written.add(database)
        return root

    return get


ROOT = _TESTS.parent


# -- the registries: no test leaves an entry behind --------------------------------------------------------------

def _registry_names() -> dict[str, set]:
    from datasets import DATASETS
    from kd_methods import METHODS, all_methods
    from models import MODELS

    all_methods()  # every real method first: a lazy import must not look like an entry a test added
    return {"methods": set(METHODS), "models": set(MODELS), "datasets": set(DATASETS)}


@pytest.fixture(autouse=True, scope="module")
def _registries_unchanged():
    """Each test module leaves the method, model and dataset registries as it found them."""
    before = _registry_names()
    yield
    after = _registry_names()
    left = {kind: sorted(after[kind] - before[kind]) for kind in before if after[kind] - before[kind]}
    assert not left, f"entries left in the global registries: {left}"


def method_registration(*classes):
    """An autouse fixture that registers test-only methods for the tests of one module and removes them afterwards.

    Assign it to a module-level name: ``_methods = method_registration(MyMethod)``.
    """

    @pytest.fixture(autouse=True, scope="module")
    def registration():
        from kd_methods import METHODS, all_methods, register_method

        all_methods()
        for cls in classes:
            register_method(cls)
        try:
            yield
        finally:
            for cls in classes:
                METHODS.pop(cls.name, None)

    return registration


# -- running scripts ---------------------------------------------------------------------------------------------

def run_script(script: str, *argv, cwd=None, check: bool = True, timeout: float = 600, in_process: bool = False):
    """Run ``python SCRIPT ARGV`` (a script of the repository root) in a subprocess, or ``in_process`` as ``python``
    would run it (no interpreter start; its output captured); with ``check``, a non-zero exit fails the test with the
    end of its output. Returns a ``subprocess.CompletedProcess``."""
    command = [sys.executable, str(ROOT / script), *map(str, argv)]
    if in_process:
        assert cwd is None, "an in-process run stays in the current directory"
        out, err, code, saved = io.StringIO(), io.StringIO(), 0, sys.argv
        sys.argv = command[1:]
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                runpy.run_path(command[1], run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        finally:
            sys.argv = saved
        result = subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())
    else:
        result = subprocess.run(command, cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def run_dir_of(result) -> Path:
    """The run directory a script printed last (``Run directory: PATH``); ``result`` is a completed process or its
    standard output."""
    stdout = result if isinstance(result, str) else result.stdout
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("Run directory: "), last
    return Path(last[len("Run directory: "):])


# -- methods on Synthetic-MVD ------------------------------------------------------------------------------------

MVD = ["--database", "Synthetic-MVD", "--mvd_samples", "400"]
MVD_SHAPES = {"m1": (50,), "m2": (50,)}


@pytest.fixture(scope="module")
def mvd_teachers(tmp_path_factory):
    """Random checkpoints: the fusion teacher and the m2 unimodal teacher (cross-modal for --mode m1)."""
    folder = tmp_path_factory.mktemp("teachers")
    return {"multimodal": random_teacher(folder / "t.pth", "MVD-MLP-I", 2, MVD_SHAPES),
            "crossmodal": random_teacher(folder / "s.pth", "MVD-MLP-m2", 2, MVD_SHAPES)}

def random_teacher(path: Path, name: str, num_classes: int, shapes: dict) -> str:
    """A reference-style bare state dict of a randomly initialised model."""
    import torch

    from models import build_model

    torch.save(build_model(name, num_classes=num_classes, input_shapes=shapes).state_dict(), path)
    return str(path)


def build_method(name: str, argv: list[str]):
    """The method ``name`` as a script would build it from ``argv`` (on the CPU, seeded), and its run context."""
    import torch

    from kd_methods import get_method
    from utils import cli
    from utils.engine import build_context
    from utils.core.runtime import seed_everything

    method_cls = get_method(name)
    description = cli.describe(method_cls, argv)
    seed_everything(description.args.seed)
    ctx = build_context(description, torch.device("cpu"), log=lambda _message: None)
    return method_cls(ctx), ctx


def first_batch(ctx):
    return next(iter(ctx.make_loader("train")))


def refused(capsys, method: str, argv) -> str:
    """Run ``method`` in-process on ``argv``: it must exit with code 2 and print exactly one ``error:`` line."""
    from utils import engine

    with pytest.raises(SystemExit) as exit_info:
        engine.main(method, [str(a) for a in argv])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def one_thread():
    """Torch single-threaded for a module: on a shared 2-core machine small tensor ops are faster with one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

