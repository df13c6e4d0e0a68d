"""A clip from a fixed camera with known masks: one synthetic sample's figures, cut out along
their true mask, walk across the sample's plate, with sensor noise on every frame. The video tests and
`tools/video_speed.py` predict it and score the masks."""

import numpy as np

from jaxsegdepth.data.synthetic.samples import render


def moving_figure(
    frames: int, size: int, scene: tuple = (0, 11), noise: float = 2.0, seed: int = 0
) -> tuple[np.ndarray, list, list]:
    """(the sample's plate, the frames, their true masks) of sample `scene` = (seed, index)
    rendered at `size`: uint8 RGB (size, size, 3) images and bool (size, size) masks. The
    band of columns holding its figures crosses from the left edge to the right one in
    `frames` frames; each frame gets its
    own Gaussian noise of standard deviation `noise` (of 255)."""
    sample = render(*scene, size)
    plate, whole = sample["bg"], sample["mask"] > 127
    columns = np.flatnonzero(whole.any(axis=0))
    left, width = columns[0], columns[-1] + 1 - columns[0]
    figure_mask = whole[:, left : left + width]
    figure = sample["bg_fg"][:, left : left + width]
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for t in range(frames):
        x = int(round(t * (size - width) / max(1, frames - 1)))
        mask = np.zeros((size, size), bool)
        mask[:, x : x + width] = figure_mask
        image = plate.copy()
        image[mask] = figure[figure_mask]
        noisy = image + rng.normal(0.0, noise, image.shape)
        images.append(np.clip(np.round(noisy), 0, 255).astype(np.uint8))
        masks.append(mask)
    return plate, images, masks
