"""Dataset loaders, the batch loader and the split files, on tiny fixtures."""
from __future__ import annotations

import argparse
import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import datasets
from datasets import BatchLoader, get_spec
from datasets import cmmd, ravdess, vggsound
from datasets.splits import cut, generate_permutations, read_group, resolve_split, write_indices_csv
from tests.fixtures import FIXTURE_DATABASES, NYU_HEIGHT, NYU_WIDTH, make_fixture
from utils.core.errors import UserError


def args_for(root) -> argparse.Namespace:
    return argparse.Namespace(data_root=str(root), data_on_device=False)


def load(database: str, root):
    return get_spec(database).load(args_for(root))


def reference_minmax(x: np.ndarray) -> np.ndarray:
    """The reference's min-max, plainly: statistics by rank, ``(x - min) / (max - min)``, no epsilon, float32."""
    axes = {1: None, 2: (1,), 3: (1, 2), 4: (0, 2, 3), 5: (0, 1, 3, 4)}[x.ndim]
    low, high = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    return ((x - low) / (high - low)).astype(np.float32)


# ------------------------------------------------------------------------------------------------ specs

EXPECTED_SPECS = {
    "AV-MNIST": ("classification", 10, "CNN-I", {"m1": "LeNet5", "m2": "ThreeLayerCNN-A"}, 512, 1e-4, None),
    "RAVDESS": ("classification", 8, "DSCNN-I", {"m1": "VisualBranchNet", "m2": "AudioBranchNet"}, 32, 1e-4,
                None),
    "VGGSound-50k": ("classification", 141, "DSCNN-VGGS-I",
                     {"m1": "VisualBranchNet-VGGS", "m2": "AudioBranchNet-VGGS"}, 512, 1e-4, None),
    "CMMD-V2": ("classification", 8, "MLP-I", {"m1": "MLP-Vb", "m2": "MLP-Tb"}, 512, 5e-3, None),
    "NYU-Depth-V2": ("segmentation", 41, "FuseNet-I", {"m1": "FuseNet-RGBbranch", "m2": "FuseNet-Dbranch"}, 6,
                     1e-4, 0),
}


@pytest.mark.parametrize("database", FIXTURE_DATABASES)
def test_spec_fields(database):
    spec = get_spec(database)
    task, classes, teacher, students, batch_size, lr, ignore = EXPECTED_SPECS[database]
    assert (spec.name, spec.task, spec.num_classes, spec.teacher, spec.students) == (database, task, classes,
                                                                                    teacher, students)
    assert (spec.batch_size, spec.lr, spec.epochs, spec.ignore_index) == (batch_size, lr, 100, ignore)
    assert set(spec.modalities) == {"m1", "m2"} and spec.how_to_obtain
    assert spec.name in datasets.DATASETS


@pytest.mark.parametrize("database", FIXTURE_DATABASES)
def test_input_shapes_are_the_paper_teachers(database):
    """A database states its input shapes itself; for the paper databases they are the shapes its teacher is
    built for."""
    from models import get_entry

    spec = get_spec(database)
    assert spec.example_input_shapes() == get_entry(spec.teacher).example_inputs


def test_cmmd_alias():
    assert get_spec("CrisisMMD-V2") is get_spec("CMMD-V2")


# ----------------------------------------------------------------------------------------- shapes, dtypes

BATCH_SHAPES = {
    "AV-MNIST": ((1, 28, 28), (1, 112, 112), ()),
    "RAVDESS": ((15, 3, 224, 224), (15, 156), ()),
    "VGGSound-50k": ((10, 7, 7, 512), (10, 128), ()),  # class ids, not the packed [10, 143] tensor
    "CMMD-V2": ((2048,), (768,), ()),
    "NYU-Depth-V2": ((3, NYU_HEIGHT, NYU_WIDTH), (1, NYU_HEIGHT, NYU_WIDTH), (NYU_HEIGHT, NYU_WIDTH)),
}


