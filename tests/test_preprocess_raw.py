"""``data_preprocess/avmnist.py`` and ``data_preprocess/nyu.py`` on tiny raw inputs written here in the original
formats (MNIST IDX files, 8 kHz FSDD WAV files, ESC-50 layout; a MATLAB v7.3 / HDF5 labelled set and a MATLAB v5
``labels40.mat``): the outputs have the documented shapes, dtypes and label ranges, the loaders and ``main-S.py``'s
training loop read them, and broken inputs end with one ``error:`` line and exit code 2."""
from __future__ import annotations

import argparse
import csv
import gzip
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from data_preprocess import avmnist as av_pre
from data_preprocess import nyu as nyu_pre
from datasets import get_spec
from fixtures import split_labels
from utils import engine

REPO = Path(__file__).resolve().parents[1]
# 10 test images: PCA on n images has n - 1 components, so 5 would leave the first one above 25 % of the variance
N_TRAIN, N_TEST = 20, 10
NYU_N, NYU_W, NYU_H = 5, 64, 32  # W != H to catch a transposition; FuseNet needs multiples of 32
MATLAB_73_HEADER = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  2 00:00:00 2012 HDF5 schema 1.00 ."
                    .ljust(116) + bytes(8) + b"\x00\x02IM")


def run_main_s(database: str, root: Path, tmp_path: Path, mode: str) -> dict:
    """What ``main-S.py`` runs (``utils.main("S")``), in-process to keep the test fast."""
    argv = ["--database", database, "--data_root", str(root), "--metadata_dir", str(tmp_path / "metadata"),
            "--out_dir", str(tmp_path / "runs"), "--batch_size", "2", "--epochs", "1", "--max_steps", "2",
            "--no-record", "--device", "cpu", "--mode", mode]
    return engine.main("S", argv)


def one_error_line(script: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(REPO / "data_preprocess" / script), *args], capture_output=True,
                            text=True, cwd=REPO)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_scripts_import_light_and_show_help(capsys):
    code = ("import sys, data_preprocess.avmnist, data_preprocess.nyu; "
            "print([m for m in ('scipy', 'h5py', 'matplotlib', 'torch', 'torchaudio', 'librosa') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    for module in (av_pre, nyu_pre):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0 and "--dst" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- raw AV-MNIST

def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)


def write_wav_scipy(path: Path, samples: np.ndarray, rate: int) -> None:
    from scipy.io import wavfile

    wavfile.write(path, rate, (np.clip(samples, -1, 1) * 32767).astype(np.int16))


