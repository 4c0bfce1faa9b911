"""Which of a model's feature taps (:mod:`models.taps`) each distillation method reads.

Every registered model declares its taps (:func:`models.registry.register_model`, ``taps=``): submodule paths in
forward order, the logits excluded, each with its per-sample output shape for the model's ``example_inputs``
(``None`` where a dimension follows the input size), in the spirit of timm's ``feature_info``. A method names a
*slot* and gets its layers from :func:`layers`:

=========== ============================== ===========================================
slot        methods                        rule on the declared taps
=========== ============================== ===========================================
``feature`` RKD(-UU), CRD(-UU), FD-CMKD    the last tap
``hints``   FitNets (multimodal teacher)   the last two taps of teacher and of student
``hints-uu`` FitNets-UU                    the last two taps of teacher and of student
``ofa``     OFA(-UU) (student stages)      every tap
``mgdfr``   MGDFR (ranked teacher layer)   the last tap
``c2kd``    C2KD (proxy layer)             the last tap
``mst``     MST-Distill (T and A)          the last two taps
``mfh``     MFH tools (default --layer)    the first tap, probe taps included
=========== ============================== ===========================================

Probe taps (``probes=`` of a registration: the logits, layers inside a branch) are points only the MFH tools read:
every slot but ``mfh`` chooses among the other taps, so declaring a probe changes no distillation method's layers.

The paper models keep the reference's layers: where its choice differs from the rule, :data:`REFERENCE_LAYERS`
(per model; also MFH's default layer where it is not the first tap) or :data:`REFERENCE_HINTS` (per FitNets
teacher/student pair, with the reference's regressors) says so. These two tables are the only per-model layer
tables of the framework; a new model only declares its taps.
"""
from __future__ import annotations

from models import get_entry
from models.taps import Tap


#: slot -> (how many taps the rule needs, the rule)
RULES = {
    "feature": (1, lambda taps: taps[-1:]),
    "hints": (2, lambda taps: taps[-2:]),
    "hints-uu": (2, lambda taps: taps[-2:]),
    "ofa": (1, lambda taps: taps),
    "mgdfr": (1, lambda taps: taps[-1:]),
    "c2kd": (1, lambda taps: taps[-1:]),
    "mst": (2, lambda taps: taps[-2:]),
    "mfh": (1, lambda taps: taps[:1]),
}

#: slots whose rule sees the probe taps too
PROBING_SLOTS = frozenset({"mfh"})

#: (slot, model) -> the reference's layers where they differ from the rule of the slot
REFERENCE_LAYERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("ofa", "LeNet5"): ("conv1", "conv2", "fc1"),
    ("mgdfr", "FuseNet-RGBbranch"): ("CBR5_RGB_ENC",),
    ("mgdfr", "FuseNet-Dbranch"): ("CBR5_DEPTH_ENC",),
    ("c2kd", "ThreeLayerCNN-A"): ("conv3_maxpool",),
    ("c2kd", "FuseNet-RGBbranch"): ("CBR2_RGB_DEC",),
    ("c2kd", "FuseNet-Dbranch"): ("CBR2_D_DEC",),
    ("c2kd", "VisualBranchNet"): ("fc1",),
    ("c2kd", "AudioBranchNet"): ("fc1",),
    ("c2kd", "VisualBranchNet-VGGS"): ("fc1",),
    ("c2kd", "AudioBranchNet-VGGS"): ("fc1",),
    ("mfh", "CNN-I"): ("AudioNet.conv1",),
    ("mfh", "DSCNN-I"): ("visual_branch",),
    ("mfh", "DSCNN-VGGS-I"): ("audio_branch",),
    ("mfh", "MLP-I"): ("VisualNet.fc1",),
    ("mfh", "FuseNet-RGBbranch"): ("CBR1_RGB_DEC.0",),
    ("mfh", "FuseNet-Dbranch"): ("CBR1_D_DEC.0",),
    ("mfh", "Fusion-I"): ("concat_identity",),
    ("mfh", "MVD-MLP-I"): ("concat_identity",),
}

