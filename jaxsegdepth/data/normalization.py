"""The one normalise/denormalise pair for model inputs, and the reference's statistics.

Inputs are RGB scaled to [0, 1] (uint8 is divided by 255), then standardised per channel with
the dataset's mean and std; the loader, `mode=predict`, exported models and the preview grids
all go through these two functions. NumPy only, so exported-model users need nothing else.
"""
import functools

import numpy as np

# SPEC normalisation of MODEST Museum (inputs only), per channel: (mean, std).
MODEST_NORMALIZATION = {
    "bg": ((0.40086, 0.46599, 0.53281), (0.25451, 0.24249, 0.23615)),
    "bg_fg": ((0.41221, 0.47368, 0.53431), (0.25699, 0.24577, 0.24217)),
}


@functools.lru_cache(maxsize=64)
def _affine_row(mean: tuple, std: tuple, width: int, from_uint8: bool):
    """(scale, offset) tiled over one image row of `width` RGB pixels: a per-channel affine map
    over a length-3 axis is ~8x slower in NumPy than over a (..., W*3) view."""
    std = np.asarray(std, np.float64)
    scale = 1.0 / (std * 255.0) if from_uint8 else 1.0 / std
    offset = -np.asarray(mean, np.float64) / std
    return np.tile(scale, width).astype(np.float32), np.tile(offset, width).astype(np.float32)


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """(..., W, 3) uint8 or [0, 1] float RGB -> float32 `(x - mean) / std` with x in [0, 1]."""
    images = np.asarray(images)
    *lead, width, channels = images.shape
    scale, offset = _affine_row(tuple(map(float, mean)), tuple(map(float, std)), width,
                                images.dtype == np.uint8)
    rows = images.reshape(*lead, width * channels).astype(np.float32)
    rows *= scale
    rows += offset
    return rows.reshape(images.shape)


def denormalize(images: np.ndarray, mean, std) -> np.ndarray:
    """Normalised (..., 3) images back to float32 RGB in [0, 1] (for drawing)."""
    images = np.asarray(images, np.float32)
    return np.clip(images * np.asarray(std, np.float32) + np.asarray(mean, np.float32), 0.0, 1.0)
