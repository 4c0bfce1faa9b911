"""Networks by CLI name. Importing this package registers every model.

Conventions every model follows (so the distillation code stays model-agnostic):
* ``forward`` takes the batch tensors in the dataset's layout: ``forward(m1, m2)`` for fusion models,
  ``forward(x)`` for unimodal ones. Layout changes the reference did in input wrappers (e.g. the RAVDESS
  video permute) happen inside ``forward``; they have no parameters, so state dicts stay reference-exact.
* The registration declares ``taps`` (the feature taps distillation methods read, with their shapes; see
  :mod:`models.taps`) and ``example_inputs``; ``database=None`` marks a generic model sized from the data.
* Submodule names equal the reference's, so its checkpoints load with ``load_state_dict(strict=True)``.
"""
from models.registry import MODELS, ModelEntry, build_model, get_entry, models_for, register_model

# Importing the modules registers their models.
from models import avmnist, cmmd, fusenet, generic, ravdess, synthetic, vggsound  # noqa: F401,E402

__all__ = ["MODELS", "ModelEntry", "build_model", "get_entry", "models_for", "register_model"]
