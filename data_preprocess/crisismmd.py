"""CrisisMMD v2.0 preprocessing, humanitarian task -> ``<data_root>/CMMD-V2/CMMD_data.pth`` (docs/data.md, CMMD-V2).

Input: CrisisMMD v2.0 (Alam et al., ICWSM 2018; crisisnlp.qcri.org/crisismmd): the ``data_image/`` tree and
the split files ``crisismmd_datasplit_all/task_humanitarian*.tsv``. All humanitarian splits are merged (the
official train/dev/test split is discarded; the framework's 60/20/20 split CSV applies).

Steps (``--steps all`` runs both):

``text``      read every ``task_humanitarian*`` TSV and concatenate the rows; clean ``tweet_text`` (ftfy, emoji
              names, the BERTweet tweet normaliser with ``https://t.co/`` links removed); keep ``tweet_id,
              tweet_text, image, label``; drop duplicate ``tweet_id`` (first row kept); write the tab-separated
              ``<work>/all_data.csv`` (columns ``tweet_text, image, label``).
``features``  per row: ResNet-50 (torchvision, ImageNet weights V1 = the legacy ``pretrained=True``) global
              average-pooled feature ``[2048]`` of the 224x224-resized, ImageNet-normalised RGB image;
              ``vinai/bertweet-base`` ``pooler_output`` ``[768]`` of the text (at most 128 tokens including
              ``<s>``/``</s>``, no attention mask, one sequence at a time); the class id of the list in
              docs/data.md (CMMD-V2).
              ``torch.save((image_feats float32 [N, 2048], text_feats float32 [N, 768], labels int64 [N]))``
              -> ``<dst>/CMMD_data.pth``, a tuple of NumPy arrays as the reference.

Deviations from the reference: TSV files are read in sorted order (the reference used
``os.walk`` order; ``--order os_walk`` reproduces it on the original machine); truncation to 128 tokens is
explicit instead of the library's implicit fallback; an unknown class name is an error instead of a silent -1;
the unicode-escape round trip that left literal ``\\xNN`` sequences in texts without ``\\u`` escapes is skipped
unless ``--reference_text_quirks`` is given.

Heavy libraries (pandas, ftfy, emoji, nltk, torchvision, transformers, PIL) are imported inside the functions.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

CLASS_NAMES = ("not_humanitarian", "affected_individuals", "infrastructure_and_utility_damage",
               "injured_or_dead_people", "missing_or_found_people", "rescue_volunteering_or_donation_effort",
               "vehicle_damage", "other_relevant_information")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_TOKENS = 128
TEXT_MODEL = "vinai/bertweet-base"


# ------------------------------------------------------------------------------------------ pure pieces

def class_id(name: str) -> int:
    try:
        return CLASS_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown humanitarian class {name!r}; expected one of {', '.join(CLASS_NAMES)}") from None


def unicode_escape_round_trip(text: str) -> str:
    """The reference's escape round trip, reproduced for ``--reference_text_quirks``.

    The text is written in unicode-escape form, 4-digit ``\\uXXXX`` escapes are widened to ``\\U0000XXXX`` and the
    escapes are decoded again only if the escaped form contains ``\\u``/``\\U``; otherwise the escaped form (with
    literal ``\\xNN``, ``\\n``...) is kept. For text with ``\\u`` escapes the result equals the input.
    """
    escaped = text.encode("unicode-escape").decode("ascii")
    escaped = re.sub(r"\\u([0-9a-fA-F]{4})", r"\\U0000\1", escaped)
    if "\\u" in escaped or "\\U" in escaped:
        return escaped.encode("ascii").decode("unicode-escape")
    return escaped


def split_contractions(text: str) -> str:
    """The contraction and time-of-day rules of the BERTweet normaliser, on space-joined tokens."""
    text = text.replace("cannot ", "can not ").replace("n't ", " n't ").replace("n 't ", " n't ")
    text = text.replace("ca n't", "can't").replace("ai n't", "ain't")
    for suffix in ("'m", "'re", "'s", "'ll", "'d", "'ve"):
        text = text.replace(f"{suffix} ", f" {suffix} ")
    text = text.replace(" p . m .", "  p.m.").replace(" p . m ", " p.m ")
    text = text.replace(" a . m .", " a.m.").replace(" a . m ", " a.m ")
    return " ".join(text.split())


def normalise_token(token: str, demojize) -> str:
    """One token of the BERTweet normaliser (Nguyen et al., EMNLP 2020 demos), with t.co links dropped."""
    lower = token.lower()
    if lower.startswith("@"):
        return "@USER"
    if lower.startswith("https://t.co/"):
        return ""
    if lower.startswith("http") or lower.startswith("www"):
        return "HTTPURL"
    if len(token) == 1:
        return demojize(token)
    return token.replace("’", "'").replace("…", "...")


def clean_tweet(text: str, reference_quirks: bool = False) -> str:
    """ftfy -> (optional escape round trip) -> emoji names -> BERTweet normalisation."""
    import emoji
    import ftfy
    from nltk.tokenize import TweetTokenizer

    text = ftfy.fix_text(text)
    if reference_quirks:
        text = unicode_escape_round_trip(text)
    text = emoji.demojize(text)
    tokens = TweetTokenizer().tokenize(text.replace("’", "'").replace("…", "..."))
    return split_contractions(" ".join(normalise_token(t, emoji.demojize) for t in tokens))


def humanitarian_files(split_dir: Path, order: str = "sorted") -> list[Path]:
    found = []
    for directory, subdirs, files in os.walk(split_dir):
        if order == "sorted":
            subdirs.sort()
            files = sorted(files)
        found += [Path(directory) / f for f in files if f.startswith("task_humanitarian")]
    return found


# ----------------------------------------------------------------------------------------------- steps

def build_text_table(src: Path, work: Path, order: str = "sorted", reference_quirks: bool = False) -> int:
    """Step 0: ``<work>/all_data.csv`` (tab-separated ``tweet_text, image, label``); returns the row count."""
    import pandas as pd

    files = humanitarian_files(src / "crisismmd_datasplit_all", order)
    if not files:
        raise FileNotFoundError(f"no task_humanitarian*.tsv under {src / 'crisismmd_datasplit_all'}")
    table = pd.concat([pd.read_csv(f, sep="\t", encoding="utf-8") for f in files], ignore_index=True)
    table["tweet_text"] = [clean_tweet(str(t), reference_quirks) for t in table["tweet_text"]]
    table = table[["tweet_id", "tweet_text", "image", "label"]].drop_duplicates("tweet_id", keep="first")
    work.mkdir(parents=True, exist_ok=True)
    table.drop(columns="tweet_id").to_csv(work / "all_data.csv", sep="\t", index=False, encoding="utf-8")
    return len(table)


def image_features(paths: list[Path], device: str, batch_size: int = 64) -> np.ndarray:
    """``[N, 2048]`` float32 ResNet-50 (ImageNet V1 weights) pooled features of RGB images resized to 224x224."""
    import torch
    import torchvision
    from PIL import Image

    model = torchvision.models.resnet50(weights=torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    model.fc = torch.nn.Identity()
    model.eval().to(device)
    transform = torchvision.transforms.Compose([
        torchvision.transforms.Resize((224, 224)), torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    out = np.empty((len(paths), 2048), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + batch_size]])
            out[start:start + len(batch)] = model(batch.to(device)).float().cpu().numpy()
    return out


def text_features(texts: list[str], device: str) -> np.ndarray:
    """``[N, 768]`` float32 BERTweet-base ``pooler_output``, one unpadded sequence of at most 128 tokens each."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TEXT_MODEL, use_fast=False)
    model = AutoModel.from_pretrained(TEXT_MODEL).eval().to(device)
    out = np.empty((len(texts), 768), dtype=np.float32)
    with torch.no_grad():
        for i, text in enumerate(texts):
            ids = tokenizer.encode(text, max_length=MAX_TOKENS, truncation=True)
            out[i] = model(input_ids=torch.tensor([ids], device=device)).pooler_output[0].float().cpu().numpy()
    return out


