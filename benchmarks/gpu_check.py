"""GPU check: every method for one short epoch on CUDA, an AMP check and the benchmarks at reduced sizes, in one
Markdown report (``benchmarks/gpu_check.sh`` runs it; about 5-8 minutes on one GPU).

1. Methods: every registered method (``T``, ``S`` on both modalities, ``test-T``/``test-S`` on their checkpoints,
   every distillation method) for one epoch with ``--device cuda`` on Synthetic-MVD (its default sizes) and on the
   tiny on-disk fixtures of every paper dataset (``tests/fixtures.py``, written into a temporary folder; batch 4,
   NYU-Depth-V2 2). Teachers are the ``best.pth`` of the ``T`` and ``S --mode m2`` runs just made, as a user would
   pass them. A refusal with one line (exit 2, e.g. RKD on NYU-Depth-V2) is reported as such, not as a failure; a
   run that says it ran anywhere but on the GPU is a failure.
2. AMP: for every method on Synthetic-MVD and the AV-MNIST fixture, the loss terms of the first training step of its
   first stage in float32 and under ``torch.autocast("cuda", dtype=torch.bfloat16)`` (the ``--amp`` path), from two
   builds with the same seed, the same batch and the same RNG state. Tolerance: bfloat16 keeps 8 significant bits
   (unit roundoff u = 2^-8); each weight layer rounds its input and its weights (error <= 2u relative, fp32
   accumulation), so through the L weight layers of the deepest network the outputs carry first-order relative
   error <= 2 L u; the losses (cross-entropy, KL, distances of those outputs) change by a few times that relative to
   their scale. Check: |loss_bf16 - loss_fp32| <= 8 L u max(1, |loss_fp32|), plus the autocast outputs really being
   bfloat16 (the check would otherwise pass trivially).
3. Benchmarks with ``--device cuda`` at reduced sizes: ``bench_data.py`` (AV-MNIST shapes, 20 000 samples, 3
   epochs), ``bench_mst.py`` (AV-MNIST and RAVDESS shapes, 2 rounds), ``bench_methods.py`` (7 000 virtual samples, 3
   rounds).

Time: ``--budget_s`` (470 s): the method runs get half of it, the AMP check the next 15 %, the benchmarks the rest
(each also under its own timeout); whatever would start later is skipped and reported, and counts as a failure.

Exit code 0 when everything passed, 1 when something failed or was skipped, 2 (one line) without CUDA.
``GPU_CHECK_DEVICE=cpu`` (for tests only) runs the same steps on the CPU.

Usage: ``benchmarks/gpu_check.sh [--report gpu_check.md] [--databases ...] [--methods ...] [--no-bench]``.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from datasets import get_spec  # noqa: E402
from fixtures import FIXTURE_DATABASES, make_fixture  # noqa: E402
from kd_methods import all_methods, get_method  # noqa: E402
from utils import cli, engine  # noqa: E402
from utils.core.atomic import atomic_write_bytes  # noqa: E402
from utils.core.runtime import seed_everything  # noqa: E402

DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
BF16_UNIT_ROUNDOFF = 2.0 ** -8
#: smallest settings that still run every stage for one epoch
STAGE_FLAGS = {"MST-Distill": ["--epochs_s1", "1", "--epochs_s2", "1"],
               "FitNets": ["--hint_epochs", "1"], "FitNets-UU": ["--hint_epochs", "1"],
               "MGDFR": ["--co_epochs", "1", "--repeat_permute", "1"]}
#: on the paper datasets' fixtures, smaller MaskNets (CMMD-V2's fc1 MaskNet has ~536 M weights at the default 2)
FIXTURE_FLAGS = {"MST-Distill": ["--hidden_dim_factor", "16"]}
FIXTURE_BATCH = {"NYU-Depth-V2": "2"}
#: (method, --mode) runs that produce the checkpoints the others load, run first
PRODUCERS = (("T", "m1"), ("S", "m1"), ("S", "m2"))
#: evaluation scripts and the run whose best.pth they test
EVALUATES = {"test-T": ("T", "m1"), "test-S": ("S", "m1")}
BENCHMARKS = (
    ("bench_data.py", ["--samples", "20000", "--epochs", "3"], 120),
    ("bench_mst.py", ["--rounds", "2"], 240),
    ("bench_methods.py", ["--samples", "7000", "--rounds", "3"], 180),
)


class Runner:
    """Runs methods in this process (one CUDA context for all), remembering the checkpoints the producers wrote."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.best: dict[tuple[str, str, str], Path] = {}  # (database, method, mode) -> best.pth of a producer
        self.models: dict[tuple[str, str], Path] = {}  # (database, model name) -> a producer's best.pth

    def teacher_checkpoint(self, method_cls, database: str, mode: str) -> tuple[str, Path | None]:
        teacher = method_cls.default_models(get_spec(database), mode)["teacher"]
        return teacher, self.models.get((database, teacher))

    def argv(self, method: str, database: str, mode: str, root: Path | None) -> list[str] | str:
        """The command line of one run, or why it cannot be made."""
        argv = ["--database", database, "--mode", mode, "--epochs", "1", "--no-record", "--device", DEVICE,
                "--out_dir", str(self.folder / "runs")]
        if root is not None:
            argv += ["--data_root", str(root), "--metadata_dir", str(root / "metadata"),
                     "--batch_size", FIXTURE_BATCH.get(database, "4"), *FIXTURE_FLAGS.get(method, [])]
        argv += STAGE_FLAGS.get(method, [])
        method_cls = get_method(method)
        if method in EVALUATES:
            producer = self.best.get((database, *EVALUATES[method]))
            return argv + ["--ckpt_name", str(producer)] if producer else "no checkpoint from " + EVALUATES[method][0]
        if method_cls.card.needs_checkpoint:
            teacher, path = self.teacher_checkpoint(method_cls, database, mode)
            return argv + ["--ckpt_name", str(path)] if path else f"no checkpoint of {teacher}"
        return argv

    def run(self, method: str, database: str, mode: str, root: Path | None) -> dict:
        argv = self.argv(method, database, mode, root)
        if isinstance(argv, str):
            return {"status": "skipped", "detail": argv, "seconds": 0.0}
        output = io.StringIO()
        started = time.perf_counter()
        status, detail, results = "ok", "", None
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                results = engine.main(method, argv)
        except SystemExit as error:
            status = "refused" if error.code == 2 else "failed"
            detail = f"exit {error.code}: {_last_line(output.getvalue())}"
        except Exception as error:  # noqa: BLE001 - one crash must not stop the check; it is reported
            status, detail = "failed", f"{type(error).__name__}: {_first_line(error)}"
            detail += " at " + traceback.extract_tb(error.__traceback__)[-1].filename.replace(str(ROOT) + "/", "")
        seconds = time.perf_counter() - started
        if status == "ok":
            device = (results or {}).get("device", "?")
            detail = f"device {device}"
            if not str(device).startswith(DEVICE):
                status, detail = "failed", f"ran on {device}, not {DEVICE}"
            for line in output.getvalue().splitlines():
                best = Path(line.split(": ", 1)[1]) / "best.pth" if line.startswith("Run directory: ") else None
                if best is not None and best.exists() and (method, mode) in PRODUCERS:
                    self.best[(database, method, mode)] = best
                    for model in results.get("models", {}).values():
                        self.models[(database, model)] = best
        return {"status": status, "detail": detail, "seconds": seconds}


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return lines[0][:200] if lines else ""


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def method_names(selected) -> list[str]:
    names = [name for name in all_methods() if not selected or name in selected]
    first = [name for name, _ in PRODUCERS if name in names]
    return list(dict.fromkeys(first + [n for n in names if n not in EVALUATES] + [n for n in names if n in EVALUATES]))


