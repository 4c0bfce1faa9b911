"""The dataset contract: a :class:`DatasetSpec` per database and a :class:`DataSource` per loaded dataset.

A source holds all ``N`` samples in the reference's sample order (the order the split CSV refers to) and
serves them a batch at a time: ``get_batch(indices)`` is one indexing call per batch, never one Python
call per sample, for in-memory data. Sources whose data does not fit in memory (memory maps, per-sample
files) implement the same call and may be read in DataLoader worker processes.

Before training, :func:`datasets.checks.check_source` checks what a source holds in memory (labels in range,
finite values); what is read from files per batch is checked by :class:`BatchLoader` as it is read.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from datasets.checks import check_batch_finite
from utils.core.errors import UserError


@dataclass
class Batch:
    """One batch: both modalities, the labels, and the samples' positions within their split."""

    m1: torch.Tensor
    m2: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def get(self, modality: str) -> torch.Tensor:
        return self.m1 if modality == "m1" else self.m2

    def inputs(self, modalities: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(self.get(m) for m in modalities)

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device, non_blocking: bool = False) -> "Batch":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.m1), move(self.m2), move(self.y), move(self.index))


class DataSource:
    """All samples of a database. Subclasses implement ``__len__``, ``get_batch`` and ``input_shapes``."""

    #: per-sample shapes, e.g. ``{"m1": (1, 28, 28), "m2": (1, 112, 112)}``
    input_shapes: dict[str, tuple[int, ...]]
    #: True when the data lives in host or device memory (no file reads per batch)
    in_memory: bool = True

    def __len__(self) -> int:
        raise NotImplementedError

    def get_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        """Class id per sample (used by CRD's negative sampling); segmentation sources may not provide it."""
        raise NotImplementedError

    def memory_arrays(self) -> dict:
        """What the source holds in memory, by name (``m1``, ``m2``, ``y``): scanned once before training for
        NaN and labels out of range. Parts read from files per batch are left out; see :attr:`per_batch_checked`."""
        return {}

    @property
    def per_batch_checked(self) -> tuple[str, ...]:
        """Modalities read from files and checked for NaN per batch as they are read (a scan at start-up would
        read the whole dataset). A source whose file-backed values are known to be finite (e.g. uint8 video with
        checked statistics) returns fewer."""
        if self.in_memory:
            return ()
        return tuple(m for m in ("m1", "m2") if m not in self.memory_arrays())

    def describe(self, index: int) -> str:
        """How messages name sample ``index`` (file-backed sources: its file)."""
        return f"sample {index}"

    def to(self, device) -> "DataSource":
        return self


class TensorSource(DataSource):
    """In-memory tensors, indexed a whole batch at a time (optionally resident on the GPU)."""

    def __init__(self, m1: torch.Tensor, m2: torch.Tensor, y: torch.Tensor):
        if not (len(m1) == len(m2) == len(y)):
            raise UserError(f"modalities and labels differ in length: {len(m1)}, {len(m2)}, {len(y)}")
        self.m1, self.m2, self.y = m1, m2, y
        self.input_shapes = {"m1": tuple(m1.shape[1:]), "m2": tuple(m2.shape[1:])}

    def __len__(self) -> int:
        return len(self.y)

    def get_batch(self, indices):
        if self.y.device.type == "cpu":
            indices = np.asarray(indices, dtype=np.int64)
            return _take(self.m1, indices), _take(self.m2, indices), _take(self.y, indices)
        index = torch.as_tensor(indices, dtype=torch.long, device=self.y.device)
        return self.m1.index_select(0, index), self.m2.index_select(0, index), self.y.index_select(0, index)

    def labels(self) -> np.ndarray:
        if self.y.ndim != 1:
            raise UserError("class labels per sample are only defined for classification datasets")
        return self.y.cpu().numpy()

    def memory_arrays(self) -> dict:
        return {"m1": self.m1, "m2": self.m2, "y": self.y}

    def to(self, device) -> "TensorSource":
        return TensorSource(self.m1.to(device), self.m2.to(device), self.y.to(device))


