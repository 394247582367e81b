from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from kdpipe.errors import KdpipeError
from kdpipe.settings import inputs
from kdpipe.data.transforms import apply_seeded, transform_for


def _cfg(scale):
    return {"data": SimpleNamespace(crop_scale=scale)}


def test_full_crop_scale_keeps_the_whole_image(tiny_student):
    img = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    whole = transform_for(tiny_student, False)(img)
    train = inputs.train_transform(_cfg([1.0, 1.0]), tiny_student)
    for seed in range(8):
        out = apply_seeded(train, img, seed)
        assert torch.equal(out, whole) or torch.equal(out, whole.flip(-1))


@pytest.mark.parametrize("scale", [[0.0, 1.0], [0.9, 0.5], [0.5, 1.5], [0.5]])
def test_bad_crop_scale_is_one_line(tiny_student, scale):
    with pytest.raises(KdpipeError, match="data.crop_scale") as e:
        inputs.train_transform(_cfg(scale), tiny_student)
    assert "\n" not in str(e.value)