def run_methods(databases, methods, roots, runner: Runner, deadline: float, log) -> tuple[list[str], bool]:
    rows, ok = [], True
    plan = [(name, mode) for name in methods for mode in (("m1", "m2") if name == "S" else ("m1",))]
    for database in databases:
        for name, mode in plan:
            if time.time() > deadline:  # the benchmarks keep their share of the budget; the table says what was left
                outcome = {"status": "skipped", "detail": "the methods' share of the time budget was spent",
                           "seconds": 0.0}
                ok = False
            else:
                outcome = runner.run(name, database, mode, roots[database])
            label = f"{name} ({mode})" if name == "S" else name
            ok &= outcome["status"] in ("ok", "refused")
            rows.append(f"| {database} | {label} | {outcome['status']} | {outcome['seconds']:.1f} | "
                        f"{outcome['detail'].replace('|', '/')} |")
            log(rows[-1])
    table = ["| database | method | result | s | detail |", "|---|---|---|---:|---|", *rows]
    return table, ok


def _weight_layers(module: torch.nn.Module) -> int:
    return sum(isinstance(m, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) for m in module.modules())


def amp_losses(method: str, database: str, root: Path | None, folder: Path, checkpoint: Path | None) -> dict:
    """Loss terms of the first training step of the method's first stage, fp32 and bf16 autocast, same state."""
    argv = ["--database", database, "--epochs", "1", "--no-record", "--device", DEVICE, "--out_dir", str(folder)]
    if root is not None:
        argv += ["--data_root", str(root), "--metadata_dir", str(root / "metadata"), "--batch_size", "4",
                 *FIXTURE_FLAGS.get(method, [])]
    method_cls = get_method(method)
    if method_cls.card.needs_checkpoint:
        argv += ["--ckpt_name", str(checkpoint)]
    argv += STAGE_FLAGS.get(method, [])
    description = cli.describe(method_cls, argv)
    args = description.args
    device = torch.device(DEVICE)
    terms, depth, dtypes = {}, 0, set()
    for precision in ("fp32", "bf16"):
        seed_everything(args.seed)
        ctx = engine.build_context(description, device, log=lambda _message: None)
        built = method_cls(ctx).to(device)
        stage = next(s for s in built.stages() if s.epochs > 0)
        stage.start()
        engine.set_modes(built, stage, training=True)
        batch = next(iter(ctx.make_loader("train", shuffle=False)))
        depth = max([depth] + [_weight_layers(child) for child in built.children()])
        torch.manual_seed(1)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())
        with autocast:
            if precision == "bf16":
                probe = next(m for m in built.modules() if isinstance(m, torch.nn.Linear))
                seen = []
                handle = probe.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
            losses = stage.train_step(batch, 0)
            if precision == "bf16":
                handle.remove()
                dtypes.update(seen)
        terms[precision] = {name: float(value.detach().float()) for name, value in losses.items()}
    return {"terms": terms, "depth": depth, "autocast_dtypes": dtypes}


