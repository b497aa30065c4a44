"""CIFAR-10 from its usual sources, as uint8 arrays (``load_cifar10``).

Sources, in order: ``data_dir`` (the official ``cifar-10-batches-py`` folder, an image-folder
tree ``train/<class>/*`` + ``test/<class>/*``, or a ``.tar.gz``/``.tar``/``.zip`` of that tree),
else Keras's own download and cache. ``tfds:cifar10`` reads through tensorflow-datasets. Decoded
image folders and archives are cached as ``.npz`` files keyed by the source's path, size and
modification time, so the second load skips JPEG decoding. Every damaged or unreadable source
ends in one ``UserError`` line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import os
import pickle
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from prunelora_keras.data.datasets import Dataset
from prunelora_keras.data.images import decode_image, is_image, report_skipped
from prunelora_keras.errors import UserError
from prunelora_keras.parallel.multihost import first_on_process_0

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# REFERENCE.md: the unlearning and evaluation normalisation, used throughout (also for pretraining).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# What a damaged archive raises while it is read: tarfile/zipfile errors, a truncated or corrupt
# gzip/xz/deflate stream, and zip features we cannot read (encryption, unknown compression).
ARCHIVE_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError,
                  NotImplementedError, RuntimeError)



def cache_dir() -> Path:
    """Where decoded arrays are cached: ``$PRUNELORA_CACHE`` or ``~/.cache/prunelora_keras``."""
    root = os.environ.get("PRUNELORA_CACHE") or Path.home() / ".cache" / "prunelora_keras"
    return Path(root)


def _cache_key(path: Path) -> str:
    """Identity of a source: its absolute path, and size+mtime of it (or of every file under it), and the
    name of every folder under it: class names come from folders, so removing an empty class folder (as a
    reader's error advises) must miss the cache that still names that class."""
    h = hashlib.sha256(str(path.resolve()).encode())
    entries = [path] if path.is_file() else sorted(path.rglob("*"))
    for f in entries:
        rel = f.relative_to(path) if f != path else ""
        if f.is_dir():
            h.update(f"{rel}/".encode())
        elif f.is_file():
            st = f.stat()
            h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _label_order(class_names: list[str]) -> list[str]:
    """CIFAR-10's own label order when the folder names are its classes, else sorted names."""
    if set(class_names) == set(CIFAR10_CLASSES):
        return list(CIFAR10_CLASSES)
    return sorted(class_names)


def _assemble(items: dict[str, dict[str, list[tuple[str, bytes]]]], source: str) -> tuple:
    """``items[split][class] = [(name, bytes)]`` -> arrays, labels in CIFAR-10 order, files sorted by name."""
    for split in ("train", "test"):
        if not items.get(split):
            raise UserError(f"{source} has no {split}/<class>/ images: expected train/<class>/*.jpg and test/<class>/*.jpg")
    names = _label_order(list(items["train"]))
    only_test = sorted(set(items["test"]) - set(names))
    if only_test:
        raise UserError(f"{source}: class {only_test[0]!r} has test/ images but no train/ images: "
                        "every class needs training images")
    only_train = sorted(set(names) - set(items["test"]))
    if only_train:
        raise UserError(f"{source}: class {only_train[0]!r} has train/ images but no test/ images: "
                        "train/ and test/ must hold the same classes")
    arrays = []
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(names):
            for name, data in sorted(items[split][cls]):
                xs.append(decode_image(data, f"{source}:{name}"))
                ys.append(label)
        shapes = {x.shape for x in xs}
        if len(shapes) != 1:
            raise UserError(f"{source}: images of different sizes {sorted(shapes)[:3]}; all must have one shape")
        arrays += [np.stack(xs), np.asarray(ys, dtype=np.int32)]
    return (*arrays, tuple(names))


def _split_class(parts: tuple[str, ...]) -> tuple[str, str] | None:
    """(split, class) for a member path ``.../train/<class>/<file>``, else None."""
    for i in range(len(parts) - 2):
        if parts[i] in ("train", "test") and i == len(parts) - 3:
            return parts[i], parts[i + 1]
    return None


def _read_image_folder(root: Path) -> tuple:
    items: dict = {"train": {}, "test": {}}
    skipped = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        key = _split_class(rel.parts)
        if key and path.is_file():
            if not is_image(path.name):
                skipped.append(str(rel))
                continue
            try:
                payload = path.read_bytes()
            except OSError as exc:
                raise UserError(f"cannot read image {path} ({exc.__class__.__name__}): check its permissions") from None
            items[key[0]].setdefault(key[1], []).append((str(rel), payload))
    report_skipped(skipped, str(root))
    return _assemble(items, str(root))


def _read_archive(path: Path) -> tuple:
    items: dict = {"train": {}, "test": {}}
    skipped = []
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    key = _split_class(tuple(Path(info.filename).parts))
                    if key and not info.is_dir():
                        if is_image(info.filename):
                            items[key[0]].setdefault(key[1], []).append((info.filename, zf.read(info)))
                        else:
                            skipped.append(info.filename)
        else:
            with tarfile.open(path, "r:*") as tf:
                for member in tf:
                    key = _split_class(tuple(Path(member.name).parts))
                    if member.isfile() and key:
                        if is_image(member.name):
                            items[key[0]].setdefault(key[1], []).append((member.name, tf.extractfile(member).read()))
                        else:
                            skipped.append(member.name)
    except ARCHIVE_ERRORS as exc:
        raise UserError(f"cannot read archive {path} ({exc.__class__.__name__}: {exc}): the file is corrupt, "
                        "truncated or not a tar/zip archive; download it again") from None
    report_skipped(skipped, str(path))
    return _assemble(items, str(path))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a batch file is data, never code.

    ``pickle.load`` would call any function a file names; a doctored batch file could run
    commands. The official batches need only numpy's array reconstruction.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def _read_batches_py(folder: Path) -> tuple:
    """The official python release: data_batch_1..5 and test_batch, rows of 3072 bytes in CHW order."""

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            with open(folder / name, "rb") as f:
                batch = _ArrayUnpickler(f, encoding="bytes").load()
        except FileNotFoundError:
            raise UserError(f"{folder} lacks {name}: expected the official cifar-10-batches-py folder") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                KeyError, OSError, MemoryError) as exc:
            raise UserError(f"{folder / name} is corrupt or not a CIFAR-10 batch ({exc.__class__.__name__}: {exc}): "
                            "download CIFAR-10 again") from None
        try:
            x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(batch[b"labels"], dtype=np.int32)
        except (TypeError, KeyError, ValueError, IndexError, OverflowError) as exc:
            raise UserError(f"{folder / name} is not a CIFAR-10 batch ({exc.__class__.__name__}: {exc}): expected "
                            "a dict with b'data' (N x 3072 bytes) and b'labels'; download CIFAR-10 again") from None
        return x, y

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return x_train, y_train, x_test, y_test, CIFAR10_CLASSES


