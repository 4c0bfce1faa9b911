"""UCI-MFeat (embedded real data) and Paired (your own arrays): shapes, labels, training-split normalisation, run
names, every method on every model family the two datasets give (vectors: MLPs, images: small CNNs), and each bad
input of Paired as one line with exit code 2. Tiny sizes and ``--max_steps 2``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets import get_spec
from datasets.splits import cut, generate_permutations, write_indices_csv
from datasets.uci_mfeat import VIEWS, read_views, standardise
from kd_methods import all_methods, get_method
from models import build_model
from utils import cli, engine

#: every method a user runs; the teacher trainers and tools are covered by their own tests
METHODS = sorted(m for m in all_methods() if not m.startswith("test") and m not in ("MFH",))
#: smallest settings that still run every stage
STAGE_FLAGS = {"MST-Distill": ["--epochs_s1", "1", "--epochs_s2", "1"], "FitNets": ["--hint_epochs", "1"],
               "FitNets-UU": ["--hint_epochs", "1"], "MGDFR": ["--co_epochs", "1", "--repeat_permute", "1"]}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def write_paired(root: Path, m1: np.ndarray, m2: np.ndarray, labels: np.ndarray, meta: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, array in (("m1", m1), ("m2", m2), ("labels", labels)):
        np.save(root / f"{name}.npy", array)
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    return root


def paired_data(kind: str, n: int = 60, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``vectors``: [n, 12] and [n, 9] float32; ``images``: [n, 1, 10, 9] uint8 and [n, 7] float64."""
    rng = np.random.RandomState(seed)
    labels = np.arange(n) % classes
    if kind == "vectors":
        return (rng.randn(n, 12).astype(np.float32) + labels[:, None], rng.randn(n, 9).astype(np.float32), labels)
    return (rng.randint(0, 255, (n, 1, 10, 9)).astype(np.uint8), rng.randn(n, 7), labels)


# -- UCI-MFeat -----------------------------------------------------------------------------------------------------

def test_uci_views_and_labels_as_documented():
    views, labels = read_views()
    assert {v: x.shape for v, x in views.items()} == {v: (2000, d) for v, d in VIEWS.items()}
    assert labels.dtype == np.int64 and np.array_equal(labels, np.repeat(np.arange(10), 200))
    assert all(np.isfinite(x).all() for x in views.values())
    assert set(np.unique(views["pix"])) <= set(range(7))  # pixel averages 0..6 of a 15x16 image


def test_uci_standardised_with_training_statistics_only():
    args = cli.parse_args(get_method("S"), ["--database", "UCI-MFeat", "--mfeat_m1", "mor", "--mfeat_m2", "fac"])
    spec = get_spec("UCI-MFeat").configured(args)
    assert spec.modalities == {"m1": "mor", "m2": "fac"} and spec.example_input_shapes() == {"m1": (6,), "m2": (216,)}
    source = spec.load(args)
    assert source.input_shapes == {"m1": (6,), "m2": (216,)} and len(source) == 2000
    train, val, test = cut(generate_permutations(2000, 1)[0])
    fitted = spec.fit(source, {"train": train, "val": val, "test": test}, args)
    m1 = fitted.m1.numpy()
    assert np.allclose(m1[train].mean(axis=0), 0, atol=1e-5) and np.allclose(m1[train].std(axis=0), 1, atol=1e-4)
    assert not np.allclose(m1[test].mean(axis=0), 0, atol=1e-3)  # the test rows did not shape the statistics
    views, _ = read_views()
    changed = views["mor"].copy()
    changed[test] *= 100.0
    assert np.array_equal(standardise(changed, train)[train], standardise(views["mor"], train)[train])


def test_uci_run_directory_and_args_name_the_views(tmp_path):
    results = engine.main("S", ["--database", "UCI-MFeat", "--mfeat_m1", "kar", "--epochs", "1", "--max_steps", "2",
                                "--no-record", "--device", "cpu", "--out_dir", str(tmp_path)])
    (run,) = (tmp_path / "S" / "UCI-MFeat").iterdir()
    assert run.name.startswith("MLP-m1_kar-pix_m1_seed0_")
    saved = json.loads((run / "args.json").read_text())
    assert (saved["mfeat_m1"], saved["mfeat_m2"]) == ("kar", "pix")
    assert results["models"]["student"] == "MLP-m1"


