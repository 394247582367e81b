"""Dataset readers on small fake trees in the CoOp layout, plus custom folders and lists."""

import json
from pathlib import Path

import pytest
from PIL import Image

from kdpipe.data import list_datasets, load_dataset
from kdpipe.errors import KdpipeError


def write_image(path: Path, color=(200, 30, 30), size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def make_json_split(root: Path, folder: str, split_file: str, image_dir: str, classes: list[str], per_split=(3, 2, 2)):
    base = root / folder
    split = {}
    for s, n in zip(("train", "val", "test"), per_split):
        rows = []
        for label, cname in enumerate(classes):
            for i in range(n):
                rel = f"{cname}/{s}_{i}.jpg"
                write_image(base / image_dir / rel if image_dir else base / rel, (label * 40 % 255, i * 30, 90))
                rows.append([rel, label, cname])
        split[s] = rows
    (base / split_file).write_text(json.dumps(split))
    return base


def test_registry_lists_benchmarks_custom_sources_and_world():
    names = set(list_datasets())
    coop = {"imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101",
            "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"}
    assert coop | {"imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r", "imagefolder", "csv", "jsonl", "world"} <= names
    with pytest.raises(KdpipeError, match="unknown dataset 'nope'"):
        load_dataset("nope", "/tmp")


def test_json_split_dataset_items_classnames_and_paths(tmp_path):
    classes = ["american_bulldog", "Abyssinian", "pug"]
    base = make_json_split(tmp_path, "oxford_pets", "split_zhou_OxfordPets.json", "images", classes)
    ds = load_dataset("oxford_pets", tmp_path)
    assert ds.name == "oxford_pets"
    assert ds.classnames == ["american bulldog", "Abyssinian", "pug"]  # "_" -> " " as CoOp prompts them
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 6, 6)
    first = ds.train[0]
    assert Path(first.path) == (base / "images" / "american_bulldog" / "train_0.jpg").resolve()
    assert (first.label, first.classname) == (0, "american bulldog")
    assert {it.label for it in ds.test} == {0, 1, 2}
    # pointing at the dataset folder itself works too
    assert load_dataset("oxford_pets", base).train == ds.train


def test_json_split_applies_coop_class_name_fixes(tmp_path):
    make_json_split(tmp_path, "eurosat", "split_zhou_EuroSAT.json", "2750", ["AnnualCrop", "SeaLake"], (1, 1, 1))
    assert load_dataset("eurosat", tmp_path).classnames == ["Annual Crop Land", "Sea or Lake"]
    make_json_split(tmp_path, "food-101", "split_zhou_Food101.json", "images", ["apple_pie", "baby_back_ribs"], (1, 1, 1))
    assert load_dataset("food101", tmp_path).classnames == ["apple pie", "baby back ribs"]
    make_json_split(tmp_path, "caltech-101", "split_zhou_Caltech101.json", "101_ObjectCategories", ["Faces", "airplanes"], (1, 1, 1))
    assert load_dataset("caltech101", tmp_path).classnames == ["face", "airplane"]


def test_world_uses_the_json_split_reader(tmp_path):
    make_json_split(tmp_path, "world", "split_world.json", "images", ["red circle", "blue square"], (2, 1, 1))
    ds = load_dataset("world", tmp_path)
    assert ds.classnames == ["red circle", "blue square"]
    assert len(ds.train) == 4 and all(Path(it.path).is_file() for it in ds.train + ds.val + ds.test)


def test_missing_root_or_split_file_is_one_line_naming_the_layout(tmp_path):
    with pytest.raises(KdpipeError) as e:
        load_dataset("oxford_pets", tmp_path / "nowhere")
    assert "nowhere" in str(e.value) and "split_zhou_OxfordPets.json" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(KdpipeError, match=r"dtd/split_zhou_DescribableTextures.json not found \(expected <data-root>/dtd/"):
        load_dataset("dtd", tmp_path)


