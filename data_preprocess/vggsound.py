"""VGGSound-50k preprocessing: videos + AVEL50k annotations + features -> ``<data_root>/VGGS50K/`` (docs/data.md).

Inputs: a local copy of VGGSound videos (Chen et al., ICASSP 2020; any folder depth), the VGGSound-AVEL50k
annotations of the CPSP work (Zhou et al., TPAMI 2023): ``vggsound-avel50k.csv`` (columns ``video_id``,
``category``) and ``vggsound-avel50k_labels.json`` (a list of ``{video_id: {"label": [10 ints], ...}}``), and
per-video features extracted beforehand in the AVE/CPSP convention (VGG-19 pool5 maps ``[10, 7, 7, 512]``,
VGGish embeddings ``[10, 128]``) named ``<sample_name>_vFeature.npy`` / ``<sample_name>_aFeature.npy``. The
feature extractor is not part of the reference repository.

Steps (``--steps all`` runs them in order):

``match``     class id = position of the category among the unique categories in CSV row order; every CSV
              row whose YouTube id (file name characters ``[1:12]``) has a local video -> ``<path>&<class_id>``
              lines in ``<dst>/VGGS50K_videos.txt``.
``metadata``  every line whose sample (video file stem) has both feature files -> ``<sample_name>&<class_id>``
              in ``<dst>/VGGS50k_metadata.txt``. The file is **overwritten** (the reference appended, so a
              re-run duplicated every sample) and the name is the file stem (the reference took a fixed path
              component).
``seglabels`` the 10 per-segment flags of every JSON entry in the metadata -> ``<dst>/seg_labels/
              <sample_name>_sLabel.npy`` ``[1, 10]`` int64 (the reference wrote ``seg_label/`` but read
              ``seg_labels/``).
``normalise`` one global min and max over all values of all visual features (as float32) and, separately,
              of all audio features; every file is rewritten as ``(x - min) / (max - min)`` float32 into
              ``<dst>/VGGS50K_features_normed/{visual,audio}_features/``. Two streaming passes, one file at a
              time (the reference held every feature in memory).

The output order of every step follows the CSV row order, which is the sample order of the split CSV.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np

NUM_CLASSES = 141
VIDEO_LIST = "VGGS50K_videos.txt"
METADATA = "VGGS50k_metadata.txt"
NORMED = "VGGS50K_features_normed"
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


# ------------------------------------------------------------------------------------------ pure pieces

def youtube_id(name: str) -> str:
    """The 11-character YouTube id inside a sample name ``<one char><YouTubeID>_<start>_<end>_out``."""
    return Path(name).name[1:12]


def class_ids(categories) -> dict[str, int]:
    """Category -> id in order of first appearance (the reference's class ids)."""
    ids: dict[str, int] = {}
    for category in categories:
        ids.setdefault(category, len(ids))
    return ids


def packed_label(seg_flags, class_id: int, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """The reference's ``[10, num_classes + 2]`` float32 label tensor of one sample.

    Column ``class_id`` = per-segment event flag ``s``; column ``num_classes`` = ``1 - s`` (background); column
    ``num_classes + 1`` = ``class_id`` in every row; all else 0. Only the last column is read by reachable code,
    so the loader returns ``class_id`` directly; this function documents and reproduces the full tensor.
    """
    flags = np.asarray(seg_flags, dtype=np.float64).reshape(-1)
    label = np.zeros((len(flags), num_classes + 2), dtype=np.float64)
    label[:, class_id] = flags
    label[:, num_classes] = 1.0 - flags
    label[:, num_classes + 1] = class_id
    return label.astype(np.float32)


def format_line(name: str, class_id: int) -> str:
    if "&" in name or "\n" in name:
        raise ValueError(f"sample name {name!r} cannot be written to a '&'-separated metadata line")
    return f"{name}&{class_id}\n"


def read_lines(path: Path) -> list[tuple[str, int]]:
    """``(name_or_path, class_id)`` pairs of a ``&``-separated list, in file order."""
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, value = line.strip().rpartition("&")
        if not sep or not value.isdigit():
            raise ValueError(f"{path}, line {number}: expected '<name>&<class_id>', got {line[:80]!r}")
        pairs.append((name, int(value)))
    return pairs


# ----------------------------------------------------------------------------------------------- steps

def match_videos(csv_path: Path, videos: Path, dst: Path) -> tuple[int, int]:
    """Step 0: ``VGGS50K_videos.txt``; returns (found, missing)."""
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    ids = class_ids(row["category"] for row in rows)
    local: dict[str, Path] = {}
    for directory, subdirs, files in os.walk(videos):
        subdirs.sort()
        for name in sorted(files):
            if name.lower().endswith(VIDEO_SUFFIXES):
                local.setdefault(youtube_id(name), Path(directory) / name)  # first file found wins
    dst.mkdir(parents=True, exist_ok=True)
    found = missing = 0
    with open(dst / VIDEO_LIST, "w", encoding="utf-8") as out:
        for row in rows:
            path = local.get(row["video_id"][:11])
            if path is None:
                missing += 1
                continue
            out.write(format_line(str(path), ids[row["category"]]))
            found += 1
    return found, missing


def write_metadata(dst: Path, features: Path) -> int:
    """Step 1: ``VGGS50k_metadata.txt`` (overwritten) for the videos with both feature files under ``features``."""
    count = 0
    lines = []
    for path, class_id in read_lines(dst / VIDEO_LIST):
        name = Path(path).stem
        if (features / "visual_features" / f"{name}_vFeature.npy").is_file() and \
                (features / "audio_features" / f"{name}_aFeature.npy").is_file():
            lines.append(format_line(name, class_id))
            count += 1
    tmp = dst / f"{METADATA}.tmp"
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, dst / METADATA)
    return count


def write_seg_labels(dst: Path, labels_json: Path) -> int:
    """Step 2: ``seg_labels/<sample_name>_sLabel.npy`` ``[1, 10]`` for every metadata sample in the JSON."""
    names = {youtube_id(name): name for name, _ in read_lines(dst / METADATA)}
    entries = json.loads(labels_json.read_text(encoding="utf-8"))
    out_dir = dst / "seg_labels"
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for entry in entries:
        for video_id, info in entry.items():
            name = names.get(video_id[:11])
            if name is None:
                continue
            flags = np.asarray(info["label"], dtype=np.int64).reshape(1, -1)
            if flags.shape != (1, 10):
                raise ValueError(f"{labels_json}: {video_id} has {flags.size} segment flags, expected 10")
            np.save(out_dir / f"{name}_sLabel.npy", flags)
            count += 1
    return count


def global_min_max(files: list[Path]) -> tuple[float, float]:
    low, high = np.inf, -np.inf
    for path in files:
        array = np.load(path).astype(np.float32)
        low, high = min(low, float(array.min())), max(high, float(array.max()))
    return low, high


def normalise_features(dst: Path, features: Path) -> dict[str, tuple[float, float]]:
    """Step 3: global min-max per modality into ``<dst>/VGGS50K_features_normed/``; returns the statistics."""
    names = [name for name, _ in read_lines(dst / METADATA)]
    stats = {}
    for folder, suffix in (("visual_features", "_vFeature.npy"), ("audio_features", "_aFeature.npy")):
        files = [features / folder / f"{name}{suffix}" for name in names]
        low, high = global_min_max(files)
        if not high > low:
            raise ValueError(f"all {folder} values equal {low}; min-max normalisation is undefined")
        out_dir = dst / NORMED / folder
        out_dir.mkdir(parents=True, exist_ok=True)
        scale = np.float32(high - low)
        for path in files:
            array = np.load(path).astype(np.float32)
            np.save(out_dir / path.name, ((array - np.float32(low)) / scale).astype(np.float32))
        stats[folder] = (low, high)
    (dst / NORMED / "minmax.json").write_text(json.dumps(stats, indent=1))
    return stats


# ------------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dst", type=Path, required=True, help="output folder, normally <data_root>/VGGS50K")
    parser.add_argument("--videos", type=Path, help="local VGGSound video folder (step 'match')")
    parser.add_argument("--csv", type=Path, help="vggsound-avel50k.csv (step 'match')")
    parser.add_argument("--labels_json", type=Path, help="vggsound-avel50k_labels.json (step 'seglabels')")
    parser.add_argument("--features", type=Path, help="folder with visual_features/ and audio_features/ as "
                                                      "extracted (steps 'metadata', 'normalise')")
    parser.add_argument("--steps", nargs="+", choices=("match", "metadata", "seglabels", "normalise", "all"),
                        default=["all"])
    args = parser.parse_args(argv)
    steps = ("match", "metadata", "seglabels", "normalise") if "all" in args.steps else args.steps
    needed = {"match": ("videos", "csv"), "metadata": ("features",), "seglabels": ("labels_json",),
              "normalise": ("features",)}
    missing = sorted({f"--{a}" for s in steps for a in needed[s] if getattr(args, a) is None})
    if missing:
        parser.error(f"steps {', '.join(steps)} need {', '.join(missing)}")
    try:
        if "match" in steps:
            found, absent = match_videos(args.csv, args.videos, args.dst)
            print(f"match: {found} videos found, {absent} missing -> {args.dst / VIDEO_LIST}")
        if "metadata" in steps:
            print(f"metadata: {write_metadata(args.dst, args.features)} samples -> {args.dst / METADATA}")
        if "seglabels" in steps:
            print(f"seglabels: {write_seg_labels(args.dst, args.labels_json)} files -> {args.dst / 'seg_labels'}")
        if "normalise" in steps:
            stats = normalise_features(args.dst, args.features)
            print(f"normalise: min/max {stats} -> {args.dst / NORMED}")
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
