"""What a run writes for people: metrics.jsonl, TensorBoard, prediction grids, a progress bar.

Only process 0 writes (`enabled=False` elsewhere). Everything here takes host (NumPy/Python)
values; fetching them from devices, once per log interval, is the trainer's job.
"""
import json
import os
from typing import Optional, Sequence

import numpy as np
import tqdm
from PIL import Image, ImageDraw

METRICS_FILE = "metrics.jsonl"
PREDICTIONS_DIR = "predictions"
TENSORBOARD_DIR = "tensorboard"
MIN_TILE = 128  # tiles smaller than this are enlarged (nearest) so a grid stays readable
LABEL_HEIGHT = 14


def read_metrics(workdir: str) -> list[dict]:
    """Every epoch record of `WORKDIR/metrics.jsonl`, in order ([] when there is none).

    A line that is not JSON (cut short when a run was killed mid-write) is skipped."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class Reporter:
    """metrics.jsonl lines, TensorBoard scalars and images, `predictions/epoch_NNN.png`."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir, self.enabled = workdir, enabled
        self._writer = None
        if enabled:
            os.makedirs(os.path.join(workdir, PREDICTIONS_DIR), exist_ok=True)
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        if self._writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(prefix + name, value, step)

    def epoch(self, record: dict) -> None:
        """Appends `record` to metrics.jsonl and logs its numbers as `epoch/<name>` scalars."""
        if not self.enabled:
            return
        with open(os.path.join(self.workdir, METRICS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
        self.scalars(record["step"], {k: v for k, v in record.items() if k != "step"}, "epoch/")
        self._writer.flush()

    def predictions(self, epoch: int, step: int, grid: np.ndarray) -> Optional[str]:
        """Writes the grid (H, W, 3 uint8) as `predictions/epoch_NNN.png` and to TensorBoard."""
        if not self.enabled:
            return None
        path = os.path.join(self.workdir, PREDICTIONS_DIR, f"epoch_{epoch:03d}.png")
        Image.fromarray(grid).save(path)
        self._writer.add_image("predictions", grid, step, dataformats="HWC")
        self._writer.flush()
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0) -> tqdm.tqdm:
    """A bar counting images (rate in img/s, ETA); the trainer sets the loss as a postfix."""
    return tqdm.tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not enabled,
                     dynamic_ncols=True, leave=True)


def prediction_grid(columns: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """One row per sample, one labelled column per (title, images) pair, as uint8 RGB.

    `images` are (N, H, W, 3) or (N, H, W, 1) floats in [0, 1]; single-channel columns whose
    title contains "depth" are drawn with a colour map, other single-channel ones in grey.
    """
    tiles = [[_to_rgb(title, image) for image in images] for title, images in columns]
    n, (h, w) = len(tiles[0]), tiles[0][0].shape[:2]
    scale = max(1, -(-MIN_TILE // max(h, w)))
    h, w, pad = h * scale, w * scale, 2
    grid = np.full((LABEL_HEIGHT + n * (h + pad), len(tiles) * (w + pad), 3), 255, np.uint8)
    for col, column in enumerate(tiles):
        for row, tile in enumerate(column):
            tile = tile.repeat(scale, 0).repeat(scale, 1)
            top, left = LABEL_HEIGHT + row * (h + pad), col * (w + pad)
            grid[top:top + h, left:left + w] = tile
    image = Image.fromarray(grid)
    draw = ImageDraw.Draw(image)
    for col, (title, _) in enumerate(columns):
        draw.text((col * (w + pad) + 2, 1), title, fill=(0, 0, 0))
    return np.asarray(image)


def _to_rgb(title: str, image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        if "depth" in title:
            from matplotlib import colormaps
            image = colormaps["viridis"](image)[..., :3]
        else:
            image = np.repeat(image[..., None], 3, axis=-1)
    return (image * 255.0 + 0.5).astype(np.uint8)
