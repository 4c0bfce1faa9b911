"""The sweep graph: one node per distinct run, built from the method registry.

Per (database, seed) the multimodal teacher ``main-T.py``; per (database, mode, seed) ``main-S.py --mode m``, which is
both the no-KD baseline of mode ``m`` and the cross-modal teacher of the other mode; then every compared method
(its card's ``in_comparison``, utils/core/cards.py). A method whose card has ``needs_checkpoint`` gets ``--ckpt_name``
= the ``best.pth`` of the teacher its ``teacher_kind`` names: the ``main-T.py`` node (``"multimodal"``) or the
``main-S.py`` node of the other mode (``"crossmodal"``). The card's ``sweep_flags`` are added to the method's runs.
Nothing here names a method, so a newly registered method joins the sweep as it is; one without a script of its own
runs as ``main.py NAME``.

A node's identity is its script, the flags that define what it computes (runtime flags such as ``--device`` or
``--threads`` excluded, the teacher's checkpoint replaced by the teacher node's id) and the digest of its data
(utils.provenance.data_digest: the data files' contents, so another ``--data_root`` holding other data is another
node); its directory ``DIR/runs/<id>`` carries a hash of that identity, so a changed command line or changed data
never reuses a stale run. ``-- --epochs N`` gives every training stage N epochs: each stage-epoch flag a script has
(``--epochs_*``, ``--*_epochs``: MST-Distill's ``--epochs_s1``/``--epochs_s2``, FitNets' ``--hint_epochs``, MGDFR's
``--co_epochs``) gets N unless given itself or by the method's ``--set``. Every node also names its sweep
configuration (:func:`sweep_config`), by which the table pairs a method with its baseline (docs/sweep.md).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from utils.core.atomic import atomic_write_text
from utils.core.errors import UserError
from utils.core.names import script_of
from utils.sweep.tuning_plan import startup_trials

TEACHER, BASELINE = "T", "S"
#: the groups of the comparison table, in its order
GROUP_ORDER = ("teacher", "no-kd", "multimodal-teacher", "crossmodal-teacher", "teacher-free", "MST-Distill", "other")
MODES = ("m1", "m2")
ROLES = {TEACHER: "teacher-mm", BASELINE: "no-kd"}
#: flags the sweep sets itself for every node
RESERVED = ("--database", "--mode", "--seed", "--ckpt_name", "--out_dir", "--resume")
#: flags of a tuning search's own runs (reproduce.py --tune sets them): a comparison run initialises from its seed,
#: is tested and records no search
TUNING_RESERVED = ("--init_seed", "--no_test", "--tuning_record")


@dataclass
class Node:
    id: str
    method: str
    script: str
    database: str
    mode: str | None
    seed: int
    role: str
    #: flags that define the run (no --ckpt_name, --out_dir or runtime flags)
    args: list[str]
    #: runtime flags (device, threads, ...): passed to fresh and resumed runs alike, not part of the identity
    runtime: list[str] = field(default_factory=list)
    #: id of the node whose best.pth is this node's --ckpt_name
    teacher: str | None = None
    deps: list[str] = field(default_factory=list)
    #: SHA-256 of the node's data (utils.provenance.data_digest)
    data_digest: str | None = None
    #: the sweep configuration: shared flags, the baselines' --set and the data (:func:`sweep_config`)
    config: str = ""
    #: what the configuration is, for the table's notes: the shared flags, the baselines' --set, the data digest
    config_text: str = ""
    #: the flags that are the method's own (its sweep_flags and --set), not the sweep configuration's
    own: list[str] = field(default_factory=list)
    #: a study node (``reproduce.py --tune N``, utils/sweep/tuning.py): ``{"trials": N, "prune": bool,
    #: "startup": TPE's start-up trials, "space": one line per searched option, resolved on the node's dataset,
    #: "defaults": the options' values without a search (trial 0)}``
    tune: dict | None = None
    #: an evaluation node: the id of the study node whose chosen values it runs with
    study: str | None = None

    @property
    def label(self) -> str:
        mode = f" {self.mode}" if self.mode else ""
        kind = " tune" if self.tune else " tuned" if self.study else ""
        return f"{self.method}{mode} seed {self.seed} ({self.database}){kind}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Node":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def comparison_methods() -> dict[str, type]:
    """Registered methods of the comparison table, in registry order."""
    from kd_methods import all_methods

    return {name: cls for name, cls in all_methods().items() if cls.card.in_comparison}


def split_flags(tokens: list[str]) -> list[list[str]]:
    """``["--epochs", "1", "--amp", "--lr=0.1"]`` -> ``[["--epochs", "1"], ["--amp"], ["--lr=0.1"]]``."""
    groups: list[list[str]] = []
    for token in tokens:
        if token.startswith("--"):
            groups.append([token])
        elif groups:
            groups[-1].append(token)
        else:
            raise UserError(f"'{token}' after -- is not a flag; flags for the runs start with -- (e.g. -- --epochs 5)")
    return groups


def flag_name(group: list[str]) -> str:
    return group[0].split("=", 1)[0]


def accepted_flags(method: str) -> set[str]:
    """Every option string ``main-<method>.py`` accepts (from the script's own parser)."""
    from kd_methods import get_method
    from utils.cli import build_parser

    return set(build_parser(get_method(method))._option_string_actions)


def runtime_flags() -> set[str]:
    """The flags of where and how a run executes: free to differ between attempts (utils/resume.py)."""
    from utils.resume import RUNTIME_OPTIONS

    names = {f"--{name}" for name in RUNTIME_OPTIONS if name != "resume"}
    return names | {f"--no-{name}" for name in RUNTIME_OPTIONS}


def parse_sets(items: list[str], names: list[str]) -> dict[str, list[list[str]]]:
    """``--set KD:--alpha=0.3`` (repeatable) -> ``{"KD": [["--alpha=0.3"]]}``."""
    out: dict[str, list[list[str]]] = {}
    for item in items:
        method, sep, flag = item.partition(":")
        if not sep or not flag.startswith("--"):
            raise UserError(f"--set {item}: expected METHOD:--flag=value, e.g. --set KD:--alpha=0.3")
        if method not in names:
            raise UserError(f"--set {item}: '{method}' is not a script of this sweep; valid: {', '.join(names)}")
        name, eq, value = flag.partition("=")
        out.setdefault(method, []).append([name, value] if eq else [name])
    return out


def check_script_flags(method: str, tokens: list[str]) -> None:
    """The flags a node's script would get, parsed by that script's own parser now: a flag without its value
    (``--set KD:--alpha``), a value of the wrong type or range (``-- --epochs 0``) is one line before any node runs,
    not a failure of every node."""
    from kd_methods import get_method
    from utils.cli import build_parser

    parser = build_parser(get_method(method))
    parser.prog = script_of(method)
    try:
        parser.parse_args(tokens)
    except UserError as error:
        raise UserError(f"{script_of(method)} would refuse the flags the sweep gives it: {error}") from None


def _node_id(label: str, script: str, args: list[str], teacher: str | None, data: str | None) -> str:
    digest = hashlib.sha1(json.dumps([script, args, teacher, data]).encode()).hexdigest()[:8]
    return f"{label}-{digest}"


def is_stage_epochs(flag: str) -> bool:
    """A flag setting the epochs of one training stage (``--epochs_s1``, ``--hint_epochs``), not ``--epochs``."""
    return flag.startswith("--epochs_") or flag.endswith("_epochs")


def _normalised(groups: list[list[str]]) -> list[list[str]]:
    """``--lr=0.1`` and ``--lr 0.1`` alike."""
    return [[*g[0].split("=", 1), *g[1:]] for g in groups]


def sweep_config(database: str, shared: list[list[str]], baseline_sets: list[list[str]], data: str | None) -> str:
    """The label of a sweep configuration: ``cfg-`` and a hash of the flags given to every script, the ``--set`` of
    the teacher and no-KD scripts (they define every method's baseline) and the data. Methods run with the same
    label are compared with the same no-KD runs; a method's own ``--set`` does not change the label."""
    digest = hashlib.sha256(json.dumps([database, _normalised(shared), _normalised(baseline_sets), data])
                            .encode()).hexdigest()[:8]
    return f"cfg-{digest}"


def config_text(shared: list[list[str]], sets: dict, data: str | None) -> str:
    """``-- --epochs 2; --set S:--mfeat_m1=kar; data 214098b17455``."""
    parts = [f"-- {' '.join(t for g in shared for t in g)}" if shared else "no flags after --"]
    parts += [f"--set {method}:{'='.join(g)}" for method in (TEACHER, BASELINE) for g in sets.get(method, [])]
    return "; ".join(parts + [f"data {(data or '?')[:12]}"])


def node_data_digest(method: str, tokens: list[str], cache: dict) -> str | None:
    """The data digest of a node whose script gets ``tokens`` (defining and runtime flags): its script's parser
    fills the defaults (``--data_root`` included) and the dataset says what its data is. ``None`` where the
    options cannot be read (the run itself then reports why)."""
    from datasets import get_spec
    from kd_methods import get_method
    from utils.cli import build_parser
    from utils.provenance import data_digest

    try:
        args, _ = build_parser(get_method(method)).parse_known_args(tokens)
        spec = get_spec(args.database).configured(args)
        key = (spec.name, str(Path(args.data_root).resolve()), json.dumps(vars(args), sort_keys=True, default=str)
               if spec.data_files is None else "")
        if key not in cache:
            cache[key] = data_digest(spec, args)
        return cache[key]
    except (UserError, OSError, ValueError):
        return None


def search_defaults(method: str, tokens: list[str]) -> dict:
    """The values the searched options of ``method`` take in a run given ``tokens`` and no search: the parser's
    defaults, then the method's per-dataset defaults (``card.dataset_defaults`` and the dataset's own), then the
    flags given. A search's trial 0, and the reference of its relative ranges."""
    from datasets import get_spec
    from kd_methods import get_method
    from utils.cli import build_parser

    cls = get_method(method)
    args, _ = build_parser(cls).parse_known_args(tokens)
    cls.fill_defaults(args, get_spec(args.database).configured(args))
    return {param.name: getattr(args, param.name) for param in cls.card.search_params}


def resolved_space(method: str, defaults: dict) -> list:
    """The search space of ``method`` with its relative ranges resolved against ``defaults``."""
    from kd_methods import get_method

    return [param.resolved(defaults[param.name]) for param in get_method(method).card.search_params]


def default_threads(jobs: int) -> int:
    """CPU threads per run so that ``jobs`` parallel runs do not oversubscribe the cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


def _checked_request(registry: dict, specs: list, modes: list[str], seeds: list[int],
                     methods: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """The sweep's methods, modes and seeds, in order without repeats, once each name and seed is known to be
    valid (a bad one: one line naming the valid values)."""
    for mode in modes:
        if mode not in MODES:
            raise UserError(f"unknown mode '{mode}'; valid modes: {', '.join(MODES)}")
    methods = list(registry) if methods is None else list(dict.fromkeys(methods))
    for name in methods:
        if name not in registry:
            raise UserError(f"unknown method '{name}'; valid methods: {', '.join(registry)}")
    if not modes or not seeds or not specs:
        raise UserError("--database, --modes and --seeds need at least one value each")
    from datasets.splits import NUM_GROUPS

    bad_seeds = [seed for seed in seeds if not 0 <= seed < NUM_GROUPS]
    if bad_seeds:  # before any node runs: each would fail on its own, leaving an empty table
        raise UserError(f"--seeds {' '.join(map(str, bad_seeds))}: valid seeds are 0..{NUM_GROUPS - 1} (a seed also "
                        f"selects the split column group_<seed>)")
    for name in methods:
        card = registry[name].card
        if card.needs_checkpoint and card.teacher_kind not in ("multimodal", "crossmodal"):
            raise UserError(f"method {name} needs a checkpoint but declares no teacher_kind; the sweep cannot pick "
                            f"its teacher (set teacher_kind to 'multimodal' or 'crossmodal')")
    return methods, list(dict.fromkeys(modes)), list(dict.fromkeys(seeds))


def _checked_flags(passthrough: list[list[str]], sets: list[str], accepted: dict[str, set]) -> dict:
    """The ``--set`` flags by script (:func:`parse_sets`), once they and the flags after ``--`` are known to be none
    the sweep sets itself, each accepted by a script it is for."""
    scripts = list(accepted)
    for group in passthrough:
        name = flag_name(group)
        if name in RESERVED:
            raise UserError(f"{name} is set by the sweep for every run; use --database / --modes / --seeds")
        if name in TUNING_RESERVED:
            raise UserError(f"{name} is set by reproduce.py --tune for its trials and tuned runs only "
                            f"(docs/tuning.md); a comparison run initialises from its --seed and is tested")
        if not any(name in flags for flags in accepted.values()):
            raise UserError(f"flag {name} is accepted by no script of this sweep ({', '.join(scripts)}); "
                            f"see python main-<METHOD>.py --help")
    per_method = parse_sets(sets, scripts)
    for method, groups in per_method.items():
        for group in groups:
            if flag_name(group) in RESERVED + TUNING_RESERVED:
                raise UserError(f"--set {method}:{flag_name(group)}: that flag is set by the sweep")
            if flag_name(group) not in accepted[method]:
                raise UserError(f"--set {method}:{flag_name(group)}: {script_of(method)} has no flag "
                                f"{flag_name(group)} (see python {script_of(method)} --help)")
    return per_method


def build_graph(databases: list[str], modes: list[str], seeds: list[int], methods: list[str] | None,
                run_flags: list[str] | None = None, sets: list[str] | None = None, jobs: int = 1,
                tune: int | None = None, prune: bool = False) -> list[Node]:
    """The nodes of the sweep in dependency order (teachers, no-KD runs, methods).

    ``run_flags``: the tokens after ``--``, given to every run whose script accepts them (a flag no script of the
    sweep accepts is an error); ``sets``: ``METHOD:--flag=value`` items for one script only. ``tune``: N trials per
    study; each (database, mode, method, seed) of the comparison, and the no-KD student of each mode, also gets a
    study node (beside the default run, on the same teacher) and an evaluation node that runs the chosen values
    (docs/tuning.md). ``prune``: median pruning of the studies' trials.
    """
    from datasets import get_spec

    registry = comparison_methods()
    specs = [get_spec(name) for name in databases]  # unknown names: one line with the valid list
    methods, modes, seeds = _checked_request(registry, specs, modes, seeds, methods)
    scripts = [TEACHER, BASELINE, *methods]
    accepted = {name: accepted_flags(name) for name in scripts}
    runtime = runtime_flags()
    passthrough = split_flags(list(run_flags or []))
    per_method = _checked_flags(passthrough, list(sets or []), accepted)
    user_threads = any(flag_name(g) == "--threads" for g in passthrough + sum(per_method.values(), []))
    threads = [] if user_threads else ["--threads", str(default_threads(jobs))]

    def epochs_of(groups: list[list[str]]) -> str | None:
        values = [(g[0].split("=", 1) + g[1:])[1:] for g in groups if flag_name(g) == "--epochs"]
        return values[-1][0] if values and values[-1] else None

    def flags_for(method: str, base: list[str]) -> tuple[list[str], list[str], list[str]]:
        """The node's defining flags, runtime flags and own flags (its sweep_flags and --set)."""
        from kd_methods import get_method

        args, extra = list(base), list(threads)
        fixed, sets = [[flag] for flag in get_method(method).card.sweep_flags], per_method.get(method, [])
        shared = [g for g in passthrough if flag_name(g) in accepted[method]]
        epochs = epochs_of(sets) or epochs_of(passthrough)
        given = {flag_name(g) for g in passthrough + sets}
        stages = [[flag, epochs] for flag in sorted(accepted[method])
                  if epochs is not None and is_stage_epochs(flag) and flag not in given]
        for group in fixed + shared + stages + sets:
            (extra if flag_name(group) in runtime else args).extend(group)
        return args, extra, sum(fixed + sets, [])

    shared_flags = [g for g in passthrough if flag_name(g) not in runtime]
    baseline_sets = per_method.get(TEACHER, []) + per_method.get(BASELINE, [])
    digests: dict = {}
    nodes: list[Node] = []
    checked: set = set()

    def add(method, spec, mode, seed, teacher=None) -> Node:
        base = ["--database", spec.name, *(["--mode", mode] if mode else []), "--seed", str(seed)]
        args, extra, own = flags_for(method, base)
        if (method, spec.name, mode) not in checked:  # every seed gets the same flags
            check_script_flags(method, args + extra)
            checked.add((method, spec.name, mode))
        data = node_data_digest(method, args + extra, digests)
        label = "_".join([spec.name, *([mode] if mode else []), f"seed{seed}", method])
        node = Node(id=_node_id(label, script_of(method), args, teacher.id if teacher else None, data), method=method,
                    script=script_of(method), database=spec.name, mode=mode, seed=seed,
                    role=ROLES.get(method, "method"), args=args, runtime=extra,
                    teacher=teacher.id if teacher else None, deps=[teacher.id] if teacher else [], data_digest=data,
                    config=sweep_config(spec.name, shared_flags, baseline_sets, configs.get(spec.name)), own=own,
                    config_text=config_text(shared_flags, per_method, configs.get(spec.name)))
        nodes.append(node)
        return node

    def add_tuned(default: Node) -> None:
        """The study and evaluation nodes beside ``default`` (same flags, teacher and data)."""
        if not _card(default.method).search_params:
            raise UserError(f"--tune: method {default.method} declares no search space (its card's search_space); "
                            f"leave it out with --methods, or declare one (docs/extending.md)")
        defaults = search_defaults(default.method, default.args + default.runtime)
        space = [param.describe() for param in resolved_space(default.method, defaults)]
        settings = {"trials": tune, "prune": prune, "startup": startup_trials(tune), "space": space,
                    "defaults": defaults}
        base = default.id.rsplit("-", 1)[0]
        study = replace(default, id=_node_id(f"{base}_tune", default.script, default.args + [json.dumps(settings)],
                                             default.teacher, default.data_digest),
                        role="tune", tune=settings, deps=list(default.deps))
        evaluation = replace(default, id=_node_id(f"{base}_tuned", default.script, default.args, study.id,
                                                  default.data_digest),
                             study=study.id, deps=[*default.deps, study.id])
        nodes.extend([study, evaluation])

    configs = {}
    for spec in specs:  # a sweep configuration's data: that of its teacher runs (the shared flags, no --set)
        tokens = ["--database", spec.name] + [t for g in passthrough if flag_name(g) in accepted[TEACHER] for t in g]
        configs[spec.name] = node_data_digest(TEACHER, tokens, digests)

    for spec in specs:
        needed_modes = list(modes)
        for name in methods:  # a cross-modal teacher of a mode outside --modes is still needed
            cls = registry[name]
            if cls.card.needs_checkpoint and cls.card.teacher_kind == "crossmodal":
                needed_modes += [spec.other_modality(m) for m in modes]
        needed_modes = [m for m in MODES if m in needed_modes]
        for seed in seeds:
            teacher = add(TEACHER, spec, None, seed)
            unimodal = {mode: add(BASELINE, spec, mode, seed) for mode in needed_modes}
            if tune:  # the no-KD student of each mode is tuned with the same budget (its default run stays the teacher)
                for mode in modes:
                    add_tuned(unimodal[mode])
            for mode in modes:
                for name in methods:
                    cls = registry[name]
                    dep = None
                    if cls.card.needs_checkpoint:
                        dep = teacher if cls.card.teacher_kind == "multimodal" else unimodal[spec.other_modality(mode)]
                    node = add(name, spec, mode, seed, dep)
                    if tune:
                        add_tuned(node)
    return nodes


def _card(method: str):
    from kd_methods import get_method

    return get_method(method).card


def write_graph(nodes: list[Node], path: Path) -> None:
    atomic_write_text(path, json.dumps([n.to_dict() for n in nodes], indent=1) + "\n")
