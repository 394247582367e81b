"""The ensemble step: the same student forward as :class:`DistillStep`, with the teachers' ensemble
(:func:`kdpipe.distill.ensemble.ensemble_logits`) as the target, and each teacher's mean weight logged."""

import pytest
import torch
import torch.nn.functional as F

from kdpipe.distill import DistillStep, class_logits, kd_loss
from kdpipe.distill.ensemble import ensemble_logits
from kdpipe.distill.ensemble_step import EnsembleMember, EnsembleStep


def _source(table):
    return lambda images, keys: torch.stack([table[k] for k in keys])


@pytest.fixture
def student(tiny_student):
    from kdpipe.methods import build_method

    torch.manual_seed(0)
    return build_method("promptkd", tiny_student, ["a", "b", "c", "d"], overrides={"teacher_dim": 48, "depth": 2})


def test_ensemble_step_scores_the_student_as_distill_step_and_targets_the_ensemble(student):
    torch.manual_seed(1)
    keys = ["k0", "k1", "k2"]
    primary_rows, other_rows = F.normalize(torch.randn(4, 48), dim=-1), F.normalize(torch.randn(4, 32), dim=-1)
    primary = {k: F.normalize(torch.randn(48), dim=0) for k in keys}
    other = {k: F.normalize(torch.randn(32), dim=0) for k in keys}
    members = [EnsembleMember("p", _source(primary), primary_rows, 50.0), EnsembleMember("o", _source(other), other_rows, 30.0)]
    step = EnsembleStep(student, members, "confidence", temperature=2.0, weight=10.0)
    single = DistillStep(student, _source(primary), primary_rows, 50.0, temperature=2.0, weight=10.0)
    images = torch.randn(3, 3, 32, 32)
    student.eval()
    with torch.no_grad():
        s, t = step.logits(images, keys)
        s_single, _ = single.logits(images, keys)
        loss, logs = step((images, keys))
    torch.testing.assert_close(s, s_single)
    each = [class_logits(torch.stack([primary[k] for k in keys]), primary_rows, 50.0),
            class_logits(torch.stack([other[k] for k in keys]), other_rows, 30.0)]
    target, weights = ensemble_logits(each, 2.0, "confidence")
    torch.testing.assert_close(t, target)
    torch.testing.assert_close(loss, kd_loss(s, target, 2.0, 10.0))
    assert logs["weight:p"] == pytest.approx(float(weights[0].mean()))
    assert logs["weight:o"] == pytest.approx(float(weights[1].mean()))
