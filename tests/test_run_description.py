"""A run is resolved once (utils/description.py): the dataset spec is configured once per run, and nothing is added to
the Namespace after the command line is parsed (tests/test_resume.py covers the flags a resume applies)."""
from __future__ import annotations

import json

from conftest import run_dir_of
from datasets.base import DatasetSpec
from utils import engine

QUICK = ["--mvd_samples", "400", "--max_steps", "2", "--device", "cpu", "--no-record"]


def test_the_dataset_spec_is_configured_once_per_run(monkeypatch, tmp_path, capsys):
    calls = []
    configured = DatasetSpec.configured
    monkeypatch.setattr(DatasetSpec, "configured", lambda spec, args: calls.append(spec.name) or configured(spec, args))
    engine.main("S", [*QUICK, "--epochs", "1", "--out_dir", str(tmp_path)])
    assert calls == ["Synthetic-MVD"]
    run_dir = run_dir_of(capsys.readouterr().out)
    assert "resume_changes" not in json.loads((run_dir / "args.json").read_text())
