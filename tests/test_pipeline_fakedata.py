"""A fake CoOp-layout dataset (``oxford_pets`` folder and split file) of small coloured images.

Each class is a colour, so even tiny random-init CLIPs can learn it from a few images. Imported by
the pipeline tests; the one test here checks the reader sees it as the tests expect.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {
    "red fox": (220, 40, 40),
    "green frog": (40, 200, 60),
    "blue jay": (40, 70, 220),
    "yellow lab": (230, 210, 40),
    "purple finch": (150, 50, 200),
    "orange cat": (245, 140, 30),
}
SPLIT_SIZES = {"train": 12, "val": 2, "test": 6}


# a second dataset in another CoOp layout, with other colours, for cross-dataset runs
TEXTURES = {"crimson": (180, 20, 60), "teal": (20, 160, 160), "olive": (120, 130, 30), "navy": (20, 30, 110)}


def make_fake_pets(root: Path, size: int = 40, seed: int = 0) -> Path:
    """Write ``<root>/oxford_pets/{images/, split_zhou_OxfordPets.json}``; returns ``root``."""
    return _make_fake(root, "oxford_pets", "split_zhou_OxfordPets.json", COLOURS, size, seed)


def make_fake_dtd(root: Path, size: int = 40, seed: int = 1) -> Path:
    """Write ``<root>/dtd/{images/, split_zhou_DescribableTextures.json}``; returns ``root``."""
    return _make_fake(root, "dtd", "split_zhou_DescribableTextures.json", TEXTURES, size, seed)


def _make_fake(root: Path, folder_name: str, split_file: str, colours: dict, size: int, seed: int) -> Path:
    from PIL import Image

    rng = random.Random(seed)
    folder = Path(root) / folder_name
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    split = {s: [] for s in SPLIT_SIZES}
    for label, (name, rgb) in enumerate(colours.items()):
        for s, count in SPLIT_SIZES.items():
            for i in range(count):
                # the class colour with noise, on a random grey background patch
                img = Image.new("RGB", (size, size), tuple(rng.randrange(60, 200) for _ in range(3)))
                box = [rng.randrange(0, size // 4), rng.randrange(0, size // 4)]
                box += [box[0] + size // 2 + rng.randrange(size // 4), box[1] + size // 2 + rng.randrange(size // 4)]
                img.paste(tuple(max(0, min(255, c + rng.randrange(-25, 26))) for c in rgb), box)
                rel = f"{name.replace(' ', '_')}_{s}_{i}.png"
                img.save(images / rel)
                split[s].append([rel, label, name.replace(" ", "_")])
    (folder / split_file).write_text(json.dumps(split))
    return Path(root)


def test_fake_dataset_reads_as_oxford_pets(tmp_path):
    from kdpipe.data import load_dataset

    splits = load_dataset("oxford_pets", make_fake_pets(tmp_path))
    assert splits.classnames == list(COLOURS)
    assert len(splits.train) == 12 * 6 and len(splits.test) == 6 * 6
