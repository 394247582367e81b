"""The target of several teachers (kdpipe.distill.ensemble), checked against a case computed by hand:
2 teachers, 2 images, 3 classes. Teacher logits are ``tau * log(p)`` so their softened
probabilities at temperature ``tau`` are the round numbers below."""

from __future__ import annotations

import pytest
import torch

from kdpipe.distill import kd_loss
from kdpipe.distill.ensemble import ensemble_logits, ensemble_weights
from kdpipe.errors import KdpipeError

TAU = 2.0
P_A = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]])  # teacher A, images 1 and 2
P_B = torch.tensor([[0.1, 0.1, 0.8], [0.4, 0.4, 0.2]])  # teacher B


def _teacher_logits():
    return [TAU * P_A.log(), TAU * P_B.log()]


def _target(mode: str) -> torch.Tensor:
    logits, _ = ensemble_logits(_teacher_logits(), TAU, mode)
    return torch.softmax(logits / TAU, dim=-1)


def test_mean_target_is_the_average_of_the_softened_probabilities():
    # image 1: (0.5+0.1)/2, (0.25+0.1)/2, (0.25+0.8)/2; image 2: (0.2+0.4)/2, (0.6+0.4)/2, (0.2+0.2)/2
    expected = torch.tensor([[0.3, 0.175, 0.525], [0.3, 0.5, 0.2]])
    torch.testing.assert_close(_target("mean"), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ensemble_weights(_teacher_logits(), TAU, "mean"), torch.full((2, 2), 0.5))


def test_confidence_target_weights_each_image_by_each_teachers_max_probability():
    # image 1: max probs A 0.5, B 0.8 -> weights 5/13, 8/13; image 2: A 0.6, B 0.4 -> 0.6, 0.4
    weights = torch.tensor([[5 / 13, 0.6], [8 / 13, 0.4]])  # [teacher, image]
    expected = torch.tensor([
        [(2.5 + 0.8) / 13, (1.25 + 0.8) / 13, (1.25 + 6.4) / 13],
        [0.6 * 0.2 + 0.4 * 0.4, 0.6 * 0.6 + 0.4 * 0.4, 0.6 * 0.2 + 0.4 * 0.2],
    ])
    torch.testing.assert_close(_target("confidence"), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ensemble_weights(_teacher_logits(), TAU, "confidence"), weights, atol=1e-6, rtol=0)


def test_the_temperature_softens_each_teacher_before_the_ensemble():
    # at tau = 1 the same logits are sharper: the target is not the tau = 2 one
    logits, _ = ensemble_logits(_teacher_logits(), 1.0, "mean")
    assert not torch.allclose(torch.softmax(logits, dim=-1), _target("mean"), atol=1e-3)


@pytest.mark.parametrize("mode", ["mean", "confidence"])
def test_one_teacher_is_its_own_target(mode):
    t = torch.randn(4, 5) * 3
    logits, weights = ensemble_logits([t], TAU, mode)
    torch.testing.assert_close(torch.softmax(logits / TAU, -1), torch.softmax(t / TAU, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, torch.ones(1, 4))
    s = torch.randn(4, 5)
    torch.testing.assert_close(kd_loss(s, logits, TAU, 1000.0), kd_loss(s, t, TAU, 1000.0), atol=1e-4, rtol=1e-5)


def test_bad_input_is_refused_in_one_line():
    with pytest.raises(KdpipeError, match="unknown teacher ensemble 'vote'"):
        ensemble_logits(_teacher_logits(), TAU, "vote")
    with pytest.raises(KdpipeError, match="same classes"):
        ensemble_logits([torch.zeros(2, 3), torch.zeros(2, 4)], TAU, "mean")
