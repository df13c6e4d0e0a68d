"""The one input normalisation, and the reference's statistics.

Inputs are RGB scaled to [0, 1] (uint8 is divided by 255), then standardised per channel with
the dataset's mean and std. The loader ships uint8; the jitted steps normalise on the device
(`preprocess`), exported models inside themselves. `normalize` takes NumPy or JAX arrays
(traced ones too) and returns the same kind.
"""

import jax
import jax.numpy as jnp
import numpy as np

# The reference's normalisation of MODEST Museum (inputs only, docs/reference.md): (mean, std).
MODEST_NORMALIZATION = {
    "bg": ((0.40086, 0.46599, 0.53281), (0.25451, 0.24249, 0.23615)),
    "bg_fg": ((0.41221, 0.47368, 0.53431), (0.25699, 0.24577, 0.24217)),
}


def normalize(images, mean, std):
    """(..., 3) uint8 or [0, 1] float RGB -> float32 `(x - mean) / std` with x in [0, 1]: one
    multiply-add per value (the scale folds in the 1/255 of uint8)."""
    xp = jnp if isinstance(images, jax.Array) else np
    images = images if xp is jnp else np.asarray(images)
    std = np.asarray(std, np.float64)
    scale = 1.0 / (std * 255.0) if images.dtype == np.uint8 else 1.0 / std
    offset = -np.asarray(mean, np.float64) / std
    return images.astype(xp.float32) * scale.astype(np.float32) + offset.astype(np.float32)
