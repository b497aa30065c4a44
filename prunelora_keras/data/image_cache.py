"""Image folders larger than memory: decode once into a memory-mapped ``.npy`` cache, read rows lazily.

``read_folder`` and ``read_tinyimagenet`` list their files first, then hand them here. Each split's
images are decoded one at a time into an uint8 array file (``numpy.lib.format.open_memmap``: peak
memory one image, whatever the number of files), written to a temporary name and renamed when
complete, so an interrupted decode leaves no half cache. Later runs open the arrays with
``mmap_mode="r"``: the operating system pages rows in as batches ask for them and drops them under
memory pressure. ``datasets.make_split`` then keeps every subset of such an array as a
``batches.Rows`` view (an index array, no copy), so training, evaluation and the prefix cache gather
only the rows of each batch.

What it costs on disk: exactly the decoded pixels, N x H x W x 3 bytes (TinyImageNet's 100,000
training images at 64x64: 1.23 GB; 10,000 validation images: 123 MB), in ``$PRUNELORA_CACHE`` (default
``~/.cache/prunelora_keras``), keyed by the folder's path, file sizes and modification times.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> x = decode_to_file([b"a", b"b"], lambda item: np.full((2, 2, 3), item[0], np.uint8), (2, 2, 3), d / "x.npy")
    >>> int(x[1, 0, 0, 0]), type(x).__name__
    (98, 'memmap')
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prunelora_keras.errors import UserError

SPLITS = ("x_train", "y_train", "x_test", "y_test")


def decode_to_file(items: Sequence[Any], decode: Callable[[Any], np.ndarray], shape: tuple[int, int, int],
                   target: Path, label: str = "images") -> np.memmap:
    """Decode ``items`` one by one into the uint8 array file ``target`` (N x ``shape``); its memory map.

    Args:
        items: what ``decode`` reads, one per image (e.g. file paths), in row order.
        decode: item -> uint8 H x W x 3 image of ``shape``.
        shape: every image's shape.
        target: the ``.npy`` file; written under a temporary name, renamed when complete.
        label: what the progress line calls the images.
    Returns:
        The finished array, opened read-only as a memory map.
    Raises:
        UserError: an image whose shape is not ``shape`` (one line naming the file and the fix).
    """
    tmp = target.with_name(target.name + f".tmp{os.getpid()}.npy")
    target.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), *shape))
    start, shown = time.perf_counter(), 0.0
    try:
        for i, item in enumerate(items):
            image = decode(item)
            if image.shape != tuple(shape):
                raise UserError(f"{item}: images of different sizes; set data.image_size (e.g. 32) to resize them "
                                f"(this one {image.shape[1]}x{image.shape[0]}, the first {shape[1]}x{shape[0]})")
            out[i] = image
            now = time.perf_counter()
            if now - shown > 10 and i:
                shown = now
                eta = (now - start) / (i + 1) * (len(items) - i - 1)
                print(f"decoding {label}: {i + 1}/{len(items)} ETA {eta:.0f}s", file=sys.stderr, flush=True)
        out.flush()
        del out
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return np.load(target, mmap_mode="r")


def read_cached(folder: Path) -> tuple | None:
    """A finished cache folder's arrays, or None when it is absent or incomplete.

    Args:
        folder: a folder ``write_cached`` wrote.
    Returns:
        (x_train, y_train, x_test, y_test, class_names), images memory-mapped read-only, labels in
        memory; None if ``classes.json`` (written last) or an array is missing or damaged.

    Example:
        >>> import tempfile, pathlib
        >>> read_cached(pathlib.Path(tempfile.mkdtemp())) is None
        True
    """
    try:
        names = json.loads((folder / "classes.json").read_text())
        arrays = [np.load(folder / f"{name}.npy", mmap_mode="r" if name.startswith("x") else None) for name in SPLITS]
    except (OSError, ValueError):
        return None  # absent or damaged: decoded again
    return (*arrays, tuple(names))


def write_cached(folder: Path, split_items: Sequence[tuple[Sequence[Any], np.ndarray]],
                 decode: Callable[[Any], np.ndarray], shape: tuple[int, int, int] | None, classes: Sequence[str]) -> tuple:
    """Decode the train and test items into ``folder`` (memory-mapped images, ``.npy`` labels, the class
    names last, which marks the folder complete).

    Args:
        folder: the cache folder (created).
        split_items: [(train items, train labels), (test items, test labels)].
        decode: item -> uint8 H x W x 3 image.
        shape: every image's shape; None: the first training image's.
        classes: the class names, in label order.
    Returns:
        The arrays, as ``read_cached`` returns them.

    Example:
        >>> import tempfile, pathlib
        >>> arrays = write_cached(pathlib.Path(tempfile.mkdtemp()), [([1, 2], [0, 1]), ([3], [1])],
        ...                       lambda i: np.full((2, 2, 3), i, np.uint8), None, ["a", "b"])
        >>> arrays[0].shape, arrays[3].tolist(), arrays[4]
        ((2, 2, 2, 3), [1], ('a', 'b'))
    """
    if shape is None:
        shape = tuple(decode(split_items[0][0][0]).shape)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classes.json").unlink(missing_ok=True)
    for (items, labels), (x_name, y_name) in zip(split_items, (("x_train", "y_train"), ("x_test", "y_test"))):
        decode_to_file(items, decode, shape, folder / f"{x_name}.npy", label=x_name[2:])
        np.save(folder / f"{y_name}.npy", np.asarray(labels, np.int32))
    tmp = folder / f"classes.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(list(classes)))
    os.replace(tmp, folder / "classes.json")
    arrays = read_cached(folder)
    assert arrays is not None
    return arrays


def disk_bytes(arrays: tuple) -> int:
    """Bytes the cached images take on disk (the memory-mapped arrays of ``read_cached``'s tuple).

    Example:
        >>> import tempfile, pathlib
        >>> arrays = write_cached(pathlib.Path(tempfile.mkdtemp()), [([1], [0]), ([2], [0])],
        ...                       lambda i: np.zeros((4, 4, 3), np.uint8), (4, 4, 3), ["a"])
        >>> disk_bytes(arrays)
        96
    """
    return int(sum(a.size for a in arrays[:4] if isinstance(a, np.memmap)))
