"""AV-MNIST from its public sources: MNIST + Free Spoken Digit Dataset (+ ESC-50 noise) -> ``<data_root>/avmnist/``.

    python data_preprocess/avmnist.py --mnist <MNIST folder> --fsdd <free-spoken-digit-dataset> \\
        [--noise <ESC-50 folder>] --dst <data_root>/avmnist

Inputs: the four MNIST IDX files (LeCun et al. 1998; ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz``), the Free Spoken Digit Dataset
(github.com/Jakobovski/free-spoken-digit-dataset; ``recordings/<digit>_<speaker>_<index>.wav``, 8 kHz mono) and,
optionally, environmental noise: ESC-50 (Piczak, ACM MM 2015; ``meta/esc50.csv`` + ``audio/*.wav``) or any folder
of ``.wav`` files.

Where the procedure comes from. AV-MNIST was introduced with CentralNet (Vielzeuf et al., "CentralNet: a
Multilayer Approach for Multimodal Fusion", ECCV Workshops 2018) and used again in MFAS (Perez-Rua et al., CVPR
2019): MNIST digits with 75 % of their energy removed by PCA, each paired with a spoken digit of the same class
given as a 112x112 spectrogram, the audio mixed with ESC-50 noise. The papers say no more. The copy MultiBench
distributes (Liang et al., NeurIPS 2021 Datasets and Benchmarks) comes, by all signs, from
``datasets/avmnist_gen.py`` of the public MFAS fork github.com/slyviacassell/_MFAS (final version): MultiBench's
loader reads a folder ``_MFAS/avmnist`` with that generator's layout and divides both modalities by 255, the scale
of its uint8 output. This script follows that generator wherever it is explicit ("exact" below) and says where it
had to choose ("our reading"), each choice a flag. The output layout and dtypes are those ``datasets/avmnist.py`` reads.

Steps, per MNIST file (train, test):

1. Image, exact: PCA over all 784 pixels, fitted on the images of that file alone (``--pca_fit split``; ``train``
   fits once on the training images); the leading ``k`` components are kept, ``k`` the position of the first
   component at which the cumulative explained-variance ratio exceeds ``--pca_keep`` (0.25): the kept part explains
   just under 25 % of the variance, so at least 75 % of the energy is removed (``build_info.json`` records
   ``k``). The image is the reconstruction from those components **without** the mean image (as the generator,
   which multiplied the projection by the components; ``--pca_add_mean`` adds it back). Stored float32 ``[n, 784]``
   (the generator stored float64; the loader normalises per sample either way).
2. Pairing, exact: FSDD recordings with index 40..49 form the test pool, the others the train pool
   (``--audio_test_indices 40-49``; FSDD's own documented test split is ``0-4``; ``--audio_test_speaker`` splits
   by speaker instead). The i-th image of a split with digit ``d`` gets the next recording of digit ``d`` of that
   pool, cycling (``--pairing cycle``; ``random`` draws one with replacement per image). Our reading: the order
   of the recordings within a digit, which was the file system's ``os.listdir`` order, is the sorted names
   shuffled by ``--seed`` (``--recording_order sorted`` keeps them sorted); the generator cycled over at most
   160 (train) / 40 (test) recordings per digit, FSDD's size at the time (4 speakers), here every recording of
   the pool is used; and row i of the audio file is always the pair of image i (the generator appended results
   from a process pool in completion order, which need not be the label order). ``pairs.csv`` lists every pair.
3. Noise, only with ``--noise``. Exact: one ESC-50 clip per category (in ``target`` order; our reading: drawn
   with ``--seed``, the generator's draw was unseeded), the first four fifths of the categories (40 of 50) for
   the train split and the last fifth for test, assigned cyclically over the samples of the split; the clip is
   resampled to the lower of the two sample rates and added as ``speech + w * noise`` over the shorter length.
   Our reading: ``w`` = ``--noise_weight`` 0.009 (an earlier version of the generator; its final version set the
   weight to 0, i.e. no noise, which is what running without ``--noise`` gives); a plain folder of ``.wav`` files
   gives the noise clips in sorted path order, split the same way; band-limited FFT resampling (as an early version
   of the generator; its final version used librosa).
4. Spectrogram, exact (matplotlib's ``specgram`` as the generator called it): segment length and overlap the
   smallest pair giving exactly 112 segments, Hann window, FFT zero-padded to 223 points (112 one-sided bins),
   power spectral density, ``10 log10``; rendered as a 112x112 image, high frequencies in row 0 and time along the
   columns, with the ``Greys`` colour map scaled to the image's minimum and maximum; the red channel of that
   rendering, uint8 (255 = quietest, 0 = loudest). Our reading: the rendering is computed directly (colour map
   lookup table, equal to matplotlib's Agg rendering up to one step of the lookup table: tested), not by drawing a
   figure; a zero power is floored at 1e-30 before the logarithm (matplotlib would blank the image).
   ``--audio_values db`` stores the dB values (float32, same orientation) instead of the rendering.
5. Labels, exact: the MNIST labels, uint8 ``[n]``, digits 0..9.

Outputs (each written to a temporary file and renamed once everything has been computed): ``image/{train,test}
_data.npy`` float32 ``[n, 784]``, ``audio/{train,test}_data.npy`` uint8 ``[n, 112, 112]`` (float32 with ``--audio_
values db``), ``{train,test}_labels.npy`` uint8 ``[n]``, ``pairs.csv`` (split, row, label, recording, noise) and
``build_info.json`` (the options and the number of PCA components kept). Deterministic for a given ``--seed``.
Needs numpy and scipy only.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "test")
MNIST_STEMS = {"train": ("train-images", "train-labels"), "test": ("t10k-images", "t10k-labels")}
SIDE = 28
FRAMES = 112          # time segments of the spectrogram
PAD_TO = 2 * (FRAMES - 1) + 1  # 223-point FFT -> 112 one-sided frequency bins
POWER_FLOOR = 1e-30
RECORDING = re.compile(r"^(\d)_([A-Za-z0-9-]+)_(\d+)\.wav$")
#: red channel of matplotlib's ``Greys`` colour map (ColorBrewer), its control points equally spaced on [0, 1]
GREYS_RED = np.array([1.0, 0.9411764705882353, 0.8509803921568627, 0.7411764705882353, 0.5882352941176471,
                      0.45098039215686275, 0.3215686274509804, 0.1450980392156863, 0.0])
LUT_SIZE = 256
SPECTRUM_CACHE = 20_000  # spectrograms kept for repeated (recording, noise) pairs


class RawDataError(ValueError):
    """A missing or malformed input file; printed as one ``error:`` line, exit code 2."""


# --------------------------------------------------------------------------------------------------- MNIST

def find_idx(folder: Path, stem: str, kind: str) -> Path:
    """``<stem>-<kind>`` or ``<stem>.<kind>`` (some mirrors), plain or ``.gz``."""
    names = [f"{stem}-{kind}", f"{stem}.{kind}"]
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise RawDataError(f"MNIST file {folder / names[0]}[.gz] not found (--mnist must hold the four IDX files of "
                       f"yann.lecun.com/exdb/mnist)")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (big-endian header: two zero bytes, type code 0x08 = uint8, rank, then one uint32 per axis)."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise RawDataError(f"{path} cannot be read ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] not in (1, 3):
        raise RawDataError(f"{path} is not an MNIST IDX file of unsigned bytes (bad magic number "
                           f"{data[:4].hex() or 'empty'})")
    rank = data[3]
    header = 4 + 4 * rank
    if len(data) < header:
        raise RawDataError(f"{path} is truncated inside its IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(rank))
    expected = header + int(np.prod(shape))
    if len(data) != expected:
        raise RawDataError(f"{path} holds {len(data)} bytes, its IDX header {shape} announces {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_mnist(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{split: (images uint8 [n, 784], labels uint8 [n])}``."""
    if not folder.is_dir():
        raise RawDataError(f"--mnist {folder} is not a folder")
    out = {}
    for split, (image_stem, label_stem) in MNIST_STEMS.items():
        image_path, label_path = find_idx(folder, image_stem, "idx3-ubyte"), find_idx(folder, label_stem, "idx1-ubyte")
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
            raise RawDataError(f"{image_path} holds images of shape {images.shape}, expected [n, 28, 28]")
        if labels.ndim != 1 or len(labels) != len(images):
            raise RawDataError(f"{label_path} holds {labels.shape} labels for {len(images)} images in {image_path}")
        if labels.size and labels.max() > 9:
            raise RawDataError(f"{label_path} holds label {labels.max()}, MNIST digits are 0..9")
        out[split] = (images.reshape(len(images), SIDE * SIDE), labels)
    return out