@functools.lru_cache(maxsize=None)
def _numpy_dtype(dtype: torch.dtype) -> np.dtype | None:
    try:
        return torch.empty((), dtype=dtype).numpy().dtype
    except TypeError:
        return None


def _take(tensor: torch.Tensor, indices: np.ndarray) -> torch.Tensor:
    """Gather rows of a CPU tensor into a fresh batch.

    ``index_select`` copies with every torch thread; its output buffer comes from NumPy's allocator, which asks the
    kernel for huge pages on large arrays, so a new 25 MB batch costs a few page faults instead of thousands (with
    torch's own buffers those faults took up to half of an AV-MNIST epoch; see benchmarks/bench_data.py).
    """
    numpy_dtype = _numpy_dtype(tensor.dtype)
    if numpy_dtype is None:  # dtypes NumPy lacks (bfloat16)
        return tensor.index_select(0, torch.from_numpy(indices))
    out = torch.from_numpy(np.empty((len(indices), *tensor.shape[1:]), dtype=numpy_dtype))
    return torch.index_select(tensor, 0, torch.from_numpy(indices), out=out)


@dataclass
class DatasetSpec:
    """Everything the framework knows about one database.

    ``load(args)`` returns a :class:`DataSource` with all samples in the reference order. ``students`` maps
    the student modality (``--mode``) to the default unimodal model; ``teacher`` is the default fusion model.
    ``batch_size``/``lr``/``epochs`` are the defaults of the reference's README. ``split`` is ``"index_file"`` (the
    reference's ``metadata/<name>_indices.csv``) or ``"generated"`` (a permutation computed in memory).
    """

    name: str
    task: str
    num_classes: int
    modalities: dict[str, str]
    teacher: str
    students: dict[str, str]
    batch_size: int
    lr: float
    load: Callable[[argparse.Namespace], DataSource]
    epochs: int = 100
    ignore_index: int | None = None
    aliases: tuple[str, ...] = ()
    split: str = "index_file"
    how_to_obtain: str = "see docs/data.md"
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    #: per-method overrides of the defaults above, e.g. ``{"MST-Distill": {"epochs": 5}}``
    method_defaults: dict[str, dict] = field(default_factory=dict)
    #: for databases whose facts depend on options (Synthetic-MVD's class count): ``args -> DatasetSpec``
    configure: Callable[[argparse.Namespace], "DatasetSpec"] | None = None
    #: statistics learnt once the split is known: ``(source, splits, args) -> source`` sees ``splits["train"]``
    #: (e.g. per-column standardisation with training statistics); the engine calls it before reading a batch
    fit: Callable[[DataSource, dict, argparse.Namespace], DataSource] | None = None
    #: a split of the database's own (e.g. a file in its data folder): ``(args, n, log) -> (train, val, test)``
    resolve_split: Callable | None = None
    #: the group id per sample (subject, actor, recording) when ``resolve_split`` keeps each group in one part:
    #: ``(args, n) -> [N] array or None``; the run's split digest covers them (utils/provenance.py)
    groups: Callable | None = None
    #: the dataset options that change the data, for the run directory name: ``args -> str`` (e.g. ``"fou-pix"``;
    #: ``""`` adds nothing)
    run_tag: Callable[[argparse.Namespace], str] | None = None
    #: the files holding the data (``args -> [Path]``): their contents' SHA-256 is the data's identity in a run's
    #: configuration (utils.provenance.data_digest); ``None`` for generated or embedded data
    data_files: Callable[[argparse.Namespace], list] | None = None
    #: for data without ``data_files``: what identifies it besides the dataset options (``args -> dict``, e.g. the
    #: digest of an embedded file)
    data_identity: Callable[[argparse.Namespace], dict] | None = None
    #: feature-based methods (RKD, CRD) max-pool a 4-d feature map 2x2 before flattening it (the reference's rule
    #: on AV-MNIST)
    pool_feature_maps: bool = False
    #: per-sample input shapes of the full-size data (``{"m1": ..., "m2": ...}``), for offline contexts and tests
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def configured(self, args: argparse.Namespace) -> "DatasetSpec":
        return self.configure(args) if self.configure is not None else self

    def example_input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-sample input shapes of this database (full size), without loading it."""
        return dict(self.input_shapes)

    @property
    def is_segmentation(self) -> bool:
        return self.task == "segmentation"

    @property
    def headline_metric(self) -> str:
        """The metric a comparison reports and a tuning search maximises: accuracy, or mIoU for segmentation."""
        return "mIoU" if self.is_segmentation else "accuracy"

    def other_modality(self, mode: str) -> str:
        return "m2" if mode == "m1" else "m1"

    def task_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The dataset's criterion: cross-entropy (NYU-Depth-V2: ``ignore_index=0``, mean over labelled pixels)."""
        ignore = self.ignore_index if self.ignore_index is not None else -100
        return F.cross_entropy(logits, target, ignore_index=ignore)


