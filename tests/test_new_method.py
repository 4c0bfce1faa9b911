"""A new method is one module: written in a package of its own, named in $CMKD_METHODS, it runs through
``reproduce.py`` (dry run and a real tiny sweep) and ``main.py NAME`` without any file of the repository changing.
docs/extending.md, "Adding a method", describes exactly these steps."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASE = ["--epochs", "1", "--max_steps", "2", "--device", "cpu", "--no-record"]

#: the module of docs/extending.md, "Adding a method"
LOGIT_MSE = '''"""Logit matching (Ba & Caruana, NeurIPS 2014): the student's logits regress the multimodal teacher's."""
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.kd import SingleTeacherDistiller
from utils.core.cards import MethodCard


@register_method
class LogitMSE(SingleTeacherDistiller):
    """(1 - alpha) * CE(student) + alpha * MSE(student logits, teacher logits)."""

    card = MethodCard(name="Logit-MSE", summary="Logit matching from a pre-trained multimodal teacher.",
                      roles=("teacher", "student"), teacher_kind="multimodal", needs_checkpoint=True,
                      search_space={"lr": ("log", 0.1, 10.0, "relative"), "alpha": ("float", 0.1, 0.9)})

    def distill_terms(self, batch, epoch):
        teacher_logits = self.teacher_forward(self.teacher, batch, self.teacher_modalities())
        student_logits = self.run_model(self.student, batch, (self.mode,))
        return student_logits, {"mse": F.mse_loss(student_logits, teacher_logits)}
'''


@pytest.fixture(scope="module")
def user_package(tmp_path_factory) -> dict:
    """``my_methods/logit_mse.py`` in a folder of its own; the environment that registers it."""
    root = tmp_path_factory.mktemp("user")
    (root / "my_methods").mkdir()
    (root / "my_methods" / "__init__.py").write_text("")
    (root / "my_methods" / "logit_mse.py").write_text(LOGIT_MSE)
    return {**os.environ, "PYTHONPATH": str(root), "CMKD_METHODS": "my_methods"}


def _run(argv: list[str], env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_a_method_in_a_user_package_joins_the_sweep_dry_run(user_package, tmp_path):
    sweep = ["reproduce.py", "--methods", "Logit-MSE", "--modes", "m1", "--seeds", "0", "--dry_run", "--out_dir",
             str(tmp_path / "sw"), "--", "--epochs", "1", "--device", "cpu"]
    out = _run(sweep, user_package).stdout.splitlines()
    commands = [line for line in out if line.startswith("python main")]
    assert [c.split()[1] for c in commands] == ["main-T.py", "main-S.py", "main.py"]
    assert commands[2].startswith("python main.py Logit-MSE ")
    assert "--ckpt_name <best.pth of Synthetic-MVD_seed0_T-" in commands[2]
    assert "Logit-MSE" in _run(["reproduce.py", "--help"], user_package).stdout

    unregistered = {key: value for key, value in user_package.items() if key != "CMKD_METHODS"}
    refused = _run(sweep, unregistered, check=False)
    assert refused.returncode == 2 and refused.stderr.startswith("error: unknown method 'Logit-MSE'")


def test_a_method_in_a_user_package_runs_for_real(user_package, tmp_path):
    sweep = tmp_path / "sweep"
    _run(["reproduce.py", "--methods", "Logit-MSE", "--modes", "m1", "--seeds", "0", "--jobs", "2", "--out_dir",
          str(sweep), "--", *BASE], user_package)
    table = {row["method"]: row for row in csv.DictReader((sweep / "table.csv").open())}
    assert set(table) == {"T", "S", "Logit-MSE"} and table["Logit-MSE"]["group"] == "multimodal-teacher"
    (results,) = sweep.glob("runs/*/Logit-MSE/Synthetic-MVD/*/results.json")
    assert json.loads(results.read_text())["method"] == "Logit-MSE"

    teacher = next(sweep.glob("runs/*/T/Synthetic-MVD/*/best.pth"))
    direct = _run(["main.py", "Logit-MSE", *BASE, "--ckpt_name", str(teacher), "--out_dir",
                   str(tmp_path / "direct")], user_package)
    assert "Run directory: " in direct.stdout
    help_text = _run(["main.py", "Logit-MSE", "--help"], user_package).stdout
    assert "(required)" in help_text
    assert "search space (reproduce.py --tune):\n  --lr log-uniform in [0.1, 10] x its default\n  --alpha uniform" in help_text
