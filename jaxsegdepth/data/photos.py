"""Held-out pairs made of real photographs: a check beyond the generator's own scenes.

scikit-image ships a few natural photographs inside its wheel (nothing is downloaded). Pair
`index` takes one of them as the background (a random square crop, resized to `size`) and
pastes 1-3 regions of another photograph through figure silhouettes drawn as the synthetic
scenes' figures are (person-like or sculpture-like, random height and place). Both images are
JPEG-encoded at the synthetic inputs' quality, the mask at the targets'. Only the mask is known:
these pairs have no depth. Deterministic per `(seed, index)`.
"""
import functools

import numpy as np
import skimage.data
from PIL import Image

from jaxsegdepth.data import synthetic

# scikit-image loaders of natural photographs (grayscale ones are made RGB).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "grass", "gravel",
          "stereo_motorcycle")


@functools.cache
def photo(name: str) -> np.ndarray:
    """The photograph `name` of `PHOTOS` as a uint8 (H, W, 3) array."""
    image = getattr(skimage.data, name)()
    image = image[0] if isinstance(image, tuple) else image  # the motorcycle: its left view
    return np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]


def _square(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """A random square crop (side 50-100% of the shorter one), resized to size x size."""
    height, width = image.shape[:2]
    side = int(min(height, width) * rng.uniform(0.5, 1.0))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = Image.fromarray(image[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def render(seed: int, index: int, size: int = synthetic.SIZE) -> dict[str, np.ndarray]:
    """Pair `index`: uint8 bg, bg_fg (size, size, 3) and mask (size, size) of 0/255, before
    JPEG. bg_fg equals bg outside the mask."""
    rng = np.random.default_rng([int(seed), int(index), 1])  # apart from the scenes' streams
    back, front = rng.choice(len(PHOTOS), 2, replace=False)
    bg = _square(rng, photo(PHOTOS[back]), size)
    pasted = _square(rng, photo(PHOTOS[front]), size)
    mask = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, 4))):
        shape = synthetic.silhouette(rng, int(size * rng.uniform(0.25, 0.7)))
        height, width = shape.shape
        top = int(rng.integers(0, size - height + 1))
        left = int(rng.integers(-(width // 3), size - 2 * width // 3))
        window = mask[top:top + height, max(left, 0):left + width]
        window |= shape[:, max(-left, 0):max(-left, 0) + window.shape[1]]
    bg_fg = np.where(mask[..., None], pasted, bg)
    return {"bg": bg, "bg_fg": bg_fg, "mask": mask.astype(np.uint8) * 255}


def generate(seed: int, index: int, size: int = synthetic.SIZE) -> dict[str, bytes]:
    """Pair `index` as JPEG bytes keyed bg, bg_fg, mask (the qualities of the synthetic set)."""
    pair = render(seed, index, size)
    return {key: synthetic.encode_jpeg(image, synthetic.JPEG_QUALITY_RGB if image.ndim == 3
                                       else synthetic.JPEG_QUALITY_TARGET)
            for key, image in pair.items()}
