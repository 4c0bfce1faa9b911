"""A run resolved once from its flags (:func:`utils.cli.describe`): the method, the dataset spec configured by its
options (read once: Paired's data shapes, UCI-MFeat's views), the options with their defaults filled and checked,
and for ``--resume`` the flags applied over the resumed run's own. The engine, its run directory and the provenance
record read it; the Namespace it holds is complete when it is built (nothing is added to it afterwards).

Its options fall in two parts: :attr:`RunDescription.options`, those that define the run's result (its configuration
digest is computed from them: utils/provenance.py), and :attr:`RunDescription.runtime_options`, those of
:data:`NOT_IN_CONFIG`. Options only other datasets read are in neither."""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from datasets import DATASETS, get_spec
from datasets.base import DatasetSpec

MODEL_FLAGS = ("Tmodel", "Smodel", "AUXmodel")
#: flags naming a checkpoint a run starts from (a teacher, networks to test, MST-Distill's --init_from)
CHECKPOINT_INPUTS = ("ckpt_name", "ckpt_a", "ckpt_b", "init_from")
#: arguments that do not change a run's result: where and how it runs, where it writes, the paths of its data and
#: checkpoints (their contents count, through the data digest and the checkpoints' configurations), the seed (runs
#: of one configuration differ by their seed), what is evaluated beside training (the validation-phase figures, the
#: test split left out) and the record of the search that chose the flags
NOT_IN_CONFIG = ("device", "cuda_id", "num_workers", "threads", "data_on_device", "record", "resume", "out_dir",
                 "data_root", "metadata_dir", "allow_teacher_mismatch", "seed", "val_phase", "no_test",
                 "tuning_record", *CHECKPOINT_INPUTS)
#: result-defining only where it differs from ``--seed`` (its default): a run without it keeps its digest
INIT_SEED = "init_seed"


def dataset_options(database: str, args) -> dict:
    """Every option the dataset of ``database`` adds to the command line, with its value in ``args``.

    Found by letting the dataset add its flags to an empty parser, so a new dataset needs nothing here.
    """
    spec = get_spec(database)
    if spec.add_arguments is None:
        return {}
    parser = argparse.ArgumentParser(add_help=False)
    spec.add_arguments(parser)
    values = args if isinstance(args, dict) else vars(args)
    return {action.dest: values.get(action.dest) for action in parser._actions}


def _other_datasets_options(spec_name: str) -> set:
    """Options every script takes for the other datasets (they do not change this run's data)."""
    mine = set(dataset_options(spec_name, {}))
    return {dest for name in DATASETS for dest in dataset_options(name, {})} - mine


class FrozenNamespace(argparse.Namespace):
    """The options of a described run: read like a Namespace, never written (a run's options are final once it is
    described, so no part of a run can pass another something through them)."""

    def __setattr__(self, name, value):
        raise AttributeError(f"the options of a described run are read-only (tried to set '{name}'); resolve it in "
                             f"utils.cli.describe instead")

    def __delattr__(self, name):
        raise AttributeError(f"the options of a described run are read-only (tried to delete '{name}')")


def frozen(args: argparse.Namespace) -> FrozenNamespace:
    """A read-only copy of ``args``."""
    copy = FrozenNamespace()
    copy.__dict__.update(vars(args))
    return copy


@dataclass(frozen=True)
class RunDescription:
    #: the method's name (``None`` for a context built without one, e.g. a data check)
    method: str | None
    spec: DatasetSpec
    args: argparse.Namespace
    #: ``--resume``: the flags applied over the resumed run's own arguments ("--flag value (was old)")
    resume_changes: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.args, FrozenNamespace):
            object.__setattr__(self, "args", frozen(self.args))

    @property
    def models(self) -> dict[str, str]:
        """Model flag -> model name, for the roles the method has."""
        return {flag: getattr(self.args, flag) for flag in MODEL_FLAGS if getattr(self.args, flag, None)}

    @property
    def options(self) -> Mapping[str, object]:
        """The options that define the run's result, by name, sorted and read-only: every option but the runtime
        ones (:attr:`runtime_options`) and those only other datasets read; ``init_seed`` only where it differs from
        the seed (runs of one configuration differ by their seed, and a run of seed s initialised from seed s is
        the run without ``--init_seed``)."""
        others = _other_datasets_options(self.spec.name)
        values = vars(self.args)
        same_seed = values.get(INIT_SEED) in (None, values.get("seed"))
        return MappingProxyType({name: value for name, value in sorted(values.items())
                                 if name not in NOT_IN_CONFIG and name not in others and not name.startswith("_")
                                 and not (name == INIT_SEED and same_seed)})

    @property
    def runtime_options(self) -> Mapping[str, object]:
        """The options of :data:`NOT_IN_CONFIG` the run has (where and how it runs, where it writes, the paths of its
        data and checkpoints, the seed), read-only: they do not change its configuration digest."""
        return MappingProxyType({name: getattr(self.args, name) for name in NOT_IN_CONFIG if hasattr(self.args, name)})
