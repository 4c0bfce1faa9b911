"""RAVDESS preprocessing: raw speech audio + video -> ``RAVDESS_preprocessed_npy/`` (docs/data.md, section "RAVDESS").

Input: the RAVDESS speech part (Livingstone & Russo, PLoS ONE 2018; zenodo.org/record/1188976), i.e.
``Audio_Speech_Actors_01-24`` (``Actor_XX/03-01-*.wav``) and the ``Video_Speech_Actor_XX`` archives
(``Actor_XX/0{1,2}-01-*.mp4``; only full audio-video files, modality field ``01``, are used). File names are seven
dash-separated fields: modality, vocal channel, emotion, intensity, statement, repetition, actor.

Steps (run in order, or all at once with ``--steps all``):

``audio``  every ``.wav`` -> 22 050 Hz mono, fixed length 3.6 s (79 380 samples): zero-padded at the end or
           centre-cropped -> ``<work>/Actor_XX/<name>_croppad.wav``.
``faces``  every full-AV ``.mp4`` -> 15 frames of the first 108 (indices 3, 10, ..., 103), face box by MTCNN
           (facenet_pytorch) on the RGB frame, crop of the **BGR** frame resized to 224x224 ->
           ``<work>/Actor_XX/<name>_facecroppad.npy`` ``[15, 224, 224, 3]`` uint8.
``pack``   every face stack -> ``<dst>/video_data.npy [N, 15, 3, 224, 224]`` uint8, ``audio_data.npy
           [N, 15, 156]`` float32 (librosa MFCC, ``n_mfcc=15``, other librosa defaults) of the matching
           ``03-...`` audio, ``label_data.npy [N]`` int64 (emotion field - 1).

Deviations from the reference scripts, all documented at the function that makes them: the
exact-length audio edge case returns the clip unchanged (the reference returned an empty array); the sample
order is the sorted path order (the reference used ``os.walk`` order, which depends on the file system; pass
``--order os_walk`` to reproduce it on the original machine); a face box is clipped to the frame; when the very
first frame has no detectable face the whole frame is used (the reference had no box to reuse and crashed).
The "centre the 3.6 s window" skip of the reference is a no-op there, so the window here is always the first
108 frames, as the reference's effective behaviour.

Heavy libraries (librosa, soundfile, cv2, facenet_pytorch) are imported inside the functions that need them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

SAMPLE_RATE = 22_050
CLIP_SECONDS = 3.6
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)  # 79 380
WINDOW_FRAMES = 108                              # 3.6 s at the assumed 30 fps
NUM_FRAMES = 15
FPS = 30
FACE_SIZE = 224
N_MFCC = 15
EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


# ------------------------------------------------------------------------------------------ pure pieces

def frame_indices(window: int = WINDOW_FRAMES, count: int = NUM_FRAMES, fps: int = FPS) -> list[int]:
    """0-based frames kept from a clip: ``floor(i * window / count) + floor(window / fps)`` for ``i < count``.

    With the defaults: 3, 10, 17, 24, 31, 39, 46, 53, 60, 67, 75, 82, 89, 96, 103, as the reference.
    """
    return [i * window // count + window // fps for i in range(count)]


def fixed_length(signal: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Zero-pad at the end or centre-crop a 1-d signal to exactly ``length`` samples.

    A longer signal drops ``r // 2`` samples at the start and ``r - r // 2`` at the end (``r`` = excess). The
    reference sliced ``[r // 2 : -(r - r // 2)]``, which is empty when ``r == 0``; here a signal of exactly
    ``length`` samples is returned unchanged.
    """
    signal = np.asarray(signal)
    excess = len(signal) - length
    if excess < 0:
        return np.concatenate([signal, np.zeros(-excess, dtype=signal.dtype)])
    start = excess // 2
    return signal[start:start + length]


