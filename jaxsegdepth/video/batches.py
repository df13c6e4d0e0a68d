"""What flows between the stages of `predict_clip`: the reader's fixed-shape `Batch` of frames
at the model's size (the last one padded, so the model compiles once) and the model's
`Predicted` probabilities on their way to the writers."""

import dataclasses
from typing import Callable, Iterator, Optional

import cv2
import numpy as np

from jaxsegdepth.video import clips, pixels

STATIC_LEVEL = 10  # plate and frame agree where no channel differs by this much (of 255)


@dataclasses.dataclass
class Batch:
    count: int  # real frames; the rest of model_rgb repeats the last one
    model_rgb: np.ndarray  # (batch_size, h, w, 3) uint8 RGB, what predict_fn sees
    plate_rgb: np.ndarray  # (batch_size, h, w, 3) uint8 RGB, the plate registered per frame
    static: np.ndarray  # (count, h, w) bool: the frame agrees with the plate there
    clip_bgr: list  # the real frames at the clip's size, uint8 BGR, for outputs that show them


@dataclasses.dataclass
class Predicted:
    count: int
    probabilities: dict  # head -> (count, h, w) float32 at the model's size
    clip_bgr: list


Register = Optional[Callable[[np.ndarray], np.ndarray]]  # frame (model size) -> its plate


def from_frames(
    frames: Iterator[np.ndarray],
    plate_model_rgb: np.ndarray,
    batch_size: int,
    keep_clip: bool,
    register: Register = None,
) -> Iterator[Batch]:
    """Fixed-shape batches of `frames`, each frame's plate `register(frame)` (in frame order;
    None: the plate as it is); frames read before a `clips.ClipBroken` still come out (the
    last batch padded) before it is raised."""
    pending = []
    broken = None
    try:
        for frame in frames:
            pending.append(frame)
            if len(pending) == batch_size:
                yield make_batch(pending, plate_model_rgb, batch_size, keep_clip, register)
                pending = []
    except clips.ClipBroken as error:
        broken = error
    if pending:
        yield make_batch(pending, plate_model_rgb, batch_size, keep_clip, register)
    if broken is not None:
        raise broken


def make_batch(
    frames: list,
    plate_model_rgb: np.ndarray,
    batch_size: int,
    keep_clip: bool,
    register: Register = None,
) -> Batch:
    """`frames` (uint8 BGR at the clip's size) as one batch, padded to `batch_size`."""
    model_rgb = np.empty((batch_size, *plate_model_rgb.shape), np.uint8)
    plate_rgb = np.empty_like(model_rgb)
    static = np.empty((len(frames), *plate_model_rgb.shape[:2]), bool)
    for slot, frame in enumerate(frames):
        small = pixels.resize(frame, plate_model_rgb.shape[:2])
        cv2.cvtColor(small, cv2.COLOR_BGR2RGB, dst=model_rgb[slot])
        plate_rgb[slot] = plate_model_rgb if register is None else register(model_rgb[slot])
        static[slot] = cv2.absdiff(model_rgb[slot], plate_rgb[slot]).max(axis=2) < STATIC_LEVEL
    model_rgb[len(frames) :] = model_rgb[len(frames) - 1]
    plate_rgb[len(frames) :] = plate_rgb[len(frames) - 1]
    return Batch(len(frames), model_rgb, plate_rgb, static, frames if keep_clip else [])