@pytest.mark.parametrize("database", FIXTURE_DATABASES)
def test_batch_shapes_and_dtypes(database, fixture_root):
    source = load(database, fixture_root(database))
    m1_shape, m2_shape, y_shape = BATCH_SHAPES[database]
    assert source.input_shapes == {"m1": m1_shape, "m2": m2_shape}
    m1, m2, y = source.get_batch(np.array([2, 0, 1]))
    assert tuple(m1.shape) == (3,) + m1_shape and m1.dtype == torch.float32
    assert tuple(m2.shape) == (3,) + m2_shape and m2.dtype == torch.float32
    assert tuple(y.shape) == (3,) + y_shape and y.dtype == torch.int64
    if database != "NYU-Depth-V2":
        labels = source.labels()
        assert labels.dtype == np.int64 and labels.shape == (len(source),)
        assert np.array_equal(labels[[2, 0, 1]], y.numpy())


# ------------------------------------------------------------------------------------------ normalisation

def full_batch(source):
    return [t.numpy() for t in source.get_batch(np.arange(len(source)))]


def test_avmnist_normalisation_per_sample(fixture_root):
    root = fixture_root("AV-MNIST") / "avmnist"
    image = np.concatenate([np.load(root / "image" / f"{p}_data.npy") for p in ("train", "test")])
    audio = np.concatenate([np.load(root / "audio" / f"{p}_data.npy") for p in ("train", "test")])
    labels = np.concatenate([np.load(root / f"{p}_labels.npy") for p in ("train", "test")])
    m1, m2, y = full_batch(load("AV-MNIST", root.parent))
    np.testing.assert_array_equal(m1, reference_minmax(image).reshape(-1, 1, 28, 28))
    np.testing.assert_array_equal(m2, reference_minmax(audio).reshape(-1, 1, 112, 112))
    np.testing.assert_array_equal(y, labels)
    assert m1.reshape(len(m1), -1).min(axis=1).max() == 0 and m1.reshape(len(m1), -1).max(axis=1).min() == 1


def test_ravdess_normalisation(fixture_root):
    root = fixture_root("RAVDESS")
    files = ravdess.paths(root)
    video, audio = np.load(files["video"]), np.load(files["audio"])
    m1, m2, y = full_batch(load("RAVDESS", root))
    np.testing.assert_array_equal(m1, reference_minmax(video))      # per channel over the dataset
    np.testing.assert_array_equal(m2, reference_minmax(audio))      # per clip
    np.testing.assert_array_equal(y, np.load(files["label"]))
    # the channels have different ranges in the fixture, so per-channel is not the same as /255
    assert not np.array_equal(m1, (video / 255.0).astype(np.float32))


def test_nyu_normalisation_and_layout(fixture_root):
    import h5py

    root = fixture_root("NYU-Depth-V2")
    with h5py.File(root / "NYU-Depth-V2" / "NYU-Depth-V2_data.mat", "r") as handle:
        images, depths, labels = handle["images"][()], handle["depths"][()], handle["labels40"][()]
    m1, m2, y = full_batch(load("NYU-Depth-V2", root))
    np.testing.assert_array_equal(m1, reference_minmax(images).transpose(0, 1, 3, 2))   # per channel
    np.testing.assert_array_equal(m2[:, 0], reference_minmax(depths).transpose(0, 2, 1))  # per image
    np.testing.assert_array_equal(y, labels.astype(np.int64).transpose(0, 2, 1))


def test_cmmd_not_normalised(fixture_root):
    root = fixture_root("CMMD-V2")
    with torch.serialization.safe_globals(cmmd.numpy_safe_globals()):
        image, text, labels = torch.load(cmmd.path(root), weights_only=True)
    m1, m2, y = full_batch(load("CMMD-V2", root))
    np.testing.assert_array_equal(m1, image)
    np.testing.assert_array_equal(m2, text)
    np.testing.assert_array_equal(y, labels)


def test_vggsound_features_and_class_ids(fixture_root):
    root = fixture_root("VGGSound-50k")
    base = vggsound.root(root)
    lines = (base / vggsound.METADATA).read_text().split()
    names = [line.split("&")[0] for line in lines]
    m1, m2, y = full_batch(load("VGGSound-50k", root))
    np.testing.assert_array_equal(m1, np.stack([np.load(vggsound.visual_path(base, n)) for n in names]))
    np.testing.assert_array_equal(m2, np.stack([np.load(vggsound.audio_path(base, n)) for n in names]))
    np.testing.assert_array_equal(y, [int(line.split("&")[1]) for line in lines])


# ------------------------------------------------------------------------------------ RAVDESS statistics

