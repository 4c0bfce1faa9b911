"""Seeding, device choice, the CPU thread count and RNG state capture (for exact resumption)."""
from __future__ import annotations

import ast
import os
import random

import numpy as np
import torch

from utils.core.errors import UserError


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """As the reference: Python, hash seed, NumPy, torch CPU and CUDA; cuDNN deterministic, no benchmark."""
    random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def init_seed(args) -> int:
    """The seed of a run's initialisation and training data order: ``--init_seed``, else ``--seed`` (which also
    selects the split)."""
    value = getattr(args, "init_seed", None)
    return args.seed if value is None else value


def cpu_load() -> tuple[int, float, int]:
    """(CPUs this process may run on, 1-minute load average, tasks running right now besides this one)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    try:  # /proc/loadavg field 4 is "running/total"; the running count includes this process
        with open("/proc/loadavg") as handle:
            running = int(handle.read().split()[3].split("/")[0]) - 1
    except (OSError, IndexError, ValueError):
        running = 0
    return cpus, load, max(0, running)


def default_threads() -> tuple[int, str]:
    """torch CPU threads when ``--threads`` is not given, and why (for the log).

    torch starts one thread per core even when other jobs already keep those cores busy; each matmul then waits
    for its slowest thread, and on a loaded 2-core machine the main job took 74 s instead of 9.6 s with one thread
    (same results). So: the CPUs of this process's affinity mask minus the busy ones (the larger of the 1-minute
    load average and the tasks running now), at least 1 and at most torch's own default. ``OMP_NUM_THREADS`` or
    ``MKL_NUM_THREADS``, when set, are left to torch."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("MKL_NUM_THREADS"):
        return torch.get_num_threads(), "torch's, from OMP_NUM_THREADS/MKL_NUM_THREADS"
    cpus, load, running = cpu_load()
    busy = max(int(load + 0.5), running)
    threads = max(1, min(torch.get_num_threads(), cpus - busy))
    return threads, f"{cpus} CPUs, load {load:.1f}, {running} other tasks running"


def configure_threads(requested: int | None) -> str:
    """Set torch's CPU threads to ``--threads`` or :func:`default_threads`; returns a line for the log."""
    if requested:
        cpus = cpu_load()[0]
        if requested > cpus:  # more threads than CPUs only adds contention
            torch.set_num_threads(cpus)
            return (f"CPU threads: {cpus} (warning: --threads {requested} exceeds the {cpus} CPUs this process may "
                    f"use; capped)")
        torch.set_num_threads(requested)
        return f"CPU threads: {requested} (--threads)"
    threads, why = default_threads()
    torch.set_num_threads(threads)
    return f"CPU threads: {threads} ({why}; set --threads to choose)"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks ``cuda`` when available, else ``cpu``; ``cuda:N`` is checked against the machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"invalid --device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for CUDA but no GPU is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    elif device.type != "cpu":
        raise UserError(f"unsupported --device '{name}'; use auto, cpu, cuda or cuda:N")
    return device


def rng_state() -> dict:
    """Every RNG state as plain tensors and numbers, so a checkpoint loads with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": repr(random.getstate()),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value