def require_file(path: Path, description: str, spec_name: str) -> Path:
    """Fail with one line naming the exact expected path when a data file is missing."""
    if not Path(path).is_file():
        raise UserError(
            f"missing data file {path} ({description}) for {spec_name}; "
            f"put it there or pass --data_root (docs/data.md, section '{spec_name}')"
        )
    return Path(path)


def open_npy(path: Path, description: str, spec_name: str, mmap: bool = True, fix: str | None = None) -> np.ndarray:
    """The one reader of ``.npy`` data files for every database: the array (memory-mapped unless ``mmap`` is
    False), or one :class:`UserError` line naming the file and what is wrong with it: missing, empty (0 bytes),
    cut short, a ``.npz`` archive saved under a ``.npy`` name, pickled Python objects (never loaded: they could run
    code), or not a NumPy file at all. ``fix`` says how to write it properly (default: the dataset's section of
    docs/data.md)."""
    fix = fix or f"docs/data.md, section '{spec_name}'"
    path = Path(path)
    require_file(path, description, spec_name)
    what = f"{path} ({description}) for {spec_name}"
    try:
        size = path.stat().st_size
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False) if size else None
    except ValueError as error:
        text = str(error)
        if "pickle" in text or "Python objects" in text:
            raise UserError(f"{what} is not a NumPy .npy array: it holds pickled Python objects (or no .npy header "
                            f"at all), which are never loaded; save a numeric array with numpy.save ({fix})") from None
        raise UserError(f"{what} is truncated or malformed ({text.splitlines()[0]}); write it again with "
                        f"numpy.save ({fix})") from None
    except (OSError, EOFError) as error:
        text = getattr(error, "strerror", None) or str(error)
        detail = text.splitlines()[0] if text else "it ended early"
        raise UserError(f"{what} cannot be read ({detail}); it may be truncated: write it again with numpy.save "
                        f"({fix})") from None
    if array is None:
        raise UserError(f"{what} is empty (0 bytes); write it again with numpy.save ({fix})")
    if not isinstance(array, np.ndarray):  # np.load returns an NpzFile for a zip archive, whatever its name
        with contextlib.suppress(Exception):
            array.close()
        raise UserError(f"{what} is a .npz archive (numpy.savez) saved under a .npy name; save the array itself "
                        f"with numpy.save ({fix})")
    return array


@contextlib.contextmanager
def reading(path: Path, spec_name: str):
    """A block that reads ``path`` (an HDF5 file read dataset by dataset): a read that fails part-way (a file cut
    short) is one :class:`UserError` line instead of the reader's traceback."""
    try:
        yield
    except OSError as error:
        detail = str(error).splitlines()[0] if str(error) else "I/O error"
        raise UserError(f"{path} cannot be read to the end ({detail}) for {spec_name}; it may be truncated: copy it "
                        f"again (docs/data.md, section '{spec_name}')") from None