def test_ravdess_streaming_stats_equal_in_memory(fixture_root):
    video = np.load(ravdess.paths(fixture_root("RAVDESS"))["video"])
    mins, maxs = ravdess.compute_video_stats(np.load(ravdess.paths(fixture_root("RAVDESS"))["video"],
                                                     mmap_mode="r"), chunk=2)
    np.testing.assert_array_equal(mins, video.min(axis=(0, 1, 3, 4)))
    np.testing.assert_array_equal(maxs, video.max(axis=(0, 1, 3, 4)))


def test_ravdess_stats_cache_written_and_reused(tmp_path, monkeypatch):
    root = make_fixture("RAVDESS", tmp_path, n=3)
    cache = root / ravdess.FOLDER / ravdess.STATS_FILE
    first = full_batch(load("RAVDESS", root))
    assert cache.is_file()

    def must_not_run(*args, **kwargs):
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr(ravdess, "compute_video_stats", must_not_run)
    second = full_batch(load("RAVDESS", root))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    # a rewritten video file (new size/mtime) makes the cache stale
    video_path = ravdess.paths(root)["video"]
    info = video_path.stat()
    os.utime(video_path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="recomputed"):
        load("RAVDESS", root)


def test_ravdess_stats_cache_falls_back_when_data_dir_unwritable(tmp_path, monkeypatch):
    root = make_fixture("RAVDESS", tmp_path / "data", n=2)
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    fallback = tmp_path / "cache" / "ravdess.json"
    monkeypatch.setattr(ravdess, "stats_cache_paths", lambda path: [blocker / "stats.json", fallback])
    load("RAVDESS", root)
    assert fallback.is_file()
    monkeypatch.setattr(ravdess, "compute_video_stats", lambda *a, **k: pytest.fail("recomputed"))
    load("RAVDESS", root)


def test_file_backed_sources_pickle_small(fixture_root):
    for database in ("RAVDESS", "VGGSound-50k"):
        source = load(database, fixture_root(database))
        assert source.in_memory is False
        source.get_batch(np.array([0]))  # opens the memory map
        clone = pickle.loads(pickle.dumps(source))
        assert len(pickle.dumps(source)) < 1_000_000
        for a, b in zip(source.get_batch(np.array([1, 0])), clone.get_batch(np.array([1, 0]))):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------- user errors

MISSING = {
    "AV-MNIST": lambda root: root / "avmnist" / "audio" / "test_data.npy",
    "RAVDESS": lambda root: root / "RAVDESS_preprocessed_npy" / "label_data.npy",
    "VGGSound-50k": lambda root: root / "VGGS50K" / "VGGS50k_metadata.txt",
    "CMMD-V2": lambda root: root / "CMMD-V2" / "CMMD_data.pth",
    "NYU-Depth-V2": lambda root: root / "NYU-Depth-V2" / "NYU-Depth-V2_data.mat",
}


@pytest.mark.parametrize("database", FIXTURE_DATABASES)
def test_missing_file_names_exact_path(database, tmp_path):
    root = make_fixture(database, tmp_path, n=2)
    missing = MISSING[database](root)
    missing.unlink()
    with pytest.raises(UserError) as error:
        load(database, root)
    message = str(error.value)
    assert str(missing) in message and f"docs/data.md, section '{database}'" in message and "\n" not in message


def test_vggsound_missing_feature_file(tmp_path):
    root = make_fixture("VGGSound-50k", tmp_path, n=3)
    base = vggsound.root(root)
    names = [line.split("&")[0] for line in (base / vggsound.METADATA).read_text().split()]
    first = vggsound.visual_path(base, names[0])
    first.unlink()
    with pytest.raises(UserError, match=str(first)):
        load("VGGSound-50k", root)  # checked at start-up
    make_fixture("VGGSound-50k", tmp_path, n=3)
    source = load("VGGSound-50k", root)
    later = vggsound.audio_path(base, names[2])
    later.unlink()
    with pytest.raises(UserError, match=str(later)):
        source.get_batch(np.array([2]))


def _resave(path: Path, array: np.ndarray) -> None:
    np.save(path, array)


