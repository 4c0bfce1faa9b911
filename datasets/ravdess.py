"""RAVDESS: emotion recognition from face video and speech MFCCs, 8 classes (docs/data.md, section "RAVDESS").

Source data: Livingstone & Russo, "The Ryerson Audio-Visual Database of Emotional Speech and Song (RAVDESS)",
PLoS ONE 13(5), 2018 (zenodo.org/record/1188976), speech part. ``data_preprocess/ravdess.py`` writes
``<data_root>/RAVDESS_preprocessed_npy/``: ``video_data.npy [N, 15, 3, 224, 224]`` uint8 (15 BGR face crops),
``audio_data.npy [N, 15, 156]`` float32 (15 MFCCs x 156 frames) and ``label_data.npy [N]`` (emotion 0..7).

Normalisation as the reference: video min-max **per colour channel over the whole dataset** (5-d array,
axis 2), audio **per clip** (3-d array). The float32 video would take ~13 GB, so it is never materialised:
the uint8 file is memory-mapped, the per-channel min/max come from one streaming pass (cached next to the data
in ``.mstd_stats.json``, keyed by file size and modification time, or under ``~/.cache/mstd/`` when the data
folder is read-only) and every batch is normalised in :meth:`RavdessSource.get_batch` with a 256-entry lookup
table per channel (bit-identical to the reference's float64 arithmetic cast to float32). The audio (~13 MB) is
normalised at load time and kept in memory.

Splits: ``--ravdess_split clip`` (default) is the reference's per-clip split (``metadata/RAVDESS_indices.csv``),
which puts clips of one actor into train and test alike. ``--ravdess_split actor`` keeps each actor's clips in one
part (:mod:`datasets.groups`, docs/splits.md): the actor of every clip comes from ``sample_order.txt``, which
``data_preprocess/ravdess.py`` writes next to the arrays (one RAVDESS file name per clip, in the arrays' order; the
last of its seven fields is the actor), checked against ``label_data.npy`` through the emotion field.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from datasets.base import DataSource, DatasetSpec, check_shape, open_npy
from datasets.checks import integer_labels
from datasets.groups import group_splits
from datasets.splits import resolve_split as reference_split
from datasets.minmax import channel_min_max, normalise_per_channel, normalise_per_sample, uint8_lookup, \
    warn_constant_channels
from utils.core.atomic import atomic_write_bytes
from utils.core.data_digest import cache_dir
from utils.core.errors import UserError

NAME = "RAVDESS"
FOLDER = "RAVDESS_preprocessed_npy"
STATS_FILE = ".mstd_stats.json"
VIDEO_SHAPE = (15, 3, 224, 224)
AUDIO_SHAPE = (15, 156)
#: samples per chunk of the statistics pass (16 clips of uint8 video = 36 MB)
STATS_CHUNK = 16


def paths(data_root: str | Path) -> dict[str, Path]:
    folder = Path(data_root) / FOLDER
    return {"video": folder / "video_data.npy", "audio": folder / "audio_data.npy",
            "label": folder / "label_data.npy", "order": folder / "sample_order.txt"}


def _open(path: Path, description: str) -> np.ndarray:
    return open_npy(path, description, NAME)


# ----------------------------------------------------------------------------------------- statistics cache

def stats_cache_paths(video_path: Path) -> list[Path]:
    """Where the statistics may be cached, in order of preference: next to the data, then the user cache."""
    video_path = Path(video_path).resolve()
    digest = hashlib.sha1(str(video_path).encode()).hexdigest()[:16]
    return [video_path.parent / STATS_FILE, cache_dir() / f"ravdess_{digest}.json"]


def _file_key(video_path: Path) -> dict:
    info = Path(video_path).stat()
    return {"file": Path(video_path).name, "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def compute_video_stats(video: np.ndarray, chunk: int = STATS_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 2) min and max over all clips, frames and pixels: one streaming pass over the file."""
    return channel_min_max(video, channel_axis=2, chunk=chunk)


def _read_cache(path: Path, key: dict):
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or any(entry.get(k) != v for k, v in key.items()):
        return None
    try:
        return np.asarray(entry["min"]), np.asarray(entry["max"])
    except KeyError:
        return None


