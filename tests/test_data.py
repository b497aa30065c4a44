import io
import pickle
import tarfile
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_CIFAR
from prunelora_keras import data
from prunelora_keras.errors import UserError


def test_digits_fixed_stratified_split():
    a, b = data.load_digits(), data.load_digits()
    assert a.x_train.shape == (1437, 8, 8, 3) and a.x_test.shape == (360, 8, 8, 3)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int32
    np.testing.assert_array_equal(a.x_test, b.x_test)  # fixed split
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 17.97 * 2 per class
    assert a.x_train.max() == 255 and np.all(a.x_train[..., 0] == a.x_train[..., 2])


def test_split_invariants_and_subsampling():
    ds = data.load_digits()
    sp = data.make_split(ds, forget_class=3, train_size=500, test_size=200, seed=1)
    assert len(sp.train) == 500 and len(sp.test) == 200
    assert len(sp.retain) + len(sp.forget) == 500
    assert set(np.unique(sp.forget.y)) == {3} and 3 not in sp.retain.y and 3 not in sp.test_retain.y
    assert set(np.unique(sp.test_forget.y)) == {3}
    # stratified: class frequencies within one sample of the full set's
    full = np.bincount(ds.y_train, minlength=10) / len(ds.y_train)
    assert np.all(np.abs(np.bincount(sp.train.y, minlength=10) - 500 * full) <= 1)
    again = data.make_split(ds, 3, 500, 200, seed=1)
    np.testing.assert_array_equal(sp.train.x, again.train.x)
    other = data.make_split(ds, 3, 500, 200, seed=2)
    assert not np.array_equal(sp.train.y, other.train.y)
    with pytest.raises(UserError, match="out of range"):
        data.make_split(ds, 10)


def test_batches_keep_last_partial_and_shuffle_by_seed():
    x = np.arange(10)[:, None]
    y = np.arange(10)
    sizes = [len(b[1]) for b in data.batches(x, y, 4)]
    assert sizes == [4, 4, 2] and data.num_batches(10, 4) == 3
    assert [len(b[1]) for b in data.batches(x, y, 4, drop_last=True)] == [4, 4] and data.num_batches(10, 4, True) == 2
    first = np.concatenate([b[1] for b in data.batches(x, y, 4, np.random.default_rng(0))])
    second = np.concatenate([b[1] for b in data.batches(x, y, 4, np.random.default_rng(0))])
    np.testing.assert_array_equal(first, second)
    assert sorted(first) == list(range(10)) and not np.array_equal(first, y)


CLASSES = ["cat", "dog", "airplane"]


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tree_items():
    for split, n in (("train", 3), ("test", 2)):
        for ci, cls in enumerate(CLASSES):
            for i in range(n):
                yield f"{split}/{cls}/{i:04d}.png", _png(10 * ci + i)


def _check_tree_arrays(arrays):
    x_train, y_train, x_test, y_test, classes = arrays
    assert classes == ("airplane", "cat", "dog")  # sorted names when they are not CIFAR-10's
    assert x_train.shape == (9, 4, 4, 3) and x_test.shape == (6, 4, 4, 3)
    np.testing.assert_array_equal(y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert x_train[0, 0, 0, 0] == 20 and x_train[3, 0, 0, 0] == 0 and x_train[8, 0, 0, 0] == 12


def test_image_folder_tar_and_zip(tmp_path):
    root = tmp_path / "tree"
    for name, payload in _tree_items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    _check_tree_arrays(data.read_cifar10_dir(root))
    tgz = tmp_path / "tree.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(root, arcname="cifar")
    _check_tree_arrays(data.read_cifar10_dir(tgz))
    zp = tmp_path / "tree.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for name, payload in _tree_items():
            zf.writestr(name, payload)
    _check_tree_arrays(data.read_cifar10_dir(zp))


def test_cache_is_keyed_by_content(tmp_path):
    root = tmp_path / "tree"
    for name, payload in _tree_items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    first = data.read_cifar10_dir(root)
    (root / "train/cat/0000.png").write_bytes(_png(99))  # same size class of change, new mtime
    changed = data.read_cifar10_dir(root)
    assert changed[0][3, 0, 0, 0] == 99 and first[0][3, 0, 0, 0] == 0


def test_batches_py_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        img = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
        rows = img.transpose(0, 3, 1, 2).reshape(2, -1)  # the official CHW row layout
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": [1, 7]}, f)
        expected.append(img)
    x_train, y_train, x_test, y_test, classes = data.read_cifar10_dir(tmp_path)
    np.testing.assert_array_equal(x_train, np.concatenate(expected[:5]))
    np.testing.assert_array_equal(x_test, expected[5])
    assert list(y_test) == [1, 7] and classes[3] == "cat"


def test_bad_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        data.read_cifar10_dir(tmp_path / "missing")
    corrupt = tmp_path / "bad.tar.gz"
    corrupt.write_bytes(b"not a tarball at all")
    with pytest.raises(UserError, match="corrupt"):
        data.read_cifar10_dir(corrupt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither"):
        data.read_cifar10_dir(tmp_path / "empty")
    trunc = tmp_path / "trunc"
    for name, payload in _tree_items():
        (trunc / name).parent.mkdir(parents=True, exist_ok=True)
        (trunc / name).write_bytes(payload[:30] if name.endswith("0001.png") else payload)
    with pytest.raises(UserError, match="corrupt or truncated"):
        data.read_cifar10_dir(trunc)
    with pytest.raises(UserError, match="unknown dataset"):
        data.load_dataset("mnist")


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="../shared/data/cifar10-jpeg.tar.gz is not present")
def test_real_cifar10_tarball():
    ds = data.load_cifar10(str(SHARED_CIFAR))
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.class_names == data.CIFAR10_CLASSES
    np.testing.assert_array_equal(np.bincount(ds.y_train), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    assert np.all(np.diff(ds.y_train) >= 0)  # grouped in label order
    # shared/data/README.md: per-channel training mean 0.4913/0.4821/0.4465 for this JPEG mirror
    mean = ds.x_train.reshape(-1, 3).mean(axis=0) / 255.0
    np.testing.assert_allclose(mean, [0.4913, 0.4821, 0.4465], atol=1e-4)
    # label order is right: ships (8) are bluer than frogs (6), which are greener than they are blue
    ship = ds.x_train[ds.y_train == 8].reshape(-1, 3).mean(0)
    frog = ds.x_train[ds.y_train == 6].reshape(-1, 3).mean(0)
    assert ship[2] > frog[2] and frog[1] > frog[2]
    start = time.perf_counter()
    again = data.load_cifar10(str(SHARED_CIFAR))
    assert time.perf_counter() - start < 3.0
    np.testing.assert_array_equal(again.x_test, ds.x_test)