WRONG_SHAPE = {
    "AV-MNIST": lambda root: _resave(root / "avmnist" / "audio" / "train_data.npy", np.zeros((1, 112, 100))),
    "RAVDESS": lambda root: _resave(root / "RAVDESS_preprocessed_npy" / "audio_data.npy",
                                    np.zeros((2, 15, 150), np.float32)),
    "VGGSound-50k": lambda root: _resave(
        vggsound.visual_path(vggsound.root(root), (vggsound.root(root) / vggsound.METADATA).read_text().split("&")[0]),
        np.zeros((10, 7, 7, 256), np.float32)),
    "CMMD-V2": lambda root: torch.save((np.zeros((2, 2048), np.float32), np.zeros((2, 700), np.float32),
                                        np.zeros(2, np.int64)), root / "CMMD-V2" / "CMMD_data.pth"),
    "NYU-Depth-V2": None,
}


@pytest.mark.parametrize("database", FIXTURE_DATABASES)
def test_wrong_shape(database, tmp_path):
    root = make_fixture(database, tmp_path, n=2)
    if database == "NYU-Depth-V2":
        import h5py

        with h5py.File(root / "NYU-Depth-V2" / "NYU-Depth-V2_data.mat", "a") as handle:
            del handle["depths"]
            handle.create_dataset("depths", data=np.zeros((2, NYU_HEIGHT, NYU_WIDTH), np.float32))
    else:
        WRONG_SHAPE[database](root)
    with pytest.raises(UserError, match="has shape") as error:
        load(database, root)
    assert "\n" not in str(error.value)


def test_nyu_missing_key(tmp_path):
    import h5py

    root = make_fixture("NYU-Depth-V2", tmp_path, n=1)
    with h5py.File(root / "NYU-Depth-V2" / "NYU-Depth-V2_data.mat", "a") as handle:
        del handle["labels40"]
    with pytest.raises(UserError, match="labels40"):
        load("NYU-Depth-V2", root)


@pytest.mark.parametrize("bad_line", ["no_separator_here", "name&notanumber", "name&141", "&3"])
def test_vggsound_malformed_metadata_line(tmp_path, bad_line):
    root = make_fixture("VGGSound-50k", tmp_path, n=3)
    metadata = vggsound.root(root) / vggsound.METADATA
    lines = metadata.read_text().splitlines()
    lines.insert(2, bad_line)
    metadata.write_text("\n".join(lines) + "\n\n")
    with pytest.raises(UserError, match=rf"{vggsound.METADATA}, line 3") as error:
        load("VGGSound-50k", root)
    assert str(metadata) in str(error.value)


def test_vggsound_blank_lines_skipped(tmp_path):
    root = make_fixture("VGGSound-50k", tmp_path, n=3)
    metadata = vggsound.root(root) / vggsound.METADATA
    metadata.write_text(metadata.read_text() + "\n\n")
    assert len(load("VGGSound-50k", root)) == 3


def test_cmmd_rejects_unsafe_pickle(tmp_path):
    root = make_fixture("CMMD-V2", tmp_path, n=2)
    path = cmmd.path(root)
    torch.save((np.zeros((2, 2048), np.float32), np.zeros((2, 768), np.float32), {"not": argparse.Namespace()}),
               path)
    with pytest.raises(UserError, match="weights_only") as error:
        load("CMMD-V2", root)
    assert "\n" not in str(error.value)


def test_cmmd_reads_numpy1_pickles(tmp_path):
    """NumPy 1 names the reconstruct function ``numpy.core.multiarray._reconstruct``; such files still load."""
    root = make_fixture("CMMD-V2", tmp_path, n=4)
    path = cmmd.path(root)
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    pickled = next(name for name in members if name.endswith("data.pkl"))
    assert b"numpy._core.multiarray" in members[pickled]
    members[pickled] = members[pickled].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    m1, m2, y = full_batch(load("CMMD-V2", root))
    assert m1.shape == (4, 2048) and y.dtype == np.int64


# ------------------------------------------------------------------------------------------ batch loader

def test_batch_loader_covers_every_index_once_and_reshuffles(fixture_root):
    source = load("AV-MNIST", fixture_root("AV-MNIST"))
    indices = np.array([3, 17, 5, 0, 11, 9, 2, 14, 8, 19, 6])
    loader = BatchLoader(source, indices, batch_size=4, shuffle=True, seed=7)
    orders = []
    for epoch in range(2):
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader) == 3
        positions = torch.cat([b.index for b in batches]).numpy()
        assert sorted(positions.tolist()) == list(range(len(indices)))
        labels = torch.cat([b.y for b in batches]).numpy()
        np.testing.assert_array_equal(labels, source.labels()[indices[positions]])
        orders.append(positions)
    assert not np.array_equal(orders[0], orders[1])
    again = BatchLoader(source, indices, batch_size=4, shuffle=True, seed=7)
    again.set_epoch(1)
    np.testing.assert_array_equal(torch.cat([b.index for b in again]).numpy(), orders[1])
    other_seed = BatchLoader(source, indices, batch_size=4, shuffle=True, seed=8)
    other_seed.set_epoch(1)
    assert not np.array_equal(torch.cat([b.index for b in other_seed]).numpy(), orders[1])
    plain = BatchLoader(source, indices, batch_size=4)
    np.testing.assert_array_equal(torch.cat([b.index for b in plain]).numpy(), np.arange(len(indices)))


