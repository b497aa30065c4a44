"""File-backed data (``data.image_cache``): memory-mapped images, lazy ``Rows`` views, and a whole run
on a folder read that way giving exactly the numbers of the same images held in memory."""

import io
import json

import numpy as np
import pytest

from prunelora_keras.data import image_cache, readers, sources
from prunelora_keras.data.batches import Rows, batches
from prunelora_keras.data.datasets import Dataset, make_split
from prunelora_keras.errors import UserError


def _png(color, size=8):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_rows_index_exactly_as_numpy_does():
    source = np.arange(10 * 2 * 3).reshape(10, 2, 3)
    index = np.array([7, 2, 9, 0, 4])
    rows, ref = Rows(source, index), source[index]
    mask = np.array([True, False, True, True, False])
    for key in (0, -1, 3, slice(1, 4), slice(None, None, -1), np.array([4, 0, 0]), mask, (slice(0, 2), 1),
                (np.array([1, 3]), slice(None), 2), (2, 1)):
        np.testing.assert_array_equal(rows[key], ref[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(rows.take(np.array([3, 1]))), ref[[3, 1]])
    assert isinstance(rows.take([0]), Rows) and rows.shape == (5, 2, 3) and len(rows) == 5


def test_an_interrupted_decode_leaves_no_cache_behind(tmp_path):
    def decode(item):
        if item == 2:
            raise UserError("bad image")
        return np.full((2, 2, 3), item, np.uint8)

    with pytest.raises(UserError, match="bad image"):
        image_cache.decode_to_file([0, 1, 2, 3], decode, (2, 2, 3), tmp_path / "x.npy")
    assert list(tmp_path.iterdir()) == []  # no target, no temporary file
    x = image_cache.decode_to_file([0, 1, 3], decode, (2, 2, 3), tmp_path / "x.npy")
    assert isinstance(x, np.memmap) and x[:, 0, 0, 0].tolist() == [0, 1, 3]
    with pytest.raises(UserError, match="set data.image_size"):
        image_cache.decode_to_file([1], lambda i: np.zeros((3, 3, 3), np.uint8), (2, 2, 3), tmp_path / "y.npy")


def _folder(root, classes=4, per_class=12, size=8):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            (root / f"c{c}" / f"{k}.png").write_bytes(_png(tuple(int(v) for v in rng.integers(0, 256, 3)), size))
    return root


def test_a_folder_is_decoded_once_into_memory_maps_and_split_into_lazy_views(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELORA_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs")
    ds = sources.load_dataset(f"folder:{root}")
    assert isinstance(ds.x_train, np.memmap) and isinstance(ds.x_test, np.memmap)
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and image_cache.disk_bytes(readers.image_cache.read_cached(cached[0])) == 48 * 8 * 8 * 3
    assert json.loads((cached[0] / "classes.json").read_text()) == ["c0", "c1", "c2", "c3"]
    # a second load reads the cache and decodes nothing
    monkeypatch.setattr(readers, "decode_image", lambda *a: pytest.fail("decoded again"))
    again = sources.load_dataset(f"folder:{root}")
    np.testing.assert_array_equal(np.asarray(again.x_train), np.asarray(ds.x_train))
    split = make_split(ds, 1, train_size=30, test_size=6, seed=3)
    memory = Dataset(ds.name, np.asarray(ds.x_train), ds.y_train, np.asarray(ds.x_test), ds.y_test, ds.class_names,
                     ds.mean, ds.std)
    ref = make_split(memory, 1, train_size=30, test_size=6, seed=3)
    for name in ("retain", "forget", "test_retain", "test_forget", "train", "test"):
        lazy, held = getattr(split, name), getattr(ref, name)
        assert isinstance(lazy.x, Rows) and isinstance(lazy.x.source, np.memmap), name  # a view, no copy
        np.testing.assert_array_equal(np.asarray(lazy.x), held.x, err_msg=name)
        np.testing.assert_array_equal(lazy.y, held.y, err_msg=name)
    # batches over a view gather the same rows as batches over the array
    for (xb, yb), (xr, yr) in zip(batches(split.retain.x, split.retain.y, 4, np.random.default_rng(0)),
                                  batches(ref.retain.x, ref.retain.y, 4, np.random.default_rng(0))):
        np.testing.assert_array_equal(xb, xr)
        np.testing.assert_array_equal(yb, yr)


def test_a_run_on_a_file_backed_folder_equals_the_run_on_the_same_images_in_memory(tmp_path, monkeypatch):
    from prunelora_keras.experiment.run import main

    monkeypatch.setenv("PRUNELORA_CACHE", str(tmp_path / "cache"))
    root = _folder(tmp_path / "imgs", classes=3, per_class=16)
    argv = ["--model", "vit", "--preset", "quick", "--dataset", f"folder:{root}", "--forget-class", "1",
            "--paradigms", "retrain,finetune,pruned_lora,rl", "--epochs", "1", "--set", "pretrain.epochs=2",
            "--set", "model.depth=1", "--set", "eval.relearn_max_steps=4"]
    assert main(argv + ["--out", str(tmp_path / "lazy")]) == 0
    real = sources.load_dataset

    def in_memory(*args, **kwargs):
        ds = real(*args, **kwargs)
        assert isinstance(ds.x_train, np.memmap)
        return Dataset(ds.name, np.array(ds.x_train), ds.y_train, np.array(ds.x_test), ds.y_test, ds.class_names,
                       ds.mean, ds.std)

    monkeypatch.setattr("prunelora_keras.experiment.pipeline.load_dataset", in_memory)
    assert main(argv + ["--out", str(tmp_path / "memory")]) == 0
    lazy, memory = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("lazy", "memory"))
    keys = ("UA", "RA", "TA", "MIA_loss_logreg", "MIA_confidence_svc")
    assert [r["paradigm"] for r in lazy["rows"]] == ["retrain", "finetune", "pruned_lora", "rl"]
    for a, b in zip(lazy["rows"], memory["rows"]):
        assert a["status"] == b["status"] == "ok"
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}, a["paradigm"]
