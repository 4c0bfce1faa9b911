"""A run is resolved once (utils/description.py): the dataset spec is configured once per run, and nothing is added to
the Namespace after the command line is parsed (tests/test_resume.py covers the flags a resume applies)."""
from __future__ import annotations

import json

import pytest

from conftest import run_dir_of
from datasets.base import DatasetSpec
from kd_methods import get_method
from utils import cli, engine, provenance

QUICK = ["--mvd_samples", "400", "--max_steps", "2", "--device", "cpu", "--no-record"]


def test_the_dataset_spec_is_configured_once_per_run(monkeypatch, tmp_path, capsys):
    calls = []
    configured = DatasetSpec.configured
    monkeypatch.setattr(DatasetSpec, "configured", lambda spec, args: calls.append(spec.name) or configured(spec, args))
    engine.main("S", [*QUICK, "--epochs", "1", "--out_dir", str(tmp_path)])
    assert calls == ["Synthetic-MVD"]
    run_dir = run_dir_of(capsys.readouterr().out)
    assert "resume_changes" not in json.loads((run_dir / "args.json").read_text())


#: one fixed UCI-MFeat command (the data is embedded, so its data digest is fixed too) and the configuration digest
#: the code computed for it before the result-defining options came from the run description
PINNED_ARGV = ["--database", "UCI-MFeat", "--mfeat_m1", "fou", "--mfeat_m2", "kar", "--epochs", "3", "--lr", "0.01",
               "--device", "cpu", "--threads", "1", "--no-record", "--out_dir", "/tmp/unused", "--seed", "4",
               "--num_workers", "0"]
PINNED_DIGEST = "363de40a4d75545fba3438f133e780cd0259edd21b9319643e2275a7a670ea7f"


def test_the_configuration_digest_comes_from_the_descriptions_result_defining_options():
    description = cli.describe(get_method("S"), PINNED_ARGV)
    assert sorted(description.options) == ["Smodel", "amp", "batch_size", "database", "epochs", "fused_adam", "lr",
                                           "max_steps", "mfeat_m1", "mfeat_m2", "mode", "test_phase"]
    assert description.options["mfeat_m2"] == "kar" and description.options["epochs"] == 3
    assert not set(description.options) & set(description.runtime_options)
    assert {"device", "threads", "record", "out_dir", "seed", "num_workers", "resume", "data_root"} <= set(
        description.runtime_options)
    assert description.runtime_options["threads"] == 1 and description.runtime_options["seed"] == 4
    assert "mvd_samples" not in description.options  # another dataset's option is in neither part
    with pytest.raises(TypeError):
        description.options["epochs"] = 4  # read-only
    config = provenance.run_config("S", description.options, description.spec.name,
                                   provenance.data_digest(description.spec, description.args), {})
    assert provenance.config_digest(config) == PINNED_DIGEST
    # a runtime option changes nothing; a result-defining one changes the digest
    other_runtime = cli.describe(get_method("S"), [*PINNED_ARGV, "--threads", "2", "--out_dir", "/tmp/elsewhere"])
    assert other_runtime.options == description.options
    other_result = cli.describe(get_method("S"), [*PINNED_ARGV, "--epochs", "4"])
    assert other_result.options != description.options


def test_a_described_runs_options_cannot_be_written_after_it_is_described():
    description = cli.describe(get_method("S"), PINNED_ARGV)
    with pytest.raises(AttributeError, match="read-only"):
        description.args.epochs = 4
    with pytest.raises(AttributeError, match="read-only"):
        description.args.side_channel = True
    with pytest.raises(AttributeError, match="read-only"):
        del description.args.lr
    assert description.args.epochs == 3 and vars(description.args)["lr"] == 0.01