@pytest.mark.parametrize("database", ["VGGSound-50k", "RAVDESS"])
def test_batch_loader_workers_match_main_process(database, fixture_root):
    source = load(database, fixture_root(database))
    indices = np.arange(len(source))[::-1].copy()
    batches = {}
    for workers in (0, 2):
        loader = BatchLoader(source, indices, batch_size=2 if database == "RAVDESS" else 6, shuffle=True, seed=1,
                             num_workers=workers)
        loader.set_epoch(3)
        assert loader.num_workers == workers
        batches[workers] = list(loader)
    assert len(batches[0]) == len(batches[2])
    for a, b in zip(batches[0], batches[2]):
        for name in ("m1", "m2", "y", "index"):
            assert torch.equal(getattr(a, name), getattr(b, name))


# ------------------------------------------------------------------------------------------------ splits

GOLDEN = {
    70000: ([30455, 27768, 2562, 46143, 57019, 29754, 40879, 44112], [21462, 41632, 22111, 64158, 54988],
            [7622, 7097, 42671, 25477, 24146]),
    1440: ([1081, 1197, 716, 753, 873, 952, 900, 1214], [853, 812, 440, 616, 756], [77, 214, 1419, 1059, 624]),
    1449: ([998, 731, 635, 964, 1131, 262, 428, 745], [1093, 82, 1344, 730, 410], [1286, 1166, 1324, 1419, 1183]),
    16058: ([6357, 15755, 3902, 859, 8317, 4569, 717, 3336], [13839, 6028, 3531, 10344, 3190],
            [538, 5541, 12656, 6172, 1309]),
}
SIZES = {70000: (42000, 14000, 14000), 1440: (864, 288, 288), 1449: (869, 290, 290), 16058: (9634, 3212, 3212)}


@pytest.mark.parametrize("n", sorted(GOLDEN))
def test_split_golden_values_and_sizes(n):
    permutations = generate_permutations(n)
    group_0, group_1, group_19 = GOLDEN[n]
    assert permutations.shape == (20, n)
    assert permutations[0][:8].tolist() == group_0
    assert permutations[1][:5].tolist() == group_1
    assert permutations[19][:5].tolist() == group_19
    train, val, test = cut(permutations[0])
    assert (len(train), len(val), len(test)) == SIZES[n]
    assert np.array_equal(np.concatenate([train, val, test]), permutations[0])


def test_indices_csv_round_trip(tmp_path):
    permutations = generate_permutations(23)
    path = write_indices_csv(tmp_path / "X_indices.csv", permutations)
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(f"group_{g}" for g in range(20))
    assert len(lines) == 24 and len(lines[1].split(",")) == 20
    assert lines[1].split(",")[0] == str(permutations[0][0])  # no index column
    for seed in (0, 7, 19):
        assert np.array_equal(read_group(path, seed), permutations[seed])


def test_resolve_split_generates_missing_file_and_rejects_wrong_n(tmp_path):
    messages = []
    train, val, test = resolve_split("RAVDESS", 1440, 0, metadata_dir=tmp_path, log=messages.append)
    path = tmp_path / "RAVDESS_indices.csv"
    assert path.is_file() and len(messages) == 1 and str(path) in messages[0]
    assert train[:8].tolist() == GOLDEN[1440][0] and (len(train), len(val), len(test)) == SIZES[1440]
    messages.clear()
    resolve_split("RAVDESS", 1440, 19, metadata_dir=tmp_path, log=messages.append)
    assert messages == []
    with pytest.raises(UserError, match="N=1440") as error:
        resolve_split("RAVDESS", 1441, 0, metadata_dir=tmp_path, log=messages.append)
    assert str(path) in str(error.value)
