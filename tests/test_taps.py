"""Feature taps (models/taps.py): every registered model declares them with the shapes a forward gives, every
tap-based method reads its layers from them, and the paper models keep the reference's layers."""
from __future__ import annotations

import functools
import math

import pytest
import torch

from datasets import DATASETS
from kd_methods.features import feature_shapes
from kd_methods.fitnets import REGRESSORS
from models import MODELS, build_model
from kd_methods.taps import REFERENCE_HINTS, REFERENCE_LAYERS, RULES, declared, hint_rows, layers, regressor_kind
from models.taps import feature_info

#: image examples ([C, H, W]) of more than LARGE pixels are probed at 1/SCALE of their size (NYU: 96x128)
LARGE, SCALE = 100_000, 5


def _example(name: str) -> tuple[dict, int]:
    shapes = {m: MODELS[name].example_inputs[m] for m in MODELS[name].inputs}
    if not any(len(s) == 3 and s[1] * s[2] > LARGE for s in shapes.values()):
        return shapes, 1
    return {m: (s[0], *(d // SCALE for d in s[1:])) for m, s in shapes.items()}, SCALE


@functools.lru_cache(maxsize=None)
def _probed(name: str):
    shapes, scale = _example(name)
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, input_shapes=shapes)
    inputs = tuple(torch.zeros(1, *shapes[m]) for m in MODELS[name].inputs)
    return model, inputs, scale


def _declared_at(shape: tuple, scale: int) -> tuple:
    if scale == 1 or len(shape) == 1:
        return shape
    return (shape[0], *(None if d is None else d // scale for d in shape[1:]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_declared_taps_match_a_forward(name):
    entry = MODELS[name]
    assert entry.example_inputs and set(entry.example_inputs) >= set(entry.inputs)
    if not declared(name):  # only the one-layer logistic regressions have no feature between input and logits
        assert name.startswith("MVD-LR")
    assert entry.taps  # MFH reads every model at some tap (probes included)
    model, inputs, scale = _probed(name)
    assert model.taps == tuple(tap.name for tap in entry.taps)
    for declared_tap, probed in zip(entry.taps, feature_info(model, inputs), strict=True):
        assert probed.name == declared_tap.name and probed.probe == declared_tap.probe
        want = _declared_at(declared_tap.shape, scale)
        assert len(probed.shape) == len(want), name
        assert all(w is None or w == p for w, p in zip(want, probed.shape)), (name, declared_tap, probed)


def test_the_one_table_names_registered_models_and_submodules():
    for (slot, name), chosen in REFERENCE_LAYERS.items():
        assert slot in RULES and name in MODELS
        assert chosen != RULES[slot][1](tuple(t.name for t in declared(name, slot)))
    for (slot, teacher, student), rows in REFERENCE_HINTS.items():
        assert slot in RULES and teacher in MODELS and student in MODELS
        assert all(kind in REGRESSORS for _, _, kind in rows)
    for (slot, name) in REFERENCE_LAYERS:
        with torch.device("meta"):
            model = build_model(name, input_shapes=MODELS[name].example_inputs)
        for layer in REFERENCE_LAYERS[(slot, name)]:
            model.get_submodule(layer)


#: the reference's layer choices (its per-method tables), which the taps and the one table must reproduce
REFERENCE = {
    "mst": {"CNN-I": ("concat_identity", "fc1"), "FuseNet-I": ("after_fusion_identity", "CBR5_RGBD_DEC"),
            "DSCNN-I": ("fc1", "fc2"), "MLP-I": ("fc1", "fc2"), "LeNet5": ("conv3", "fc1"),
            "ThreeLayerCNN-A": ("conv2", "conv3"), "FuseNet-Dbranch": ("CBR5_DEPTH_ENC", "CBR5_D_DEC"),
            "VisualBranchNet": ("fc1", "fc2"), "MLP-Tb": ("fc1", "fc2")},
    "feature": {"CNN-I": ("fc1",), "LeNet5": ("fc1",), "ThreeLayerCNN-A": ("conv3",), "DSCNN-I": ("fc2",),
                "AudioBranchNet-VGGS": ("fc2",), "MLP-I": ("fc2",), "MLP-Vb": ("fc2",)},
    "ofa": {"LeNet5": ("conv1", "conv2", "fc1"), "ThreeLayerCNN-A": ("conv1", "conv2", "conv3"),
            "AudioBranchNet": ("audio_branch", "fc1", "fc2"), "MLP-Tb": ("fc1", "fc2")},
    "mgdfr": {"LeNet5": ("fc1",), "ThreeLayerCNN-A": ("conv3",), "FuseNet-RGBbranch": ("CBR5_RGB_ENC",),
              "VisualBranchNet": ("fc2",), "MLP-Vb": ("fc2",)},
    "c2kd": {"LeNet5": ("fc1",), "ThreeLayerCNN-A": ("conv3_maxpool",), "FuseNet-Dbranch": ("CBR2_D_DEC",),
             "AudioBranchNet": ("fc1",), "MLP-Tb": ("fc2",)},
}


@pytest.mark.parametrize("slot", list(REFERENCE))
def test_paper_models_keep_the_reference_layers(slot):
    for name, expected in REFERENCE[slot].items():
        assert layers(slot, name) == expected, name


def test_hint_rows_and_regressors_of_the_reference():
    assert hint_rows("hints", "CNN-I", "ThreeLayerCNN-A") == (("concat_identity", "conv2", "R2D->1D"),
                                                               ("fc1", "conv3", "R2D->1D"))
    assert hint_rows("hints", "FuseNet-I", "FuseNet-RGBbranch") == (("after_fusion_identity", "CBR5_RGB_ENC", "Down"),
                                                                    ("CBR5_RGBD_DEC", "CBR5_RGB_DEC", "Fixed"))
    assert hint_rows("hints-uu", "ThreeLayerCNN-A", "LeNet5")[0] == ("conv2", "conv1", "Up")
    assert regressor_kind((64, 56, 56), (6, 28, 28)) == "Down" and regressor_kind((6, 28, 28), (64, 56, 56)) == "Up"
    assert regressor_kind((7, 5, 5), (3, 3, 3)) == "Down"  # odd sizes: a stride-2 conv rounds up
    assert regressor_kind((8,), (3, 4, 4)) is None and regressor_kind((3, None, None), (4,)) is None
    assert hint_rows("hints", "MVD-MLP-I", "MVD-LR-m1") is None  # a model without taps has no hints


@pytest.mark.parametrize("database", list(DATASETS))
def test_every_tap_based_method_finds_layers_in_the_default_models(database):
    """Each dataset's default teacher and students declare what every tap-based method reads (the test derives the
    names from the spec, so a new dataset is covered without editing it)."""
    spec = DATASETS[database]
    models = {"teacher": spec.teacher, **{f"student {m}": n for m, n in spec.students.items()}}
    for slot in RULES:
        for role, name in models.items():
            if slot in ("ofa", "mgdfr", "c2kd") and role == "teacher":
                continue  # these slots read unimodal models only
            assert layers(slot, name) is not None, (database, slot, role, name)


@pytest.mark.parametrize("teacher,student,shapes", [
    ("Fusion-I", "CNN-m1", {"m1": (2, 12, 10), "m2": (7,)}),
    ("CNN-m2", "CNN-m1", {"m1": (1, 16, 15), "m2": (3, 8, 8)}),
    ("MLP-m2", "CNN-m1", {"m1": (1, 9, 9), "m2": (5, 4)}),
])
def test_generic_hint_rows_get_regressors_from_the_probed_shapes(teacher, student, shapes):
    slot = "hints" if MODELS[teacher].is_multimodal else "hints-uu"
    t_model = build_model(teacher, num_classes=3, input_shapes=shapes)
    s_model = build_model(student, num_classes=3, input_shapes=shapes)
    rows = hint_rows(slot, teacher, student)
    t_in = tuple(torch.zeros(1, *shapes[m]) for m in MODELS[teacher].inputs)
    s_in = tuple(torch.zeros(1, *shapes[m]) for m in MODELS[student].inputs)
    t_shapes = feature_shapes(t_model, [t for t, _, _ in rows], t_in)
    s_shapes = feature_shapes(s_model, [s for _, s, _ in rows], s_in)
    for t, s, _ in hint_rows(slot, teacher, student, t_shapes, s_shapes):
        kind = regressor_kind(s_shapes[s], t_shapes[t])
        assert REGRESSORS[kind](s_shapes[s], t_shapes[t])(torch.randn(2, *s_shapes[s])).shape == (2, *t_shapes[t])


#: MFH's default ``--layer`` per model (the first entry of the models' former ``hook_names`` lists)
MFH_DEFAULTS = {
    "LeNet5": "conv1", "ThreeLayerCNN-A": "conv1", "CNN-I": "AudioNet.conv1", "DSCNN-I": "visual_branch",
    "VisualBranchNet": "visual_branch", "AudioBranchNet": "audio_branch", "DSCNN-VGGS-I": "audio_branch",
    "VisualBranchNet-VGGS": "visual_branch", "AudioBranchNet-VGGS": "audio_branch", "MLP-I": "VisualNet.fc1",
    "MLP-Vb": "fc1", "MLP-Tb": "fc1", "FuseNet-I": "after_fusion_identity", "FuseNet-RGBbranch": "CBR1_RGB_DEC.0",
    "FuseNet-Dbranch": "CBR1_D_DEC.0", "MVD-MLP-I": "concat_identity", "MVD-MLP-m1": "fc1", "MVD-MLP-m2": "fc1",
    "MVD-LR-m1": "fc", "MVD-LR-m2": "fc", "Fusion-I": "concat_identity", "MLP-m1": "fc1", "MLP-m2": "fc1",
    "CNN-m1": "conv1", "CNN-m2": "conv1",
}


def test_mfh_default_layer_is_a_declared_tap_and_pinned():
    assert set(MFH_DEFAULTS) == set(MODELS)
    for name, layer in MFH_DEFAULTS.items():
        assert layers("mfh", name) == (layer,), name
        assert layer in {tap.name for tap in MODELS[name].taps}, name


def test_no_distillation_rule_chooses_a_probe_tap():
    # (the reference's own choices in REFERENCE_LAYERS may name any submodule, probes included)
    for name in MODELS:
        probes = {tap.name for tap in MODELS[name].taps if tap.probe}
        for slot in RULES.keys() - {"mfh"} - {s for s, n in REFERENCE_LAYERS if n == name}:
            assert not set(layers(slot, name) or ()) & probes, (slot, name)
