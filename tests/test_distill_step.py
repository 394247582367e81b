"""The distillation step: teacher features come from any source (here a lookup by key, as a cache
would), the loss is the reference formula on the student's projected features, and only the
student's prompts and projector get gradients."""

import pytest
import torch
import torch.nn.functional as F

from kdpipe.distill import DistillStep, ForwardTeacher, class_logits, kd_loss, measure_agreement


class LookupTeacher:
    """A teacher-feature source that never runs a model: features stored per image key."""

    def __init__(self, table):
        self.table = table
        self.asked = []

    def __call__(self, images, keys):
        self.asked.append(list(keys))
        return torch.stack([self.table[k] for k in keys])


@pytest.fixture
def student(tiny_student):
    from kdpipe.methods import build_method

    torch.manual_seed(0)
    return build_method("promptkd", tiny_student, ["a", "b", "c", "d"], overrides={"teacher_dim": 48, "depth": 2})


def test_step_uses_the_source_and_matches_the_formula(student):
    class_features = F.normalize(torch.randn(4, 48), dim=-1)
    keys = ["k0", "k1", "k2"]
    table = {k: F.normalize(torch.randn(48), dim=0) for k in keys}
    source = LookupTeacher(table)
    step = DistillStep(student, source, class_features, teacher_scale=50.0, temperature=2.0, weight=10.0)
    images = torch.randn(3, 3, 32, 32)
    student.train()
    loss, logs = step((images, keys))
    assert source.asked == [keys]

    # recomputed by hand in train mode (BatchNorm on batch statistics, as in the step)
    s = class_logits(student.encode_images(images), class_features, float(student.clip.logit_scale))
    t = class_logits(torch.stack([table[k] for k in keys]), class_features, 50.0)
    assert loss.item() == pytest.approx(kd_loss(s, t, 2.0, 10.0).item(), rel=1e-5)
    assert logs["kd_loss"] == pytest.approx(loss.item())

    loss.backward()
    learned = {n for n, _ in student.learned_parameters()}
    with_grad = {n for n, p in student.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and with_grad <= learned
    assert not any(n.startswith("clip.") for n in with_grad)


def test_agreement_probe_leaves_training_mode_and_counts_images(student):
    class_features = F.normalize(torch.randn(4, 48), dim=-1)
    table = {f"k{i}": class_features[i % 4] for i in range(6)}
    step = DistillStep(student, LookupTeacher(table), class_features, teacher_scale=100.0)
    student.train()
    batches = [(torch.randn(3, 3, 32, 32), ["k0", "k1", "k2"]), (torch.randn(3, 3, 32, 32), ["k3", "k4", "k5"])]
    out = measure_agreement(step, batches)
    assert student.training and out["images"] == 6 and 0.0 <= out["agreement"] <= 1.0
    assert measure_agreement(step, []) == {"agreement": None, "kd_loss": None, "images": 0}


def test_forward_teacher_returns_unit_features_without_gradients(tiny_teacher):
    from kdpipe.methods import build_method

    teacher = build_method("ivlp", tiny_teacher, ["a", "b"])
    teacher.train()
    source = ForwardTeacher(teacher, adapt=lambda x: x * 1.0)
    feats = source(torch.randn(2, 3, 32, 32), ["x", "y"])
    assert not teacher.training and not feats.requires_grad
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)
