"""``--init_from``: start an MST-Distill run at stage 2 or 3 from the networks of an earlier run's stage file or
checkpoint, refused when that run had another configuration or other data."""
from __future__ import annotations

from kd_methods.checkpoints import check_same_data
from utils.core.checkpoints import full_method_state, load_checkpoint
from utils.core.errors import UserError

#: the options that shape the networks, which must be the same in both runs
SHAPING = ("database", "Tmodel", "AUXmodel", "Smodel", "mode", "mask_layer_num", "hidden_dim_factor", "mask_head_num")


def load_init(method, path: str) -> None:
    """Load every network of ``method`` except the comparison baseline (``baseline.*``) from ``path``."""
    saved = load_checkpoint(path)
    state = full_method_state(saved, path) if isinstance(saved, dict) else None
    if isinstance(saved, dict) and saved.get("partial") and state is None:
        raise UserError(f"--init_from {path}: a checkpoint taken during stage 1 holds only what that stage trains; "
                        f"pass a stage file (stage1-co-training.pth or later) of that run")
    if not isinstance(state, dict):
        raise UserError(f"--init_from {path}: not a checkpoint of this framework (no method state)")
    saved_args = saved.get("args") or {}
    differ = [f"--{k} {saved_args[k]} (now {getattr(method.args, k)})" for k in SHAPING
              if k in saved_args and saved_args[k] != getattr(method.args, k)]
    if differ:
        raise UserError(f"--init_from {path} was trained with {', '.join(differ)}")
    check_same_data(saved, path, method.ctx, "--init_from", "a stage file of a run on this data and split")
    own = {k: v for k, v in state.items() if not k.startswith("baseline")}
    mine = method.state_dict()
    missing = [k for k in mine if not k.startswith("baseline") and k not in own]
    unexpected = [k for k in own if k not in mine]
    if missing or unexpected:
        raise UserError(f"--init_from {path} does not fit this MST-Distill configuration "
                        f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    method.load_state_dict(own, strict=False)
    method.ctx.log(f"MST-Distill: networks loaded from {path}; starting at stage {method.args.start_stage}")
