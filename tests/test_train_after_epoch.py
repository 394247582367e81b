"""``fit``'s ``after_epoch`` callback: once per trained epoch, before that epoch's checkpoint."""

import pytest
import torch
from torch import nn

from kdpipe.train import OptimConfig, fit
from kdpipe.train.checkpoint import load_checkpoint

EPOCHS = 3


class Stop(Exception):
    """Stands in for a kill while the callback runs."""


def batches(epoch: int, skip: int):
    g = torch.Generator().manual_seed(epoch)
    data = [(torch.randn(4, 5, generator=g), torch.randint(0, 2, (4,), generator=g)) for _ in range(3)]
    return data[skip:]


def train(ckpt_dir, after_epoch):
    torch.manual_seed(0)
    model = nn.Linear(5, 2)
    return fit(model, list(model.parameters()), EPOCHS, batches, lambda b: (nn.functional.cross_entropy(model(b[0]), b[1]), {}),
               OptimConfig(lr=0.1, warmup_epochs=0), ckpt_dir=ckpt_dir, device="cpu", amp=False, after_epoch=after_epoch)


def test_called_once_per_epoch_with_its_history_row_before_its_checkpoint(tmp_path):
    rows, checkpointed = [], []

    def after_epoch(row):
        rows.append(dict(row))
        checkpointed.append(load_checkpoint(tmp_path)[1]["epoch"] if row["epoch"] > 1 else None)

    history = train(tmp_path, after_epoch)
    assert rows == history and [r["epoch"] for r in rows] == [1, 2, 3]
    assert checkpointed == [None, 1, 2]  # the epoch being reported is not checkpointed yet


def test_a_run_stopped_in_the_callback_calls_it_again_on_resume(tmp_path):
    seen = []

    def stop_after_epoch_2(row):
        seen.append(row["epoch"])
        if row["epoch"] == 2:
            raise Stop()

    with pytest.raises(Stop):
        train(tmp_path, stop_after_epoch_2)
    resumed = []
    history = train(tmp_path, lambda row: resumed.append(row["epoch"]))
    assert seen == [1, 2] and resumed == [2, 3] and len(history) == EPOCHS
