"""RKD and RKD-UU (Park et al., CVPR 2019): relations by hand, embedders, feature flattening and widths."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import MVD, build_method, first_batch, random_teacher
from datasets import get_spec
from kd_methods import get_method
from kd_methods.rkd import Embed, angles, flatten_feature, pairwise_distances, rkd_terms
from utils import cli
from utils.core.errors import UserError
from utils.core.hooks import active_hook_count


def test_rkd_relations_scale_invariant_and_zero_for_identical_relations():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    distance, angle = rkd_terms(student, teacher)
    scaled = rkd_terms(2.5 * student, 0.3 * teacher)
    assert scaled[0].item() == pytest.approx(distance.item(), rel=1e-4)
    assert scaled[1].item() == pytest.approx(angle.item(), rel=1e-4)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=generator))
    same = rkd_terms(3.0 * teacher @ rotation + 1.0, teacher)  # scaled, rotated, shifted: identical relations
    assert same[0].item() < 1e-9 and same[1].item() < 1e-9
    assert distance.item() > 0 and angle.item() > 0


def test_rkd_embedder_invariant_to_input_scale_without_bias():
    embed = Embed(5, 4)
    with torch.no_grad():
        embed.linear.bias.zero_()
    x = torch.randn(3, 5)
    assert torch.allclose(embed(x), embed(7.0 * x), atol=1e-6)
    assert torch.allclose(embed(x).norm(dim=1), torch.ones(3))


def test_rkd_distances_and_angles_by_hand():
    points = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    assert torch.allclose(pairwise_distances(points), torch.tensor([[0, 3, 4], [3, 0, 5], [4, 5, 0.0]]), atol=1e-5)
    cosines = angles(points).view(3, 3, 3)
    assert cosines[0, 1, 2].item() == pytest.approx(0.0, abs=1e-6)       # right angle at the origin
    assert cosines[1, 0, 2].item() == pytest.approx(3 / 5, rel=1e-5)     # at (3, 0) between the other two
    assert cosines[0, 0, 1].item() == 0.0                                 # zero vectors stay zero
    assert rkd_terms(points[:1], points[:1])[0].item() == 0.0             # one sample: no relation, no NaN


def test_avmnist_4d_features_are_max_pooled():
    feature = torch.randn(2, 128, 28, 28)
    flat = flatten_feature(feature, "AV-MNIST")
    assert flat.shape == (2, 25088)
    assert torch.equal(flat, F.max_pool2d(feature, 2, 2).reshape(2, -1))
    assert flatten_feature(feature, "Synthetic-MVD").shape == (2, 128 * 28 * 28)


@pytest.mark.parametrize("train_teacher_embed", [False, True])
def test_rkd_teacher_embedding_quirk_and_hooks(mvd_teachers, train_teacher_embed):
    flag = "--rkd_train_teacher_embed" if train_teacher_embed else "--no-rkd_train_teacher_embed"
    method, ctx = build_method("RKD", MVD + ["--ckpt_name", mvd_teachers["multimodal"], flag])
    assert (method.student_dim, method.teacher_dim) == (32, 32)
    losses = method.train_step(first_batch(ctx), 0)
    sum(losses.values()).backward()
    assert active_hook_count(method) == 0
    assert all(p.grad is not None for p in method.embed_s.parameters())
    assert all((p.grad is not None) == train_teacher_embed for p in method.embed_t.parameters())
    assert all(p.grad is None for p in method.teacher.parameters())


def test_rkd_uu_batch_size_default_and_unsupported_models(mvd_teachers):
    args = cli.parse_args(get_method("RKD-UU"), MVD + ["--ckpt_name", mvd_teachers["crossmodal"]])
    assert args.batch_size == get_spec("Synthetic-MVD").batch_size  # the dataset's table, as every method
    with pytest.raises(UserError, match="no feature layer"):
        cli.parse_args(get_method("RKD"), MVD + ["--ckpt_name", "x", "--Smodel", "MVD-LR-m1"])
    for name in ("RKD", "CRD-UU"):
        with pytest.raises(UserError, match="NYU-Depth-V2"):
            cli.parse_args(get_method(name), ["--database", "NYU-Depth-V2", "--ckpt_name", "x.pth"])


AVMNIST_SHAPES = {"m1": (1, 28, 28), "m2": (1, 112, 112)}


def test_avmnist_feature_widths(fixture_root, tmp_path):
    common = ["--database", "AV-MNIST", "--data_root", str(fixture_root("AV-MNIST")),
              "--metadata_dir", str(tmp_path / "metadata"), "--no-record"]
    teacher = random_teacher(tmp_path / "t.pth", "CNN-I", 10, AVMNIST_SHAPES)
    method, _ = build_method("RKD", common + ["--mode", "m2", "--ckpt_name", teacher])
    assert (method.teacher_dim, method.student_dim) == (298, 25088)
    teacher = random_teacher(tmp_path / "a.pth", "ThreeLayerCNN-A", 10, AVMNIST_SHAPES)
    method, _ = build_method("CRD-UU", common + ["--mode", "m1", "--ckpt_name", teacher])
    assert (method.teacher_dim, method.student_dim) == (25088, 84)


def test_rkd_term_weights_are_flags(mvd_teachers):
    weights = ["--rkd_distance_weight", "0.5", "--rkd_angle_weight", "3"]
    method, ctx = build_method("RKD", MVD + ["--ckpt_name", mvd_teachers["multimodal"], *weights])
    batch = first_batch(ctx)
    method.eval()  # the same forward twice
    _, terms = method.distill_terms(batch, 0)
    _, student, teacher = method.forward_features(batch)
    distance, angle = rkd_terms(method.embed_s(student), method.embed_t(teacher))
    assert terms["rkd_distance"].item() == pytest.approx(0.5 * distance.item(), rel=1e-5)
    assert terms["rkd_angle"].item() == pytest.approx(3 * angle.item(), rel=1e-5)
