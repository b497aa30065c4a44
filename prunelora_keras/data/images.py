"""One image file to one H x W x 3 uint8 array, for every reader (CIFAR-10's trees and archives, any
image folder, TinyImageNet), and the rules on which files are images.

Why one module: each reader used to carry its own decoder and suffix list, and they drifted (webp,
bmp, tif and gif files were skipped without a word; a 16-bit PNG was clipped to white by Pillow's
``convert("RGB")`` instead of scaled). Here the suffixes are those torchvision's ``ImageFolder`` reads
plus GIF (every one Pillow decodes), 16-bit greyscale is scaled to 8 bits, and what a reader skips is
named on stderr with a count (``report_skipped``), never dropped in silence.

Example:
    >>> import io, numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(buf, "PNG")
    >>> decode_image(buf.getvalue(), "white.png")[0, 0].tolist()   # 16-bit white is 8-bit white
    [255, 255, 255]
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence

import numpy as np

from prunelora_keras.errors import UserError

# torchvision.datasets.folder.IMG_EXTENSIONS, and GIF (its first frame), which Pillow reads too
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")
SHOWN_SKIPPED = 20  # file names a skip line lists before it summarises the rest by count


def is_image(name: str) -> bool:
    """Whether a file name has a suffix the readers decode (case-insensitive).

    Example:
        >>> is_image("a/B.WEBP"), is_image("notes.txt")
        (True, False)
    """
    return name.lower().endswith(IMAGE_SUFFIXES)


def report_skipped(skipped: Sequence[str], where: str) -> None:
    """Say on stderr, in one line with a count, which files a reader left out (not images by suffix).

    Args:
        skipped: the skipped files' names (as the user would find them).
        where: the data source, for the line's prefix.

    Example:
        >>> report_skipped(["cats/notes.txt"], "folder:pets")  # doctest: +SKIP
        folder:pets: skipped 1 file that is not an image (...): cats/notes.txt
    """
    if not skipped:
        return
    names = ", ".join(skipped[:SHOWN_SKIPPED])
    more = f" and {len(skipped) - SHOWN_SKIPPED} more" if len(skipped) > SHOWN_SKIPPED else ""
    noun = "file that is not an image" if len(skipped) == 1 else "files that are not images"
    print(f"{where}: skipped {len(skipped)} {noun} (read: {' '.join(IMAGE_SUFFIXES)}): {names}{more}",
          file=sys.stderr, flush=True)


def _to_rgb(image, where: str):
    """``image`` as 8-bit RGB: 16-bit (and 32-bit integer with 16-bit values) greyscale scaled, not clipped."""
    from PIL import Image

    if image.mode == "F":
        raise UserError(f"cannot decode image {where}: it holds floating-point pixels of unknown range; save it as "
                        "8- or 16-bit")
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UserError(f"cannot decode image {where}: 32-bit pixel values outside 0..65535; save it as 8- or "
                            "16-bit")
        image = Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8), "L")
    return image.convert("RGB")


def decode_image(data: bytes, where: str, size: int = 0) -> np.ndarray:
    """One image file's bytes as an H x W x 3 uint8 array.

    Args:
        data: the file's content (any format Pillow reads; GIF: its first frame).
        where: the file's name, for the error line.
        size: resize to ``size`` x ``size`` (bilinear); 0 keeps the image's own size.
    Returns:
        The RGB image: alpha dropped, palettes and greyscale expanded, 16-bit values scaled to 8 bits.
    Raises:
        UserError: a damaged or non-image file, or pixels that have no 8-bit reading (one line naming it).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (3, 2), (9, 8, 7)).save(buf, "BMP")
        >>> decode_image(buf.getvalue(), "x.bmp").shape, decode_image(buf.getvalue(), "x.bmp", 4).shape
        ((2, 3, 3), (4, 4, 3))
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = _to_rgb(opened, where)
        if size:
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image, np.uint8)
    except UnidentifiedImageError:
        raise UserError(f"cannot decode image {where}: the file is corrupt or truncated, or not an image; "
                        "replace or remove it") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"cannot decode image {where} ({exc.__class__.__name__}: {exc}): the file is corrupt or "
                        "truncated; replace or remove it") from None
