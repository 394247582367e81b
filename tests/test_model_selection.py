"""``distill.select``: ``best_val`` keeps the epoch that scored best on held-out labelled data,
records which one, survives a resume, and trains exactly what ``last`` trains."""

import pytest
import torch
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.train import OptimConfig, fit
from kdpipe.train.selection import BEST_FILE, make_selector

EPOCHS = 4
SCORES = {1: 40.0, 2: 75.0, 3: 60.0, 4: 75.0}  # epoch 2 is best; epoch 4 only ties it


def batches(epoch: int, skip: int):
    g = torch.Generator().manual_seed(epoch)
    data = [(torch.randn(4, 5, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(3)]
    return data[skip:]


def train(rule, ckpt_dir=None, stop_at=None):
    """(model, selector record, weights after each epoch); the score draws random numbers, as a
    DataLoader's seed does, to show selection leaves training's RNG alone."""
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    after = {}
    epoch = [0]

    def score():
        torch.rand(3)
        return SCORES[epoch[0]]

    selector = make_selector(rule, model, EPOCHS, score, ckpt_dir)

    def after_epoch(row):
        epoch[0] = row["epoch"]
        after[row["epoch"]] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        selector.after_epoch(row["epoch"])
        if row["epoch"] == stop_at:
            raise KeyboardInterrupt

    def step(b):  # dropout draws from the global RNG, as augmentation does
        return nn.functional.cross_entropy(nn.functional.dropout(model(b[0]), 0.5), b[1]), {}

    fit(model, list(model.parameters()), EPOCHS, batches, step,
        OptimConfig(lr=0.5, warmup_epochs=0), ckpt_dir=ckpt_dir, device="cpu", amp=False, after_epoch=after_epoch)
    return model, selector.finish(), after


def test_best_val_restores_the_best_epoch_and_records_it():
    model, record, after = train("best_val")
    assert record["select"] == "best_val" and record["selected_epoch"] == 2  # a tie later does not win
    assert record["selected_score"] == 75.0 and record["epoch_scores"] == {str(k): v for k, v in SCORES.items()}
    for name, value in model.state_dict().items():
        assert torch.equal(value, after[2][name]), name
    assert not torch.equal(after[2]["weight"], after[EPOCHS]["weight"])  # epoch 2 really differs from the last


def test_last_keeps_the_last_epoch_and_best_val_trains_the_same_weights():
    last, record, after_last = train("last")
    assert record == {"select": "last", "selected_epoch": EPOCHS}
    _, _, after_best = train("best_val")
    for epoch in after_last:  # scoring drew random numbers, yet training saw the same ones
        assert torch.equal(after_last[epoch]["weight"], after_best[epoch]["weight"]), epoch


def test_best_val_keeps_its_best_epoch_across_a_resume(tmp_path):
    _, _, uninterrupted = train("best_val")
    with pytest.raises(KeyboardInterrupt):
        train("best_val", tmp_path, stop_at=3)
    assert (tmp_path / BEST_FILE).is_file()
    model, record, _ = train("best_val", tmp_path)  # resumes at epoch 3 (it was stopped before its checkpoint)
    assert record["selected_epoch"] == 2
    assert torch.equal(model.weight, uninterrupted[2]["weight"])


def test_unknown_rule_is_refused():
    with pytest.raises(KdpipeError, match="choose from: last, best_val"):
        make_selector("best_train", nn.Linear(2, 2), 1)
