"""The field's other data sets from their official files, as uint8 arrays: CIFAR-100 (the python
release, fine or coarse labels), SVHN (the cropped-digit ``.mat`` files), TinyImageNet (its folder
layout with the validation annotations), any ``class_name/image`` folder, and any
tensorflow-datasets name. Each reader returns ``(x_train, y_train, x_test, y_test, class_names)``;
``sources.load_dataset`` turns that into a checked ``Dataset``. A missing or malformed file ends in
one ``UserError`` naming what was expected and where to get it.
"""

from __future__ import annotations

import io
import pickle
import sys
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from prunelora_keras.data import image_cache
from prunelora_keras.data.cifar10 import ARCHIVE_ERRORS, _ArrayUnpickler
from prunelora_keras.data.images import decode_image, is_image, report_skipped
from prunelora_keras.errors import UserError

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)  # the statistics the field's CIFAR-100 code bases normalise with
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/ (train_32x32.mat, test_32x32.mat)"
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
FOLDER_TEST_FRACTION = 0.2
TEST_SPLIT_NAMES = ("test", "val", "valid")  # the test split of a train/ tree, first found wins


def _unpickle(data: bytes, where: str) -> dict:
    try:
        return _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError) as exc:
        raise UserError(f"{where} is corrupt or not a CIFAR-100 file ({exc.__class__.__name__}): download "
                        f"{CIFAR100_URL} again") from None


def _cifar100_files(path: Path) -> dict[str, bytes]:
    """train, test and meta of the python release, from its folder, a folder holding it, or the tarball."""
    wanted = ("train", "test", "meta")
    if path.is_file():
        found = {}
        try:
            with tarfile.open(path, "r:*") as tf:
                for member in tf:
                    if member.isfile() and Path(member.name).name in wanted:
                        found[Path(member.name).name] = tf.extractfile(member).read()
        except ARCHIVE_ERRORS as exc:
            raise UserError(f"cannot read {path} ({exc.__class__.__name__}): expected {CIFAR100_URL}") from None
    else:
        folder = path / "cifar-100-python" if (path / "cifar-100-python").is_dir() else path
        found = {name: (folder / name).read_bytes() for name in wanted if (folder / name).is_file()}
    missing = [name for name in wanted if name not in found]
    if missing:
        raise UserError(f"{path} lacks cifar-100-python/{missing[0]}: expected the official python release "
                        f"({CIFAR100_URL}), its folder, or an image-folder tree train/<class>/ test/<class>/")
    return found


def read_cifar100(path: str | Path, labels: str = "fine") -> tuple:
    """CIFAR-100's python release: 50,000/10,000 32x32 images, ``labels`` "fine" (100 classes) or
    "coarse" (the 20 super-classes, for super-class forgetting)."""
    path = Path(path).expanduser()
    files = _cifar100_files(path)
    meta = _unpickle(files["meta"], f"{path}: meta")
    key = {"fine": (b"fine_labels", b"fine_label_names"), "coarse": (b"coarse_labels", b"coarse_label_names")}[labels]
    arrays = []
    for split in ("train", "test"):
        batch = _unpickle(files[split], f"{path}: {split}")
        try:
            x = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(batch[key[0]], np.int32)
        except (KeyError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: {split} is not a CIFAR-100 batch ({exc.__class__.__name__}: {exc}): expected "
                            f"b'data' (N x 3072 bytes) and b'{key[0].decode()}'") from None
        arrays += [np.ascontiguousarray(x), y]
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(key[1], []))
    if not names:
        raise UserError(f"{path}: meta has no {key[1].decode()}: download {CIFAR100_URL} again")
    return (*arrays, names)


def read_svhn(path: str | Path) -> tuple:
    """SVHN's cropped digits: ``train_32x32.mat`` and ``test_32x32.mat`` (X: 32x32x3xN, y: 1..10 with 10 for 0)."""
    from scipy.io import loadmat

    path = Path(path).expanduser()
    arrays = []
    for split in ("train", "test"):
        file = path / f"{split}_32x32.mat"
        if not file.is_file():
            raise UserError(f"{path} lacks {file.name}: expected SVHN's cropped-digit files from {SVHN_URL}")
        try:
            mat = loadmat(file)
            x = np.ascontiguousarray(np.asarray(mat["X"], np.uint8).transpose(3, 0, 1, 2))
            y = np.asarray(mat["y"]).reshape(-1).astype(np.int32) % 10  # label 10 is the digit 0
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise UserError(f"{file} is not an SVHN .mat file ({exc.__class__.__name__}: {exc}): expected arrays X "
                            f"(32x32x3xN) and y; download it again from {SVHN_URL}") from None
        if len(x) != len(y):
            raise UserError(f"{file}: {len(x)} images but {len(y)} labels; download it again")
        arrays += [x, y]
    return (*arrays, tuple(str(i) for i in range(10)))