def test_missing_images_are_skipped_and_listed_or_fatal_when_strict(tmp_path):
    base = make_json_split(tmp_path, "dtd", "split_zhou_DescribableTextures.json", "images", ["banded", "woven"])
    gone = base / "images" / "woven" / "train_1.jpg"
    gone.unlink()
    ds = load_dataset("dtd", tmp_path)
    assert len(ds.train) == 5 and ds.skipped == [(str(gone.resolve()), "file not found")]
    with pytest.raises(KdpipeError, match="1 entries unusable"):
        load_dataset("dtd", tmp_path, strict=True)


def test_malformed_split_entry_is_reported_with_its_position(tmp_path):
    base = tmp_path / "ucf101"
    base.mkdir()
    (base / "split_zhou_UCF101.json").write_text(json.dumps({"train": [["a.jpg", 0]], "val": [], "test": []}))
    with pytest.raises(KdpipeError, match=r"train\[0\]"):
        load_dataset("ucf101", tmp_path)


def make_imagenet(root: Path, wnids: dict[str, str], per_class=(2, 1)):
    base = root / "imagenet"
    base.mkdir(parents=True)
    (base / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in wnids.items()))
    for split, n in zip(("train", "val"), per_class):
        for w in wnids:
            for i in range(n):
                write_image(base / "images" / split / w / f"{w}_{i}.JPEG")
    return base


def test_imagenet_reads_classnames_and_uses_val_as_test(tmp_path):
    make_imagenet(tmp_path, {"n02": "goldfish", "n01": "tench", "n03": "great white shark"})
    ds = load_dataset("imagenet", tmp_path)
    assert ds.classnames == ["tench", "goldfish", "great white shark"]  # sorted wnids, as CoOp labels them
    assert len(ds.train) == 6 and len(ds.test) == 3 and ds.val == ds.test
    assert {(Path(it.path).parent.name, it.label, it.classname) for it in ds.train} == {
        ("n01", 0, "tench"), ("n02", 1, "goldfish"), ("n03", 2, "great white shark")}


def test_imagenet_variants_read_their_class_subsets(tmp_path):
    names = {"n01": "tench", "n02": "goldfish", "n03": "great white shark"}
    base = tmp_path / "imagenet-rendition"
    base.mkdir()
    (base / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in names.items()))
    (base / "imagenet-r").mkdir()
    (base / "imagenet-r" / "README.txt").write_text("ignored")
    for w in ("n01", "n03"):
        write_image(base / "imagenet-r" / w / "a.jpg")
    ds = load_dataset("imagenet_r", tmp_path)
    assert ds.classnames == ["tench", "great white shark"] and ds.train == []
    assert [(it.label, it.classname) for it in ds.test] == [(0, "tench"), (1, "great white shark")]

    v2 = tmp_path / "imagenetv2"
    (v2 / "imagenetv2-matched-frequency-format-val" / "2").mkdir(parents=True)
    (v2 / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in names.items()))
    write_image(v2 / "imagenetv2-matched-frequency-format-val" / "2" / "x.jpeg")
    ds2 = load_dataset("imagenet_v2", tmp_path)
    assert ds2.classnames == ["tench", "goldfish", "great white shark"]
    assert [(it.label, it.classname) for it in ds2.test] == [(2, "great white shark")]


def test_imagenet_without_classnames_names_the_expected_layout(tmp_path):
    (tmp_path / "imagenet" / "images" / "train").mkdir(parents=True)
    with pytest.raises(KdpipeError, match="imagenet/classnames.txt not found.*images/train/<wnid>/"):
        load_dataset("imagenet", tmp_path)


def test_fgvc_aircraft_from_variant_files(tmp_path):
    base = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "Cessna 172"]
    base.mkdir()
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for split, per in (("train", 2), ("val", 1), ("test", 1)):
        lines = []
        for v in variants:
            for _ in range(per):
                image_id = f"{1000000 + n}"
                write_image(base / "images" / f"{image_id}.jpg")
                lines.append(f"{image_id} {v}")
                n += 1
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    ds = load_dataset("fgvc_aircraft", tmp_path)
    assert ds.classnames == variants
    assert (len(ds.train), len(ds.val), len(ds.test)) == (6, 3, 3)
    assert [(it.label, it.classname) for it in ds.val] == [(0, "707-320"), (1, "A300B4"), (2, "Cessna 172")]
    assert Path(ds.train[0].path).name == "1000000.jpg"