def build_features(src: Path, work: Path, dst: Path, device: str | None = None) -> int:
    """Step 1: ``<dst>/CMMD_data.pth`` from ``<work>/all_data.csv`` and the images under ``src``."""
    import pandas as pd
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    table = pd.read_csv(work / "all_data.csv", sep="\t", encoding="utf-8", keep_default_na=False)
    labels = np.asarray([class_id(name) for name in table["label"]], dtype=np.int64)
    images = image_features([src / p for p in table["image"]], device)
    texts = text_features([str(t) for t in table["tweet_text"]], device)
    dst.mkdir(parents=True, exist_ok=True)
    torch.save((images, texts, labels), dst / "CMMD_data.pth")
    return len(labels)


# ------------------------------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, required=True,
                        help="CrisisMMD v2.0 root (holds crisismmd_datasplit_all/ and data_image/)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the intermediate all_data.csv")
    parser.add_argument("--dst", type=Path, help="output folder, normally <data_root>/CMMD-V2 (step 'features')")
    parser.add_argument("--steps", nargs="+", choices=("text", "features", "all"), default=["all"])
    parser.add_argument("--order", choices=("sorted", "os_walk"), default="sorted",
                        help="TSV order: sorted names (default) or the reference's os.walk order")
    parser.add_argument("--reference_text_quirks", action="store_true",
                        help="reproduce the reference's unicode-escape round trip")
    parser.add_argument("--device", default=None, help="feature extraction device (default: cuda if available)")
    args = parser.parse_args(argv)
    steps = ("text", "features") if "all" in args.steps else args.steps
    if "features" in steps and args.dst is None:
        parser.error("step 'features' needs --dst")
    try:
        if "text" in steps:
            rows = build_text_table(args.src, args.work, args.order, args.reference_text_quirks)
            print(f"text: {rows} tweets -> {args.work / 'all_data.csv'}")
        if "features" in steps:
            print(f"features: {build_features(args.src, args.work, args.dst, args.device)} samples -> "
                  f"{args.dst / 'CMMD_data.pth'}")
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
