import io
import os
import pickle
import tarfile
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_CIFAR
from prunelora_keras.data import batches as batching, cifar10, datasets as data, sources
from prunelora_keras.errors import UserError


def test_digits_fixed_stratified_split():
    a, b = sources.load_digits(), sources.load_digits()
    assert a.x_train.shape == (1437, 8, 8, 3) and a.x_test.shape == (360, 8, 8, 3)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int32
    np.testing.assert_array_equal(a.x_test, b.x_test)  # fixed split
    counts = np.bincount(a.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 17.97 * 2 per class
    assert a.x_train.max() == 255 and np.all(a.x_train[..., 0] == a.x_train[..., 2])


def test_split_invariants_and_subsampling():
    ds = sources.load_digits()
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
    sizes = [len(b[1]) for b in batching.batches(x, y, 4)]
    assert sizes == [4, 4, 2] and batching.num_batches(10, 4) == 3
    assert [len(b[1]) for b in batching.batches(x, y, 4, drop_last=True)] == [4, 4] and batching.num_batches(10, 4, True) == 2
    first = np.concatenate([b[1] for b in batching.batches(x, y, 4, np.random.default_rng(0))])
    second = np.concatenate([b[1] for b in batching.batches(x, y, 4, np.random.default_rng(0))])
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
    _check_tree_arrays(cifar10.read_cifar10_dir(root))
    tgz = tmp_path / "tree.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(root, arcname="cifar")
    _check_tree_arrays(cifar10.read_cifar10_dir(tgz))
    zp = tmp_path / "tree.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for name, payload in _tree_items():
            zf.writestr(name, payload)
    _check_tree_arrays(cifar10.read_cifar10_dir(zp))


def test_cache_is_keyed_by_content(tmp_path):
    root = tmp_path / "tree"
    for name, payload in _tree_items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    first = cifar10.read_cifar10_dir(root)
    (root / "train/cat/0000.png").write_bytes(_png(99))  # same size class of change, new mtime
    changed = cifar10.read_cifar10_dir(root)
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
    x_train, y_train, x_test, y_test, classes = cifar10.read_cifar10_dir(tmp_path)
    np.testing.assert_array_equal(x_train, np.concatenate(expected[:5]))
    np.testing.assert_array_equal(x_test, expected[5])
    assert list(y_test) == [1, 7] and classes[3] == "cat"


def test_bad_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        cifar10.read_cifar10_dir(tmp_path / "missing")
    corrupt = tmp_path / "bad.tar.gz"
    corrupt.write_bytes(b"not a tarball at all")
    with pytest.raises(UserError, match="corrupt"):
        cifar10.read_cifar10_dir(corrupt)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither"):
        cifar10.read_cifar10_dir(tmp_path / "empty")
    trunc = tmp_path / "trunc"
    for name, payload in _tree_items():
        (trunc / name).parent.mkdir(parents=True, exist_ok=True)
        (trunc / name).write_bytes(payload[:30] if name.endswith("0001.png") else payload)
    with pytest.raises(UserError, match="corrupt or truncated"):
        cifar10.read_cifar10_dir(trunc)
    with pytest.raises(UserError, match="unknown dataset"):
        sources.load_dataset("mnist")


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="../shared/data/cifar10-jpeg.tar.gz is not present")
def test_real_cifar10_tarball():
    ds = cifar10.load_cifar10(str(SHARED_CIFAR))
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.class_names == cifar10.CIFAR10_CLASSES
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
    again = cifar10.load_cifar10(str(SHARED_CIFAR))
    assert time.perf_counter() - start < 3.0
    np.testing.assert_array_equal(again.x_test, ds.x_test)


# ----------------------------------------------------------------------------- input checks


def _tiny_dataset(**changes):
    """Three classes, 4x4 images: 4 training and 2 test images per class; ``changes`` replace fields."""
    rng = np.random.default_rng(0)
    y_train, y_test = np.repeat(np.arange(3, dtype=np.int32), 4), np.repeat(np.arange(3, dtype=np.int32), 2)
    fields = dict(name="tiny", x_train=rng.integers(0, 256, (12, 4, 4, 3), dtype=np.uint8), y_train=y_train,
                  x_test=rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), y_test=y_test,
                  class_names=("a", "b", "c"), mean=(0.5,) * 3, std=(0.25,) * 3)
    fields.update(changes)
    return data.Dataset(**fields)