# ----------------------------------------------------------------------------------------------------- PCA

def fit_pca(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean [784], components [r, 784] one per row by decreasing variance, explained-variance ratios [r])``.

    The principal axes of scikit-learn's ``PCA`` (the generator's; an SVD of the centred data), here from the
    eigen-decomposition of the smaller of the two Gram matrices in float64 (``[784, 784]`` for MNIST, ``[n, n]``
    for fewer images than pixels): the same subspaces and ratios, component signs aside, which reconstructions do
    not depend on. Components of zero variance are dropped.
    """
    x = images.astype(np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    if len(centred) >= centred.shape[1]:
        values, vectors = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(values)[::-1]
        values, components = values[order], vectors[:, order].T
    else:
        values, vectors = np.linalg.eigh(centred @ centred.T)
        order = np.argsort(values)[::-1]
        values, vectors = values[order], vectors[:, order]
        positive = values > 0
        components = (centred.T @ vectors[:, positive] / np.sqrt(values[positive])).T
    total = values[values > 0].sum()
    rank = int(np.sum(values > total * 1e-12)) if total > 0 else 0
    return mean, components[:rank], values[:rank] / total if total > 0 else values[:0]


def kept_components(ratios: np.ndarray, keep: float) -> int:
    """Index of the first component where the cumulative ratio exceeds ``keep``: the number of components kept."""
    return int(np.argmax(np.cumsum(ratios) > keep))


def remove_energy(images: np.ndarray, pca, keep: float, add_mean: bool) -> tuple[np.ndarray, int, float]:
    """Reconstruction of ``images`` from the leading components explaining just under ``keep`` of the variance.

    Returns ``(float32 [n, 784], k, kept variance fraction)``.
    """
    mean, components, ratios = pca
    if len(ratios) == 0:
        raise RawDataError("the MNIST images are all identical: PCA finds no component")
    k = kept_components(ratios, keep)
    if k == 0:
        raise RawDataError(f"the first PCA component alone explains {ratios[0]:.3f} > --pca_keep {keep} of the "
                           f"variance: no component would be kept; raise --pca_keep")
    basis = components[:k]
    rec = (images.astype(np.float64) - mean) @ basis.T @ basis
    if add_mean:
        rec += mean
    return rec.astype(np.float32), k, float(ratios[:k].sum())


# ---------------------------------------------------------------------------------------------------- audio

def read_wav(path: Path) -> tuple[int, np.ndarray]:
    """``(sample rate, float64 mono samples)``: integers scaled as librosa does (int16 / 32768), channels averaged."""
    from scipy.io import wavfile

    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError) as error:
        raise RawDataError(f"{path} is not a readable WAV file ({error})") from None
    if data.dtype == np.uint8:
        samples = (data.astype(np.float64) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        samples = data.astype(np.float64) / float(2 ** (8 * data.dtype.itemsize - 1))
    else:
        samples = data.astype(np.float64)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.size == 0:
        raise RawDataError(f"{path} holds no samples")
    return int(rate), samples


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited FFT resampling to ``ceil(len * target / rate)`` samples (the method of ``scipy.signal.resample``,
    which an early version of the generator used)."""
    if rate == target:
        return samples
    n, m = len(samples), int(np.ceil(len(samples) * target / rate))
    spectrum = np.fft.rfft(samples)
    kept = min(n, m) // 2 + 1
    out = np.zeros(m // 2 + 1, dtype=spectrum.dtype)
    out[:kept] = spectrum[:kept]
    return np.fft.irfft(out, m) * (m / n)


def framing(length: int, frames: int = FRAMES) -> tuple[int, int]:
    """``(segment length, overlap)``: the smallest segment length, then the smallest overlap, giving ``frames``
    segments of a ``length``-sample signal (``(length - overlap) // (segment - overlap) == frames``), searched as the
    generator did from ``ceil(length / frames) - 1`` upward."""
    for segment in range(max(1, -(-length // frames) - 1), length):
        # frames * (segment - overlap) <= length - overlap < (frames + 1) * (segment - overlap)
        overlap = max(0, -(-(frames * segment - length) // (frames - 1)))
        if overlap < segment and (frames + 1) * segment - frames * overlap > length:
            return segment, overlap
    raise RawDataError(f"a {length}-sample recording is too short for a {frames}-segment spectrogram")


def spectrogram_db(samples: np.ndarray, rate: int) -> np.ndarray:
    """float64 ``[112, 112]``: matplotlib's ``specgram`` PSD in dB, rows from the highest frequency down."""
    segment, overlap = framing(len(samples))
    window = np.hanning(segment)
    frames = np.lib.stride_tricks.sliding_window_view(samples, segment)[::segment - overlap][:FRAMES]
    spectrum = np.fft.fft(frames * window, n=PAD_TO, axis=1)[:, :FRAMES]
    power = (np.conj(spectrum) * spectrum).real
    # one-sided density: every bin but DC doubled (matplotlib also spares the last bin when the segment is even)
    power[:, 1:-1 if segment % 2 == 0 else None] *= 2.0
    power /= rate * (window ** 2).sum()
    return (10.0 * np.log10(np.maximum(power, POWER_FLOOR))).T[::-1]


def _greys_lut() -> np.ndarray:
    """matplotlib's 256-entry ``Greys`` table, red channel as bytes (``(lut * 255).astype(uint8)``, truncating)."""
    lut = np.interp(np.linspace(0.0, 1.0, LUT_SIZE), np.linspace(0.0, 1.0, len(GREYS_RED)), GREYS_RED)
    return (np.clip(lut, 0.0, 1.0) * 255).astype(np.uint8)


GREYS_LUT = _greys_lut()


def render(db: np.ndarray) -> np.ndarray:
    """uint8 ``[112, 112]``: ``db`` scaled to its own [min, max] and looked up in the ``Greys`` table (red channel)."""
    low, high = float(db.min()), float(db.max())
    scaled = (db - low) / (high - low) if high > low else np.zeros_like(db)
    index = np.clip((scaled * LUT_SIZE).astype(np.int64), 0, LUT_SIZE - 1)
    return GREYS_LUT[index]


# ----------------------------------------------------------------------------------------------- the pools

def recordings_folder(fsdd: Path) -> Path:
    folder = fsdd / "recordings" if (fsdd / "recordings").is_dir() else fsdd
    if not folder.is_dir():
        raise RawDataError(f"--fsdd {fsdd} is not a folder (expected the free-spoken-digit-dataset folder with "
                           f"recordings/<digit>_<speaker>_<index>.wav)")
    return folder


def parse_indices(text: str) -> set[int]:
    """``"40-49"`` or ``"0-4,7"`` -> a set of recording indices."""
    out: set[int] = set()
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise RawDataError(f"--audio_test_indices {text!r}: expected ranges like '40-49' or '0-4,7'")
        out.update(range(int(low), int(high if sep else low) + 1))
    return out


def recording_pools(fsdd: Path, test_indices: set[int], test_speaker: str | None
                    ) -> dict[str, dict[int, list[Path]]]:
    """``{split: {digit: sorted recording paths}}``."""
    folder = recordings_folder(fsdd)
    pools: dict[str, dict[int, list[Path]]] = {split: {d: [] for d in range(10)} for split in SPLITS}
    count = 0
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".wav":
            continue
        match = RECORDING.match(path.name)
        if not match:
            raise RawDataError(f"{path}: FSDD recordings are named <digit>_<speaker>_<index>.wav")
        digit, speaker, index = int(match[1]), match[2], int(match[3])
        test = speaker == test_speaker if test_speaker is not None else index in test_indices
        pools["test" if test else "train"][digit].append(path)
        count += 1
    if count == 0:
        raise RawDataError(f"no <digit>_<speaker>_<index>.wav recordings in {folder}")
    return pools


def noise_clips(folder: Path, rng: np.random.Generator) -> dict[str, list[Path]]:
    """``{split: clips}``: one ESC-50 clip per category (drawn with ``rng``) or every ``.wav`` of a plain folder,
    the last fifth (at least one) for the test split."""
    if not folder.is_dir():
        raise RawDataError(f"--noise {folder} is not a folder")
    meta = folder / "meta" / "esc50.csv"
    if meta.is_file():
        by_target: dict[int, list[str]] = {}
        try:
            with open(meta, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    by_target.setdefault(int(row["target"]), []).append(row["filename"])
        except (KeyError, ValueError, TypeError) as error:
            raise RawDataError(f"{meta} is not the ESC-50 metadata table (filename, target columns): {error}") from None
        clips = [folder / "audio" / sorted(names)[rng.integers(len(names))] for _, names in sorted(by_target.items())]
    else:
        clips = sorted(path for path in folder.rglob("*") if path.suffix.lower() == ".wav" and path.is_file())
    if not clips:
        raise RawDataError(f"no noise clips in {folder} (expected ESC-50's meta/esc50.csv and audio/, or .wav files)")
    for clip in clips:
        if not clip.is_file():
            raise RawDataError(f"noise clip {clip} listed in {meta} not found")
    if len(clips) == 1:
        return {"train": clips, "test": clips}
    n_test = max(1, round(len(clips) / 5))
    return {"train": clips[:-n_test], "test": clips[-n_test:]}


def pair_recordings(labels: np.ndarray, pool: dict[int, list[Path]], pairing: str, order: str,
                    rng: np.random.Generator, split: str) -> list[Path]:
    """The recording of every image: the next one of its digit, cycling (``cycle``), or a random one (``random``)."""
    pools = {}
    for digit, paths in pool.items():
        paths = list(paths)
        if order == "shuffled":
            paths = [paths[i] for i in rng.permutation(len(paths))]
        pools[digit] = paths
    missing = sorted({int(d) for d in np.unique(labels)} - {d for d, p in pools.items() if p})
    if missing:
        raise RawDataError(f"the {split} recording pool has no recording of digit(s) {missing}; check --fsdd and "
                           f"--audio_test_indices / --audio_test_speaker")
    position = {digit: 0 for digit in pools}
    out = []
    for label in labels.tolist():
        paths = pools[label]
        if pairing == "random":
            out.append(paths[rng.integers(len(paths))])
        else:
            out.append(paths[position[label] % len(paths)])
            position[label] += 1
    return out


# ---------------------------------------------------------------------------------------------- the build

class _Staged:
    """Output files written under temporary names and renamed together at the end (atomic per file)."""

    def __init__(self, dst: Path):
        self.dst, self.files = dst, []

    def path(self, relative: str) -> Path:
        final = self.dst / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
        self.files.append((tmp, final))
        return tmp

    def save(self, relative: str, array: np.ndarray) -> None:
        with open(self.path(relative), "wb") as handle:
            np.save(handle, array)
            handle.flush()
            os.fsync(handle.fileno())

    def commit(self) -> None:
        for tmp, final in self.files:
            os.replace(tmp, final)
        self.files = []

    def discard(self) -> None:
        for tmp, _ in self.files:
            tmp.unlink(missing_ok=True)


class _AudioCache:
    """Decoded recordings and noise clips, and spectrograms of repeated (recording, noise) pairs."""

    def __init__(self, values: str, noise_weight: float):
        self.values, self.noise_weight = values, noise_weight
        self.waves: dict[Path, tuple[int, np.ndarray]] = {}
        self.resampled: dict[tuple[Path, int], np.ndarray] = {}
        self.spectra: dict[tuple[Path, Path | None], np.ndarray] = {}

    def wave(self, path: Path, rate: int | None = None) -> tuple[int, np.ndarray]:
        if path not in self.waves:
            self.waves[path] = read_wav(path)
        native, samples = self.waves[path]
        if rate is None or rate == native:
            return native, samples
        if (path, rate) not in self.resampled:
            self.resampled[(path, rate)] = resample(samples, native, rate)
        return rate, self.resampled[(path, rate)]

    def spectrum(self, recording: Path, noise: Path | None) -> np.ndarray:
        key = (recording, noise)
        if key not in self.spectra:
            if len(self.spectra) >= SPECTRUM_CACHE:  # bound the memory: with noise few pairs repeat
                self.spectra.clear()
            rate, speech = self.wave(recording)
            if noise is not None:
                rate = min(rate, self.wave(noise)[0])
                speech = self.wave(recording, rate)[1]
                clip = self.wave(noise, rate)[1]
                length = min(len(speech), len(clip))
                speech = speech[:length] + self.noise_weight * clip[:length]
            db = spectrogram_db(speech, rate)
            self.spectra[key] = render(db) if self.values == "rendered" else db.astype(np.float32)
        return self.spectra[key]


def build(args: argparse.Namespace) -> dict:
    """Write the ``avmnist/`` folder; returns the build summary (also written to ``build_info.json``)."""
    if not 0.0 < args.pca_keep < 1.0:
        raise RawDataError(f"--pca_keep {args.pca_keep} must lie strictly between 0 and 1")
    if args.seed < 0:
        raise RawDataError(f"--seed {args.seed} must be 0 or more")
    rng = np.random.default_rng(args.seed)
    mnist = load_mnist(args.mnist)
    pools = recording_pools(args.fsdd, parse_indices(args.audio_test_indices), args.audio_test_speaker)
    noises = noise_clips(args.noise, rng) if args.noise is not None else None
    train_pca = fit_pca(mnist["train"][0]) if args.pca_fit == "train" else None

    staged = _Staged(args.dst)
    cache = _AudioCache(args.audio_values, args.noise_weight)
    summary = {"options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "splits": {}}
    pair_rows = []
    try:
        for split in SPLITS:
            images, labels = mnist[split]
            image, k, kept = remove_energy(images, train_pca or fit_pca(images), args.pca_keep, args.pca_add_mean)
            staged.save(f"image/{split}_data.npy", image)
            staged.save(f"{split}_labels.npy", np.ascontiguousarray(labels, dtype=np.uint8))

            recordings = pair_recordings(labels, pools[split], args.pairing, args.recording_order, rng, split)
            clips = noises[split] if noises else None
            dtype = np.uint8 if args.audio_values == "rendered" else np.float32
            audio = np.lib.format.open_memmap(staged.path(f"audio/{split}_data.npy"), mode="w+", dtype=dtype,
                                              shape=(len(labels), FRAMES, FRAMES))
            for row, recording in enumerate(recordings):
                noise = clips[row % len(clips)] if clips else None
                audio[row] = cache.spectrum(recording, noise)
                pair_rows.append((split, row, int(labels[row]), recording.name,
                                  noise.relative_to(args.noise).as_posix() if noise else ""))
                if (row + 1) % 10_000 == 0:
                    print(f"{split}: {row + 1}/{len(recordings)} spectrograms", flush=True)
            audio.flush()
            del audio
            summary["splits"][split] = {"samples": len(labels), "pca_components": k, "pca_kept_variance": kept,
                                        "noise_clips": len(clips) if clips else 0}
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(("split", "row", "label", "recording", "noise"))
        writer.writerows(pair_rows)
        with open(staged.path("pairs.csv"), "w", encoding="utf-8") as handle:
            handle.write(text.getvalue())
        with open(staged.path("build_info.json"), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)
        staged.commit()
    finally:
        staged.discard()
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist", type=Path, required=True, help="folder with the four MNIST IDX files (or .gz)")
    parser.add_argument("--fsdd", type=Path, required=True,
                        help="Free Spoken Digit Dataset folder (holds recordings/<digit>_<speaker>_<index>.wav)")
    parser.add_argument("--noise", type=Path, default=None,
                        help="ESC-50 folder (meta/esc50.csv + audio/) or any folder of .wav noise clips; "
                             "default: no noise")
    parser.add_argument("--dst", type=Path, required=True, help="output folder, normally <data_root>/avmnist")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the recording order, random pairing and ESC-50 clip draw (default 0)")
    parser.add_argument("--pca_keep", type=float, default=0.25,
                        help="variance fraction the kept PCA components stay under (default 0.25: 75%% removed)")
    parser.add_argument("--pca_fit", choices=("split", "train"), default="split",
                        help="fit the PCA on each MNIST file separately (default, as the generator) or on train")
    parser.add_argument("--pca_add_mean", action=argparse.BooleanOptionalAction, default=False,
                        help="add the mean image back to the reconstruction (default: no, as the generator)")
    parser.add_argument("--audio_test_indices", default="40-49",
                        help="FSDD recording indices of the test pool (default 40-49; FSDD's own split: 0-4)")
    parser.add_argument("--audio_test_speaker", default=None,
                        help="split the recordings by speaker instead: this speaker's recordings are the test pool")
    parser.add_argument("--pairing", choices=("cycle", "random"), default="cycle",
                        help="next recording of the digit, cycling (default), or one drawn at random per image")
    parser.add_argument("--recording_order", choices=("shuffled", "sorted"), default="shuffled",
                        help="order of each digit's recordings for --pairing cycle (default: shuffled by --seed)")
    parser.add_argument("--noise_weight", type=float, default=0.009,
                        help="weight of the noise clip added to the speech (default 0.009; only with --noise)")
    parser.add_argument("--audio_values", choices=("rendered", "db"), default="rendered",
                        help="uint8 rendering of the spectrogram (default) or its float32 dB values")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = build(args)
    except (RawDataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, info in summary["splits"].items():
        print(f"{split}: {info['samples']} samples, {info['pca_components']} PCA components kept "
              f"({info['pca_kept_variance']:.3f} of the variance), {info['noise_clips']} noise clips")
    print(f"AV-MNIST written to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
