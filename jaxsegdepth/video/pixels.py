"""The few pixel operations the video modules share: resizing, probabilities as 8-bit values,
colour maps as lookup tables (OpenCV and NumPy, fast enough to keep up with a clip)."""

import cv2
import numpy as np
from matplotlib import colormaps


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` at `size` = (h, w): area averaging to shrink, bilinear otherwise; as it is when
    already that size."""
    height, width = image.shape[:2]
    if (height, width) == tuple(size):
        return image
    shrink = size[0] <= height and size[1] <= width
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size[1], size[0]), interpolation=interpolation)


def to_uint8(probability: np.ndarray) -> np.ndarray:
    """[0, 1] floats as 0-255, rounded."""
    return (np.clip(probability, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colormap_lut(name: str) -> np.ndarray:
    """The matplotlib colour map `name` as a (256, 3) uint8 RGB table, indexed by 0-255 values."""
    if name not in colormaps:
        raise ValueError(f"colormap={name!r} is not a matplotlib colour map (e.g. viridis, turbo)")
    return to_uint8(colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3])
