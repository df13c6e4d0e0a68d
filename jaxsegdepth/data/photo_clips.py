"""Clips of real photographs from a hand-held camera, with known masks and camera motion: the
shaky-camera check of plate registration (`align.Tracker`; tools/align_speed.py, the video
tests). Built from `photos`' photographs, crops and shapes."""

import dataclasses

import numpy as np

from jaxsegdepth.data import photos, synthetic


@dataclasses.dataclass(frozen=True)
class Clip:
    """A clip of a photograph from a camera held by hand (`shaky_clip`): the plate, the frames,
    their true masks and the true camera motion of each frame against the plate."""

    plate: np.ndarray  # (size, size, 3) uint8 RGB
    frames: list  # (size, size, 3) uint8 RGB each
    masks: list  # (size, size) bool each
    motions: list  # (dx, dy, degrees) of each frame's window against the plate's


def shaky_clip(
    index: int,
    frames: int,
    size: int = synthetic.SIZE,
    jitter_px: float = 0.0,
    drift_px: float = 0.0,
    drift_deg: float = 0.0,
    seed: int = 0,
) -> Clip:
    """Clip `index`: a blob of another photograph crosses a photograph seen from a camera that
    drifts steadily by up to `drift_px` pixels and `drift_deg` degrees over the clip with
    `jitter_px` of random shake per frame around that drift (0, 0, 0: a still camera; the same
    clip otherwise). The plate is the camera's first view, before it moved."""
    rng = np.random.default_rng([int(seed), int(index), 4])
    back, front = rng.choice(len(photos.PHOTOS), 2, replace=False)
    image, source = photos.photo(photos.PHOTOS[back]), photos.photo(photos.PHOTOS[front])
    reach = drift_px + 3 * jitter_px + 0.75 * size * np.sin(np.deg2rad(drift_deg))
    top, left, side = photos.square_box(rng, image)
    margin = int(np.ceil(side / size * reach)) + 3
    side = min(side, min(image.shape[:2]) - 2 * margin)
    box = (
        int(np.clip(top, margin, image.shape[0] - side - margin)),
        int(np.clip(left, margin, image.shape[1] - side - margin)),
        side,
    )
    pasted = photos.crop(source, photos.square_box(rng, source), size)
    blob = photos.blobs(np.random.default_rng([int(seed), int(index), 5]), size)
    rows, columns = np.nonzero(blob)
    blob = blob[rows.min() : rows.max() + 1, columns.min() : columns.max() + 1]
    direction = rng.uniform(0, 2 * np.pi)
    shake = rng.normal(0.0, jitter_px, (frames, 2))
    clip = Clip(photos.view(image, box, size), [], [], [])
    for t in range(frames):
        along = t / max(1, frames - 1)
        move = drift_px * along * np.array([np.cos(direction), np.sin(direction)]) + shake[t]
        angle = drift_deg * along
        view = photos.view(image, box, size, move, angle)
        mask = np.zeros((size, size), bool)
        x = int(round(along * (size - blob.shape[1])))
        photos.paste(mask, blob, (size - blob.shape[0]) // 2, x)
        clip.frames.append(np.where(mask[..., None], pasted, view))
        clip.masks.append(mask)
        clip.motions.append((float(move[0]), float(move[1]), float(angle)))
    return clip
