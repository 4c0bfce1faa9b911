"""Signs that a finished run learnt nothing, although every loss stayed finite (``--lr 1e9``: loss 3.9e8, chance
accuracy, exit code 0). They do not stop the run: each is a ``warning:`` line in ``log.txt`` and an entry of
``warnings`` in ``results.json``, so a sweep's table can be checked for them.

* a stage's mean training loss of its last epoch is more than :data:`EXPLODED` times that of its first epoch;
* the selected model's validation accuracy is at or below chance (``1/K``; classification only).
"""
from __future__ import annotations

import json
from pathlib import Path

#: a final training loss above this multiple of the first epoch's is reported as diverged
EXPLODED = 10.0


def read_metrics(run_path: Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` (every epoch of every stage, also across resumptions)."""
    path = Path(run_path) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def training_warnings(rows: list[dict], val_metrics: dict, num_classes: int, is_segmentation: bool) -> list[str]:
    """The warnings of a finished run from its epoch rows and the selected model's validation metrics."""
    warnings = []
    stages: dict[str, list[dict]] = {}
    for row in rows:
        if isinstance(row.get("train/loss"), (int, float)):
            stages.setdefault(row.get("stage", "train"), []).append(row)
    for stage, stage_rows in stages.items():
        first, last = stage_rows[0], stage_rows[-1]
        if len(stage_rows) > 1 and first["train/loss"] > 0 and last["train/loss"] > EXPLODED * first["train/loss"]:
            warnings.append(f"the training loss of stage '{stage}' rose from {first['train/loss']:.4g} (epoch "
                            f"{first.get('epoch')}) to {last['train/loss']:.4g} (epoch {last.get('epoch')}), more "
                            f"than {EXPLODED:g}x: training diverged; lower --lr")
    accuracy = val_metrics.get("accuracy")
    if not is_segmentation and num_classes > 1 and isinstance(accuracy, (int, float)) and accuracy <= 1 / num_classes:
        chance = 1 / num_classes
        warnings.append(f"the selected model's validation accuracy {accuracy:.4f} is at or below chance "
                        f"(1/{num_classes} = {chance:.4f}): it learnt nothing useful; check --lr, the epochs and the "
                        f"data")
    return warnings
