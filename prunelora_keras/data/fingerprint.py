"""Content fingerprints of arrays: the key under which a computed result (a model's accuracies, an
adversarial search) is reused only when every byte it was computed from is the same."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...


def update_digest(digest: Digest, *arrays: Any, rows: int = 4096) -> Digest:
    """Feed each array's bytes (C order) into ``digest``, ``rows`` leading rows at a time, so that a lazy
    view (``Rows``, a memory map) is never loaded whole; a hash is a stream, so the slices give the digest
    of the whole array's bytes.

    Args:
        digest: a ``hashlib`` object (anything with ``update(bytes)``).
        *arrays: arrays or array-likes that slice along their first axis (scalars count as one row).
        rows: rows read at a time.
    Returns:
        ``digest``, updated.

    Example:
        >>> import hashlib
        >>> x = np.arange(10_000, dtype=np.int32).reshape(5_000, 2)
        >>> update_digest(hashlib.sha1(), x, rows=7).hexdigest() == hashlib.sha1(x.tobytes()).hexdigest()
        True
    """
    for array in arrays:
        if np.ndim(array) == 0:
            digest.update(np.ascontiguousarray(np.asarray(array)).tobytes())
            continue
        for start in range(0, len(array), rows):
            digest.update(np.ascontiguousarray(np.asarray(array[start:start + rows])).tobytes())
    return digest
