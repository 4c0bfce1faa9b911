"""What methods write beside their metrics: files in the run directory (written atomically) and per-epoch plots."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from utils.core.atomic import atomic_write_bytes


def save_artifact(ctx, name: str, writer: Callable) -> str | None:
    """Write ``name`` into the run directory through ``writer(handle)`` (binary), atomically (a temporary file renamed
    over it, as every file of a run); ``None`` when the run has no directory (a context built in a test)."""
    if ctx.run_path is None:
        return None
    atomic_write_bytes(Path(ctx.run_path) / name, writer)
    return name


def plot_series(ctx, name: str, x: list, series: dict[str, list], xlabel: str, ylabel: str, title: str,
                ylim: tuple[float, float] | None = None) -> str | None:
    """A line plot of ``series`` (label -> values over ``x``, integer ticks) saved as ``name`` in the run directory;
    ``None`` without matplotlib (plots are optional) or without a run directory."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, values in series.items():
        ax.plot(x, values, marker="o", markersize=3, label=label)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_title(title)
    ax.legend(ncol=len(series), fontsize=8)
    fig.tight_layout()
    try:
        return save_artifact(ctx, name, lambda handle: fig.savefig(handle, format="png", dpi=100))
    finally:
        plt.close(fig)