#: (slot, teacher, student) -> the reference's hint rows ``(teacher layer, student layer, regressor)`` where they
#: differ from the rule (other pairs zip the last two taps of each, regressors chosen by :func:`regressor_kind`)
REFERENCE_HINTS: dict[tuple[str, str, str], tuple[tuple[str, str, str], ...]] = {
    ("hints-uu", "LeNet5", "ThreeLayerCNN-A"): (("conv1", "conv2", "Down"),
                                                ("flatten_identity", "conv3_maxpool_flatten", "R1D")),
    ("hints-uu", "ThreeLayerCNN-A", "LeNet5"): (("conv2", "conv1", "Up"),
                                                ("conv3_maxpool_flatten", "flatten_identity", "R1D")),
    ("hints-uu", "FuseNet-RGBbranch", "FuseNet-Dbranch"): (("CBR4_RGB_ENC", "CBR4_DEPTH_ENC", "Fixed"),
                                                           ("CBR4_RGB_DEC", "CBR4_D_DEC", "Fixed")),
    ("hints-uu", "FuseNet-Dbranch", "FuseNet-RGBbranch"): (("CBR4_DEPTH_ENC", "CBR4_RGB_ENC", "Fixed"),
                                                           ("CBR4_D_DEC", "CBR4_RGB_DEC", "Fixed")),
}


def declared(name: str, slot: str | None = None) -> tuple[Tap, ...]:
    """The taps of model ``name`` the rule of ``slot`` chooses among: its probe taps only for :data:`PROBING_SLOTS`
    (the distillation rules never see them)."""
    return tuple(tap for tap in get_entry(name).taps if slot in PROBING_SLOTS or not tap.probe)


def layers(slot: str, name: str) -> tuple[str, ...] | None:
    """The layers ``slot`` reads in model ``name``; ``None`` when the model declares too few taps for the rule."""
    if (slot, name) in REFERENCE_LAYERS:
        return REFERENCE_LAYERS[(slot, name)]
    needed, rule = RULES[slot]
    taps = tuple(tap.name for tap in declared(name, slot))
    return tuple(rule(taps)) if len(taps) >= needed else None


def regressor_kind(student_shape: tuple, teacher_shape: tuple) -> str | None:
    """FitNets' regressor from a student feature shape to a teacher feature shape (per sample), as the reference
    paired them: flat to flat ``R1D``; a map to a vector ``R2D->1D``; maps of the same size ``Fixed``, of twice
    the teacher's size ``Down`` (stride 2), of half its size ``Up``. ``None``: no regressor fits (or a size is not
    known yet)."""
    if None in student_shape or None in teacher_shape:
        return None
    if len(student_shape) == 1 and len(teacher_shape) == 1:
        return "R1D"
    if len(student_shape) == 3 and len(teacher_shape) == 1:
        return "R2D->1D"
    if len(student_shape) == 3 and len(teacher_shape) == 3:
        s, t = student_shape[1:], teacher_shape[1:]
        if s == t:
            return "Fixed"
        if tuple((d + 1) // 2 for d in s) == t:
            return "Down"
        if tuple(2 * d for d in s) == t:
            return "Up"
    return None


def hint_rows(slot: str, teacher: str, student: str, t_shapes: dict | None = None,
              s_shapes: dict | None = None) -> tuple[tuple[str, str, str | None], ...] | None:
    """FitNets' ``(teacher layer, student layer, regressor)`` rows for a pair; ``None`` when either model declares
    too few taps. Regressors come from ``t_shapes``/``s_shapes`` (layer -> per-sample shape, e.g. probed by a run),
    else from the declared shapes; a row whose regressor cannot be chosen holds ``None``."""
    if (slot, teacher, student) in REFERENCE_HINTS:
        return REFERENCE_HINTS[(slot, teacher, student)]
    t_layers, s_layers = layers(slot, teacher), layers(slot, student)
    if t_layers is None or s_layers is None:
        return None
    t_shapes = t_shapes or {tap.name: tap.shape for tap in declared(teacher)}
    s_shapes = s_shapes or {tap.name: tap.shape for tap in declared(student)}
    return tuple((t, s, regressor_kind(s_shapes[s], t_shapes[t])) for t, s in zip(t_layers, s_layers))