BAD_DATASETS = {
    "train label too large": (dict(y_train=np.array([0, 1, 2, 3] * 3, np.int32)), r"training label 3 \(image 3\) is outside 0..2"),
    "negative test label": (dict(y_test=np.array([0, 1, 2, 0, 1, -1], np.int32)), r"test label -1 \(image 5\) is outside 0..2"),
    "float labels": (dict(y_train=np.repeat(np.arange(3.0), 4)), "expected one integer label per image"),
    "labels of another length": (dict(y_test=np.arange(3, dtype=np.int32)), "expected one integer label per image"),
    "float images": (dict(x_train=np.zeros((12, 4, 4, 3), np.float32)), "expected RGB images, H x W x 3 uint8"),
    "grayscale images": (dict(x_test=np.zeros((6, 4, 4), np.uint8)), "expected RGB images, H x W x 3 uint8"),
    "RGBA images": (dict(x_train=np.zeros((12, 4, 4, 4), np.uint8)), "expected RGB images, H x W x 3 uint8"),
    "train and test shapes differ": (dict(x_test=np.zeros((6, 8, 8, 3), np.uint8)), "all images must have one shape"),
    "a class without training images": (dict(y_train=np.array([0, 0, 2, 2] * 3, np.int32)),
                                        r"no training images of class 1 \(b\)"),
    "one class only": (dict(class_names=("a",)), "needs at least two classes"),
}


@pytest.mark.parametrize("case", BAD_DATASETS, ids=str)
def test_malformed_datasets_are_refused_before_training(case, monkeypatch):
    changes, message = BAD_DATASETS[case]
    ds = _tiny_dataset(**changes)
    with pytest.raises(UserError, match=message):
        data.check_dataset(ds)
    with pytest.raises(UserError, match=message):
        data.make_split(ds, forget_class=0)
    monkeypatch.setattr(sources, "load_digits", lambda: ds)
    with pytest.raises(UserError, match=message):
        sources.load_dataset("digits")


def test_good_tiny_dataset_passes():
    data.check_dataset(_tiny_dataset())
    assert len(data.make_split(_tiny_dataset(), forget_class=2).forget) == 4


def _imbalanced(sizes_train, sizes_test=(5, 5)):
    """Two classes with the given image counts, for empty subsampled sets."""
    y_train = np.repeat(np.arange(2, dtype=np.int32), sizes_train)
    y_test = np.repeat(np.arange(2, dtype=np.int32), sizes_test)
    return _tiny_dataset(x_train=np.zeros((len(y_train), 4, 4, 3), np.uint8), y_train=y_train,
                         x_test=np.zeros((len(y_test), 4, 4, 3), np.uint8), y_test=y_test, class_names=("a", "b"))


def test_empty_retain_forget_or_test_set_after_subsampling():
    # stratified 2 of 202: both go to the large class 0 and the small class 1 gets none
    ds = _imbalanced((200, 2))
    with pytest.raises(UserError, match="the forget set is empty for forget class 1: use a larger data.train_size"):
        data.make_split(ds, forget_class=1, train_size=2)
    with pytest.raises(UserError, match="the retain set is empty for forget class 0: use a larger data.train_size"):
        data.make_split(ds, forget_class=0, train_size=2)
    ds = _imbalanced((4, 4), (200, 2))
    with pytest.raises(UserError, match="the test_retain set is empty for forget class 0: use a larger data.test_size"):
        data.make_split(ds, forget_class=0, test_size=2)


def test_subsample_sizes_that_cannot_be_stratified():
    ds = sources.load_digits()
    with pytest.raises(UserError, match=r"data.train_size = 5 cannot be drawn stratified .* 10 classes"):
        data.make_split(ds, 3, train_size=5)
    with pytest.raises(UserError, match=r"data.test_size = 355 cannot be drawn stratified"):
        data.make_split(ds, 3, test_size=355)  # leaves 5 test images, fewer than the 10 classes
    single = _imbalanced((4, 1))
    with pytest.raises(UserError, match="class 1 has a single image"):
        data.make_split(single, 0, train_size=3)


def _write_tree(root, items=None):
    for name, payload in items or _tree_items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return root