def run_amp(databases, methods, roots, runner: Runner, folder: Path, deadline: float, log) -> tuple[list[str], bool]:
    rows, ok = [], True
    for database in [d for d in ("Synthetic-MVD", "AV-MNIST") if d in databases]:
        root = roots[database]
        for name in methods:
            if name in EVALUATES:
                continue
            if time.time() > deadline:
                rows.append(f"| {database} | {name} | skipped | the AMP check's share of the time budget was spent "
                            "| | |")
                ok = False
                continue
            method_cls = get_method(name)
            best = None
            if method_cls.card.needs_checkpoint:
                teacher, best = runner.teacher_checkpoint(method_cls, database, "m1")
                if best is None:
                    rows.append(f"| {database} | {name} | skipped | no checkpoint of {teacher} | | |")
                    continue
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    result = amp_losses(name, database, root, folder / "amp-runs", best)
            except Exception as error:  # noqa: BLE001 - reported in the table
                ok = False
                rows.append(f"| {database} | {name} | failed | {type(error).__name__}: {_first_line(error)} | | |")
                log(rows[-1])
                continue
            tolerance_factor = 8 * result["depth"] * BF16_UNIT_ROUNDOFF
            worst, passed = 0.0, True
            for term, fp32 in result["terms"]["fp32"].items():
                bf16 = result["terms"]["bf16"][term]
                error = abs(bf16 - fp32)
                allowed = tolerance_factor * max(1.0, abs(fp32))
                passed &= error <= allowed  # NaN fails too
                worst = max(worst, error / allowed)
            bf16_seen = DEVICE == "cpu" or torch.bfloat16 in result["autocast_dtypes"]
            passed &= bf16_seen
            ok &= passed
            pairs = ", ".join(f"{t} {result['terms']['fp32'][t]:.5f}/{result['terms']['bf16'][t]:.5f}"
                              for t in result["terms"]["fp32"])
            rows.append(f"| {database} | {name} | {'ok' if passed else 'FAILED'} | {pairs} | "
                        f"L={result['depth']}, worst {worst:.2f} of the tolerance | "
                        f"{'bf16' if bf16_seen else 'no bf16 output seen'} |")
            log(rows[-1])
    table = ["| database | method | result | loss terms fp32/bf16 | error | autocast |", "|---|---|---|---|---|---|",
             *rows]
    return table, ok


