"""Batch streams over host arrays: shuffled index batches (``batches``) and the lazy row gather
(``Rows``) that a data-parallel run uses to fetch only its own shards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class Rows:
    """Rows ``index`` of ``source``: a global batch gathered only where, and as far as, it is needed.

    This is the seam for input sharding. In a data-parallel run ``distributed.Placement.put_batch``
    asks each process only for the rows of its own devices' shards (``rows[start:stop]``), so no
    process gathers the whole global batch. Today ``source`` is the in-memory array every process
    holds (CIFAR-10 fits); a data set that does not fit would pass its own reader instead: anything
    with ``shape``, ``dtype`` and ``__getitem__`` over an array of row numbers, such as a ``grain``
    random-access data source over the files this process's rows live in.

    Args:
        source: the rows to draw from (first axis: examples).
        index: which rows of ``source``, in batch order.
    """

    def __init__(self, source: Any, index: np.ndarray):
        self.source, self.index = source, np.asarray(index)
        self.shape = (len(self.index), *source.shape[1:])
        self.dtype = source.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        """Rows as a numpy array: ``rows[i]``, ``rows[a:b]``, ``rows[int_array]`` or ``rows[bool_mask]``
        (then any further axes), gathered from ``source`` in that order."""
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], tuple(key[1:])
        if not isinstance(first, slice) and np.ndim(first) == 0:  # one row
            return np.asarray(self.source[int(self.index[first])])[rest]
        picked = self.index[first if isinstance(first, slice) else np.asarray(first)]
        return np.asarray(self.source[picked])[(slice(None),) + rest]

    def take(self, index: np.ndarray) -> "Rows":
        """The view of rows ``index`` of this view (no gather): views of views stay lazy."""
        return Rows(self.source, self.index[np.asarray(index)])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = np.asarray(self.source[self.index])
        return rows if dtype is None else rows.astype(dtype)


class AlternatingFlip:
    """Images mirrored on alternate epochs (airbench's "alternating flip", Jordan 2024): a random half
    of the images is mirrored in the first epoch, and every image is shown mirrored in every other
    epoch after, so each sees both sides in any two consecutive epochs (random flips repeat a side
    half the time).

    An array-like over ``images`` (``shape``, ``dtype``, row indexing) for one epoch: ``Rows`` and the
    batch streams read it like the array itself. Which half starts mirrored is a function of
    ``seed`` alone, so a resumed run agrees.

    Args:
        images: the stored images (n, height, width, channels).
        seed: draws the first epoch's half.
        epoch: the epoch, counted from 1.

    Example:
        >>> x = np.arange(8, dtype=np.uint8).reshape(2, 1, 4, 1)
        >>> first, second = AlternatingFlip(x, 0, 1)[np.arange(2)], AlternatingFlip(x, 0, 2)[np.arange(2)]
        >>> bool(((first == x) | (first == x[:, :, ::-1])).all()), bool((second == first[:, :, ::-1]).all())
        (True, True)
    """

    def __init__(self, images: np.ndarray, seed: int, epoch: int):
        self.images = images
        self.shape, self.dtype = images.shape, images.dtype
        self.mirror = np.random.default_rng([seed, 7919]).random(len(images)) < 0.5
        if (epoch - 1) % 2 == 1:
            self.mirror = ~self.mirror

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: Any) -> np.ndarray:
        index = np.arange(len(self.images))[key]
        rows = np.asarray(self.images[index])
        mirror = self.mirror[index]
        if np.ndim(index) == 0:
            return rows[:, ::-1] if mirror else rows
        return np.where(mirror.reshape(-1, *([1] * (rows.ndim - 1))), rows[:, :, ::-1], rows)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self[np.arange(len(self.images))]
        return rows if dtype is None else rows.astype(dtype)


def batches(x: np.ndarray | list[np.ndarray], y: np.ndarray, batch_size: int,
            rng: np.random.Generator | None = None, drop_last: bool = False,
            lazy: bool = False) -> Iterator[tuple[Any, np.ndarray]]:
    """Batches in order, or shuffled by ``rng``. The last partial batch is kept unless ``drop_last``.

    ``x`` may be a list of arrays (a model with several inputs); each is indexed alike. ``lazy``:
    each batch's inputs are ``Rows`` views, gathered only where they are placed (the training loop's
    streams: each process gathers its own devices' rows only).
    """
    order = rng.permutation(len(y)) if rng is not None else np.arange(len(y))
    stop = len(y) - (len(y) % batch_size if drop_last else 0)
    take = (lambda a, idx: Rows(a, idx)) if lazy else (lambda a, idx: a[idx])
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield ([take(a, idx) for a in x] if isinstance(x, (list, tuple)) else take(x, idx)), y[idx]


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
