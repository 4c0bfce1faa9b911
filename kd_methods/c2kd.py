"""C2KD (``main-C2KD.py``).

Huo et al., "C2KD: Bridging the Modality Gap for Cross-Modal Knowledge Distillation", CVPR 2024, as the
MST-Distill reference runs it. A unimodal teacher of the other modality, initialised from ``--ckpt_name``, is
trained together with the student; a proxy head on one teacher feature and one on one student feature make
"proxy logits" ``r_t``, ``r_s``. Per batch (temperature 1)::

    L = CE_T + CE_S + KL(sg z_t → r_t) + KL(sg r_t → z_t) + KL(sg z_s → r_s) + KL(sg r_s → z_s)
        + [some sample passes the rank gate] (NT(r_s ← sg r_t) + NT(r_t ← sg r_s))

where ``KL(a → b)`` is the batch-mean KL(softmax(a) ‖ softmax(b)), ``NT`` the same on the non-target classes,
and the gate keeps the samples whose Kendall tau-b between ``r_t`` and ``r_s`` exceeds ``--krc``.
One SGD (momentum 0.9, ``--lr`` 0.01) over teacher, student and both proxies; selection on the student's
validation CE.

Reference quirks kept by default, each with a switch:

* the learning rate stays constant: the reference computes a poly decay but never writes it into the optimiser;
  ``--c2kd_poly_lr`` applies ``lr <- max(1e-4, lr·((E-e-1)/(E-e))^0.9)`` after every epoch;
* the non-target KL multiplies the logits by ``1 - onehot`` (the target logit becomes 0 and still takes part
  in both softmaxes); ``--c2kd_remove_target`` drops the target class instead;
* NYU-Depth-V2: tau is computed per pixel and averaged per image, but the per-image mask only gates the NT terms
  all-or-nothing (they are the mean over every pixel of the batch); ``--c2kd_image_mask`` weights each image's
  pixels by its mask. Labels become one-hot rows with the void class 0 included, as the reference.

The proxy of NYU upsamples to the label's size (the reference fixed 480x640), so smaller images work too.
A multimodal ``--Tmodel`` is refused up front (the reference crashes: the teacher is fed one modality).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F

from kd_methods import register_method
from kd_methods.base import Method, Stage
from kd_methods.features import feature_shapes, require_unimodal_teacher, sample_inputs, tap_layers
from utils.core.cards import MethodCard
from utils.core.hooks import capture_features

#: the feature a model's proxy head reads: its last declared tap (``kd_methods.taps``, slot ``c2kd``; the
#: reference's other choices, e.g. ThreeLayerCNN-A's pooled conv3 or the branch nets' fc1, are in its table there)
C2KD_SLOT = "c2kd"

#: the reference's floor of the (optional) poly learning-rate decay
POLY_MIN_LR = 1e-4


def _kaiming(module: nn.Module, kinds: tuple[type, ...]) -> None:
    """The reference's proxy init: kaiming-normal (fan_out, relu) for ``kinds`` with zero bias, BN weight 1 bias 0."""
    for m in module.modules():
        if isinstance(m, kinds):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ProxyNet(nn.Module):
    """``[B, C, H, W] -> [B, K]``: global average pool, Conv 1x1 (no bias), BN, LeakyReLU(0.1), Linear.
    The Linear keeps PyTorch's default init (the reference re-initialised only the conv and the BN)."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.layer = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                   nn.LeakyReLU(0.1))
        self.fc = nn.Linear(channels, num_classes)
        _kaiming(self, (nn.Conv2d,))

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        return self.fc(self.layer(self.avgpool(x)).flatten(1))


class ProxyNet1D(nn.Module):
    """``[B, d] -> [B, K]``: Linear(d -> d), BN1d, LeakyReLU(0.1), Linear(d -> K); both Linear kaiming-initialised."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.bn = nn.BatchNorm1d(dim)
        self.activation = nn.LeakyReLU(0.1)
        self.fc2 = nn.Linear(dim, num_classes)
        _kaiming(self, (nn.Linear,))

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        return self.fc2(self.activation(self.bn(self.fc1(x))))


