"""Training without distillation: the multimodal teacher (``main-T.py``), the unimodal model (``main-S.py``: the
"w/o KD" baseline and the cross-modal teachers of the ``-UU`` methods), and their test scripts.

Reference behaviour: Adam with PyTorch defaults, constant learning rate (the cosine
schedulers it created were never stepped), model selection by the lowest validation loss (strict), test of
the selected model.
"""
from __future__ import annotations

from kd_methods import register_method
from kd_methods.base import Method, Stage
from utils.core.cards import MethodCard


@register_method
class MultimodalTeacher(Method):
    """Train a fusion model on both modalities (``main-T.py``)."""

    card = MethodCard(
        name="T",
        position=0,
        summary="Train the multimodal (fusion) teacher on m1 and m2.",
        roles=("teacher",),
        # the sweep's teacher node, not a compared method
        in_comparison=False,
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.teacher = self.build(self.args.Tmodel, ("m1", "m2"), "teacher")

    def stages(self):
        def step(batch, epoch):
            return {"ce": self.task_loss(self.run_model(self.teacher, batch, ("m1", "m2")), batch.y)}

        return [Stage("train", self.args.epochs, self.adam(self.teacher), step, [self.teacher], val_step=step,
                      select_key="ce", selected=self.teacher)]

    def evaluation_model(self):
        return self.teacher, ("m1", "m2")

    def model_names(self):
        return {"teacher": self.args.Tmodel}


@register_method
class UnimodalModel(Method):
    """Train a unimodal model on ``--mode`` (``main-S.py``)."""

    card = MethodCard(
        name="S",
        position=0,
        summary="Train a unimodal model on --mode: the no-KD baseline, or a cross-modal teacher for -UU methods.",
        # the sweep's no-KD and cross-modal teacher node
        in_comparison=False,
        # tuned as the no-KD baseline (reproduce.py --tune); the cross-modal teachers keep the defaults
        search_space={"lr": ("log", 0.1, 10.0, "relative")},
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.student = self.build(self.args.Smodel, (self.mode,), "student")

    def stages(self):
        def step(batch, epoch):
            return {"ce": self.task_loss(self.run_model(self.student, batch, (self.mode,)), batch.y)}

        return [Stage("train", self.args.epochs, self.adam(self.student), step, [self.student], val_step=step,
                      select_key="ce", selected=self.student)]


class _TestMixin:
    needs_checkpoint = True
    evaluates_checkpoint = True
    checkpoint_help = ("the model to test: a best.pth of ours (its database, --mode, dataset options, --seed and model "
                       "name are the defaults, so the test split is the one it was trained beside) or a "
                       "reference-style bare state dict")

    def stages(self):
        return []

    @classmethod
    def epoch_plan(cls, args):
        return f"no training; testing {args.ckpt_name}"


@register_method
class TestMultimodal(_TestMixin, MultimodalTeacher):
    """Evaluate a trained fusion model on the test split (``test-T.py``)."""

    card = MethodCard(
        name="test-T",
        position=0,
        summary="Test a trained multimodal model (prints and saves the reference's metrics).",
        roles=("teacher",),
        needs_checkpoint=True,
        checkpoint_help=("the model to test: a best.pth of ours (its database, --mode, dataset options, --seed and "
                         "model name are the defaults, so the test split is the one it was trained beside) or a "
                         "reference-style bare state dict"),
        evaluates_checkpoint=True,
        in_comparison=False,
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.load_teacher(self.teacher, self.args.ckpt_name, role="model")


@register_method
class TestUnimodal(_TestMixin, UnimodalModel):
    """Evaluate a trained unimodal model (a baseline or any distilled student) on the test split (``test-S.py``)."""

    card = MethodCard(
        name="test-S",
        position=0,
        summary="Test a trained unimodal model or distilled student (prints and saves the reference's metrics).",
        needs_checkpoint=True,
        checkpoint_help=("the model to test: a best.pth of ours (its database, --mode, dataset options, --seed and "
                         "model name are the defaults, so the test split is the one it was trained beside) or a "
                         "reference-style bare state dict"),
        evaluates_checkpoint=True,
        in_comparison=False,
    )

    def __init__(self, ctx):
        super().__init__(ctx)
        self.load_teacher(self.student, self.args.ckpt_name, role="model")
