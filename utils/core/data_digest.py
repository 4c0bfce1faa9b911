"""The identity of a run's data: SHA-256 of the data files' contents, computed once and cached (docs/sweep.md).

A file's digest is cached in ``.mstd_digest.json`` beside it (one entry per file of the folder), or under the user
cache (``$XDG_CACHE_HOME/mstd``, else ``~/.cache/mstd``) when the folder cannot be written, keyed by the file's
name, size and modification time: a changed file is hashed again, an unchanged one never. Hashing reads the file
once in 8 MiB blocks (about 0.5-1 GB/s of SHA-256 on one core; a 50 GB folder takes one to two minutes the first
time and nothing afterwards). Generated and embedded data (Synthetic-MVD, UCI-MFeat) are identified by what
generates them instead (:func:`utils.provenance.data_digest`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from utils.core.atomic import atomic_write_bytes
from utils.core.errors import UserError

CACHE_FILE = ".mstd_digest.json"
BLOCK = 8 << 20


def cache_dir() -> Path:
    """The user cache of this project (``$XDG_CACHE_HOME/mstd`` or ``~/.cache/mstd``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mstd"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_paths(folder: Path) -> list[Path]:
    """Where the digests of ``folder``'s files may be cached, in order of preference: beside them, then the user
    cache (a name derived from the folder's absolute path)."""
    folder = Path(folder).resolve()
    key = hashlib.sha1(str(folder).encode()).hexdigest()[:16]
    return [folder / CACHE_FILE, cache_dir() / f"digest_{key}.json"]


def _read(path: Path) -> dict:
    try:
        entries = json.loads(Path(path).read_text()).get("files", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write(path: Path, entries: dict) -> bool:
    text = json.dumps({"version": 1, "files": entries}, indent=1, sort_keys=True) + "\n"
    try:
        atomic_write_bytes(path, lambda handle: handle.write(text.encode()), make_parents=True)
        return True
    except (UserError, OSError):  # a read-only folder: the next candidate
        return False


def _key(path: Path) -> dict:
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def files_sha256(paths: list[Path]) -> dict[str, str | None]:
    """``{str(path): sha256}`` of every file (``None`` for a missing one), from the caches where the file's size and
    modification time are unchanged; the others are hashed and the caches updated."""
    out: dict[str, str | None] = {}
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(Path(path).resolve().parent, []).append(Path(path))
    for folder, files in by_folder.items():
        candidates = cache_paths(folder)
        cached = [_read(candidate) for candidate in candidates]
        changed = False
        entries = dict(cached[0] or cached[1])
        for path in files:
            if not path.is_file():
                out[str(path)] = None
                continue
            key = _key(path)
            hit = next((c[path.name] for c in cached if isinstance(c.get(path.name), dict)
                        and all(c[path.name].get(k) == v for k, v in key.items())), None)
            if hit is None:
                hit = {**key, "sha256": file_sha256(path)}
                entries[path.name] = hit
                changed = True
            out[str(path)] = hit["sha256"]
        if changed:
            for candidate in candidates:
                if _write(candidate, entries):
                    break
    return out


def canonical_digest(value) -> str:
    """SHA-256 hex of the canonical JSON of ``value`` (sorted keys, no whitespace)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
