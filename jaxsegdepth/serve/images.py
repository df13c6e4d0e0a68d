"""Uploaded images in, PNGs out: decoding with the server's limits, and the plate cache.

An upload is decoded only after its header has been read: a file that is not an image, a
truncated one and one whose header claims more pixels than `max_pixels` (a decompression bomb:
a few kilobytes that would expand to gigabytes) are refused with a `Refused` naming the form
field, before any pixel is decoded.
"""

import collections
import hashlib
import io
import threading
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class Refused(ValueError):
    """A request the server answers with `status` and this message (a client error)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def decode(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of the upload `data` of form field `field`, EXIF orientation applied;
    `Refused` 400 (empty, not an image, truncated) or 413 (over `max_pixels`) naming `field`."""
    if not data:
        raise Refused(400, f"{field}: empty file (expected a PNG, JPEG or other image)")
    too_many = f"more than the server's --max-pixels={max_pixels}"
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # Pillow's own, larger limit
        raise Refused(413, f"{field}: {too_many} ({error})")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise Refused(400, f"{field}: not an image (expected a PNG, JPEG or other image)")
    width, height = image.size
    if width * height > max_pixels:
        raise Refused(413, f"{field}: {width}x{height} pixels, {too_many}")
    try:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise Refused(400, f"{field}: truncated or corrupt image ({error})")


def png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA array; zlib level 1:
    the server's time matters more than a few bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Plates:
    """The last `capacity` plates, by id: the first 16 hex digits of the SHA-256 of the upload,
    so that the same file sent twice is one entry. Thread-safe."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._plates: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def id_of(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    def put(self, plate_id: str, plate: np.ndarray) -> None:
        with self._lock:
            self._plates[plate_id] = plate
            self._plates.move_to_end(plate_id)
            while len(self._plates) > self.capacity:
                self._plates.popitem(last=False)

    def get(self, plate_id: str) -> Optional[np.ndarray]:
        with self._lock:
            plate = self._plates.get(plate_id)
            if plate is not None:
                self._plates.move_to_end(plate_id)
            return plate

    def __len__(self) -> int:
        return len(self._plates)
