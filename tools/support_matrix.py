"""Regenerate the method x dataset support table of docs/support.md by running every distillation method for one step on
the tiny fixture of every paper dataset (random teachers saved as reference-style bare state dicts).

Not part of the pytest suite (about 10 minutes on a 2-core CPU): run it after touching a method's layer tables.

    python tools/support_matrix.py [DATABASE ...]
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the repository and its fixture writer (tests/fixtures.py)

import torch  # noqa: E402

from fixtures import FIXTURE_DATABASES, make_fixture  # noqa: E402
from kd_methods import all_methods, get_method  # noqa: E402
from models import build_model  # noqa: E402
from utils import cli, engine  # noqa: E402

NOT_DISTILLATION = {"T", "S", "test-T", "test-S"}
#: smallest settings that still run every stage
STAGE_FLAGS = {"MST-Distill": ["--epochs_s1", "1", "--epochs_s2", "1", "--hidden_dim_factor", "16"],
               "FitNets": ["--hint_epochs", "1"], "FitNets-UU": ["--hint_epochs", "1"],
               "MGDFR": ["--co_epochs", "1", "--repeat_permute", "1"]}


def random_teacher(method_cls, database: str, root: Path) -> list[str]:
    """``--ckpt_name`` of a randomly initialised teacher, saved as the reference saved its checkpoints."""
    if not method_cls.card.needs_checkpoint:
        return []
    data = cli.describe(get_method("T"), ["--database", database, "--data_root", str(root), "--metadata_dir",
                                          str(root / "metadata")])
    spec = data.spec
    name = method_cls.default_models(spec, "m1")["teacher"]
    source = spec.load(data.args)
    path = root / f"{database}_{name}.pth"
    torch.save(build_model(name, num_classes=spec.num_classes, input_shapes=source.input_shapes).state_dict(), path)
    return ["--ckpt_name", str(path)]


def run_one(method: str, database: str, root: Path) -> str:
    argv = ["--database", database, "--data_root", str(root), "--metadata_dir", str(root / "metadata"),
            "--out_dir", str(root / "runs"), "--batch_size", "2", "--epochs", "1", "--max_steps", "1",
            "--no-record", "--device", "cpu", "--mode", "m1", *random_teacher(get_method(method), database, root),
            *STAGE_FLAGS.get(method, [])]
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            engine.main(method, argv)
        return "✓"
    except SystemExit as error:
        last = output.getvalue().strip().splitlines()[-1]
        return f"✗ (exit {error.code}: {last})"


def main(databases: list[str]) -> None:
    methods = sorted(m for m in all_methods() if m not in NOT_DISTILLATION and not m.startswith("test-"))
    root = Path(tempfile.mkdtemp(prefix="support_matrix_"))
    cells = {}
    for database in databases:
        make_fixture(database, root)
        for method in methods:
            cells[method, database] = run_one(method, database, root)
            print(f"{database:14s} {method:12s} {cells[method, database]}", file=sys.stderr, flush=True)
    print("| method | " + " | ".join(databases) + " |")
    print("|---|" + "---|" * len(databases))
    for method in methods:
        print(f"| {method} | " + " | ".join(cells[method, d].split(" (")[0] for d in databases) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or list(FIXTURE_DATABASES))
