"""The tables of a sweep from hand-written run directories: a sweep without tuned runs keeps its outputs byte for
byte; a tuned sweep groups by tuned cell, tests two Holm families, writes ``tuned_params.csv`` and the tuned
sections of ``table.md`` (docs/sweep.md, "Tables of a tuned sweep")."""
from __future__ import annotations

import json
from pathlib import Path

from utils.sweep.aggregate import write_all

GOLDEN = Path(__file__).resolve().parent / "golden"
#: the outputs of the untuned fixture sweep as the tables' code wrote them before tuned runs existed
UNTUNED = GOLDEN / "untuned_sweep"
TEXT_OUTPUTS = ("runs.csv", "table.csv", "table.md", "table.tex")


def write_run(sweep: Path, method: str, mode: str | None, seed: int, acc: float, *, database: str = "Synthetic-MVD",
              config: str = "cfg-a", digest: str | None = None, data: str = "d0", own: list[str] = (),
              epochs: int = 3, steps: int = 30, commit: str = "c0ffee1234", node: str | None = None,
              arguments: dict | None = None, tuning: dict | None = None, wall: float = 10.0) -> Path:
    """One finished run as the scripts and the sweep's nodes write it: ``runs/<node>/<method>/<database>/<tag>/``
    with ``results.json``, ``args.json`` and ``sweep.json``, and the node's ``node.json``."""
    node = node or f"{database}_{mode or 'mm'}_seed{seed}_{method}-{config}-{digest or 'x'}"
    run = sweep / "runs" / node / method / database / f"tag_{mode}_seed{seed}"
    run.mkdir(parents=True)
    (run / "args.json").write_text("{}")
    test = {"accuracy": acc, "f1_weighted": round(acc - 0.01, 4), "average_accuracy": acc, "kappa": 0.1,
            "mIoU": round(acc / 2, 4), "loss": 0.5, "precision_per_class": [0.5, 0.5]}
    results = {"method": method, "database": database, "mode": mode, "seed": seed, "best_epoch": 2,
               "wall_time_s": wall + seed, "metrics": {"val": test, "test": test},
               "config": {"method": method, "database": database, "arguments": arguments or {"lr": 0.001}},
               "config_digest": digest or f"{method}-{database}-{mode}-{config}", "data_digest": data,
               "split_sizes": {"train": 120, "val": 40, "test": 40}, "budget": {"epochs": {"train": epochs},
                                                                                 "steps": steps},
               "code": {"commit": commit, "dirty": False, "torch": "2"}}
    if tuning is not None:
        results["tuning"] = tuning
    (run / "results.json").write_text(json.dumps(results))
    (run / "sweep.json").write_text(json.dumps({"peak_mem_mb": 100.0 + seed}))
    (sweep / "runs" / node / "node.json").write_text(json.dumps(
        {"id": node, "method": method, "database": database, "mode": mode, "seed": seed, "configs": [config],
         "own": list(own), "config_text": f"flags of {config}"}))
    return run


def untuned_sweep(sweep: Path) -> None:
    """Every path of today's tables: teachers, no-KD of both modes, methods of several groups, two configurations
    of one method, two sweep configurations, a cell from two commits, unequal budgets, a method whose no-KD runs saw
    other data, a segmentation dataset (mIoU, OA and AA), an unreadable run and a node without a finished run."""
    base = [0.70, 0.7125, 0.695, 0.72]
    kd = [0.721, 0.7125, 0.73, 0.718]
    for seed, acc in enumerate(base):
        write_run(sweep, "T", None, seed, acc + 0.1)
        write_run(sweep, "S", "m1", seed, acc)
        write_run(sweep, "S", "m2", seed, acc - 0.1)
        write_run(sweep, "KD", "m1", seed, kd[seed], own=["--alpha", "0.5"], commit="c0ffee1234" if seed else "beef")
        write_run(sweep, "KD", "m1", seed, kd[seed] + 0.005 * (seed % 2), digest="kd-alpha", own=["--alpha", "0.9"])
        write_run(sweep, "MST-Distill", "m1", seed, acc + 0.01 * (seed + 1), epochs=5, steps=50)
        write_run(sweep, "DML", "m2", seed, acc - 0.09 - 0.003 * seed)
        write_run(sweep, "FitNets", "m1", seed, acc + 0.002, data="d1")  # no-KD saw other data
    for seed in range(2):
        write_run(sweep, "S", "m1", seed, 0.6 + 0.01 * seed, config="cfg-b")
        write_run(sweep, "KD", "m1", seed, 0.62 + 0.02 * seed, config="cfg-b")
    for seed in range(3):
        write_run(sweep, "S", "m1", seed, 0.30 + 0.01 * seed, database="NYU-Depth-V2")
        write_run(sweep, "RKD", "m1", seed, 0.31 + 0.012 * seed, database="NYU-Depth-V2")
    broken = write_run(sweep, "RKD", "m1", 3, 0.5, database="NYU-Depth-V2")
    (broken / "results.json").write_text("{ not json")
    (sweep / "graph.json").write_text(json.dumps([{"id": "never-ran", "method": "CRD", "database": "Synthetic-MVD"}]))


def test_a_sweep_without_tuned_runs_keeps_its_outputs_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run directories are named relative to the sweep as given
    untuned_sweep(Path("sw"))
    problems: list[str] = []
    write_all(Path("sw"), log=lambda line: None, problems=problems)
    assert len(problems) == 2
    for name in TEXT_OUTPUTS:
        assert (tmp_path / "sw" / name).read_bytes() == (UNTUNED / name).read_bytes(), name
    assert not (tmp_path / "sw" / "tuned_params.csv").exists()