def write_wav_stdlib(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def write_raw_avmnist(root: Path) -> dict[str, Path]:
    rng = np.random.RandomState(7)
    labels = split_labels(N_TRAIN + N_TEST, 10)  # every split of the seed-0 permutation holds several digits
    mnist = root / "mnist"
    mnist.mkdir(parents=True)
    images = rng.randint(0, 256, size=(N_TRAIN + N_TEST, 28, 28)).astype(np.uint8)
    write_idx(mnist / "train-images-idx3-ubyte.gz", images[:N_TRAIN])  # gzipped, as distributed
    write_idx(mnist / "train-labels-idx1-ubyte.gz", labels[:N_TRAIN])
    write_idx(mnist / "t10k-images-idx3-ubyte", images[N_TRAIN:])      # and unpacked
    write_idx(mnist / "t10k-labels-idx1-ubyte", labels[N_TRAIN:])

    recordings = root / "fsdd" / "recordings"
    recordings.mkdir(parents=True)
    for digit in range(10):
        for speaker, index in (("alice", 0), ("bob", 3), ("alice", 45)):  # index 45: the test pool
            length = 1800 + 150 * digit + 7 * index
            t = np.arange(length) / 8000.0
            tone = 0.6 * np.sin(2 * np.pi * (200 + 150 * digit) * t) * np.hanning(length)
            write_wav_scipy(recordings / f"{digit}_{speaker}_{index}.wav", tone + 0.01 * rng.randn(length), 8000)

    esc = root / "ESC-50"
    (esc / "meta").mkdir(parents=True)
    (esc / "audio").mkdir()
    rows = ["filename,fold,target,category,esc10,src_file,take"]
    for target in range(5):
        for take in "AB":
            name = f"1-{target}00-{take}-{target}.wav"
            write_wav_stdlib(esc / "audio" / name, 0.5 * rng.randn(44_100 // 2), 44_100)  # 0.5 s at 44.1 kHz
            rows.append(f"{name},1,{target},class{target},False,{target}00,{take}")
    (esc / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    return {"mnist": mnist, "fsdd": root / "fsdd", "noise": esc, "labels": labels}


def build_avmnist(raw: dict, dst: Path, *extra: str) -> None:
    argv = ["--mnist", str(raw["mnist"]), "--fsdd", str(raw["fsdd"]), "--dst", str(dst), *extra]
    assert av_pre.main(argv) == 0


def test_framing_is_the_generator_search():
    def generator_search(length):  # the double loop of the AV-MNIST generator, written out
        for i in range(int(np.ceil(length / 112)) - 1, length):
            for j in range(i):
                if 113 * i - 112 * j > length >= 112 * i - 111 * j:
                    return i, j

    for length in (200, 1000, 2400, 3001, 4567, 6000, 8191):
        segment, overlap = av_pre.framing(length)
        assert (segment, overlap) == generator_search(length)
        assert (length - overlap) // (segment - overlap) == 112
    with pytest.raises(av_pre.RawDataError, match="too short"):
        av_pre.framing(100)


def test_fft_resampling_keeps_a_tone():
    rate, target = 44_100, 8_000
    x = np.sin(2 * np.pi * 440 * np.arange(rate) / rate)  # one second: a whole number of periods
    y = av_pre.resample(x, rate, target)
    assert len(y) == target
    np.testing.assert_allclose(y, np.sin(2 * np.pi * 440 * np.arange(target) / target), rtol=0, atol=1e-9)
    assert av_pre.resample(x, rate, rate) is x


def test_pca_keeps_just_under_a_quarter_of_the_variance():
    rng = np.random.RandomState(0)
    images = (rng.rand(60, 784) * rng.rand(784) * 255).astype(np.uint8)
    rec, k, kept = av_pre.remove_energy(images, av_pre.fit_pca(images), 0.25, add_mean=False)
    # scikit-learn's PCA, as the generator used it: SVD of the centred data, ratios S^2 / sum(S^2)
    x = images.astype(np.float64)
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    cumulative = np.cumsum(singular ** 2) / np.sum(singular ** 2)
    assert k == int(np.argmax(cumulative > 0.25)) and cumulative[k - 1] <= 0.25 < cumulative[k]
    assert kept == pytest.approx(cumulative[k - 1], rel=1e-9)
    expected = (x - mean) @ vt[:k].T @ vt[:k]  # the generator's reconstruction (no mean added)
    assert rec.dtype == np.float32 and rec.shape == (60, 784)
    tolerance = 256 * np.finfo(np.float32).eps * np.abs(x).max()
    np.testing.assert_allclose(rec, expected, rtol=0, atol=tolerance)
    with_mean, _, _ = av_pre.remove_energy(images, av_pre.fit_pca(images), 0.25, add_mean=True)
    np.testing.assert_allclose(with_mean - rec, np.broadcast_to(mean, rec.shape), rtol=0, atol=tolerance)


def test_spectrogram_equals_matplotlib_specgram_rendering():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.RandomState(1)
    for length in (2400, 4567):
        t = np.arange(length) / 8000.0
        x = np.sin(2 * np.pi * (300 + 2000 * t) * t) * np.hanning(length) + 0.05 * rng.randn(length)
        segment, overlap = av_pre.framing(length)
        # the generator's figure: 1.12 x 1.12 inches at 100 dpi, axes filling it, Greys colour map
        fig = plt.figure(figsize=(1.12, 1.12), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.axis("off")
        power, _, _, _ = ax.specgram(x=x, NFFT=segment, pad_to=223, noverlap=overlap, Fs=8000, cmap="Greys")
        fig.canvas.draw()
        drawn = np.asarray(fig.canvas.buffer_rgba())[:, :, 0].astype(int)
        plt.close(fig)
        db = av_pre.spectrogram_db(x, 8000)
        expected_db = 10 * np.log10(power)[::-1]
        np.testing.assert_allclose(db, expected_db, rtol=0, atol=1e-9 * np.abs(expected_db).max())
        ours = av_pre.render(db).astype(int)
        # matplotlib resamples the image in float32 before the colour lookup: a value on a table boundary may land
        # one entry away, which moves the grey level by one
        assert np.abs(ours - drawn).max() <= 1 and (ours == drawn).mean() > 0.97


def test_avmnist_from_raw_files(tmp_path, monkeypatch):
    raw = write_raw_avmnist(tmp_path / "raw")
    root = tmp_path / "data"
    build_avmnist(raw, root / "avmnist", "--noise", str(raw["noise"]), "--seed", "3")
    base = root / "avmnist"
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        image = np.load(base / "image" / f"{split}_data.npy")
        audio = np.load(base / "audio" / f"{split}_data.npy")
        labels = np.load(base / f"{split}_labels.npy")
        assert image.shape == (n, 784) and image.dtype == np.float32
        assert audio.shape == (n, 112, 112) and audio.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.uint8 and labels.max() <= 9
        assert audio.min() == 0 and audio.max() == 255  # each rendering spans the whole colour map
        np.testing.assert_array_equal(labels, raw["labels"][:N_TRAIN] if split == "train" else raw["labels"][N_TRAIN:])
    with open(base / "pairs.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert len(pairs) == N_TRAIN + N_TEST
    test_noise = {f"audio/1-400-{take}-4.wav" for take in "AB"}  # the last fifth of the 5 categories
    for pair in pairs:
        digit, _, index = pair["recording"][:-4].split("_")
        assert int(digit) == int(pair["label"])
        assert (int(index) == 45) == (pair["split"] == "test")
        assert (pair["noise"] in test_noise) == (pair["split"] == "test")

    source = get_spec("AV-MNIST").load(argparse.Namespace(data_root=str(root), data_on_device=False))
    m1, m2, y = source.get_batch(np.arange(N_TRAIN + N_TEST))
    n = N_TRAIN + N_TEST
    assert tuple(m1.shape) == (n, 1, 28, 28) and tuple(m2.shape) == (n, 1, 112, 112)
    np.testing.assert_array_equal(y.numpy(), raw["labels"])
    result = run_main_s("AV-MNIST", root, tmp_path, "m2")
    assert 0.0 <= result["metrics"]["test"]["accuracy"] <= 1.0

    again, other = tmp_path / "again", tmp_path / "other"
    monkeypatch.setattr(av_pre, "SPECTRUM_CACHE", 2)  # the bounded cache gives the same result
    build_avmnist(raw, again, "--noise", str(raw["noise"]), "--seed", "3")
    build_avmnist(raw, other, "--noise", str(raw["noise"]), "--seed", "4")
    for relative in ("image/train_data.npy", "audio/train_data.npy", "audio/test_data.npy", "pairs.csv"):
        assert (again / relative).read_bytes() == (base / relative).read_bytes(), relative
    assert (other / "pairs.csv").read_bytes() != (base / "pairs.csv").read_bytes()
    assert not list(base.rglob(".*.tmp*")), "no temporary file is left behind"


def test_avmnist_options(tmp_path):
    raw = write_raw_avmnist(tmp_path / "raw")
    build_avmnist(raw, tmp_path / "db", "--audio_values", "db", "--pca_fit", "train", "--pca_add_mean",
                  "--pairing", "random", "--audio_test_speaker", "bob", "--audio_test_indices", "0-4")
    audio = np.load(tmp_path / "db" / "audio" / "test_data.npy")
    assert audio.dtype == np.float32 and audio.shape == (N_TEST, 112, 112) and np.isfinite(audio).all()
    with open(tmp_path / "db" / "pairs.csv", newline="") as handle:
        pairs = list(csv.DictReader(handle))
    assert all(("_bob_" in p["recording"]) == (p["split"] == "test") for p in pairs)
    assert all(p["noise"] == "" for p in pairs)


def test_avmnist_errors(tmp_path):
    raw = write_raw_avmnist(tmp_path / "raw")
    mnist, fsdd = raw["mnist"], raw["fsdd"]
    dst = tmp_path / "out"

    def error(*extra, mnist_dir=mnist, fsdd_dir=fsdd) -> str:
        with pytest.raises(av_pre.RawDataError) as info:
            av_pre.build(av_pre.parse_args(["--mnist", str(mnist_dir), "--fsdd", str(fsdd_dir), "--dst", str(dst),
                                            *extra]))
        return str(info.value)

    line = one_error_line("avmnist.py", "--mnist", str(tmp_path / "nowhere"), "--fsdd", str(fsdd), "--dst", str(dst))
    assert "nowhere" in line and "not a folder" in line

    assert "--pca_keep" in error("--pca_keep", "1") and "--seed" in error("--seed", "-1")
    (mnist / "t10k-labels-idx1-ubyte").rename(mnist / "moved")
    assert "t10k-labels-idx1-ubyte" in error()
    (mnist / "moved").write_bytes(b"\x00\x00\x08\x03" + bytes(20))  # an image header in a label file's place
    (mnist / "moved").rename(mnist / "t10k-labels-idx1-ubyte")
    assert "holds" in error()
    (mnist / "t10k-labels-idx1-ubyte").write_bytes(b"GIF89a......")
    assert "bad magic number" in error()
    write_idx(mnist / "t10k-labels-idx1-ubyte", raw["labels"][N_TRAIN:])

    for path in (fsdd / "recordings").glob("*_45.wav"):
        if path.name.startswith(str(raw["labels"][N_TRAIN])):
            path.unlink()
    assert "test recording pool has no recording of digit" in error()
    first = int(raw["labels"][0])  # the first training image takes the first (sorted) recording of its digit
    (fsdd / "recordings" / f"{first}_alice_0.wav").write_bytes(b"RIFF\x00\x00not a wav")
    message = error("--audio_test_indices", "3", "--recording_order", "sorted")  # bob's index 3: a full test pool
    assert f"{first}_alice_0.wav" in message and "not a readable WAV file" in message
    (fsdd / "recordings" / "five.wav").write_bytes(b"")
    assert "<digit>_<speaker>_<index>.wav" in error()
    assert not dst.exists() or not list(dst.rglob("*.npy")), "a failed build writes no output"


# ------------------------------------------------------------------------------------------------ raw NYU

def matlab_arrays(n=NYU_N, width=NYU_W, height=NYU_H):
    """``(rgb [H, W, 3, N] uint8, depth [H, W, N] float32, labels40 [H, W, N] uint8)`` in MATLAB's own shapes;
    each label is the red value mod 41, so the pixel alignment of labels and images can be checked."""
    rng = np.random.RandomState(5)
    rgb = rng.randint(0, 256, size=(height, width, 3, n)).astype(np.uint8)
    depth = (rng.rand(height, width, n) * 9 + 0.5).astype(np.float32)
    labels = (rgb[:, :, 0, :] % 41).astype(np.uint8)
    return rgb, depth, labels


def write_labeled_v73(path: Path, rgb: np.ndarray, depth: np.ndarray) -> None:
    """What MATLAB's ``save -v7.3`` writes, as h5py sees it: every array with its axes reversed."""
    import h5py

    with h5py.File(path, "w", userblock_size=512) as handle:
        handle.create_dataset("images", data=rgb.transpose(3, 2, 1, 0))
        handle.create_dataset("depths", data=depth.transpose(2, 1, 0))
        handle.create_dataset("labels", data=np.zeros(depth.shape[::-1], dtype=np.uint16))  # the 894 classes
        handle.create_dataset("scenes", data=np.zeros((1, rgb.shape[3]), dtype=np.uint64))
    with open(path, "r+b") as handle:
        handle.write(MATLAB_73_HEADER)


def write_labels40_v5(path: Path, labels: np.ndarray) -> None:
    from scipy.io import savemat

    savemat(path, {"labels40": labels}, format="5")


def test_nyu_from_official_files(tmp_path):
    import h5py

    rgb, depth, labels = matlab_arrays()
    write_labeled_v73(tmp_path / "nyu_depth_v2_labeled.mat", rgb, depth)
    write_labels40_v5(tmp_path / "labels40.mat", labels)
    root = tmp_path / "data"
    dst = root / "NYU-Depth-V2"
    argv = ["--labeled", str(tmp_path / "nyu_depth_v2_labeled.mat"), "--labels40", str(tmp_path / "labels40.mat"),
            "--dst", str(dst)]
    assert nyu_pre.main(argv) == 0

    out = dst / "NYU-Depth-V2_data.mat"
    assert out.read_bytes()[:10] == b"MATLAB 7.3" and out.read_bytes()[126:128] == b"IM"
    with h5py.File(out, "r") as handle:
        images, depths, labels40 = (np.asarray(handle[k]) for k in ("images", "depths", "labels40"))
        assert handle["labels40"].attrs["MATLAB_class"] == b"uint8"
    assert images.shape == (NYU_N, 3, NYU_W, NYU_H) and images.dtype == np.uint8
    assert depths.shape == (NYU_N, NYU_W, NYU_H) and depths.dtype == np.float32
    assert labels40.shape == (NYU_N, NYU_W, NYU_H) and labels40.dtype == np.uint8 and labels40.max() <= 40
    np.testing.assert_array_equal(labels40, images[:, 0] % 41)  # labels lie on their pixels
    np.testing.assert_array_equal(depths, depth.transpose(2, 1, 0))

    source = get_spec("NYU-Depth-V2").load(argparse.Namespace(data_root=str(root), data_on_device=False))
    rgb_t, depth_t, target = source.get_batch(np.arange(NYU_N))
    assert tuple(rgb_t.shape) == (NYU_N, 3, NYU_H, NYU_W) and tuple(depth_t.shape) == (NYU_N, 1, NYU_H, NYU_W)
    np.testing.assert_array_equal(target.numpy(), labels.transpose(2, 0, 1))  # MATLAB's labels40(:, :, n)
    result = run_main_s("NYU-Depth-V2", root, tmp_path, "m2")
    assert 0.0 <= result["metrics"]["test"]["mIoU"] <= 1.0

    # a labels40 file re-saved by MATLAB in v7.3 gives the same output
    with h5py.File(tmp_path / "labels40_v73.mat", "w", userblock_size=512) as handle:
        handle.create_dataset("labels40", data=labels.transpose(2, 1, 0))
    with open(tmp_path / "labels40_v73.mat", "r+b") as handle:
        handle.write(MATLAB_73_HEADER)
    argv[3] = str(tmp_path / "labels40_v73.mat")
    argv[5] = str(tmp_path / "again")
    assert nyu_pre.main(argv) == 0
    with h5py.File(tmp_path / "again" / "NYU-Depth-V2_data.mat", "r") as handle:
        np.testing.assert_array_equal(np.asarray(handle["labels40"]), labels40)
    assert not list(dst.glob(".*tmp*")), "no temporary file is left behind"


def test_nyu_errors(tmp_path):
    rgb, depth, labels = matlab_arrays()
    labeled, labels40 = tmp_path / "labeled.mat", tmp_path / "labels40.mat"
    write_labeled_v73(labeled, rgb, depth)
    dst = tmp_path / "out"

    def error(labeled_path=labeled, labels_path=labels40) -> str:
        with pytest.raises(nyu_pre.RawDataError) as info:
            nyu_pre.build(labeled_path, labels_path, dst)
        return str(info.value)

    line = one_error_line("nyu.py", "--labeled", str(labeled), "--labels40", str(tmp_path / "missing.mat"),
                          "--dst", str(dst))
    assert "missing.mat" in line and "not found" in line

    write_labels40_v5(labels40, labels[:, :, :-1])
    assert "holds 4 label maps" in error() and "holds 5 images" in error()
    write_labels40_v5(labels40, labels.transpose(1, 0, 2))  # [W, H, N]: not MATLAB's [H, W, N]
    assert f"of {NYU_W}x{NYU_H}" in error()
    bad = labels.copy()
    bad[0, 0, 0] = 41
    write_labels40_v5(labels40, bad)
    assert "0..41" in error()
    labels40.write_bytes(b"not a MATLAB file at all" * 10)
    assert "not a readable MATLAB file" in error()
    write_labels40_v5(labels40, labels)
    assert "not a MATLAB v7.3 (HDF5) file" in error(labeled_path=labels40)

    import h5py

    with h5py.File(tmp_path / "no_depths.mat", "w") as handle:
        handle.create_dataset("images", data=rgb.transpose(3, 2, 1, 0))
    assert "no dataset 'depths'" in error(labeled_path=tmp_path / "no_depths.mat")
    assert not (dst / "NYU-Depth-V2_data.mat").exists()
