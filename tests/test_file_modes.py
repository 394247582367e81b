"""Files kdpipe writes through a temporary sibling keep the user's umask, like any other file."""

import os

import pytest

from kdpipe.data.shards import write_shards
from kdpipe.infer.bundle import export_bundle
from test_classify_bundle import model  # noqa: F401  (the fixture)
from test_shards import make_items


@pytest.fixture(params=[0o022, 0o027])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def modes(root):
    """{path relative to root: permission bits} for root and everything under it."""
    return {p.relative_to(root).as_posix() or ".": oct(p.stat().st_mode & 0o777) for p in [root, *root.rglob("*")]}


def expected(root, umask):
    """What plain open/mkdir give (0644 files and 0755 folders under umask 022)."""
    return {rel: oct((0o777 if (root / rel).is_dir() else 0o666) & ~umask) for rel in modes(root)}


def test_shards_keep_the_umask(tmp_path, umask):
    write_shards(make_items(tmp_path / "src", 5), tmp_path / "out", per_shard=2, max_side=0)
    assert modes(tmp_path / "out") == expected(tmp_path / "out", umask)


def test_bundle_keeps_the_umask(tmp_path, umask, model):  # noqa: F811
    export_bundle(model, tmp_path / "bundle", with_teacher_text=True)
    found = modes(tmp_path / "bundle")
    assert "backbone.safetensors" in found and "teacher/method.safetensors" in found
    assert found == expected(tmp_path / "bundle", umask)
    export_bundle(model, tmp_path / "bundle", overwrite=True)  # the replacing one too
    assert modes(tmp_path / "bundle") == expected(tmp_path / "bundle", umask)
