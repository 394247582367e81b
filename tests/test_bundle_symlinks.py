"""A bundle may come from someone else: kdpipe reads the files inside the folder it was given and
never follows a link out of it (refused in one line naming the file)."""

import os
import shutil

import pytest

from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import load_bundle
from test_damaged_files import bundle, bundle_src, one_line  # noqa: F401  (fixtures)


@pytest.mark.parametrize("name", ["backbone.safetensors", "class_features.safetensors", "bundle.json",
                                  "classes.index", "teacher/method.safetensors"])
def test_a_file_linked_from_outside_the_bundle_is_refused(bundle, tmp_path, name):  # noqa: F811
    outside = tmp_path / "elsewhere" / name.replace("/", "-")
    outside.parent.mkdir(exist_ok=True)
    shutil.copy(bundle / name, outside)  # the very same bytes: only where the file lives is wrong
    (bundle / name).unlink()
    (bundle / name).symlink_to(outside)
    with pytest.raises(KdpipeError) as e:
        load_bundle(bundle)
    msg = one_line(e)
    assert f"bundle {bundle}: {name} is a link to {outside}, outside the bundle" in msg, msg


def test_a_linked_folder_leading_out_is_refused(bundle, tmp_path):  # noqa: F811
    shutil.move(bundle / "teacher", tmp_path / "teacher-elsewhere")
    (bundle / "teacher").symlink_to(tmp_path / "teacher-elsewhere", target_is_directory=True)
    with pytest.raises(KdpipeError, match=r"teacher is a link to .*teacher-elsewhere, outside the bundle"):
        load_bundle(bundle)


def test_links_inside_the_bundle_and_a_linked_bundle_folder_are_fine(bundle, tmp_path):  # noqa: F811
    os.replace(bundle / "class_features.safetensors", bundle / "features-v2.safetensors")
    (bundle / "class_features.safetensors").symlink_to("features-v2.safetensors")
    link = tmp_path / "current"
    link.symlink_to(bundle, target_is_directory=True)  # the folder the user names may itself be a link
    assert load_bundle(link).classnames == load_bundle(bundle).classnames
