"""Image trees as users lay them out (issue 39): the ImageNet/Imagenette ``train/`` + ``val/`` layout,
every format Pillow reads with the skipped files named, 16-bit PNGs scaled, nested class folders and
empty classes refused, the cache keyed on folders, and a CIFAR-100 tree asked for coarse labels."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from prunelora_keras.data import cifar10, images, readers, sources
from prunelora_keras.errors import UserError


def _image(color, fmt, size=6) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format=fmt)
    return out.getvalue()


def _tree(root, classes=("ants", "bees"), per_class=3, fmt="PNG", suffix=".png"):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            (root / name / f"{k}{suffix}").write_bytes(_image((100 * c, 10 * k, 50), fmt))
    return root


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELORA_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("test_name", ["val", "valid", "test"])
def test_a_train_and_val_tree_is_read_as_its_classes_with_val_as_the_test_set(tmp_path, test_name):
    _tree(tmp_path / "tree" / "train", per_class=4)
    _tree(tmp_path / "tree" / test_name, per_class=2)
    x, y, xt, yt, names = readers.read_folder(tmp_path / "tree")
    assert names == ("ants", "bees")  # not ("train", "val")
    assert y.tolist() == [0] * 4 + [1] * 4 and yt.tolist() == [0, 0, 1, 1]
    assert xt[2, 0, 0].tolist() == [100, 0, 50]


def test_test_wins_over_val_and_the_choice_is_said(tmp_path, capsys):
    _tree(tmp_path / "tree" / "train")
    _tree(tmp_path / "tree" / "test", per_class=1)
    _tree(tmp_path / "tree" / "val", per_class=2)
    *_, yt, _ = readers.read_folder(tmp_path / "tree")
    assert len(yt) == 2
    assert "test/ is the test set (val/ not read)" in capsys.readouterr().err


def test_a_train_folder_without_a_test_split_and_class_folders_holding_folders_are_refused(tmp_path):
    _tree(tmp_path / "a" / "train")
    with pytest.raises(UserError, match="has train/ but no test/, val/, valid/ beside it"):
        readers.read_folder(tmp_path / "a")
    _tree(tmp_path / "b" / "cats" / "indoor")
    _tree(tmp_path / "b" / "dogs")
    with pytest.raises(UserError, match="class folder 'cats' holds folders \\(indoor\\)"):
        readers.read_folder(tmp_path / "b")


def test_every_format_pillow_reads_counts_and_every_skipped_file_is_named(tmp_path, capsys):
    root = tmp_path / "pets"
    for c in ("cats", "dogs"):
        (root / c).mkdir(parents=True)
        for k, (fmt, suffix) in enumerate([("PNG", ".png"), ("WEBP", ".webp"), ("BMP", ".bmp"), ("TIFF", ".tif"),
                                           ("GIF", ".gif"), ("JPEG", ".JPG"), ("PPM", ".ppm")]):
            (root / c / f"{k}{suffix}").write_bytes(_image((0, 0, 255), fmt))
        (root / c / "notes.txt").write_text("not an image")
    (root / "labels.csv").write_text("a,b")
    x, y, xt, yt, names = readers.read_folder(root)
    assert len(y) + len(yt) == 14 and np.bincount(np.concatenate([y, yt])).tolist() == [7, 7]
    err = capsys.readouterr().err
    assert "skipped 3 files that are not images" in err
    for name in ("labels.csv", "cats/notes.txt", "dogs/notes.txt"):
        assert name in err


def test_the_cifar10_tree_and_archive_readers_name_skipped_files_and_read_webp(tmp_path, capsys):
    root = tmp_path / "c10"
    for split in ("train", "test"):
        _tree(root / split, classes=("cat", "dog"), per_class=2, fmt="WEBP", suffix=".webp")
        (root / split / "cat" / "Thumbs.db").write_bytes(b"x")
    x, y, xt, yt, names = cifar10._read_image_folder(root)
    assert len(y) == 4 and len(yt) == 4 and names == ("cat", "dog")
    assert "skipped 2 files that are not images" in capsys.readouterr().err
    with tarfile.open(tmp_path / "c10.tar.gz", "w:gz") as tf:
        tf.add(root, arcname="c10")
    assert len(cifar10._read_archive(tmp_path / "c10.tar.gz")[1]) == 4
    assert "c10/test/cat/Thumbs.db" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [(65535, 255), (32896, 128), (257, 1), (0, 0)])
def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped(value, expected):
    out = io.BytesIO()
    Image.fromarray(np.full((3, 3), value, np.uint16)).save(out, format="PNG")
    assert Image.open(io.BytesIO(out.getvalue())).mode.startswith("I")  # Pillow's 16-bit greyscale
    assert images.decode_image(out.getvalue(), "x.png")[1, 1].tolist() == [expected] * 3


def test_an_empty_class_folder_is_refused_and_once_removed_the_cache_no_longer_names_it(tmp_path):
    root = tmp_path / "tree"
    for split in ("train", "test"):
        _tree(root / split)
        (root / split / "wasps").mkdir()
    with pytest.raises(UserError, match="class folder 'wasps' holds no images: add images to it or remove it"):
        sources.load_dataset(f"folder:{root}")
    for split in ("train", "test"):
        (root / split / "wasps").rmdir()
    assert sources.load_dataset(f"folder:{root}").class_names == ("ants", "bees")


def test_the_cache_key_changes_with_the_folders_not_only_the_files(tmp_path):
    root = _tree(tmp_path / "tree")
    before = cifar10._cache_key(root)
    (root / "empty").mkdir()
    assert cifar10._cache_key(root) != before
    (root / "empty").rmdir()
    assert cifar10._cache_key(root) == before


def test_coarse_labels_on_a_cifar100_image_tree_are_refused(tmp_path):
    for split in ("train", "test"):
        _tree(tmp_path / "c100" / split)
    with pytest.raises(UserError, match="is an image-folder tree, which holds one label per image .*data.labels=coarse"):
        sources.load_dataset("cifar100", str(tmp_path / "c100"), labels="coarse")
    assert sources.load_dataset("cifar100", str(tmp_path / "c100")).class_names == ("ants", "bees")


def test_a_class_named_train_in_a_class_per_folder_tree_is_a_class(tmp_path):
    root = _tree(tmp_path / "vehicles", classes=("bus", "car", "train"), per_class=4)
    *_, names = readers.read_folder(root)
    assert names == ("bus", "car", "train")