def make_imagefolder(root: Path, classes: dict[str, int]) -> Path:
    for c, n in classes.items():
        for i in range(n):
            write_image(root / c / f"{i}.png", (i * 20, 10, 10))
    return root


def test_imagefolder_seeded_split_covers_every_image_once(tmp_path):
    root = make_imagefolder(tmp_path / "mine", {"golden_retriever": 10, "cat": 10, "tiny": 1})
    ds = load_dataset("imagefolder", root, seed=3)
    assert ds.classnames == ["cat", "golden retriever", "tiny"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (11, 4, 6)  # 5/2/3 per class; 1 image -> train
    paths = [it.path for it in ds.train + ds.val + ds.test]
    assert len(set(paths)) == 21
    assert all(Path(it.path).parent.name.replace("_", " ") == it.classname for it in ds.train)
    assert load_dataset("imagefolder", root, seed=3).train == ds.train
    assert load_dataset("imagefolder", root, seed=4).train != ds.train


def test_imagefolder_with_given_splits_and_classname_file(tmp_path):
    root = tmp_path / "given"
    make_imagefolder(root / "train", {"c0": 2, "c1": 2})
    make_imagefolder(root / "test", {"c0": 1, "c1": 1})
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"c0": "red apple", "c1": "green pear"}))
    ds = load_dataset("imagefolder", root, classnames=names)
    assert ds.classnames == ["red apple", "green pear"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 0, 2)
    assert {it.classname for it in ds.test} == {"red apple", "green pear"}


def test_imagefolder_of_loose_images_points_to_unlabeled_use(tmp_path):
    write_image(tmp_path / "a.jpg")
    with pytest.raises(KdpipeError, match="unlabeled source"):
        load_dataset("imagefolder", tmp_path)


def test_csv_and_jsonl_lists(tmp_path):
    for i in range(4):
        write_image(tmp_path / "img" / f"{i}.jpg")
    (tmp_path / "list.csv").write_text(
        "path,label,split\nimg/0.jpg,dog,train\nimg/1.jpg,cat,train\nimg/2.jpg,dog,test\nimg/3.jpg,cat,val\n"
    )
    ds = load_dataset("csv", tmp_path / "list.csv")
    assert ds.classnames == ["cat", "dog"]
    assert [(Path(it.path).name, it.label) for it in ds.train] == [("0.jpg", 1), ("1.jpg", 0)]
    assert len(ds.val) == 1 and len(ds.test) == 1

    (tmp_path / "names.txt").write_text("3 three\n7 seven\n")
    rows = [{"path": str(tmp_path / "img" / f"{i}.jpg"), "label": 3 if i % 2 else 7} for i in range(4)]
    (tmp_path / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_dataset("jsonl", tmp_path / "list.jsonl", classnames=tmp_path / "names.txt", val_frac=0.0, test_frac=0.5)
    assert ds.classnames == ["three", "seven"]
    assert (len(ds.train), len(ds.test)) == (2, 2)

    (tmp_path / "bad.csv").write_text("path\nimg/0.jpg\n")
    with pytest.raises(KdpipeError, match="row 1 lacks a path or a label"):
        load_dataset("csv", tmp_path / "bad.csv")


def test_unknown_reader_option_is_one_line_error(tmp_path):
    with pytest.raises(KdpipeError, match="dataset oxford_pets does not take option.*classnames; it takes strict, check_files"):
        load_dataset("oxford_pets", tmp_path, classnames="x.txt")


def test_stanford_cars_paths_are_relative_to_the_dataset_folder(tmp_path):
    base = make_json_split(tmp_path, "stanford_cars", "split_zhou_StanfordCars.json", "", ["2012 Tesla Model S", "2000 AM General Hummer SUV"], (1, 1, 1))
    ds = load_dataset("stanford_cars", tmp_path)
    assert ds.classnames == ["2012 Tesla Model S", "2000 AM General Hummer SUV"]
    assert Path(ds.test[1].path) == base / "2000 AM General Hummer SUV" / "test_0.jpg"