def _jpeg(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(value).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_bad_data_dir_paths(tmp_path, monkeypatch):
    plain = tmp_path / "notes.txt"
    plain.write_text("hello")
    with pytest.raises(UserError, match="is a file but not a .tar.gz/.tar/.zip archive"):
        cifar10.read_cifar10_dir(plain)
    tree = _write_tree(tmp_path / "tree")
    real_access = cifar10.os.access
    monkeypatch.setattr(cifar10.os, "access", lambda p, mode: False if str(p) == str(tree) else real_access(p, mode))
    with pytest.raises(UserError, match="is a folder that cannot be read: check its permissions"):
        cifar10.read_cifar10_dir(tree)
    tgz = tmp_path / "tree.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tree, arcname="cifar")
    monkeypatch.setattr(cifar10.os, "access", lambda p, mode: False if str(p) == str(tgz) else real_access(p, mode))
    with pytest.raises(UserError, match="tree.tar.gz cannot be read: check its permissions"):
        cifar10.read_cifar10_dir(tgz)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files of any mode")
def test_unreadable_data_dir_for_real(tmp_path):
    tree = _write_tree(tmp_path / "tree")
    tree.chmod(0)
    try:
        with pytest.raises(UserError, match="cannot be read"):
            cifar10.read_cifar10_dir(tree)
    finally:
        tree.chmod(0o755)


def test_unreadable_image_file_is_named(tmp_path, monkeypatch):
    tree = _write_tree(tmp_path / "tree")
    real_read = cifar10.Path.read_bytes

    def read_bytes(self):
        if self.name == "0002.png" and self.parent.name == "dog":
            raise PermissionError(13, "Permission denied")
        return real_read(self)

    monkeypatch.setattr(cifar10.Path, "read_bytes", read_bytes)
    with pytest.raises(UserError, match=r"cannot read image .*train/dog/0002.png \(PermissionError\)"):
        cifar10.read_cifar10_dir(tree)


def test_truncated_and_non_image_jpegs_are_named(tmp_path):
    items = [(n.replace(".png", ".jpg"), _jpeg(i)) for i, (n, _) in enumerate(_tree_items())]
    good = dict(items)
    for i, payload in enumerate([good["train/dog/0001.jpg"][:300], b"<html>not found</html>"]):
        root = _write_tree(tmp_path / f"tree{i}", [*items[:-1], ("train/dog/0001.jpg", payload), items[-1]])
        with pytest.raises(UserError, match=r"cannot decode image .*train/dog/0001.jpg.* corrupt or truncated"):
            cifar10.read_cifar10_dir(root)
        with tarfile.open(tmp_path / f"tree{i}.tar.gz", "w:gz") as tf:
            tf.add(root, arcname="cifar")
        with pytest.raises(UserError, match=r"cannot decode image .*cifar/train/dog/0001.jpg"):
            cifar10.read_cifar10_dir(tmp_path / f"tree{i}.tar.gz")


def test_class_folders_missing_on_one_side(tmp_path):
    items = list(_tree_items())
    only_test = _write_tree(tmp_path / "a", [(n, p) for n, p in items if not n.startswith("train/dog/")])
    with pytest.raises(UserError, match="class 'dog' has test/ images but no train/ images"):
        cifar10.read_cifar10_dir(only_test)
    only_train = _write_tree(tmp_path / "b", [(n, p) for n, p in items if not n.startswith("test/cat/")])
    with pytest.raises(UserError, match="class 'cat' has train/ images but no test/ images"):
        cifar10.read_cifar10_dir(only_train)


def test_damaged_archives_give_user_errors_only(tmp_path):
    """Truncations and bit flips anywhere in a .tar.gz or .zip: a clean error or (if harmless) the data."""
    tree = _write_tree(tmp_path / "tree")
    tgz, zp = tmp_path / "t.tar.gz", tmp_path / "t.zip"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(tree, arcname="cifar")
    with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in _tree_items():
            zf.writestr(name, payload)
    rng = np.random.default_rng(0)
    errors = 0
    for source in (tgz, zp):
        blob = source.read_bytes()
        for k in range(30):
            i = int(rng.integers(len(blob)))
            damaged = blob[:i] if k % 2 else blob[:i] + bytes([blob[i] ^ (1 << int(rng.integers(8)))]) + blob[i + 1:]
            target = tmp_path / f"d{k}{''.join(source.suffixes)}"
            target.write_bytes(damaged)
            try:
                cifar10.read_cifar10_dir(target)
            except UserError as exc:
                errors += 1
                assert "\n" not in str(exc)
    assert errors >= 30  # every truncation of the zip fails, and most of the tarball's


def test_unwritable_cache_does_not_stop_loading(tmp_path, monkeypatch):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("PRUNELORA_CACHE", str(blocker / "sub"))
    _check_tree_arrays(cifar10.read_cifar10_dir(_write_tree(tmp_path / "tree")))


def _write_batches(folder, make_batch):
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump(make_batch(name), f)


class _WritesMarker:
    """Unpickling this calls ``open(marker, 'w')``: code execution, made visible by the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_batch_files_are_data_not_code(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil" / "cifar-10-batches-py"
    folder.parent.mkdir()
    _write_batches(folder, lambda name: {b"data": _WritesMarker(marker), b"labels": [0]})
    with pytest.raises(UserError, match=r"data_batch_1 is corrupt or not a CIFAR-10 batch .*refusing to load"):
        cifar10.read_cifar10_dir(folder.parent)
    assert not marker.exists()


@pytest.mark.parametrize("batch, message", [
    (["not", "a", "dict"], "is not a CIFAR-10 batch"),
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "is not a CIFAR-10 batch"),
    ({b"labels": [0, 1]}, "is not a CIFAR-10 batch"),
])
def test_malformed_batch_files(tmp_path, batch, message):
    _write_batches(tmp_path / "cifar-10-batches-py", lambda name: batch)
    with pytest.raises(UserError, match=message):
        cifar10.read_cifar10_dir(tmp_path)


def test_batch_labels_out_of_range_are_refused_on_load(tmp_path):
    rows = np.zeros((2, 3072), np.uint8)
    _write_batches(tmp_path / "cifar-10-batches-py",
                   lambda name: {b"data": rows, b"labels": [0, 10] if name == "test_batch" else [0, 1]})
    with pytest.raises(UserError, match=r"test label 10 \(image 1\) is outside 0..9"):
        sources.load_dataset("cifar10", str(tmp_path))