class ProxyNetDense(nn.Module):
    """``[B, C, h, w] -> [B, K, H, W]`` (the reference's ``ProxyNet_resoFixed``): Conv 1x1 (no bias), BN, ReLU,
    Conv 1x1 to the classes, bilinear resize (``align_corners=False``) to ``size``, the label's H x W."""

    def __init__(self, num_classes: int, channels: int):
        super().__init__()
        self.layer = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU())
        self.fc = nn.Conv2d(channels, num_classes, 1)
        _kaiming(self, (nn.Conv2d,))

    def forward(self, x: torch.Tensor, size=None) -> torch.Tensor:
        x = self.fc(self.layer(x))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False) if size is not None else x


def kendall_tau_b(x: torch.Tensor, y: torch.Tensor, chunk_rows: int | None = None) -> torch.Tensor:
    """Kendall tau-b between the rows of ``x`` and ``y`` (``[N, C]`` each) over the class axis, vectorised.

    Over all class pairs i < j: C concordant, D discordant, ``t_x``/``t_y`` pairs tied in x / y (joint ties
    count in both), ``n0 = C(C-1)/2``; ``tau = (C - D) / (sqrt((n0 - t_x)(n0 - t_y)) + 1e-8)`` as the reference
    (the 1e-8 makes an all-tied row 0 instead of NaN). Rows are processed in chunks to bound the
    ``[rows, pairs]`` temporaries (NYU has one row per pixel); the result does not depend on the chunking.
    """
    n, c = x.shape
    i, j = torch.triu_indices(c, c, offset=1, device=x.device)
    n0 = c * (c - 1) / 2
    chunk = chunk_rows or max(1, (1 << 24) // max(1, i.numel()))
    out = []
    for start in range(0, n, chunk):
        a, b = x[start:start + chunk], y[start:start + chunk]
        # int8 signs: a quarter of the memory of float ones; comparisons, so equal values are exact ties
        sx = (a[:, i] > a[:, j]).to(torch.int8) - (a[:, i] < a[:, j]).to(torch.int8)
        sy = (b[:, i] > b[:, j]).to(torch.int8) - (b[:, i] < b[:, j]).to(torch.int8)
        product = sx * sy
        concordant = (product > 0).sum(1).float()
        discordant = (product < 0).sum(1).float()
        ties_x = (sx == 0).sum(1).float()
        ties_y = (sy == 0).sum(1).float()
        out.append((concordant - discordant) / (torch.sqrt((n0 - ties_x) * (n0 - ties_y)) + 1e-8))
    return torch.cat(out) if out else x.new_zeros(0)


def non_target_kl(trained: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor,
                  remove_target: bool = False) -> torch.Tensor:
    """Per-row ``KL(softmax(b~) ‖ softmax(a~))`` on the non-target classes; ``trained`` = a, ``target`` = b
    (detached by the caller), rows ``[N, C]``, ``target_mask`` boolean one-hot ``[N, C]``.

    Reference: ``x~ = x · (1 - onehot)``, i.e. the target logit set to 0 and kept in both softmaxes.
    ``remove_target``: the target class is dropped, a softmax over the C-1 other classes.
    """
    if remove_target:
        keep = ~target_mask
        rows = trained.shape[0]
        trained, target = trained[keep].view(rows, -1), target[keep].view(rows, -1)
    else:
        trained, target = trained * ~target_mask, target * ~target_mask
    return F.kl_div(F.log_softmax(trained, dim=1), F.softmax(target, dim=1), reduction="none").sum(1)


def gate_non_target(per_row: torch.Tensor, mask: torch.Tensor, dense: bool, image_mask: bool = False) -> torch.Tensor:
    """One NT term from its per-row KLs ``[N]`` and the rank-gate mask ``[B]`` (float 0/1).

    Classification (N = B): ``mean(mask · kl)``, masked samples count as 0. Dense (N = B·H·W, image-major rows):
    the reference's mean over every pixel, or exactly 0 when no image passes (the per-image mask is otherwise
    ignored); ``image_mask`` weights each image's pixels by its mask instead.
    """
    if not dense:
        return (mask * per_row).mean()
    if image_mask:
        return (mask.repeat_interleave(per_row.numel() // mask.numel()) * per_row).mean()
    return torch.where(mask.any(), per_row.mean(), torch.zeros((), device=per_row.device, dtype=per_row.dtype))


def kl_batchmean(trained: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target) ‖ softmax(trained))`` summed over rows' classes and divided by the number of rows."""
    return F.kl_div(F.log_softmax(trained, dim=1), F.softmax(target.detach(), dim=1), reduction="batchmean")


def poly_lr(base_lr: float, epochs: int, epoch: int) -> float:
    """The learning rate of ``epoch`` under the reference's (unapplied) update, run after every finished epoch."""
    lr = base_lr
    for e in range(epoch):
        lr = max(POLY_MIN_LR, lr * ((epochs - e - 1) / (epochs - e)) ** 0.9)
    return lr


@register_method
class C2KD(Method):
    """C2KD (Huo et al., "C2KD: Bridging the Modality Gap for Cross-Modal Knowledge Distillation", CVPR 2024).

    The teacher of the other modality (initialised from ``--ckpt_name``) and the student are trained jointly
    with proxy heads, bidirectional proxy KLs and a Kendall-tau-gated non-target KL; see the module docstring
    for the loss and the reference quirks kept by default.
    """

    card = MethodCard(
        name="C2KD",
        position=80,
        summary=("C2KD: cross-modal teacher (initialised from --ckpt_name) and student trained jointly with proxy "
                 "heads and a rank-gated non-target KL."),
        roles=("teacher", "student"),
        teacher_kind="crossmodal",
        needs_checkpoint=True,
        checkpoint_help=("pre-trained teacher of the other modality: a best.pth from main-S.py --mode <other> or a "
                         "reference state dict (checkpoints/stu/wo_kd/...); it initialises the teacher, which C2KD "
                         "keeps training"),
        # SGD; the reference's default, whatever the dataset
        defaults={"lr": 0.01},
        search_space={"lr": ("log", 0.1, 10.0, "relative"), "krc": ("float", -0.5, 0.5)},
    )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--krc", type=float, default=0.0,
                            help="Kendall rank-correlation threshold of the gate: samples with tau > krc pass "
                                 "(default: %(default)s)")
        parser.add_argument("--c2kd_poly_lr", action=argparse.BooleanOptionalAction, default=False,
                            help="apply the poly learning-rate decay; default off: constant --lr (reference: "
                                 "computed, never applied)")
        parser.add_argument("--c2kd_remove_target", action=argparse.BooleanOptionalAction, default=False,
                            help="non-target KL drops the target class; default off: target logit set to 0 and "
                                 "kept (reference)")
        parser.add_argument("--c2kd_image_mask", action=argparse.BooleanOptionalAction, default=False,
                            help="NYU-Depth-V2: weight each image's pixels by its rank-gate mask; default off: the "
                                 "mask only switches the non-target terms on or off for the batch (reference)")

    @classmethod
    def check_args(cls, args, spec) -> None:
        require_unimodal_teacher(cls.name, args, spec)
        for model in (args.Tmodel, args.Smodel):
            tap_layers(C2KD_SLOT, model, spec.name, cls.name, "proxy-layer")

    def __init__(self, ctx):
        super().__init__(ctx)
        # the reference's build order: teacher, student, teacher proxy, student proxy; then the teacher's weights
        self.teacher = self.build(self.args.Tmodel, (self.other,), "teacher")
        self.student = self.build(self.args.Smodel, (self.mode,), "student")
        self.t_layer, self.s_layer = (tap_layers(C2KD_SLOT, name, self.spec.name, self.name, "proxy-layer")[0]
                                      for name in (self.args.Tmodel, self.args.Smodel))
        t_shape = feature_shapes(self.teacher, [self.t_layer], sample_inputs(ctx, (self.other,)))[self.t_layer]
        s_shape = feature_shapes(self.student, [self.s_layer], sample_inputs(ctx, (self.mode,)))[self.s_layer]
        self.proxy_t = self.make_proxy(t_shape)
        self.proxy_s = self.make_proxy(s_shape)
        self.load_teacher(self.teacher, self.args.ckpt_name)
        self._gate_sum, self._gate_steps = 0.0, 0

    def make_proxy(self, shape: tuple[int, ...]) -> nn.Module:
        k = self.spec.num_classes
        if self.dense:
            return ProxyNetDense(k, shape[0])
        return ProxyNet(k, shape[0]) if len(shape) == 3 else ProxyNet1D(k, shape[0])

    def train_step(self, batch, epoch):
        y = batch.y
        with capture_features(self.teacher, [self.t_layer]) as f_t:
            z_t = self.run_model(self.teacher, batch, (self.other,))
        with capture_features(self.student, [self.s_layer]) as f_s:
            z_s = self.run_model(self.student, batch, (self.mode,))
        size = y.shape[-2:] if self.dense else None
        r_t = self.proxy_t(f_t[self.t_layer], size)
        r_s = self.proxy_s(f_s[self.s_layer], size)
        ce_t, ce_s = self.task_loss(z_t, y), self.task_loss(z_s, y)

        k = self.spec.num_classes
        if self.dense:  # one row of class logits per pixel; the void class 0 is a class like any other here
            z_t, z_s, r_t, r_s = (v.permute(0, 2, 3, 1).reshape(-1, k) for v in (z_t, z_s, r_t, r_s))
        target_mask = F.one_hot(y.reshape(-1), k).bool()

        kl_t = kl_batchmean(r_t, z_t) + kl_batchmean(z_t, r_t)
        kl_s = kl_batchmean(r_s, z_s) + kl_batchmean(z_s, r_s)

        tau = kendall_tau_b(r_t.detach(), r_s.detach())
        if self.dense:  # mean tau of each image's pixels, as the reference (which adds 1e-8 to the count)
            tau = tau.view(y.shape[0], -1).sum(1) / (tau.numel() // y.shape[0] + 1e-8)
        mask = (tau > self.args.krc).float()
        self._gate_sum += mask.mean().detach()
        self._gate_steps += 1

        remove = self.args.c2kd_remove_target
        nt_s = non_target_kl(r_s, r_t.detach(), target_mask, remove)
        nt_t = non_target_kl(r_t, r_s.detach(), target_mask, remove)
        image_mask = self.args.c2kd_image_mask
        nt = gate_non_target(nt_s, mask, self.dense, image_mask) + gate_non_target(nt_t, mask, self.dense, image_mask)
        return {"ce_t": ce_t, "ce_s": ce_s, "kl_t": kl_t, "kl_s": kl_s, "nt": nt}

    def optimizer(self) -> torch.optim.Optimizer:
        params = [p for m in (self.teacher, self.student, self.proxy_t, self.proxy_s) for p in m.parameters()]
        return torch.optim.SGD(params, lr=self.args.lr, momentum=0.9)

    def set_lr(self, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        lr = poly_lr(self.args.lr, self.args.epochs, epoch) if self.args.c2kd_poly_lr else self.args.lr
        for group in optimizer.param_groups:
            group["lr"] = lr

    def epoch_logs(self) -> dict:
        passed = float(self._gate_sum / self._gate_steps) if self._gate_steps else float("nan")
        self._gate_sum, self._gate_steps = 0.0, 0
        return {"train/gate_pass": passed}

    def stages(self):
        trained = [self.teacher, self.student, self.proxy_t, self.proxy_s]
        return [Stage("c2kd", self.args.epochs, self.optimizer, self.train_step, trained,
                      val_step=self.student_val_step, select_key="loss", selected=self.student,
                      epoch_logs=self.epoch_logs, on_epoch_start=self.set_lr)]

    def model_names(self):
        return {"teacher": self.args.Tmodel, "student": self.args.Smodel}

    def extra_results(self):
        return {"teacher_layer": self.t_layer, "student_layer": self.s_layer}
