"""The outputs of a clip: each frame's picture (mask probability, mask, colour-mapped depth,
composite over a new background, side by side), back at the clip's size, and the files they go
to (mp4 videos or folders of numbered PNGs)."""

import os
import re
from typing import Optional

import cv2
import numpy as np

from jaxsegdepth.video import clips, pixels

OUTPUTS = ("mask_prob", "mask", "depth", "composite", "side_by_side")
DEFAULT_OUTPUTS = ("mask_prob", "mask", "depth", "side_by_side")
GREY_OUTPUTS = ("mask_prob", "mask")
VIDEO_FORMATS = ("mp4", "png")
DEFAULT_BACKGROUND = "0,255,0"
SIDE_BY_SIDE_MAX_HEIGHT = 360
PNG_COMPRESSION = 1  # zlib level (0-9): encoding speed before file size


def replacement_background(replace_bg: str, height: int, width: int) -> np.ndarray:
    """The background "composite" puts the clip's foreground over, (H, W, 3) uint8 RGB:
    `replace_bg` is a colour "R,G,B" (0-255 each) or an image file, stretched to the size;
    empty: `DEFAULT_BACKGROUND`."""
    replace_bg = replace_bg or DEFAULT_BACKGROUND
    match = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*", replace_bg)
    if match and all(int(value) <= 255 for value in match.groups()):
        return np.full((height, width, 3), [int(value) for value in match.groups()], np.uint8)
    if not os.path.isfile(replace_bg):
        raise ValueError(
            f"replace_bg={replace_bg!r}: expected a colour R,G,B (0-255 each, e.g. 0,255,0) "
            "or an image file"
        )
    image = cv2.cvtColor(clips.read_image(replace_bg, "replace_bg"), cv2.COLOR_BGR2RGB)
    return pixels.resize(image, (height, width))


# -- pictures -------------------------------------------------------------------------------


class Renderer:
    """The picture of each output for one frame: uint8 BGR, or grey, at the clip's size."""

    def __init__(
        self,
        clip_hw: tuple,
        threshold: float,
        colormap: str,
        background_rgb: Optional[np.ndarray],
        with_depth: bool,
    ):
        self.clip_hw = clip_hw
        self.threshold = threshold
        self.lut_bgr = pixels.colormap_lut(colormap)[:, ::-1].copy()
        self.background_bgr = None if background_rgb is None else background_rgb[..., ::-1].copy()
        self.with_depth = with_depth
        self.side_hw = side_by_side_tile_hw(*clip_hw)

    def output_hw(self, name: str) -> tuple[int, int]:
        """The (h, w) of output `name`'s pictures."""
        if name != "side_by_side":
            return self.clip_hw
        tile_height, tile_width = self.side_hw
        return tile_height, tile_width * (3 if self.with_depth else 2)

    def mask_prob(self, probabilities: dict, frame: np.ndarray) -> np.ndarray:
        return pixels.resize(pixels.to_uint8(probabilities["mask"]), self.clip_hw)

    def mask(self, probabilities: dict, frame: np.ndarray) -> np.ndarray:
        above = pixels.resize(probabilities["mask"], self.clip_hw) >= self.threshold
        return above.astype(np.uint8) * np.uint8(255)

    def depth(self, probabilities: dict, frame: np.ndarray) -> np.ndarray:
        return self._depth_at(probabilities, self.clip_hw)

    def composite(self, probabilities: dict, frame: np.ndarray) -> np.ndarray:
        weight = pixels.resize(probabilities["mask"], self.clip_hw)
        return cv2.blendLinear(frame, self.background_bgr, weight, 1.0 - weight)

    def side_by_side(self, probabilities: dict, frame: np.ndarray) -> np.ndarray:
        mask = pixels.resize(pixels.to_uint8(probabilities["mask"]), self.side_hw)
        tiles = [pixels.resize(frame, self.side_hw), cv2.cvtColor(mask, cv2.COLOR_GRAY2BGR)]
        if self.with_depth:
            tiles.append(self._depth_at(probabilities, self.side_hw))
        return np.hstack(tiles)

    def _depth_at(self, probabilities: dict, size: tuple) -> np.ndarray:
        """Colour-mapped at the model's size, then resized: fewer pixels to look up."""
        return pixels.resize(
            np.take(self.lut_bgr, pixels.to_uint8(probabilities["depth"]), axis=0), size
        )


def side_by_side_tile_hw(height: int, width: int) -> tuple[int, int]:
    """Each side-by-side tile's (h, w): the clip's shape, at most `SIDE_BY_SIDE_MAX_HEIGHT` high,
    both sides even (the mp4 encoder needs them even)."""
    tile_height = min(height, SIDE_BY_SIDE_MAX_HEIGHT)
    tile_width = width * tile_height / height
    return max(2, tile_height // 2 * 2), max(2, int(round(tile_width / 2)) * 2)


# -- files ----------------------------------------------------------------------------------


def open_output(
    out_dir: str, name: str, video_format: str, fps: float, height: int, width: int
) -> tuple[str, object, Optional[str]]:
    """Output `name`'s path, the target its pictures are written to (`write`, `close`), and a
    one-line warning when the mp4 encoder will crop an odd side (else None)."""
    if video_format == "png":
        folder = os.path.join(out_dir, name)
        return folder, PngFolder(folder), None
    path = os.path.join(out_dir, f"{name}.mp4")
    warning = None
    if height % 2 or width % 2:
        warning = (
            f"{path}: the mp4 encoder keeps even sides: {width}x{height} is written as "
            f"{width // 2 * 2}x{height // 2 * 2} (video_format=png keeps every pixel)"
        )
    return path, VideoFile(path, fps, height, width, name in GREY_OUTPUTS), warning


class VideoFile:
    """An mp4 (MPEG-4 Part 2, 'mp4v': OpenCV's wheel has no H.264 encoder); a grey one takes
    grey frames, which encode faster than the same frames as BGR."""

    def __init__(self, path: str, fps: float, height: int, width: int, grey: bool):
        fourcc = cv2.VideoWriter_fourcc(*"mp4v")
        self._writer = cv2.VideoWriter(path, fourcc, fps, (width, height), not grey)
        if not self._writer.isOpened():
            raise ValueError(f"{path}: OpenCV cannot write an mp4 video there")

    def write(self, image: np.ndarray) -> None:
        self._writer.write(image)

    def close(self) -> None:
        self._writer.release()


class PngFolder:
    """A folder of numbered PNGs, 000000.png on; grey outputs stay one channel."""

    def __init__(self, folder: str):
        os.makedirs(folder, exist_ok=True)
        self._folder = folder
        self._count = 0

    def write(self, image: np.ndarray) -> None:
        path = os.path.join(self._folder, f"{self._count:06d}.png")
        if not cv2.imwrite(path, image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]):
            raise OSError(f"{path}: cannot be written")
        self._count += 1

    def close(self) -> None:
        pass
