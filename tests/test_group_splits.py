"""Group-disjoint splits (datasets/groups.py, docs/splits.md): no group straddles train/val/test for any of the 20
seeds, every part within 5 points of 60/20/20, deterministic; Paired's groups.npy (generated splits, a given
splits.csv checked, the refusals as one line and exit code 2, the split digest covering the groups) and RAVDESS's
``--ravdess_split actor`` on a tiny dataset in the exact on-disk format."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import refused
from datasets import get_spec, ravdess
from datasets.groups import FRACTIONS, TOLERANCE, group_splits
from datasets.splits import NUM_GROUPS, cut, generate_permutations, resolve_split, write_indices_csv
from fixtures import make_fixture
from kd_methods import get_method
from utils import cli, engine, provenance
from utils.core.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

QUICK = ["--epochs", "1", "--max_steps", "2", "--no-record", "--device", "cpu"]


def uneven_subjects(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """12 subjects of 50..400 windows each (string ids), 5 classes spread over all of them."""
    rng = np.random.RandomState(seed)
    sizes = rng.randint(50, 400, size=12)
    groups = np.repeat(np.array([f"subject-{i:02d}" for i in range(12)]), sizes)
    return groups, rng.randint(0, 5, size=len(groups))


STRUCTURES = {
    "24 actors x 60 clips (RAVDESS)": lambda: (np.repeat(np.arange(1, 25), 60), np.tile(np.arange(60) % 8, 24), 8),
    "12 uneven subjects, string ids": lambda: (*uneven_subjects(), 5),
    "40 recordings, shuffled sample order": lambda: (np.random.RandomState(1).randint(0, 40, size=3000),
                                                     np.random.RandomState(2).randint(0, 4, size=3000), 4),
}


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_no_group_straddles_the_parts_and_every_part_is_within_bounds(structure):
    groups, labels, classes = STRUCTURES[structure]()
    n = len(groups)
    splits = group_splits(groups, labels, classes, "test data")
    assert len(splits) == NUM_GROUPS
    for seed, parts in enumerate(splits):
        joined = np.concatenate(parts)
        assert np.array_equal(np.sort(joined), np.arange(n)), seed  # every sample exactly once
        members = [set(groups[part].tolist()) for part in parts]
        assert not (members[0] & members[1] or members[0] & members[2] or members[1] & members[2]), seed
        for part, share in zip(parts, FRACTIONS):
            assert abs(len(part) / n - share) <= TOLERANCE, (seed, len(part) / n, share)
        assert set(labels[parts[0]].tolist()) == set(range(classes)), seed  # every class in train
    again = group_splits(groups, labels, classes, "test data")
    assert all(np.array_equal(a, b) for s, t in zip(splits, again) for a, b in zip(s, t))  # deterministic
    assert len({tuple(np.sort(parts[2])) for parts in splits}) > 10  # the seeds give different test sets


def test_one_sample_per_group_gives_the_reference_split_exactly():
    n = 97
    splits = group_splits(np.arange(n), np.arange(n) % 3, 3, "test data")
    for parts, permutation in zip(splits, generate_permutations(n)):
        assert all(np.array_equal(a, b) for a, b in zip(parts, cut(permutation)))


def test_no_valid_split_is_refused_naming_the_seed_and_why():
    labels = np.arange(60) % 2
    with pytest.raises(UserError, match=r"no split of seed 0 into whole groups .* largest holds 80%"):
        group_splits(np.repeat([0, 1, 2], [48, 6, 6]), labels, 2, "test data")
    # class 2 lives only in group 1 (12 samples), which never fits into a train of 36 +- 3 beside group 0 (36)
    groups = np.repeat([0, 1, 2], [36, 12, 12])
    labels = np.where(groups == 1, 2, np.arange(60) % 2)
    with pytest.raises(UserError, match=r"no split of seed 0 puts class 2 into train .* class 2 is in 1 of 3 groups"):
        group_splits(groups, labels, 3, "test data")


def test_the_split_digest_covers_the_groups():
    splits = dict(zip(("train", "val", "test"), cut(generate_permutations(60, 1)[0])))
    by_six, by_three = np.arange(60) // 6, np.arange(60) // 3
    plain = provenance.split_digest(splits)
    assert provenance.split_digest(splits, None) == plain  # runs without groups keep their digest
    assert len({plain, provenance.split_digest(splits, by_six), provenance.split_digest(splits, by_three)}) == 3
    renamed = np.array([f"s{g:02d}" for g in by_six])  # the same partition in the same order
    assert provenance.split_digest(splits, renamed) == provenance.split_digest(splits, by_six)


# -- Paired --------------------------------------------------------------------------------------------------------

def write_paired(root: Path, n: int = 60, groups: np.ndarray | None = None, classes: int = 3) -> Path:
    rng = np.random.RandomState(0)
    labels = np.arange(n) % classes
    root.mkdir(parents=True, exist_ok=True)
    np.save(root / "m1.npy", rng.randn(n, 6).astype(np.float32) + labels[:, None])
    np.save(root / "m2.npy", rng.randn(n, 4).astype(np.float32))
    np.save(root / "labels.npy", labels)
    if groups is not None:
        np.save(root / "groups.npy", groups)
    return root


def paired_args(root: Path, *extra):
    return cli.parse_args(get_method("S"), ["--database", "Paired", "--data_root", str(root), *extra])


def test_paired_groups_npy_gives_whole_groups_per_part(tmp_path):
    groups = np.repeat(np.arange(10), 6)[np.random.RandomState(3).permutation(60)]  # 10 subjects, interleaved rows
    root = write_paired(tmp_path / "d", groups=groups)
    messages = []
    expected = group_splits(groups, np.arange(60) % 3, 3, "")
    for seed in (0, 7, 19):
        split = get_spec("Paired").resolve_split(paired_args(root, "--seed", str(seed)), 60, messages.append)
        assert all(np.array_equal(a, b) for a, b in zip(split, expected[seed]))
    assert "keeps the 10 groups" in messages[0] and "36/12/12" in messages[0]


def test_paired_run_records_the_groups_and_a_teacher_of_other_groups_is_refused(tmp_path, capsys):
    """splits.csv fixes the split; groups.npy changes from subjects of 6 rows to finer ones of 3 rows (still disjoint
    with the file): the split digest changes, so a teacher trained beside the old groups is refused."""
    by_six = np.arange(60) // 6
    root = write_paired(tmp_path / "d", groups=by_six)
    columns = [np.concatenate(parts) for parts in group_splits(by_six, np.arange(60) % 3, 3, "")]
    write_indices_csv(root / "splits.csv", np.stack(columns))  # whole subjects of 6 cut at 36/48: group-disjoint
    argv = ["--database", "Paired", "--data_root", str(root), "--batch_size", "4", *QUICK]
    engine.main("T", [*argv, "--out_dir", str(tmp_path / "runs")])
    (run,) = (tmp_path / "runs" / "T" / "Paired").iterdir()
    record = torch.load(run / "best.pth", weights_only=True)["provenance"]
    splits = dict(zip(("train", "val", "test"), cut(columns[0])))
    assert record["split_sha256"] == provenance.split_digest(splits, by_six) != provenance.split_digest(splits)
    np.save(root / "groups.npy", np.arange(60) // 3)
    line = refused(capsys, "KD", [*argv, "--mode", "m1", "--ckpt_name", run / "best.pth",
                                  "--out_dir", tmp_path / "kd"])
    assert "teacher checkpoint" in line and "split (sha256" in line, line


def _straddling_csv(root: Path) -> None:
    write_indices_csv(root / "splits.csv", generate_permutations(60))


def _first_seed_without_class_in_train(sample: int) -> int:
    return next(s for s, p in enumerate(generate_permutations(60)) if sample not in cut(p)[0])


@pytest.mark.parametrize("case,message", [
    ("splits.csv straddles groups", r"splits.csv: column group_0 puts group \d+ into both train and (val|test)"),
    ("groups.npy too short", r"groups.npy has shape \[59\], expected \[60\]"),
    ("groups.npy pickled objects", r"groups.npy \(group id per sample, \[N\]\) for Paired is not a NumPy .npy "
                                   r"array: it holds pickled Python objects"),
    ("groups.npy floats", r"groups.npy holds float64 values; group ids must be integers or strings"),
    ("groups.npy 2-d", r"groups.npy has shape \[60, 1\], expected \[60\]"),
    ("one huge group", r"groups.npy: no split of seed 0 into whole groups .* largest holds 80% of the samples"),
    ("a later seed lacks a class in train", r"the train split of seed {seed} of .* has no sample of class 2"),
])
def test_paired_group_refusals_are_one_line_with_exit_code_2(case, message, tmp_path, capsys):
    root, groups, seed = tmp_path / "d", np.arange(60) // 6, 0
    if case == "groups.npy too short":
        groups = groups[:-1]
    elif case == "groups.npy pickled objects":
        groups = np.array([object()] * 60, dtype=object)
    elif case == "groups.npy floats":
        groups = groups.astype(np.float64)
    elif case == "groups.npy 2-d":
        groups = groups[:, None]
    elif case == "one huge group":
        groups = np.repeat([0, 1, 2], [48, 6, 6])
    elif case == "a later seed lacks a class in train":
        groups = None
    write_paired(root, groups=groups)
    if case == "splits.csv straddles groups":
        _straddling_csv(root)
    if case == "a later seed lacks a class in train":
        labels = np.arange(60) % 2
        labels[7] = 2  # the only sample of class 2: in train for --seed 0, not for a later seed
        np.save(root / "labels.npy", labels)
        assert 7 in cut(generate_permutations(60)[0])[0]
        message = message.format(seed=_first_seed_without_class_in_train(7))
    line = refused(capsys, "S", ["--database", "Paired", "--data_root", root, "--batch_size", "4", "--seed", seed,
                                 *QUICK, "--out_dir", tmp_path / "runs"])
    assert re.search(message, line), line


# -- RAVDESS -------------------------------------------------------------------------------------------------------

ACTORS, CLIPS = 5, 8  # one clip per emotion and actor, as in RAVDESS (where every actor speaks every emotion)


def write_ravdess_with_order(root: Path) -> tuple[Path, np.ndarray]:
    """A tiny RAVDESS in the loader's format plus the ``sample_order.txt`` data_preprocess/ravdess.py writes."""
    n = ACTORS * CLIPS
    make_fixture("RAVDESS", root, n=n)
    folder = root / ravdess.FOLDER
    order = np.random.RandomState(5).permutation(n)  # clips in no particular actor order
    actors, emotions = order // CLIPS + 1, order % CLIPS + 1
    np.save(folder / "label_data.npy", (emotions - 1).astype(np.int64))
    lines = [f"Actor_{a:02d}/01-01-{e:02d}-01-01-01-{a:02d}_facecroppad.npy\n" for a, e in zip(actors, emotions)]
    (folder / "sample_order.txt").write_text("".join(lines))
    return root, actors