def parse_name(name: str) -> dict[str, int]:
    """The seven 2-digit fields of a RAVDESS file name (with or without suffixes such as ``_croppad``)."""
    stem = Path(name).name.split(".")[0].split("_")[0]
    fields = stem.split("-")
    if len(fields) != 7 or not all(f.isdigit() for f in fields):
        raise ValueError(f"not a RAVDESS file name: {name}")
    keys = ("modality", "channel", "emotion", "intensity", "statement", "repetition", "actor")
    return dict(zip(keys, map(int, fields)))


def emotion_label(name: str) -> int:
    """Class id 0..7 = emotion field - 1 (0 neutral, 1 calm, ..., 7 surprised)."""
    return parse_name(name)["emotion"] - 1


def audio_name_for(face_stack: str) -> str:
    """``01-01-03-01-02-01-12_facecroppad.npy`` -> ``03-01-03-01-02-01-12_croppad.wav`` (same remaining fields)."""
    stem = Path(face_stack).name.split("_")[0]
    return "03" + stem[2:] + "_croppad.wav"


def clip_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """Round ``[x1, y1, x2, y2]`` to integers and clip it to the frame (the reference did not clip)."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, x2 = max(0, min(x1, width - 1)), max(1, min(x2, width))
    y1, y2 = max(0, min(y1, height - 1)), max(1, min(y2, height))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def walk_files(folder: Path, suffix: str, order: str = "sorted") -> list[Path]:
    """Files under ``folder`` ending in ``suffix``.

    ``sorted`` (default) is reproducible anywhere. ``os_walk`` is the reference's order: directories and
    files as ``os.walk`` lists them, which depends on the file system and decides the sample order that the
    authors' split CSV refers to.
    """
    found = []
    for directory, subdirs, files in os.walk(folder):
        if order == "sorted":
            subdirs.sort()
            files = sorted(files)
        found += [Path(directory) / f for f in files if f.endswith(suffix)]
    return found


# ----------------------------------------------------------------------------------------------- steps

def crop_pad_audio(src: Path, work: Path, order: str = "sorted") -> int:
    """Step 0: every ``.wav`` under ``src`` -> ``<work>/Actor_XX/<name>_croppad.wav`` (22 050 Hz, 3.6 s)."""
    import librosa
    import soundfile

    count = 0
    for wav in walk_files(src, ".wav", order):
        if "croppad" in wav.name:
            continue
        signal, _ = librosa.load(wav, sr=SAMPLE_RATE)
        out = work / wav.parent.name / f"{wav.stem}_croppad.wav"
        out.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(out, fixed_length(signal), SAMPLE_RATE)
        count += 1
    return count


def face_stack(video: Path, detector) -> np.ndarray:
    """``[15, 224, 224, 3]`` uint8 BGR face crops of the kept frames of ``video`` (zero frames if too short)."""
    import cv2

    wanted = set(frame_indices())
    capture = cv2.VideoCapture(str(video))
    frames, box, index = [], None, 0
    try:
        while len(frames) < NUM_FRAMES:
            ok, frame = capture.read()
            if not ok:
                break
            if index in wanted:
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                boxes, _ = detector.detect(rgb)
                height, width = frame.shape[:2]
                if boxes is not None and len(boxes):
                    box = clip_box(boxes[0], width, height)
                elif box is None:  # no earlier box to reuse: keep the whole frame
                    box = (0, 0, width, height)
                x1, y1, x2, y2 = box
                frames.append(cv2.resize(frame[y1:y2, x1:x2], (FACE_SIZE, FACE_SIZE)))
            index += 1
    finally:
        capture.release()
    while len(frames) < NUM_FRAMES:
        frames.append(np.zeros((FACE_SIZE, FACE_SIZE, 3), dtype=np.uint8))
    return np.stack(frames).astype(np.uint8)


def extract_faces(src: Path, work: Path, device: str | None = None, order: str = "sorted") -> int:
    """Step 1: every full-AV ``.mp4`` (name starts with ``01``) -> ``<work>/Actor_XX/<name>_facecroppad.npy``."""
    import torch
    from facenet_pytorch import MTCNN

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    detector = MTCNN(image_size=(720, 1280), device=device)
    count = 0
    for video in walk_files(src, ".mp4", order):
        if not video.name.startswith("01"):
            continue
        out = work / video.parent.name / f"{video.stem}_facecroppad.npy"
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, face_stack(video, detector))
        count += 1
    return count


def mfcc(wav: Path) -> np.ndarray:
    """``[15, 156]`` float32: librosa MFCC (``n_mfcc=15``, librosa defaults otherwise) of a 3.6 s clip."""
    import librosa

    signal, _ = librosa.load(wav, sr=SAMPLE_RATE)
    return librosa.feature.mfcc(y=signal, sr=SAMPLE_RATE, n_mfcc=N_MFCC).astype(np.float32)


def pack(work: Path, dst: Path, order: str = "sorted") -> int:
    """Step 2: face stacks + matching audio -> ``video_data.npy``, ``audio_data.npy``, ``label_data.npy``."""
    stacks = walk_files(work, "_facecroppad.npy", order)
    if not stacks:
        raise FileNotFoundError(f"no *_facecroppad.npy files under {work}; run the 'faces' step first")
    dst.mkdir(parents=True, exist_ok=True)
    n = len(stacks)
    # written through a memory map: the packed video is ~3.2 GB for N = 1 440
    video = np.lib.format.open_memmap(dst / "video_data.npy", mode="w+", dtype=np.uint8,
                                      shape=(n, NUM_FRAMES, 3, FACE_SIZE, FACE_SIZE))
    audio = np.empty((n, N_MFCC, 1 + CLIP_SAMPLES // 512), dtype=np.float32)
    labels = np.empty(n, dtype=np.int64)
    for i, stack_path in enumerate(stacks):
        wav = stack_path.parent / audio_name_for(stack_path.name)
        if not wav.is_file():
            raise FileNotFoundError(f"{wav} (audio of {stack_path.name}) is missing; run the 'audio' step first")
        video[i] = np.load(stack_path).transpose(0, 3, 1, 2)
        audio[i] = mfcc(wav)
        labels[i] = emotion_label(stack_path.name)
    video.flush()
    del video
    np.save(dst / "audio_data.npy", audio)
    np.save(dst / "label_data.npy", labels)
    (dst / "sample_order.txt").write_text("".join(f"{p.relative_to(work)}\n" for p in stacks))
    return n


# ------------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio_src", type=Path, help="folder with Actor_XX/03-*.wav (step 'audio')")
    parser.add_argument("--video_src", type=Path, help="folder with Actor_XX/01-*.mp4 (step 'faces')")
    parser.add_argument("--work", type=Path, required=True,
                        help="intermediate folder (RAVDESS-preprocessed): cropped audio and face stacks")
    parser.add_argument("--dst", type=Path, help="output folder, normally <data_root>/RAVDESS_preprocessed_npy "
                                                 "(step 'pack')")
    parser.add_argument("--steps", nargs="+", choices=("audio", "faces", "pack", "all"), default=["all"])
    parser.add_argument("--order", choices=("sorted", "os_walk"), default="sorted",
                        help="sample order: sorted paths (default) or the reference's os.walk order")
    parser.add_argument("--device", default=None, help="MTCNN device (default: cuda if available)")
    args = parser.parse_args(argv)
    steps = ("audio", "faces", "pack") if "all" in args.steps else args.steps
    needed = {"audio": "audio_src", "faces": "video_src", "pack": "dst"}
    missing = [f"--{needed[s]}" for s in steps if getattr(args, needed[s]) is None]
    if missing:
        parser.error(f"steps {', '.join(steps)} need {', '.join(missing)}")
    try:
        if "audio" in steps:
            print(f"audio: {crop_pad_audio(args.audio_src, args.work, args.order)} clips -> {args.work}")
        if "faces" in steps:
            print(f"faces: {extract_faces(args.video_src, args.work, args.device, args.order)} videos -> {args.work}")
        if "pack" in steps:
            print(f"pack: {pack(args.work, args.dst, args.order)} samples -> {args.dst}")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