# -- every method on every model family ------------------------------------------------------------------------

FAMILIES = {
    "UCI-MFeat": (None, ["--database", "UCI-MFeat", "--batch_size", "16"]),
    "Paired-vectors": ("vectors", ["--database", "Paired", "--batch_size", "4"]),
    "Paired-images": ("images", ["--database", "Paired", "--batch_size", "4"]),
}


@pytest.fixture(scope="module")
def family_roots(tmp_path_factory):
    """Per family: argv with the data root and random teachers saved as the reference saved its checkpoints."""
    base = tmp_path_factory.mktemp("families")
    prepared = {}
    for family, (kind, argv) in FAMILIES.items():
        argv = list(argv)
        if kind is not None:
            argv += ["--data_root", str(write_paired(base / family, *paired_data(kind)))]
        args = cli.parse_args(get_method("T"), argv)
        spec = get_spec(args.database).configured(args)
        shapes = spec.example_input_shapes()
        teachers = {}
        for kind_of_teacher, mode in (("multimodal", None), ("crossmodal", "m2")):
            name = spec.teacher if mode is None else spec.students[mode]
            path = base / f"{family}-{name}.pth"
            torch.save(build_model(name, num_classes=spec.num_classes, input_shapes=shapes).state_dict(), path)
            teachers[kind_of_teacher] = str(path)
        prepared[family] = (argv, teachers, spec)
    return prepared


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_every_family(method, family, family_roots, tmp_path):
    argv, teachers, spec = family_roots[family]
    method_cls = get_method(method)
    card = method_cls.card
    ckpt = ["--ckpt_name", teachers[card.teacher_kind or "multimodal"]] if card.needs_checkpoint else []
    results = engine.main(method, [*argv, *ckpt, *STAGE_FLAGS.get(method, []), "--epochs", "1", "--max_steps", "2",
                                   "--no-record", "--device", "cpu", "--out_dir", str(tmp_path)])
    role, expected = ("teacher", spec.teacher) if method == "T" else ("student", spec.students["m1"])
    assert results["models"][role] == expected
    assert 0.0 <= results["metrics"]["test"]["accuracy"] <= 1.0


# -- Paired --------------------------------------------------------------------------------------------------------

def test_paired_defaults_follow_the_shapes_and_meta(tmp_path):
    root = write_paired(tmp_path / "d", *paired_data("images"), meta={"modalities": {"m1": "sketch", "m2": "text"},
                                                                     "class_names": ["a", "b", "c"]})
    args = cli.parse_args(get_method("MST-Distill"), ["--database", "Paired", "--data_root", str(root),
                                                      "--batch_size", "8"])
    assert (args.Tmodel, args.Smodel, args.AUXmodel) == ("Fusion-I", "CNN-m1", "MLP-m2")
    spec = get_spec("Paired").configured(args)
    assert spec.num_classes == 3 and spec.modalities == {"m1": "sketch", "m2": "text"}
    source = spec.load(args)
    assert source.input_shapes == {"m1": (1, 10, 9), "m2": (7,)} and len(source) == 60
    splits = dict(zip(("train", "val", "test"), spec.resolve_split(args, len(source), lambda _: None)))
    source = spec.fit(source, splits, args)
    m1, m2, y = source.get_batch(splits["train"])
    assert m1.dtype == torch.float32 and m1.shape == (36, 1, 10, 9) and y.dtype == torch.int64
    assert abs(m1.mean().item()) < 1e-4 and abs(m2.mean(dim=0)).max().item() < 1e-4  # training statistics
    assert torch.equal(source.get_batch(np.array([5, 2]))[0][1], source.get_batch(np.array([2]))[0][0])


def test_paired_reads_its_splits_csv(tmp_path):
    root = write_paired(tmp_path / "d", *paired_data("vectors"))
    permutations = generate_permutations(60)[::-1].copy()  # any valid permutations, not the generated ones
    write_indices_csv(root / "splits.csv", permutations)
    args = cli.parse_args(get_method("S"), ["--database", "Paired", "--data_root", str(root), "--seed", "3"])
    train, _, test = get_spec("Paired").resolve_split(args, 60, lambda _: None)
    assert np.array_equal(train, permutations[3][:36]) and np.array_equal(test, permutations[3][48:])


