"""Reading a clip from a fixed camera (a video file OpenCV opens, or a folder of numbered
frames) and its background plate (an image file, or the per-pixel median of the first frames).

`probe` opens a clip and reads its first frame, so a bad file fails before anything runs;
`bgr_frames` then yields every frame, raising `ClipBroken` where reading fails.
"""

import dataclasses
import itertools
import os
import re
from typing import Iterator, Optional, Union

import cv2
import numpy as np

from jaxsegdepth.video import pixels

DEFAULT_FPS = 25.0
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MEDIAN_CHUNK_VALUES = 1 << 24  # uint8 values one step of the plate median sorts


class ClipBroken(ValueError):
    """Reading the clip failed at `frame_index`; the `frames_written` before it are playable."""

    def __init__(self, message: str, frame_index: int, frames_written: int = 0):
        super().__init__(message)
        self.frame_index = frame_index
        self.frames_written = frames_written


@dataclasses.dataclass(frozen=True)
class ClipInfo:
    """What `probe` learns from a clip's container and first frame."""

    path: str
    height: int
    width: int
    fps: float
    fps_source: str  # "container", or "fps argument" for a folder or a video that does not say
    frame_count: Optional[int]  # exact for a folder, the container's estimate for a video
    frame_files: tuple = ()  # a folder's frames in order; empty for a video file


# -- the clip -------------------------------------------------------------------------------


def probe(clip: str, fps: float = DEFAULT_FPS) -> ClipInfo:
    """Opens `clip` (a video file or a folder of numbered frames) and reads its first frame, so a
    caller fails early: `ValueError` naming the file when it cannot be opened or has no frames."""
    if os.path.isdir(clip):
        return _probe_folder(clip, fps)
    if not os.path.isfile(clip):
        raise ValueError(f"{clip}: no such file or folder (expected a video or a folder of frames)")
    capture = cv2.VideoCapture(clip)
    try:
        if not capture.isOpened():
            raise ValueError(
                f"{clip}: OpenCV cannot open it as a video (expected mp4, avi, mov, mkv, ...)"
            )
        ok, frame = capture.read()
        if not ok:
            raise ValueError(f"{clip}: no frames (frame 0 cannot be read)")
        container_fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()
    fps_known = np.isfinite(container_fps) and 0 < container_fps < 1000
    return ClipInfo(
        path=clip,
        height=frame.shape[0],
        width=frame.shape[1],
        fps=float(container_fps) if fps_known else fps,
        fps_source="container" if fps_known else "fps argument",
        frame_count=count if count > 0 else None,
    )


def _probe_folder(folder: str, fps: float) -> ClipInfo:
    names = [
        name
        for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    ]
    if not names:
        raise ValueError(
            f"{folder}: no frames (expected image files {', '.join(IMAGE_EXTENSIONS)})"
        )
    files = tuple(os.path.join(folder, name) for name in sorted(names, key=natural_key))
    first = read_image(files[0], f"frame 0 of {folder}")
    return ClipInfo(folder, first.shape[0], first.shape[1], fps, "fps argument", len(files), files)


def natural_key(name: str) -> list:
    """Sort key that orders the numbers inside names by value: frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def read_image(path: str, what: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR; `ValueError` naming `path` and `what` it is when unreadable."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what}: no such file")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: {what} cannot be read as an image")
    return image


def iter_frames(clip: str) -> Iterator[np.ndarray]:
    """The clip's frames in order as (H, W, 3) uint8 RGB; `ClipBroken` where reading fails."""
    for frame in bgr_frames(probe(clip)):
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def bgr_frames(info: ClipInfo) -> Iterator[np.ndarray]:
    """The clip's frames as uint8 BGR, each checked to have the first frame's size."""
    frames = _folder_frames(info) if info.frame_files else _video_frames(info)
    for index, frame in enumerate(frames):
        if frame.shape[:2] != (info.height, info.width):
            raise ClipBroken(
                f"{info.path}: frame {index} is {frame.shape[1]}x{frame.shape[0]}, expected "
                f"{info.width}x{info.height} like frame 0",
                index,
            )
        yield frame


def _folder_frames(info: ClipInfo) -> Iterator[np.ndarray]:
    for index, path in enumerate(info.frame_files):
        try:
            yield read_image(path, f"frame {index} of {info.path}")
        except ValueError as error:
            raise ClipBroken(str(error), index) from error


def _video_frames(info: ClipInfo) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(info.path)
    frames_read = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield frame
            frames_read += 1
    finally:
        capture.release()
    if cut_short(frames_read, info.frame_count):
        raise ClipBroken(
            f"{info.path}: reading failed at frame {frames_read}, where the container announces "
            f"{info.frame_count} frames (a truncated or corrupt file)",
            frames_read,
        )


def cut_short(frames_read: int, frames_announced: Optional[int]) -> bool:
    """Whether a video ended well before the frame count its container announces. The count can
    be an estimate (from the duration), so 1% of it (at least one frame) is tolerated."""
    if frames_announced is None:
        return False
    return frames_read < frames_announced - max(1, frames_announced // 100)


# -- the plate ------------------------------------------------------------------------------


def plate_from_frames(clip: str, n: int) -> np.ndarray:
    """The per-pixel median of the clip's first `n` frames, (H, W, 3) uint8 RGB: the empty scene
    when objects keep moving through it."""
    if n < 1:
        raise ValueError(f"{clip}: plate_frames={n}: expected at least 1 frame")
    frames = list(itertools.islice(iter_frames(clip), n))
    if len(frames) < n:
        raise ValueError(f"{clip}: plate_frames={n}, but the clip has only {len(frames)} frames")
    return _median(np.stack(frames))


def _median(stack: np.ndarray) -> np.ndarray:
    """Per-pixel median of (n, H, W, 3) uint8, rounded, a band of rows at a time to bound memory."""
    plate = np.empty(stack.shape[1:], np.uint8)
    rows = max(1, MEDIAN_CHUNK_VALUES // (stack.shape[0] * stack.shape[2] * stack.shape[3]))
    for top in range(0, stack.shape[1], rows):
        plate[top : top + rows] = np.round(np.median(stack[:, top : top + rows], axis=0))
    return plate


def load_plate(plate: Union[str, int], info: ClipInfo) -> tuple[np.ndarray, str, Optional[str]]:
    """The plate at the clip's size as (H, W, 3) uint8 RGB, where it comes from, and a one-line
    warning when it had to be resized (else None). `plate`: an image file, or a number of first
    frames to take the per-pixel median of."""
    if isinstance(plate, (int, np.integer)) and not isinstance(plate, bool):
        image = plate_from_frames(info.path, int(plate))
        source = f"median of the first {plate} frames of {info.path}"
    else:
        image = cv2.cvtColor(read_image(str(plate), "the plate"), cv2.COLOR_BGR2RGB)
        source = str(plate)
    if image.shape[:2] == (info.height, info.width):
        return image, source, None
    warning = (
        f"plate {source} is {image.shape[1]}x{image.shape[0]} but the clip is "
        f"{info.width}x{info.height}: resized to the clip's size"
    )
    return pixels.resize(image, (info.height, info.width)), source, warning
