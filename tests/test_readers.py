"""The data readers on small files written here in each data set's official format: CIFAR-100's python
release (folder and tarball, fine and coarse labels), SVHN's .mat files, TinyImageNet's folder layout,
any class-folder tree; and one error line for what is missing or malformed."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, clean_env
from prunelora_keras.data import readers, sources
from prunelora_keras.errors import UserError
from prunelora_keras.experiment.config import build_config
from test_many_models import assert_one_error_line


def _cifar100(folder, n_train=20, n_test=10):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    images = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = np.arange(n) % 100
        images[split] = (x, fine)
        batch = {b"data": x.transpose(0, 3, 1, 2).reshape(n, 3072), b"fine_labels": fine.tolist(),
                 b"coarse_labels": (fine // 5).tolist()}
        (folder / split).write_bytes(pickle.dumps(batch))
    meta = {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    return images


def test_cifar100_reads_its_python_release_from_the_folder_and_the_tarball(tmp_path):
    images = _cifar100(tmp_path / "cifar-100-python")
    x, y, xt, yt, names = readers.read_cifar100(tmp_path)
    np.testing.assert_array_equal(x, images["train"][0])  # CHW rows back to HWC images
    np.testing.assert_array_equal(yt, images["test"][1])
    assert len(names) == 100 and names[7] == "fine7"
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "cifar-100-python", arcname="cifar-100-python")
    x2, y2, *_, coarse = readers.read_cifar100(tmp_path / "cifar-100-python.tar.gz", "coarse")
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(y2, y // 5)
    assert len(coarse) == 20


def test_cifar100_without_its_meta_file_names_what_is_missing(tmp_path):
    _cifar100(tmp_path / "c")
    (tmp_path / "c" / "meta").unlink()
    with pytest.raises(UserError, match="lacks cifar-100-python/meta: expected the official python release"):
        readers.read_cifar100(tmp_path / "c")
    (tmp_path / "c" / "meta").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="is corrupt or not a CIFAR-100 file"):
        readers.read_cifar100(tmp_path / "c")


def test_svhn_reads_the_mat_files_with_label_10_as_digit_0(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 12), dtype=np.uint8)
    y = (np.arange(12) % 10 + 1).reshape(-1, 1)  # 1..10, 10 meaning 0
    for split in ("train", "test"):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": y})
    xs, ys, _, _, names = readers.read_svhn(tmp_path)
    np.testing.assert_array_equal(xs[3], x[..., 3])
    assert ys.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2] and names[0] == "0"
    savemat(tmp_path / "test_32x32.mat", {"images": x})
    with pytest.raises(UserError, match="is not an SVHN .mat file"):
        readers.read_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(UserError, match="lacks test_32x32.mat"):
        readers.read_svhn(tmp_path)


def _png(color, size=64) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def test_tinyimagenet_reads_train_folders_and_the_annotated_validation_set(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02", "n03"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius\nn02\tsalamander\nn03\tbullfrog\n")
    lines = []
    for i, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        for k in range(3):
            (root / "train" / w / "images" / f"{w}_{k}.JPEG").write_bytes(_png((40 * i, 10 * k, 0)))
        (root / "val" / "images" / f"val_{i}.JPEG").write_bytes(_png((40 * i, 0, 200)))
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    x, y, xt, yt, names = readers.read_tinyimagenet(tmp_path)
    assert x.shape == (9, 64, 64, 3) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert yt.tolist() == [0, 1, 2] and xt[2, 0, 0].tolist() == [80, 0, 200]
    assert names == ("goldfish", "salamander", "bullfrog")
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(UserError, match="names class 'n99', which wnids.txt does not list"):
        readers.read_tinyimagenet(root)


def test_any_class_folder_is_split_stratified_and_resized(tmp_path):
    for c, color in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / "pets" / c).mkdir(parents=True)
        for k in range(5):
            (tmp_path / "pets" / c / f"{k}.png").write_bytes(_png(color, size=20 + k))  # sizes differ
    x, y, xt, yt, names = readers.read_folder(tmp_path / "pets", image_size=8)
    assert names == ("cats", "dogs") and x.shape[1:] == (8, 8, 3)
    assert sorted(np.bincount(yt).tolist()) == [1, 1] and len(y) == 8  # a stratified fifth is the test set
    assert all(img[0, 0].tolist() == ([255, 0, 0] if label == 0 else [0, 0, 255]) for img, label in zip(x, y))
    with pytest.raises(UserError, match="images of different sizes; set data.image_size"):
        readers.read_folder(tmp_path / "pets")


def test_the_command_loads_a_folder_data_set_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELORA_CACHE", str(tmp_path / "cache"))
    for c in range(3):
        (tmp_path / "imgs" / f"class{c}").mkdir(parents=True)
        for k in range(6):
            (tmp_path / "imgs" / f"class{c}" / f"{k}.png").write_bytes(_png((80 * c, 20 * k, 0), size=12))
    cfg = build_config("vit", "quick", sets=[f"data.dataset=folder:{tmp_path / 'imgs'}", "data.image_size=8",
                                             "data.forget_class=1"])
    ds = sources.load_dataset(cfg.data.dataset, image_size=cfg.data.image_size)
    assert ds.num_classes == 3 and ds.image_shape == (8, 8, 3) and len(ds.y_train) + len(ds.y_test) == 18
    assert all(0 < s < 1 for s in ds.std)  # the set's own channel statistics


def test_a_data_set_without_its_files_is_one_error_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prunelora_keras.run", "--model", "vit", "--preset", "quick",
                           "--dataset", "svhn", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")],
                          env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert_one_error_line(proc, "lacks train_32x32.mat: expected SVHN's cropped-digit files")


def test_coarse_labels_belong_to_cifar100_and_names_must_be_known():
    with pytest.raises(UserError, match="data.labels = 'coarse' applies to --dataset cifar100 only"):
        build_config("vit", "quick", sets=["data.labels=coarse"])
    with pytest.raises(UserError, match="data.labels = 'medium' is not valid: choose one of fine, coarse"):
        build_config("vit", "quick", sets=["data.dataset=cifar100", "data.labels=medium"])
    with pytest.raises(UserError, match="unknown dataset 'folder:'"):
        build_config("vit", "quick", sets=["data.dataset=folder:"])
    assert build_config("vit", "quick", sets=["data.dataset=tfds:svhn_cropped"]).data.dataset == "tfds:svhn_cropped"
