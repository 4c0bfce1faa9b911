"""A run resolved once from its flags (:func:`utils.cli.describe`): the method, the dataset spec configured by its
options (read once: Paired's data shapes, UCI-MFeat's views), the options with their defaults filled and checked,
and for ``--resume`` the flags applied over the resumed run's own. The engine, its run directory and the provenance
record read it; the Namespace it holds is complete when it is built (nothing is added to it afterwards)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from datasets.base import DatasetSpec
from utils.provenance import MODEL_FLAGS


@dataclass(frozen=True)
class RunDescription:
    method: str
    spec: DatasetSpec
    args: argparse.Namespace
    #: ``--resume``: the flags applied over the resumed run's own arguments ("--flag value (was old)")
    resume_changes: tuple[str, ...] = ()

    @property
    def models(self) -> dict[str, str]:
        """Model flag -> model name, for the roles the method has."""
        return {flag: getattr(self.args, flag) for flag in MODEL_FLAGS if getattr(self.args, flag, None)}