def run_benchmarks(deadline: float, log) -> tuple[list[str], bool]:
    lines, ok = [], True
    for script, extra, limit in BENCHMARKS:
        command = [sys.executable, str(ROOT / "benchmarks" / script), "--device", DEVICE, *extra]
        left = deadline - time.time()
        if left < 30:
            lines += [f"### {script}", "", f"not run: the check's time budget was spent ({' '.join(command[1:])})", ""]
            ok = False
            continue
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=min(limit, left), cwd=ROOT)
            body, code = done.stdout.strip(), done.returncode
            if code:
                body += "\n\n" + _last_line(done.stderr)
        except subprocess.TimeoutExpired as expired:
            partial = expired.stdout or ""
            body, code = partial.decode() if isinstance(partial, bytes) else partial, "timeout"
        ok &= code == 0
        lines += [f"### {script} ({time.perf_counter() - started:.0f} s, exit {code})", "",
                  f"`{' '.join(['python', *command[1:]]).replace(str(ROOT) + '/', '')}`", "", body, ""]
        log(f"{script}: exit {code}")
    return lines, ok


def device_line() -> str:
    if DEVICE.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        return (f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2 ** 30:.0f} GiB), CUDA {torch.version.cuda}, "
                f"torch {torch.__version__}, {os.cpu_count()} CPU cores")
    return f"CPU only ({platform.processor() or platform.machine()}), torch {torch.__version__} (test mode)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default="gpu_check.md", help="Markdown report to write (default: %(default)s)")
    parser.add_argument("--databases", nargs="+", default=["Synthetic-MVD", *FIXTURE_DATABASES],
                        help="(default: Synthetic-MVD and every fixture)")
    parser.add_argument("--methods", nargs="+", default=None, help="(default: every registered method)")
    parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=True,
                        help="run the benchmarks too (default: on)")
    parser.add_argument("--budget_s", type=float, default=470,
                        help="wall-clock budget in seconds; later steps are skipped (default: %(default)s)")
    parser.add_argument("--methods_share", type=float, default=0.5,
                        help="share of the budget for the method runs; later runs are skipped (default: %(default)s)")
    options = parser.parse_args(argv)
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available to torch {torch.__version__}; nothing was run", file=sys.stderr)
        return 2
    started = time.time()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    methods = method_names(options.methods)
    report = [f"# GPU check, {datetime.date.today().isoformat()}", "", f"Device: {device_line()}.", ""]
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        folder = Path(tmp)
        roots = {database: None if database == "Synthetic-MVD" else make_fixture(database, folder / "data" / database)
                 for database in options.databases}
        runner = Runner(folder)
        table, methods_ok = run_methods(options.databases, methods, roots, runner,
                                        started + options.methods_share * options.budget_s, log)
        report += ["## Every method, one epoch", "", *table, ""]
        amp, amp_ok = run_amp(options.databases, methods, roots, runner, folder,
                              started + (options.methods_share + 0.15) * options.budget_s, log)
        report += ["## AMP (bfloat16 autocast against float32)", "",
                   f"Tolerance |bf16 - fp32| <= 8 L u max(1, |fp32|), u = 2^-8 (bfloat16's 8 significant bits), L the "
                   "weight layers of the deepest network of the method.", "", *amp, ""]
    bench_ok = True
    if options.bench:
        lines, bench_ok = run_benchmarks(started + options.budget_s, log)
        report += ["## Benchmarks (reduced sizes)", "", *lines]
    passed = methods_ok and amp_ok and bench_ok
    report.insert(3, f"Result: **{'all passed' if passed else 'FAILURES, see below'}** "
                     f"({time.time() - started:.0f} s).\n")
    text = "\n".join(report) + "\n"
    atomic_write_bytes(Path(options.report), lambda handle: handle.write(text.encode()))
    log(f"report written to {options.report}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