def _cached(path: Path, reader, tag: str = "imagefolder") -> tuple:
    """Decode ``path`` with ``reader`` once; later loads read the ``.npz`` cache (``tag``: what the
    reader makes of the files, e.g. the size images are resized to, so that it is part of the key).

    In a multi-process job process 0 decodes and writes the cache while the others wait; they then
    read it (or decode for themselves where they cannot see process 0's cache folder)."""
    target = cache_dir() / f"{tag}-{_cache_key(path)}.npz"

    def load() -> tuple:
        arrays = _read_cache(target)
        if arrays is None:
            arrays = reader(path)
            _write_cache(target, arrays)
        return arrays

    return first_on_process_0(load, "data cache")


def _read_cache(target: Path) -> tuple | None:
    if not target.is_file():
        return None
    try:
        with np.load(target, allow_pickle=False) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"], tuple(str(c) for c in z["classes"])
    except (OSError, ValueError, KeyError, EOFError):
        return None  # a damaged cache entry is rebuilt


def _write_cache(target: Path, arrays: tuple) -> None:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}.npz")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3],
                 classes=np.asarray(arrays[4]))
        os.replace(tmp, target)
    except OSError:  # the cache only saves time: an unwritable cache folder must not stop the run
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def read_cifar10_dir(path: str | Path) -> tuple:
    """Read any of the three ``data_dir`` layouts. Returns x_train, y_train, x_test, y_test, classes."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"--data-dir {path} does not exist: point it at CIFAR-10 or use --preset quick (digits, offline)")
    if path.is_file():
        if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
            raise UserError(f"--data-dir {path} is a file but not a .tar.gz/.tar/.zip archive of train/ and test/ folders")
        if not os.access(path, os.R_OK):
            raise UserError(f"--data-dir {path} cannot be read: check its permissions")
        return _cached(path, _read_archive)
    if not path.is_dir():
        raise UserError(f"--data-dir {path} is neither a folder nor an archive: pass a folder or a .tar.gz/.tar/.zip")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UserError(f"--data-dir {path} is a folder that cannot be read: check its permissions")
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file():
            return _read_batches_py(candidate)
    if any(path.rglob("train")):
        return _cached(path, _read_image_folder)
    raise UserError(f"--data-dir {path} holds neither cifar-10-batches-py nor train/<class>/ and test/<class>/ images")


def _keras_cifar10() -> tuple:
    """Keras's own CIFAR-10: the cached download if present, else a download attempt."""
    cached = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets" / "cifar-10-batches-py"
    if (cached / "data_batch_1").is_file():
        return _read_batches_py(cached)
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # noqa: BLE001 - any download failure means the same to the user
        raise UserError(
            f"CIFAR-10 was not found and could not be downloaded ({exc.__class__.__name__}): "
            "pass --data-dir PATH (cifar-10-batches-py, image folders or a .tar.gz of them) or use --preset quick"
        ) from None
    return x_train, y_train.reshape(-1).astype(np.int32), x_test, y_test.reshape(-1).astype(np.int32), CIFAR10_CLASSES


def _tfds_cifar10() -> tuple:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise UserError("dataset tfds:cifar10 needs tensorflow-datasets: pip install 'prunelora-keras[tfds]'") from None
    try:
        train, test = tfds.as_numpy(tfds.load("cifar10", split=["train", "test"], batch_size=-1, as_supervised=True))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"tensorflow-datasets could not load cifar10 ({exc.__class__.__name__}): pass --data-dir PATH instead") from None
    return train[0], train[1].astype(np.int32), test[0], test[1].astype(np.int32), CIFAR10_CLASSES


def load_cifar10(data_dir: str = "", source: str = "cifar10") -> Dataset:
    if source == "tfds:cifar10":  # downloads: process 0 first, into the cache the others then read
        arrays = first_on_process_0(_tfds_cifar10, "tfds cifar10")
    elif data_dir:
        arrays = read_cifar10_dir(data_dir)
    else:
        arrays = first_on_process_0(_keras_cifar10, "keras cifar10")
    x_train, y_train, x_test, y_test, classes = arrays
    return Dataset("cifar10", x_train, y_train, x_test, y_test, tuple(classes), CIFAR10_MEAN, CIFAR10_STD)