@pytest.fixture(scope="module")
def ravdess_root(tmp_path_factory):
    return write_ravdess_with_order(tmp_path_factory.mktemp("ravdess"))


def ravdess_args(root: Path, *extra):
    return cli.parse_args(get_method("S"), ["--database", "RAVDESS", "--data_root", str(root), *extra])


def test_ravdess_actor_split_keeps_every_actor_in_one_part(ravdess_root, tmp_path):
    root, actors = ravdess_root
    n = len(actors)
    spec = get_spec("RAVDESS")
    for seed in range(NUM_GROUPS):
        args = ravdess_args(root, "--ravdess_split", "actor", "--seed", str(seed), "--metadata_dir", str(tmp_path))
        parts = spec.resolve_split(args, n, lambda _: None)
        members = [set(actors[p].tolist()) for p in parts]
        assert [len(m) for m in members] == [3, 1, 1] and set().union(*members) == set(range(1, ACTORS + 1))
        assert [len(p) for p in parts] == [24, 8, 8]
    assert np.array_equal(spec.groups(args, n), actors)
    default = ravdess_args(root, "--metadata_dir", str(tmp_path))
    assert spec.groups(default, n) is None  # the reference's per-clip split: no groups, digest unchanged
    reference = resolve_split("RAVDESS", n, 0, metadata_dir=tmp_path, log=lambda _: None)
    assert all(np.array_equal(a, b) for a, b in zip(spec.resolve_split(default, n, lambda _: None), reference))