def _write_cache(path: Path, entry: dict) -> bool:
    text = json.dumps(entry, indent=1)
    try:
        atomic_write_bytes(path, lambda handle: handle.write(text.encode()), make_parents=True)
        return True
    except (UserError, OSError):  # a read-only folder: the next candidate
        return False


def video_stats(video_path: Path, video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cached per-channel min/max of the video file; computed (one pass) and cached when missing or stale."""
    key = _file_key(video_path)
    candidates = stats_cache_paths(video_path)
    for candidate in candidates:
        cached = _read_cache(candidate, key)
        if cached is not None:
            return cached
    mins, maxs = compute_video_stats(video)
    entry = dict(key, dtype=str(video.dtype), min=mins.tolist(), max=maxs.tolist())
    for candidate in candidates:
        if _write_cache(candidate, entry):
            break
    return mins, maxs


# ----------------------------------------------------------------------------------------------- source

class RavdessSource(DataSource):
    """Memory-mapped uint8 video normalised per batch; audio and labels in memory. Picklable for workers."""

    in_memory = False

    def __init__(self, video_path: Path, mins: np.ndarray, maxs: np.ndarray, audio: np.ndarray, y: np.ndarray):
        self.video_path = Path(video_path)
        self.mins, self.maxs = np.asarray(mins), np.asarray(maxs)
        self.audio, self.y = audio, y
        self.input_shapes = {"m1": VIDEO_SHAPE, "m2": AUDIO_SHAPE}
        self._video = None
        self._lookup = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_video"] = None  # reopened lazily in the worker; pickling a memmap would copy the whole file
        return state

    @property
    def video(self) -> np.ndarray:
        if self._video is None:
            self._video = np.load(self.video_path, mmap_mode="r")
            if self._video.dtype == np.uint8:
                self._lookup = uint8_lookup(self.mins, self.maxs)
        return self._video

    def __len__(self) -> int:
        return len(self.y)

    def get_batch(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        video = self.video
        order = np.argsort(indices, kind="stable")  # read the memory map front to back
        clips = np.empty((len(indices),) + VIDEO_SHAPE, dtype=video.dtype)
        clips[order] = video[indices[order]]
        m1 = normalise_per_channel(clips, 2, self.mins, self.maxs, lookup=self._lookup)
        return (torch.from_numpy(m1), torch.from_numpy(self.audio[indices]),
                torch.from_numpy(self.y[indices]))

    def labels(self) -> np.ndarray:
        return self.y.copy()

    def memory_arrays(self) -> dict:
        return {"m2": self.audio, "y": self.y}

    @property
    def per_batch_checked(self) -> tuple[str, ...]:
        # finite per-channel statistics with max > min make every normalised pixel finite, so the video needs no
        # per-batch scan (non-finite statistics were refused at load, constant channels were warned about)
        return () if bool(np.all(self.maxs > self.mins)) else ("m1",)

    def describe(self, index: int) -> str:
        return f"{NAME} clip {index} of {self.video_path}"


def load(args: argparse.Namespace) -> RavdessSource:
    files = paths(args.data_root)
    video = _open(files["video"], "uint8 face-crop video, [N, 15, 3, 224, 224]")
    audio = _open(files["audio"], "float32 MFCC, [N, 15, 156]")
    label = _open(files["label"], "emotion labels 0..7, [N]")
    n = video.shape[0] if video.ndim else None
    check_shape(video.shape, (n,) + VIDEO_SHAPE, files["video"], NAME)
    check_shape(audio.shape, (n,) + AUDIO_SHAPE, files["audio"], NAME)
    check_shape(label.shape, (n,), files["label"], NAME)
    mins, maxs = video_stats(files["video"], video)
    warn_constant_channels(mins, maxs, f"{NAME} video")
    mfcc = normalise_per_sample(audio, np.empty(audio.shape, dtype=np.float32), what=f"{NAME} audio")
    y = integer_labels(label, files["label"])
    if n and (y.min() < 0 or y.max() > 7):
        raise UserError(f"{files['label']} has labels outside 0..7 for {NAME}")
    return RavdessSource(files["video"], mins, maxs, mfcc, y)


# ----------------------------------------------------------------------------------------------- splits

def _labels(args) -> np.ndarray:
    path = paths(args.data_root)["label"]
    return integer_labels(_open(path, "emotion labels 0..7, [N]"), path)


def actor_groups(args: argparse.Namespace, n: int) -> np.ndarray | None:
    """The actor (1..24) of each clip from ``sample_order.txt`` under ``--ravdess_split actor``, else ``None``.

    Refused with one line: a missing file (data packed by other scripts), another number of lines than clips, a line
    that is not a RAVDESS file name, or an emotion field that disagrees with ``label_data.npy`` (the file then
    describes another order than the arrays').
    """
    if getattr(args, "ravdess_split", "clip") != "actor":
        return None
    from data_preprocess.ravdess import parse_name

    path = paths(args.data_root)["order"]
    fix = "rerun the pack step of data_preprocess/ravdess.py, which writes the arrays and this file together"
    if not path.is_file():
        raise UserError(f"--ravdess_split actor needs {path}, the RAVDESS file name of each clip in the arrays' order "
                        f"(the actor is its last field); {fix}, or use --ravdess_split clip")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) != n:
        raise UserError(f"{path} names {len(names)} clips but the arrays hold {n}; {fix}")
    labels = _labels(args)
    actors = np.empty(n, dtype=np.int64)
    for i, name in enumerate(names):
        try:
            fields = parse_name(name)
        except ValueError:
            raise UserError(f"line {i + 1} of {path} is not a RAVDESS file name ({name!r}: seven dash-separated "
                            f"numbers, the last the actor); {fix}") from None
        if fields["emotion"] - 1 != labels[i]:
            raise UserError(f"line {i + 1} of {path} names emotion {fields['emotion']} (class "
                            f"{fields['emotion'] - 1}) but label_data.npy has class {labels[i]} for clip {i}: the file "
                            f"lists another order than the arrays'; {fix}")
        actors[i] = fields["actor"]
    return actors


def resolve_split(args: argparse.Namespace, n: int, log=print):
    """``--ravdess_split clip``: the reference's per-clip split file; ``actor``: whole actors per part."""
    if args.ravdess_split != "actor":
        return reference_split(NAME, n, args.seed, metadata_dir=args.metadata_dir, log=log, data_root=args.data_root)
    actors = actor_groups(args, n)
    splits = group_splits(actors, _labels(args), 8, str(paths(args.data_root)["order"]))
    train, val, test = splits[args.seed]
    log(f"Actor-disjoint split {args.seed} (--ravdess_split actor): actors {sorted(set(actors[train].tolist()))} "
        f"train, {sorted(set(actors[val].tolist()))} val, {sorted(set(actors[test].tolist()))} test "
        f"({len(train)}/{len(val)}/{len(test)} clips)")
    return train, val, test


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("RAVDESS")
    group.add_argument("--ravdess_split", default="clip", choices=["clip", "actor"],
                       help="clip: the reference's per-clip split (clips of one actor in train and test alike); "
                            "actor: each actor's clips in one of train/val/test, from sample_order.txt "
                            "(docs/splits.md) (default: %(default)s)")


SPEC = DatasetSpec(
    data_files=lambda args: list(paths(args.data_root).values()),
    name=NAME,
    task="classification",
    num_classes=8,
    modalities={"m1": "video", "m2": "audio"},
    teacher="DSCNN-I",
    students={"m1": "VisualBranchNet", "m2": "AudioBranchNet"},
    batch_size=32,
    input_shapes={"m1": VIDEO_SHAPE, "m2": AUDIO_SHAPE},
    lr=1e-4,
    epochs=100,
    load=load,
    add_arguments=add_arguments,
    resolve_split=resolve_split,
    groups=actor_groups,
    run_tag=lambda args: "actors" if args.ravdess_split == "actor" else "",
    how_to_obtain="download the RAVDESS speech audio and video files (zenodo.org/record/1188976) and run "
                  "data_preprocess/ravdess.py, which writes <data_root>/RAVDESS_preprocessed_npy/",
)