def read_text(path: Path, expected: str) -> str:
    """A text file of a dataset (split file, metadata) as UTF-8, or one :class:`UserError` line: unreadable, or
    binary content where ``expected`` text was meant."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (undecodable byte at offset {error.start}); expected "
                        f"{expected}") from None
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}; expected {expected}") from None


def check_shape(array_shape, expected: tuple, path, spec_name: str) -> None:
    """``expected`` may hold ``None`` for free dimensions."""
    ok = len(array_shape) == len(expected) and all(e is None or e == a for a, e in zip(array_shape, expected))
    if not ok:
        shown = "[" + ", ".join("N" if e is None else str(e) for e in expected) + "]"
        raise UserError(
            f"{path} has shape {list(array_shape)}, expected {shown} for {spec_name} "
            f"(docs/data.md, section '{spec_name}')"
        )


class BatchLoader:
    """Iterates over a split a batch at a time, reproducibly.

    The shuffle order of epoch ``e`` depends only on ``(seed, e)``, so a resumed run sees exactly the batches
    an uninterrupted one would. In-memory sources are indexed directly in the main process; file-backed
    sources are read by ``num_workers`` DataLoader workers, one ``get_batch`` call per batch, and their
    file-backed modalities are checked for NaN as each batch arrives.

    ``min_batch`` (the engine sets 2 for stages that train BatchNorm layers, which fail on one sample): a last
    batch smaller than that is merged into the one before it, so such a network never sees a training batch of
    one sample. Splits without such a remainder get exactly the batches they had.
    """

    def __init__(self, source: DataSource, indices: np.ndarray, batch_size: int, shuffle: bool = False,
                 seed: int = 0, device: torch.device | str = "cpu", num_workers: int = 0,
                 max_steps: int | None = None):
        self.source, self.indices = source, np.asarray(indices, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.device = torch.device(device)
        self.num_workers = num_workers if not source.in_memory else 0
        self.max_steps = max_steps
        self.min_batch = 1
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        steps = math.ceil(len(self.indices) / self.batch_size)
        if steps > 1 and 0 < len(self.indices) % self.batch_size < self.min_batch:
            steps -= 1  # the short last batch joins the one before it
        return min(steps, self.max_steps) if self.max_steps else steps

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.indices))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.indices), generator=generator).numpy()

    def batch_positions(self) -> list[np.ndarray]:
        order = self._order()
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if len(batches) > 1 and len(batches[-1]) < self.min_batch:
            batches[-2:] = [np.concatenate(batches[-2:])]
        return batches[: len(self)]

    def __iter__(self) -> Iterator[Batch]:
        positions = self.batch_positions()
        non_blocking = self.device.type == "cuda"
        if self.num_workers > 0:
            reader = torch.utils.data.DataLoader(
                _BatchReader(self.source, self.indices), sampler=positions, batch_size=None,
                num_workers=self.num_workers, pin_memory=self.device.type == "cuda", persistent_workers=False)
            for item in reader:
                if isinstance(item, str):  # a UserError in the worker, passed on as its one line
                    raise UserError(item)
                m1, m2, y, index = item
                self._check(m1, m2, index)
                yield Batch(m1, m2, y, index).to(self.device, non_blocking)
            return
        for pos in positions:
            m1, m2, y = self.source.get_batch(self.indices[pos])
            self._check(m1, m2, pos)
            batch = Batch(m1, m2, y, torch.as_tensor(pos, dtype=torch.long))
            yield batch.to(self.device, non_blocking)

    def _check(self, m1: torch.Tensor, m2: torch.Tensor, positions) -> None:
        checked = self.source.per_batch_checked
        if checked:
            positions = np.asarray(positions)
            tensors = {m: t for m, t in (("m1", m1), ("m2", m2)) if m in checked}
            check_batch_finite(tensors, lambda row: self.source.describe(int(self.indices[positions[row]])))


class _BatchReader(torch.utils.data.Dataset):
    def __init__(self, source: DataSource, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, positions):
        try:
            m1, m2, y = self.source.get_batch(self.indices[positions])
        except UserError as error:  # raised in a worker it would come back wrapped in a traceback's text
            return str(error)
        return m1, m2, y, torch.as_tensor(positions, dtype=torch.long)