def test_ravdess_actor_run_names_and_records_the_option(ravdess_root, tmp_path):
    root, actors = ravdess_root
    engine.main("S", ["--database", "RAVDESS", "--data_root", str(root), "--ravdess_split", "actor", "--mode", "m2",
                      "--batch_size", "4", "--metadata_dir", str(tmp_path / "meta"), *QUICK,
                      "--out_dir", str(tmp_path / "runs")])
    (run,) = (tmp_path / "runs" / "S" / "RAVDESS").iterdir()
    assert "_actors_m2_seed0" in run.name
    record = torch.load(run / "best.pth", weights_only=True)["provenance"]
    assert record["dataset_options"] == {"ravdess_split": "actor"}
    args = ravdess_args(root, "--ravdess_split", "actor")
    splits = dict(zip(("train", "val", "test"), get_spec("RAVDESS").resolve_split(args, len(actors), lambda _: None)))
    assert record["split_sha256"] == provenance.split_digest(splits, actors)
    assert json.loads((run / "results.json").read_text())["seed"] == 0


@pytest.mark.parametrize("case,message", [
    ("no sample_order.txt", "--ravdess_split actor needs .*sample_order.txt"),
    ("a line too few", "sample_order.txt names 39 clips but the arrays hold 40"),
    ("not a RAVDESS name", "line 3 of .*sample_order.txt is not a RAVDESS file name"),
    ("another order", "line 1 of .*sample_order.txt names emotion .* but label_data.npy has class"),
])
def test_ravdess_actor_split_refusals(case, message, ravdess_root, tmp_path, capsys):
    root = tmp_path / "copy"
    folder = root / ravdess.FOLDER
    folder.mkdir(parents=True)
    source = ravdess_root[0] / ravdess.FOLDER
    for name in ("video_data.npy", "audio_data.npy", "label_data.npy"):
        (folder / name).symlink_to(source / name)
    lines = (source / "sample_order.txt").read_text().splitlines(keepends=True)
    if case == "a line too few":
        lines = lines[:-1]
    elif case == "not a RAVDESS name":
        lines[2] = "Actor_01/clip.npy\n"
    elif case == "another order":  # the first clip's emotion field no longer matches its label
        fields = lines[0].split("-")
        fields[2] = f"{int(fields[2]) % 8 + 1:02d}"
        lines[0] = "-".join(fields)
    if case != "no sample_order.txt":
        (folder / "sample_order.txt").write_text("".join(lines))
    with pytest.raises(UserError, match=message):
        get_spec("RAVDESS").resolve_split(ravdess_args(root, "--ravdess_split", "actor"), 40, lambda _: None)
    if case == "no sample_order.txt":  # end to end: one line, exit code 2, and the fix
        line = refused(capsys, "S", ["--database", "RAVDESS", "--data_root", root, "--ravdess_split", "actor",
                                     "--mode", "m2", *QUICK, "--out_dir", tmp_path / "runs"])
        assert "or use --ravdess_split clip" in line, line