def _file_backed(root: Path, tag: str, split_items: list, shape: tuple[int, int, int] | None, classes: Sequence[str],
                 decode: Callable[[Path], np.ndarray]) -> tuple:
    """The decoded images of ``split_items`` ([(train files, labels), (test files, labels)]) as memory-mapped
    arrays in the cache (``image_cache``): decoded once by process 0, read lazily by every process."""
    from prunelora_keras.data.cifar10 import _cache_key, cache_dir
    from prunelora_keras.parallel.multihost import first_on_process_0

    folder = cache_dir() / f"{tag}-{_cache_key(root)}"

    def load() -> tuple:  # a process that cannot see process 0's cache folder decodes for itself
        arrays = image_cache.read_cached(folder)
        return arrays if arrays is not None else image_cache.write_cached(folder, split_items, decode, shape, classes)

    return first_on_process_0(load, "image cache")


def read_tinyimagenet(path: str | Path) -> tuple:
    """TinyImageNet-200: ``wnids.txt``, ``train/<wnid>/images/*.JPEG`` and ``val/images/*.JPEG`` labelled
    by ``val/val_annotations.txt`` (the validation set serves as the test set, as in the field).

    File-backed: the images are decoded once into memory-mapped arrays (``image_cache``: 1.35 GB on disk
    for the 110,000 images) and read lazily, so the data set need not fit in memory."""
    root = Path(path).expanduser()
    if (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    for need in ("wnids.txt", "train", "val/val_annotations.txt"):
        if not (root / need).exists():
            raise UserError(f"{root} lacks {need}: expected the tiny-imagenet-200 folder ({TINYIMAGENET_URL}, unzipped)")
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, name = line.partition("\t")
            words[wnid] = name.split(",")[0].strip()
    xs, ys = [], []
    for wnid in wnids:
        for file in sorted((root / "train" / wnid / "images").glob("*")):
            if is_image(file.name):
                xs.append(file)
                ys.append(index[wnid])
    xt, yt = [], []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2:
            continue
        if parts[1] not in index:
            raise UserError(f"{root}/val/val_annotations.txt names class {parts[1]!r}, which wnids.txt does not list")
        file = root / "val" / "images" / parts[0]
        if not file.is_file():
            raise UserError(f"{root}/val/val_annotations.txt names {parts[0]}, which val/images/ lacks")
        xt.append(file)
        yt.append(index[parts[1]])
    if not xs or not xt:
        raise UserError(f"{root} holds no {'training' if not xs else 'validation'} images: expected "
                        "train/<wnid>/images/*.JPEG and val/images/*.JPEG")
    return _file_backed(root, "tinyimagenet", [(xs, ys), (xt, yt)], (64, 64, 3), [words.get(w, w) for w in wnids],
                        lambda f: decode_image(f.read_bytes(), str(f), 64))


def check_folder_source(path: str | Path) -> Path:
    """``path`` as a folder, or the one-line ``UserError`` a missing ``folder:PATH`` data set gets (the
    command also asks this before it says anything about the run folder).

    Args:
        path: the image tree's root (``~`` expanded).
    Returns:
        The folder's ``Path``.
    Raises:
        UserError: ``path`` is not a folder.

    Example:
        >>> check_folder_source(".").is_dir()
        True
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"folder:{root} is not a folder: expected <class>/<image> (or train/ and test/ of that)")
    return root


def _folder_layout(root: Path) -> list[Path]:
    """The split folders of an image tree: [train, test] for ``train/`` beside ``test/``, ``val/`` or
    ``valid/`` (the first that exists: the ImageNet and Imagenette layouts name the test split ``val``),
    else [root] (class folders at the top; a top-level ``train/`` holding images, not folders, is a class)."""
    if not (root / "train").is_dir() or not any(p.is_dir() for p in (root / "train").iterdir()):
        return [root]
    tests = [root / name for name in TEST_SPLIT_NAMES if (root / name).is_dir()]
    if not tests:
        raise UserError(f"folder:{root} has train/ but no {'/, '.join(TEST_SPLIT_NAMES)}/ beside it: add the test split "
                        "as one of those, or put the class folders at the top level")
    if len(tests) > 1:
        print(f"folder:{root}: {tests[0].name}/ is the test set ({', '.join(t.name + '/' for t in tests[1:])} not read)",
              file=sys.stderr, flush=True)
    return [root / "train", tests[0]]


def _class_images(folder: Path, skipped: list[str]) -> tuple[list[str], list[tuple[str, Path]]]:
    """The class folders of ``folder`` and their images, sorted; what is not an image goes to ``skipped``.

    A class folder that holds folders, or holds no image, is refused: read as classes, such a tree
    (a split layout this reader does not know, or a stray folder) would give wrong classes without a word."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    skipped += [str(p) for p in sorted(folder.iterdir()) if p.is_file()]
    items = []
    for c in classes:
        entries = sorted((folder / c).iterdir())
        nested = [p.name for p in entries if p.is_dir()]
        if nested:
            raise UserError(f"folder:{folder}: class folder {c!r} holds folders ({', '.join(nested[:3])}): expected "
                            f"images in <class>/ directly, with <class>/ at the top or in train/ and test/ (or val/)")
        images = [p for p in entries if p.is_file() and is_image(p.name)]
        skipped += [str(p) for p in entries if p.is_file() and not is_image(p.name)]
        if not images:
            raise UserError(f"folder:{folder}: class folder {c!r} holds no images: add images to it or remove it")
        items += [(c, f) for f in images]
    if not classes:
        raise UserError(f"folder:{folder} holds no class folders: expected {folder}/<class>/*.jpg (or .png, .webp, ...)")
    return classes, items


def read_folder(path: str | Path, image_size: int = 0, seed: int = 0) -> tuple:
    """Any image tree: ``train/<class>/*`` beside ``test/<class>/*`` (or ``val/``, ``valid/``), or
    ``<class>/*`` alone (then a seeded, stratified fifth is the test set). Images are resized to
    ``image_size`` x ``image_size`` (0: kept as they are, which must then be one size).

    Every format Pillow decodes is read (``images.IMAGE_SUFFIXES``); any other file in the tree is named
    on stderr with a count. A class folder holding folders, or no image, is refused in one line.

    File-backed: decoded once into memory-mapped arrays (``image_cache``; on disk, N x H x W x 3 bytes)
    and read lazily, so a folder larger than memory trains.

    Args:
        path: the tree's root folder.
        image_size: the side images are resized to; 0 keeps their size.
        seed: the seed of the train/test cut of a tree without a test split.
    Returns:
        (x_train, y_train, x_test, y_test, class_names), images memory-mapped, labels by sorted class name.
    Raises:
        UserError: a missing folder, an unknown layout, an empty class, a damaged image.

    Example:
        >>> x, y, x_test, y_test, names = read_folder("pets", image_size=32)  # doctest: +SKIP
    """
    from sklearn.model_selection import train_test_split

    root = check_folder_source(path)
    skipped: list[str] = []
    layout = _folder_layout(root)
    read = [_class_images(folder, skipped) for folder in layout]
    report_skipped(skipped, f"folder:{root}")
    names = read[0][0]
    if len(read) == 2 and read[1][0] != names:
        raise UserError(f"folder:{root}: train/ and {layout[1].name}/ hold different classes; they must hold the same")
    split_items = [([f for _, f in items], np.asarray([names.index(c) for c, _ in items], np.int32))
                   for _, items in read]
    if len(read) == 1:
        files, y = split_items[0]
        counts = np.bincount(y, minlength=len(names))
        if counts.min() < 2:
            raise UserError(f"folder:{root}: class {names[int(np.argmin(counts))]!r} has {counts.min()} image(s); "
                            "each class needs at least two (one to train on, one to test)")
        tr, te = train_test_split(np.arange(len(y)), test_size=FOLDER_TEST_FRACTION, stratify=y, random_state=seed)
        split_items = [([files[i] for i in tr], y[tr]), ([files[i] for i in te], y[te])]
    return _file_backed(root, f"folder{image_size}-seed{seed}", split_items, None, names,
                        lambda f: decode_image(f.read_bytes(), str(f), image_size))


def read_tfds(name: str) -> tuple:
    """Any tensorflow-datasets image classification set with ``train`` and ``test`` splits."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError(f"dataset tfds:{name} needs tensorflow-datasets: pip install 'prunelora-keras[tfds]'") from None
    try:
        (train, test), info = tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True,
                                        with_info=True)
        train, test = tfds.as_numpy(train), tfds.as_numpy(test)
    except Exception as exc:  # noqa: BLE001 - any loading failure means the same to the user
        raise UserError(f"tensorflow-datasets could not load {name} with train and test splits "
                        f"({exc.__class__.__name__}): pass --data-dir PATH or another --dataset") from None
    names = tuple(info.features["label"].names)
    x_tr, x_te = np.asarray(train[0], np.uint8), np.asarray(test[0], np.uint8)
    if x_tr.shape[-1] == 1:
        x_tr, x_te = np.repeat(x_tr, 3, -1), np.repeat(x_te, 3, -1)
    return x_tr, np.asarray(train[1], np.int32), x_te, np.asarray(test[1], np.int32), names
