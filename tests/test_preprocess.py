"""Pure pieces of the preprocessing scripts and their output formats as read by the loaders."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_preprocess import crisismmd as cmmd_pre
from data_preprocess import ravdess as ravdess_pre
from data_preprocess import vggsound as vggs_pre
from datasets import get_spec

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("librosa", "cv2", "facenet_pytorch", "transformers", "ftfy", "emoji", "nltk", "pandas", "soundfile")


def test_scripts_import_without_heavy_libraries():
    code = ("import sys, data_preprocess.ravdess, data_preprocess.vggsound, data_preprocess.crisismmd; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("module", [ravdess_pre, vggs_pre, cmmd_pre])
def test_cli_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0 and "--dst" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ RAVDESS

def test_frame_indices():
    assert ravdess_pre.frame_indices() == [3, 10, 17, 24, 31, 39, 46, 53, 60, 67, 75, 82, 89, 96, 103]


def test_fixed_length_pad_crop_and_exact_length():
    length = ravdess_pre.CLIP_SAMPLES
    assert length == 79_380
    short = np.arange(1, 11, dtype=np.float32)
    padded = ravdess_pre.fixed_length(short, 15)
    assert padded.dtype == np.float32 and padded.tolist() == list(range(1, 11)) + [0] * 5
    assert ravdess_pre.fixed_length(np.arange(15), 10).tolist() == list(range(2, 12))   # excess 5: drop 2 + 3
    assert ravdess_pre.fixed_length(np.arange(14), 10).tolist() == list(range(2, 12))   # excess 4: drop 2 + 2
    exact = np.random.RandomState(0).randn(length).astype(np.float32)
    np.testing.assert_array_equal(ravdess_pre.fixed_length(exact), exact)  # the reference returned []
    assert len(ravdess_pre.fixed_length(np.zeros(length + 1))) == length


def test_ravdess_names():
    assert ravdess_pre.parse_name("01-01-06-01-02-01-12_facecroppad.npy")["actor"] == 12
    assert ravdess_pre.emotion_label("03-01-08-02-02-01-01_croppad.wav") == 7
    assert ravdess_pre.emotion_label("01-01-01-01-01-01-01.mp4") == 0
    assert ravdess_pre.audio_name_for("01-01-06-01-02-01-12_facecroppad.npy") == "03-01-06-01-02-01-12_croppad.wav"
    with pytest.raises(ValueError):
        ravdess_pre.parse_name("README.txt")


def test_clip_box():
    assert ravdess_pre.clip_box([-3.4, 10.6, 50.2, 700.0], 640, 480) == (0, 11, 50, 480)
    assert ravdess_pre.clip_box([700, 500, 800, 600], 640, 480) == (639, 479, 640, 480)


def test_ravdess_pack_output_loads(tmp_path, monkeypatch):
    work, dst = tmp_path / "work", tmp_path / "data" / "RAVDESS_preprocessed_npy"
    rng = np.random.RandomState(0)
    names = ["01-01-03-01-01-01-02", "01-01-08-02-02-01-01", "01-01-01-01-01-02-01"]
    for name in names:
        actor = work / f"Actor_{int(name[-2:]):02d}"
        actor.mkdir(parents=True, exist_ok=True)
        np.save(actor / f"{name}_facecroppad.npy", rng.randint(0, 256, (15, 224, 224, 3)).astype(np.uint8))
        (actor / ravdess_pre.audio_name_for(name)).write_bytes(b"")
    monkeypatch.setattr(ravdess_pre, "mfcc", lambda wav: rng.randn(15, 156).astype(np.float32))
    assert ravdess_pre.pack(work, dst) == 3
    order = (dst / "sample_order.txt").read_text().split()
    assert order == sorted(order)  # Actor_01 before Actor_02, names sorted within
    source = get_spec("RAVDESS").load(argparse.Namespace(data_root=str(dst.parent), data_on_device=False))
    assert source.labels().tolist() == [ravdess_pre.emotion_label(Path(p).name) for p in order]
    first = np.load(work / order[0])
    raw = np.load(dst / "video_data.npy")
    np.testing.assert_array_equal(raw[0], first.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------------------------------- VGGSound

def test_packed_label():
    flags = np.array([[0, 1, 1, 0, 0, 0, 1, 1, 1, 0]])
    label = vggs_pre.packed_label(flags, 5)
    assert label.shape == (10, 143) and label.dtype == np.float32
    np.testing.assert_array_equal(label[:, 5], flags[0])
    np.testing.assert_array_equal(label[:, 141], 1 - flags[0])
    assert np.all(label[:, 142] == 5) and int(label[0, -1]) == 5
    others = np.delete(label, [5, 141, 142], axis=1)
    assert not others.any()


def test_class_ids_and_youtube_id():
    assert vggs_pre.class_ids(["engine accelerating", "playing trumpet", "engine accelerating", "race car"]) == {
        "engine accelerating": 0, "playing trumpet": 1, "race car": 2}
    assert vggs_pre.youtube_id("a--0bntG9i7E_000030_000040_out") == "--0bntG9i7E"
    assert vggs_pre.youtube_id("/x/y/babcdefghijk_1_2_out.mp4") == "abcdefghijk"


def test_vggsound_pipeline_output_loads(tmp_path):
    rng = np.random.RandomState(3)
    videos, features, dst = tmp_path / "videos", tmp_path / "features", tmp_path / "data" / "VGGS50K"
    (videos / "deep" / "er").mkdir(parents=True)
    (features / "visual_features").mkdir(parents=True)
    (features / "audio_features").mkdir(parents=True)
    ids = ["AAAAAAAAAAA", "BBBBBBBBBBB", "CCCCCCCCCCC", "DDDDDDDDDDD"]
    categories = ["dog barking", "cat purring", "dog barking", "race car"]
    rows = ["video_id,category"] + [f"{i},{c}" for i, c in zip(ids, categories)]
    (tmp_path / "avel.csv").write_text("\n".join(rows) + "\n")
    for k, video_id in enumerate(ids[:3]):  # DDD... has no local video
        name = f"x{video_id}_{k:06d}_{k + 10:06d}_out"
        (videos / "deep" / "er" / f"{name}.mp4").write_bytes(b"")
        if k != 1:  # BBB... has no features
            np.save(features / "visual_features" / f"{name}_vFeature.npy", rng.randn(10, 7, 7, 512) * 4)
            np.save(features / "audio_features" / f"{name}_aFeature.npy", rng.randn(10, 128).astype(np.float32))
    labels = [{f"{i}": {"label": [int(b) for b in rng.randint(0, 2, 10)]}} for i in ids]
    (tmp_path / "labels.json").write_text(json.dumps(labels))

    assert vggs_pre.match_videos(tmp_path / "avel.csv", videos, dst) == (3, 1)
    assert vggs_pre.write_metadata(dst, features) == 2
    assert vggs_pre.write_metadata(dst, features) == 2  # overwritten, not appended
    lines = (dst / vggs_pre.METADATA).read_text().splitlines()
    assert lines == ["xAAAAAAAAAAA_000000_000010_out&0", "xCCCCCCCCCCC_000002_000012_out&0"]
    assert vggs_pre.write_seg_labels(dst, tmp_path / "labels.json") == 2
    seg = np.load(dst / "seg_labels" / "xCCCCCCCCCCC_000002_000012_out_sLabel.npy")
    assert seg.shape == (1, 10) and seg.tolist()[0] == labels[2]["CCCCCCCCCCC"]["label"]
    vggs_pre.normalise_features(dst, features)

    source = get_spec("VGGSound-50k").load(argparse.Namespace(data_root=str(dst.parent), data_on_device=False))
    m1, m2, y = source.get_batch(np.array([0, 1]))
    raw = np.stack([np.load(p).astype(np.float32) for p in sorted((features / "visual_features").iterdir())])
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    np.testing.assert_allclose(m1.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert float(m1.min()) == 0.0 and float(m1.max()) == pytest.approx(1.0)
    assert y.tolist() == [0, 0]


def test_vggsound_malformed_video_list(tmp_path):
    (tmp_path / vggs_pre.VIDEO_LIST).write_text("a&1\nbroken line\n")
    with pytest.raises(ValueError, match="line 2"):
        vggs_pre.write_metadata(tmp_path, tmp_path)


# ---------------------------------------------------------------------------------------------- CrisisMMD

def test_class_id_of_humanitarian_labels():
    assert cmmd_pre.class_id("not_humanitarian") == 0 and cmmd_pre.class_id("other_relevant_information") == 7
    with pytest.raises(ValueError, match="unknown humanitarian class"):
        cmmd_pre.class_id("sympathy")


def test_split_contractions():
    assert cmmd_pre.split_contractions("I can't go , we cannot stay and it's 5 p . m . now ") == \
        "I can't go , we can not stay and it 's 5 p.m. now"
    assert cmmd_pre.split_contractions("they don't know ") == "they do n't know"
    assert cmmd_pre.split_contractions("I'm sure we're ok ") == "I 'm sure we 're ok"


def test_normalise_token():
    demojize = lambda t: {"🙂": ":slightly_smiling_face:"}.get(t, t)  # noqa: E731
    assert cmmd_pre.normalise_token("@RedCross", demojize) == "@USER"
    assert cmmd_pre.normalise_token("https://t.co/abc", demojize) == ""
    assert cmmd_pre.normalise_token("http://example.org", demojize) == "HTTPURL"
    assert cmmd_pre.normalise_token("www.example.org", demojize) == "HTTPURL"
    assert cmmd_pre.normalise_token("🙂", demojize) == ":slightly_smiling_face:"
    assert cmmd_pre.normalise_token("it’s…", demojize) == "it's..."


def test_unicode_escape_round_trip_quirk():
    assert cmmd_pre.unicode_escape_round_trip("flood ☔ now") == "flood ☔ now"
    assert cmmd_pre.unicode_escape_round_trip("café") == "caf\\xe9"  # the reference defect, kept behind a flag


def test_clean_tweet_end_to_end():
    pytest.importorskip("ftfy")
    pytest.importorskip("emoji")
    pytest.importorskip("nltk")
    text = cmmd_pre.clean_tweet("@user Houses can't stand https://t.co/xyz http://a.b")
    assert text == "@USER Houses can't stand HTTPURL"
