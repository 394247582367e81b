"""The one JSON Lines reader (kdpipe.io.json_lines) and the user files read through it: a jsonl
dataset list and a classify image list. A line that is not JSON is one line naming file and line."""

import json
import re

import pytest

from kdpipe.data import load_dataset
from kdpipe.errors import KdpipeError
from kdpipe.infer.sources import list_entries
from kdpipe.io import json_lines


def test_blank_lines_are_skipped_and_numbers_are_the_file_lines():
    assert list(json_lines('{"a": 1}\n\n  \n"x"\n', "f", "anything")) == [(1, {"a": 1}), (4, "x")]


def test_a_line_that_is_not_json_names_where_and_what_was_expected():
    with pytest.raises(KdpipeError, match=r"^list\.jsonl:2 is not valid JSON \(.+\); expected one thing per line$"):
        list(json_lines('{"a": 1}\n{"a": \n', "list.jsonl", "one thing per line"))


def test_a_jsonl_dataset_with_a_broken_line_is_refused_in_one_line(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps({"path": "a.png", "label": "cat"}) + "\n{not json\n")
    with pytest.raises(KdpipeError, match=rf"^jsonl: {re.escape(str(path))}:2 is not valid JSON .*expected one object like"):
        load_dataset("jsonl", path, check_files=False)


def test_an_image_list_reads_strings_and_objects_and_refuses_a_broken_line(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('"a.png"\n\n{"path": "b.png"}\n')
    assert [key for key, _ in list_entries(good)] == ["a.png", "b.png"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"a.png"\n[1,\n')
    with pytest.raises(KdpipeError, match=rf"^{re.escape(str(bad))}:2 is not valid JSON .*expected one object with a path per line$"):
        list_entries(bad)
