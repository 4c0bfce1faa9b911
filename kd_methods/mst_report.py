"""What MST-Distill reports besides the student's metrics: the experts it built (log lines), per-epoch figures
(``metrics.jsonl``) and, in ``results.json`` ``extra``, the routing frequencies per stage-3 epoch with their plot."""
from __future__ import annotations

import numpy as np
import torch

from kd_methods.reporting import plot_series
from models.mst_modules import masknet_kind


class EpochMeter:
    """Sums of per-batch figures kept on the device (no sync per batch); ``means()`` reads and resets them."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, **values: torch.Tensor) -> None:
        for key, value in values.items():
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()

    def step(self) -> None:
        self.steps += 1

    def means(self) -> dict[str, torch.Tensor]:
        out = {key: value / self.steps for key, value in self.sums.items()} if self.steps else {}
        self.sums, self.steps = {}, 0
        return out


def describe(method) -> None:
    """Log one line per expert (hooked layer, its shape, its MaskNet) and the warnings of the configuration."""
    args, log = method.args, method.ctx.log
    for name, layer, shape, net in zip(method.expert_names, (*method.t_layers, *method.a_layers),
                                       (*method.feature_shapes["T"], *method.feature_shapes["A"]), method.masknets):
        params = sum(p.numel() for p in net.parameters())
        log(f"MST-Distill expert {name}: {layer} {list(shape)} -> MaskNet-{masknet_kind(shape)} "
            f"hd {net.hidden_dim} ({params / 1e6:.2f}M parameters)")
    total = sum(p.numel() for p in method.masknets.parameters())
    if total > 200e6:
        log(f"warning: the MaskNets hold {total / 1e6:.0f}M parameters (x4 with gradients and Adam state); "
            f"--hidden_dim_factor shrinks them")
    if args.epochs_s2 == 0 and args.start_stage <= 2 and args.epochs > 0:
        log("warning: --epochs_s2 0: stage 3 uses untrained MaskNets (the reference crashes here)")


def routing_row(names: list[str], counts: torch.Tensor) -> dict[str, float]:
    """``routing/<expert>``: the share of the epoch's top-k choices that went to each expert."""
    total = float(counts.sum())
    return {f"routing/{name}": count / total if total else 0.0 for name, count in zip(names, counts.tolist())}


def routing_results(method, rows: list[dict]) -> dict:
    """``extra`` entries from the stage-3 rows (``epoch``, ``routing/<expert>``, ``expert_ce/<expert>``)."""
    if not rows:
        return {}
    names, args = method.expert_names, method.args
    per_epoch = [[row.get(f"routing/{name}", 0.0) for name in names] for row in rows]
    mean = np.mean(np.asarray(per_epoch), axis=0).tolist()
    extra = {"routing": {"epochs": [row["epoch"] for row in rows], "per_epoch": per_epoch,
                         "last_epoch": dict(zip(names, per_epoch[-1])), "mean": dict(zip(names, mean))},
             "expert_ce_last_epoch": {name: rows[-1].get(f"expert_ce/{name}") for name in names}}
    series = {name: [row.get(f"routing/{name}", 0.0) for row in rows] for name in names}
    plot = plot_series(method.ctx, "routing.png", [row["epoch"] for row in rows], series, "stage-3 epoch",
                       "routing frequency", f"MST-Distill routing ({args.database}, k={args.k})", (0, 1))
    if plot is not None:
        extra["routing_plot"] = plot
    return extra
