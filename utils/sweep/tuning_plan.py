"""The settings of ``reproduce.py --tune N`` that the graph, the launcher and ``--dry_run`` share, light to import
(the standard library only): TPE's start-up trials, the trials' initialisation seeds, the sampler's seed, the check
that the optional package Optuna is there, and the plan ``--dry_run`` prints. Running a study: utils/sweep/tuning.py.
"""
from __future__ import annotations

import hashlib

from utils.core.errors import UserError

#: trial n of seed s initialises from TRIAL_SEED_BASE + s * TRIAL_SEED_STRIDE + n: never a seed of the comparison
#: (0..19, which the evaluation runs use), never another trial's
TRIAL_SEED_BASE, TRIAL_SEED_STRIDE = 100_000, 10_000


def startup_trials(trials: int) -> int:
    """TPE's start-up trials for a study of ``trials`` trials: a third of them, at least 2 (trial 0, the defaults,
    and one random draw before TPE models anything) and at most TPE's own default, 10. Until that many have
    finished TPE samples at random, so a study of at most that many trials is a random search beside trial 0."""
    return max(2, min(10, round(trials / 3)))


def load_optuna():
    """The optional package Optuna (reproduce.py --tune only), or one line saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UserError("reproduce.py --tune needs the optional package optuna: pip install 'optuna>=4.0'") from None
    return optuna


def trial_init_seed(seed: int, number: int) -> int:
    """The ``--init_seed`` of trial ``number`` of the study of split seed ``seed``."""
    if number >= TRIAL_SEED_STRIDE:
        raise UserError(f"a study has at most {TRIAL_SEED_STRIDE - 1} trials (their initialisation seeds would "
                        f"meet another seed's); lower --tune")
    return TRIAL_SEED_BASE + seed * TRIAL_SEED_STRIDE + number


def sampler_seed(node_id: str, finished: int = 0) -> int:
    """The TPE seed of a study node, offset by the trials it already holds when it resumes (a resumed sampler
    must not draw again the values its first trials drew)."""
    return (int(hashlib.sha256(node_id.encode()).hexdigest()[:8], 16) + finished) % 2 ** 31


def tuning_plan(nodes: list) -> list[str]:
    """``--dry_run --tune N``: each method's search space (as searched on each dataset) and the trial plan."""
    studies = [node for node in nodes if node.tune]
    if not studies:
        return []
    settings = studies[0].tune
    trials, startup = settings["trials"], settings["startup"]
    lines = ["Search spaces (docs/tuning.md; relative ranges resolved against each dataset's default):"]
    seen: dict[tuple, int] = {}
    for node in studies:
        key = (node.method, node.database, tuple(node.tune["space"]))
        seen[key] = seen.get(key, 0) + 1
    per_method: dict[str, int] = {}
    for (method, database, space), count in seen.items():
        per_method[method] = per_method.get(method, 0) + count
        lines.append(f"  {method} on {database}: {'; '.join(space)}")
    first = "trial 1" if startup == 2 else f"trials 1-{startup - 1}"
    random = f"trial 0 = the defaults, {first} random (TPE's start-up), then TPE"
    if trials <= startup:
        random = (f"trial 0 = the defaults, then random search: N = {trials} is at or below TPE's start-up count "
                  f"({startup}), so TPE never models the results")
    lines.append(f"Trial plan: {trials} trials per study, the same N for every method, S included: "
                 + ", ".join(f"{method} {count} x {trials}" for method, count in per_method.items())
                 + f" = {len(studies) * trials} trials in {len(studies)} studies, then {len(studies)} evaluation runs")
    lines.append(f"Each study: TPE(n_startup_trials={startup}) seeded per study; {random}; "
                 + ("median pruning" if settings["prune"] else "no pruning")
                 + "; trials never read the test split (--no_test) and initialise from seeds no other run uses")
    return lines
