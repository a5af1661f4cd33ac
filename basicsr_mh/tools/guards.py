"""Guards for the untrusted input the tools meet besides checkpoints: image headers and output names.

* :func:`oversized_image` reads only an image's header and says when it claims more pixels than a limit, so a
  file crafted to decompress into gigabytes is refused before it is decoded.
* :func:`output_file` and :func:`write_atomic` keep every file a tool writes inside its output folder: a name is a
  plain file name (no folder part, no ``..``), an existing symbolic link is never written through, and a write goes
  to a temporary file renamed over the target (a link made meanwhile is replaced, not followed).
"""
import os
import warnings
from PIL import Image

from basicsr_mh.models.checkpoint import atomic_file
from basicsr_mh_cli.parsers import DEFAULT_MAX_PIXELS  # noqa: F401  (100 megapixels; 0 turns the limit off)
from .common import ToolError


def header_size(path):
    """``(width, height)`` that the header of image ``path`` claims, read without decoding the pixels; None when
    Pillow does not know the format (OpenCV then decodes it under its own limit, ``OPENCV_IO_MAX_IMAGE_PIXELS``)."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # Pillow's own bomb check would raise before the size can be read
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with Image.open(path) as img:
                return tuple(int(v) for v in img.size)
    except Exception:  # noqa: BLE001  (not an image Pillow knows: unidentified, truncated header, ...)
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def oversized_image(path, max_pixels):
    """A one-line reason when the header of image ``path`` claims more than ``max_pixels`` pixels, else None.

    Args:
        path (str): image file.
        max_pixels (int): the limit; 0 or None: no limit.
    """
    if not max_pixels:
        return None
    size = header_size(path)
    if size is None or size[0] * size[1] <= max_pixels:
        return None
    return (f'its header claims {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, above --max-pixels '
            f'{max_pixels:,} (not decoded; raise --max-pixels if you trust the file)')


def output_file(output_dir, name):
    """The path of file ``name`` inside ``output_dir``, refusing any name or link that would lead out of it.

    Raises:
        ToolError: ``name`` has a folder part, is ``.``/``..``/empty, or the target is an existing symbolic link.
    """
    if (not name or name in ('.', '..') or os.path.basename(name) != name or '\0' in name
            or (os.altsep and os.altsep in name)):
        raise ToolError(f'output name "{name}" is not a plain file name; nothing is written outside --output.')
    path = os.path.join(output_dir, name)
    if os.path.islink(path):
        raise ToolError(f'"{path}" is a symbolic link (to "{os.readlink(path)}"); outputs are never written through '
                        'links, which can point outside --output. Fix: remove the link or choose another --output.')
    return path


def write_atomic(path, data):
    """Write ``data`` (bytes) to ``path`` through a temporary file in the same folder and a rename
    (:func:`basicsr_mh.models.checkpoint.atomic_file`): a reader never sees half a file, and a symbolic link at
    ``path`` is replaced rather than followed."""
    with atomic_file(path) as f:
        f.write(data)
