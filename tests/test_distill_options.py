"""Distillation options of issue 24: the loss (``distill.loss``), the class-agnostic vocabulary
(``distill.vocabulary``/``vocabulary_top_k``) and the teacher gate, each on hand-made numbers."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdpipe.distill.gate import gate_line, teacher_gate
from kdpipe.distill.loss import kd_loss
from kdpipe.distill.vocabulary import VocabularyStep, read_vocabulary, top_k_classes
from kdpipe.errors import KdpipeError

S = [[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 3.0, 0.0]]
T = [[2.0, 0.0, 1.0, 0.0], [0.0, 1.0, 2.0, -2.0]]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def _softmax(row, tau):
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


@pytest.mark.parametrize("tau,weight", [(1.0, 1000.0), (2.0, 200.0)])
def test_symmetric_kl_is_kdpl_forward_plus_reverse_kl(tau, weight):
    forward = reverse = 0.0
    for s_row, t_row in zip(S, T):
        p_s, p_t = _softmax(s_row, tau), _softmax(t_row, tau)
        forward += _kl(p_t, p_s)
        reverse += _kl(p_s, p_t)
    scale = weight * tau * tau / (len(S) * len(S[0]))
    got = kd_loss(torch.tensor(S), torch.tensor(T), tau, weight, "symmetric_kl")
    assert got.item() == pytest.approx(scale * 0.5 * (forward + reverse), rel=1e-5)  # KDPL's alfa = beta = 0.5
    kl = kd_loss(torch.tensor(S), torch.tensor(T), tau, weight)  # the default stays the reference's
    assert kl.item() == pytest.approx(scale * forward, rel=1e-5)
    assert abs(got.item() - kl.item()) > 1e-3 * kl.item()


def test_symmetric_kl_gradient_reaches_the_student_only():
    s = torch.randn(3, 5, requires_grad=True)
    t = torch.randn(3, 5, requires_grad=True)
    kd_loss(s, t, loss="symmetric_kl").backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_unknown_loss_is_refused():
    with pytest.raises(KdpipeError, match="unknown distill.loss 'js'; choose from: kl, symmetric_kl"):
        kd_loss(torch.zeros(1, 2), torch.zeros(1, 2), loss="js")


def test_top_k_picks_every_images_own_class_then_the_batch_mean():
    # 6 vocabulary classes; image 0's top class is 4, image 1's is 1; on the batch mean class 2
    # (0.34) leads, then 1 (0.305), 4 (0.205), 5 (0.13)
    probs = torch.tensor([
        [0.01, 0.01, 0.38, 0.01, 0.40, 0.19],
        [0.01, 0.60, 0.30, 0.01, 0.01, 0.07],
    ])
    logits = probs.log()
    assert top_k_classes(logits, 2).tolist() == [1, 4]  # the two argmaxes, though the mean alone picks 1, 2
    assert top_k_classes(logits, 3).tolist() == [1, 2, 4]
    assert top_k_classes(logits, 4).tolist() == [1, 2, 4, 5]
    assert top_k_classes(logits, 99).tolist() == list(range(6))
    # more argmaxes than K: the K with the highest mean probability
    assert top_k_classes(logits, 1).tolist() == [1]


def test_vocabulary_file_and_builtin(tmp_path):
    f = tmp_path / "vocab.txt"
    f.write_text("# shapes\nred circle\n\nblue square\nred circle\n  green star  \n")
    assert read_vocabulary(str(f)) == ["red circle", "blue square", "green star"]
    imagenet = read_vocabulary("imagenet")
    assert len(imagenet) == 998 and imagenet[:2] == ["tench", "goldfish"]  # CLIP's list names two classes twice
    with pytest.raises(KdpipeError, match="neither a file nor a built-in vocabulary \\(imagenet, world\\)"):
        read_vocabulary(str(tmp_path / "missing.txt"))
    (tmp_path / "one.txt").write_text("cat\n")
    with pytest.raises(KdpipeError, match="needs at least 2"):
        read_vocabulary(str(tmp_path / "one.txt"))


class _Student(torch.nn.Module):
    """Fixed projected features and a CLIP logit scale: all a distillation step asks of a student."""

    def __init__(self, features):
        super().__init__()
        self.features = torch.nn.Parameter(features)
        self.clip = torch.nn.Module()
        self.clip.logit_scale = torch.tensor(10.0)

    def encode_images(self, images):
        return self.features[: images.shape[0]]


def test_vocabulary_step_scores_teacher_and_student_over_the_chosen_classes_only():
    torch.manual_seed(0)
    vocab = F.normalize(torch.randn(8, 6), dim=-1)
    teacher_feats = torch.stack([vocab[3] + 0.1 * vocab[5], vocab[6]])  # images of classes 3 and 6
    student = _Student(torch.randn(2, 6))
    step = VocabularyStep(student, lambda images, keys: F.normalize(teacher_feats, dim=-1), vocab, 20.0, top_k=3)
    loss, _ = step((torch.zeros(2, 3, 4, 4), ["a", "b"]))
    chosen = step.last_classes.tolist()
    assert len(chosen) == 3 and {3, 6} <= set(chosen)
    t = 20.0 * F.normalize(teacher_feats, dim=-1) @ vocab[chosen].t()
    s = 10.0 * F.normalize(student.features, dim=-1) @ vocab[chosen].t()
    assert loss.item() == pytest.approx(kd_loss(s, t).item(), rel=1e-5)
    loss.backward()
    assert student.features.grad.abs().sum() > 0


def test_gate_refuses_a_weak_teacher_in_one_line_and_the_override_runs_it():
    with pytest.raises(KdpipeError) as e:
        teacher_gate(48.0, 52.5, 128, allow_weak=False)
    message = str(e.value)
    assert "\n" not in message and "48.0%" in message and "52.5%" in message
    assert "distill.allow_weak_teacher = true" in message
    record = teacher_gate(48.0, 52.5, 128, allow_weak=True)
    assert record["gate"] == "overridden" and record["gate_teacher_base"] == 48.0
    assert teacher_gate(60.0, 52.5, 128, allow_weak=False)["gate"] == "passed"
    assert gate_line(record) == "teacher 48.0% vs student zero-shot 52.5% on 128 held-out base images (overridden)"
    assert teacher_gate(None, None, 0, allow_weak=False)["gate"] == "unjudged"


def test_vocabulary_step_with_k_covering_the_vocabulary_scores_every_row_without_choosing(monkeypatch):
    import kdpipe.distill.vocabulary as vocabulary
    from kdpipe.distill.step import DistillStep

    torch.manual_seed(0)
    vocab = F.normalize(torch.randn(5, 6), dim=-1)
    teacher = lambda images, keys: F.normalize(torch.randn(2, 6, generator=torch.Generator().manual_seed(1)), dim=-1)  # noqa: E731
    student = _Student(torch.randn(2, 6))

    def no_choice(*args):
        raise AssertionError("K >= V: there is nothing to choose per batch")

    monkeypatch.setattr(vocabulary, "top_k_classes", no_choice)
    step = VocabularyStep(student, teacher, vocab, 20.0, top_k=5)
    s, t = step.logits(torch.zeros(2, 3, 4, 4), ["a", "b"])
    assert step.last_classes.tolist() == list(range(5))
    s_full, t_full = DistillStep(student, teacher, vocab, 20.0).logits(torch.zeros(2, 3, 4, 4), ["a", "b"])
    assert torch.equal(s, s_full) and torch.equal(t, t_full)
