"""classify with images decoded by torchvision's decode_jpeg (the ``--decode gpu`` path), run on
the CPU here: the same rows as PIL decoding up to resampling rounding, PNGs and broken JPEGs handled."""

import torch
from PIL import Image

from kdpipe.data.shards import write_shards
from kdpipe.data.transforms import transform_for
from kdpipe.errors import KdpipeError
from kdpipe.infer.classify import classify
from kdpipe.infer.device_decode import EncodedImage, for_device
from kdpipe.infer.sources import open_source
from kdpipe.infer.writers import read_rows, skipped_path
from kdpipe.infer.bench_classify import synthetic_photos

from test_classify import CLASSES, TinyEncoder
from test_classify import class_index  # noqa: F401  (a fixture)


def _encoded(tiny):
    t = transform_for(tiny, False)
    return EncodedImage(t.image_size, t.mean, t.std)


def test_device_preprocessing_matches_pil_pixels(tmp_path, tiny_student):
    paths = synthetic_photos(tmp_path, 3, size=(120, 90))
    Image.open(paths[0]).save(tmp_path / "p.png")
    pil = transform_for(tiny_student, False)
    enc = _encoded(tiny_student)
    files = paths + [tmp_path / "p.png"]
    encoded = [enc(p.read_bytes()) for p in files]
    assert encoded[0].dim() == 1 and encoded[-1].shape[0] == 3  # JPEG stays bytes, PNG decoded by PIL
    batch, keys, skipped = enc.on_device(encoded, [p.name for p in files], torch.device("cpu"))
    expected = torch.stack([pil(Image.open(p).convert("RGB")) for p in files])
    assert keys == [p.name for p in files] and not skipped
    # one uint8 level of resampling rounding, in normalised units
    assert (batch - expected).abs().max() < 2.5 / 255 / min(pil.std)
    # the JPEG decoders (libjpeg-turbo in PIL and torchvision) agree to the pixel on most pixels
    assert (batch - expected).abs().mean() < 0.5 / 255 / min(pil.std)


def test_classify_decoding_on_device_gives_the_rows_of_pil_decoding(tmp_path, tiny_student, class_index):  # noqa: F811
    paths = synthetic_photos(tmp_path / "imgs", 6, size=(100, 75))
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"\xff\xd8" + b"\x00" * 50)
    (tmp_path / "imgs" / "empty.jpg").write_bytes(b"")
    write_shards([str(p) for p in paths], tmp_path / "shards", per_shard=4)
    enc = TinyEncoder(tiny_student)
    for spec, name in ((tmp_path / "imgs", "files"), (str(tmp_path / "shards" / "*.tar"), "shards")):
        cpu = tmp_path / f"{name}-cpu.jsonl"
        dev = tmp_path / f"{name}-dev.jsonl"
        classify(enc, class_index, CLASSES, open_source(spec), cpu, top_k=3, batch_size=4, workers=0, device="cpu", progress=False,
                 transform=transform_for(tiny_student, False))
        classify(enc, class_index, CLASSES, open_source(spec), dev, top_k=3, batch_size=4, workers=1, device="cpu",
                 progress=False, transform=_encoded(tiny_student))
        a = {r.get("path", r.get("key")): r for r in read_rows(cpu)}
        b = {r.get("path", r.get("key")): r for r in read_rows(dev)}
        assert set(a) == set(b) and len(a) == 6
        for k in a:
            assert a[k]["ids"][0] == b[k]["ids"][0]
            assert abs(a[k]["scores"][0] - b[k]["scores"][0]) < 0.02
        if name == "files":
            skipped = skipped_path(dev).read_text()
            assert "broken.jpg" in skipped and "not a readable image" in skipped
            assert "empty.jpg" in skipped and "empty file (0 bytes)" in skipped


def test_decode_choice(tiny_student):
    t = transform_for(tiny_student, False)
    assert for_device(t, "auto", torch.device("cpu")) is t
    assert for_device(t, "cpu", torch.device("cpu")) is t
    for bad in ("gpu", "nvjpeg"):
        try:
            for_device(t, bad, torch.device("cpu"))
        except KdpipeError as e:
            assert "--decode" in str(e)
        else:
            raise AssertionError(f"--decode {bad} on a CPU was accepted")


def test_pil_workers_shipping_uint8_give_the_cpu_paths_pixels(tmp_path, tiny_student):
    """``--decode cpu`` on a GPU: PIL resizes and crops in the worker, the device only normalises."""
    paths = synthetic_photos(tmp_path, 2, size=(120, 90))
    Image.open(paths[0]).save(tmp_path / "p.png")
    pil = transform_for(tiny_student, False)
    enc = EncodedImage(pil.image_size, pil.mean, pil.std, decode="pil")
    files = paths + [tmp_path / "p.png"]
    shipped = [enc(p.read_bytes()) for p in files]
    assert all(t.dtype == torch.uint8 and t.shape == (3, pil.image_size, pil.image_size) for t in shipped)
    batch, keys, skipped = enc.on_device(shipped, [p.name for p in files], torch.device("cpu"))
    expected = torch.stack([pil(Image.open(p).convert("RGB")) for p in files])
    torch.testing.assert_close(batch, expected, rtol=0, atol=1e-5)