def _corrupt(root: Path, case: str) -> list[str]:
    m1, m2, labels = paired_data("vectors")
    extra = ["--batch_size", "4"]
    if case == "different N":
        m2 = m2[:-1]
    elif case == "float labels":
        labels = labels + 0.5
    elif case == "label out of range":
        labels = labels.copy()
        labels[7] = -1
    elif case == "NaN":
        m1[11, 3] = np.nan
    elif case == "inf":
        m2[4, 0] = np.inf
    elif case == "class missing from a split":
        labels = labels.copy()
        labels[labels == 2] = 0
        labels[0] = 2  # one sample of class 2: some split has none
    write_paired(root, m1, m2, labels)
    if case == "splits.csv header":
        (root / "splits.csv").write_text("a,b\n" + "\n".join(f"{i},{i}" for i in range(60)))
    elif case == "splits.csv not a permutation":
        permutations = generate_permutations(60)
        permutations[0][0] = permutations[0][1]
        write_indices_csv(root / "splits.csv", permutations)
    elif case == "meta.json":
        (root / "meta.json").write_text("{not json")
    return extra


@pytest.mark.parametrize("case,message", [
    ("different N", "m2.npy N=59"),
    ("float labels", "labels that are not integers"),
    ("label out of range", "label -1 at sample 7"),
    ("NaN", "NaN or infinite values (first at sample 11)"),
    ("inf", "m2.npy has NaN or infinite values (first at sample 4)"),
    ("class missing from a split", "has no sample of class 2"),
    ("splits.csv header", "splits.csv is malformed: header a,b"),
    ("splits.csv not a permutation", "column group_0 is not a permutation"),
    ("meta.json", "meta.json is not valid JSON"),
])
def test_paired_bad_input_is_one_line_and_exit_code_2(case, message, tmp_path, capsys):
    extra = _corrupt(tmp_path / "d", case)
    with pytest.raises(SystemExit) as exit_info:
        engine.main("S", ["--database", "Paired", "--data_root", str(tmp_path / "d"), *extra, "--epochs", "1",
                          "--no-record", "--device", "cpu", "--out_dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_paired_missing_file_names_the_path(tmp_path, capsys):
    with pytest.raises(SystemExit):
        engine.main("S", ["--database", "Paired", "--data_root", str(tmp_path), "--out_dir", str(tmp_path / "r")])
    assert f"missing data file {tmp_path / 'm1.npy'}" in capsys.readouterr().err


# -- what a new dataset must not need ------------------------------------------------------------------------------

def test_any_registered_model_whose_inputs_fit(tmp_path, capsys):
    """No second registration under a new name: CMMD-V2's MLP-Vb (2048-d input) trains on other 2048-d vectors;
    a model whose inputs do not fit is refused with one line."""
    m1, m2, labels = paired_data("vectors", n=40)
    root = write_paired(tmp_path / "wide", np.repeat(m1, 171, axis=1)[:, :2048], m2, labels)
    results = engine.main("S", ["--database", "Paired", "--data_root", str(root), "--Smodel", "MLP-Vb",
                                "--batch_size", "4", "--epochs", "1", "--max_steps", "2", "--no-record", "--device",
                                "cpu", "--out_dir", str(tmp_path / "runs")])
    assert results["models"]["student"] == "MLP-Vb"
    with pytest.raises(SystemExit) as exit_info:
        engine.main("S", ["--database", "UCI-MFeat", "--Smodel", "LeNet5", "--out_dir", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    assert "built for AV-MNIST, not UCI-MFeat" in capsys.readouterr().err


def test_mst_stage_defaults_live_in_the_spec_or_follow_the_dataset():
    import dataclasses

    from kd_methods.mst_options import stage_defaults

    args = cli.parse_args(get_method("MST-Distill"), ["--database", "UCI-MFeat"])
    assert (args.epochs_s1, args.epochs_s2, args.epochs, args.s1_lr) == (20, 5, 20, 1e-3)
    own = get_spec("UCI-MFeat").method_defaults["MST-Distill"]
    assert {k: getattr(args, k) for k in own} == own
    plain = dataclasses.replace(get_spec("UCI-MFeat"), method_defaults={}, epochs=7)
    assert stage_defaults(plain) == {"epochs_s1": 7, "epochs_s2": 7, "s1_lr": 1e-4, "s2_lr": 1e-4,
                                     "compare_baseline": False}
    assert stage_defaults(get_spec("AV-MNIST"))["epochs_s1"] == 100  # the paper datasets: the reference's 100
