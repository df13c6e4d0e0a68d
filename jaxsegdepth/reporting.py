"""What a run writes for people: metrics.jsonl, TensorBoard, prediction grids, a progress bar.

Only process 0 writes (`enabled=False` elsewhere). Everything here takes host (NumPy/Python)
values; fetching them from devices, once per log interval, is the trainer's job.
"""

import json
import os
import sys
from typing import Optional, Sequence

import jax
import numpy as np
import tqdm
from matplotlib import colormaps
from PIL import Image, ImageDraw
from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
MIN_TILE = 128  # tiles smaller than this are enlarged (nearest) so a grid stays readable
LABEL_HEIGHT = 14


def say(message: str) -> None:
    """A line for the person running the command, printed by process 0 only."""
    if jax.process_index() == 0:
        print(message, flush=True)


def warn(message: str) -> None:
    """A warning line on stderr, printed by process 0 only."""
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)


def read_metrics(workdir: str) -> list[dict]:
    """Every epoch record of `WORKDIR/metrics.jsonl`, in order ([] when there is none).

    A line that is not JSON (cut short when a run was killed mid-write; a resumed run removes
    it, see `Reporter.resume`) is skipped."""
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
    """metrics.jsonl lines, TensorBoard scalars and images, `<tag>/epoch_NNN.png` pictures.

    `start_step` > 0 (a resumed run): TensorBoard drops what a stopped run logged after it.
    """

    def __init__(self, workdir: str, enabled: bool = True, start_step: int = 0):
        self.workdir, self.enabled = workdir, enabled
        self._writer = None
        if enabled:
            self._writer = SummaryWriter(
                os.path.join(workdir, TENSORBOARD_DIR), purge_step=start_step or None
            )

    def resume(self, epochs_done: int, last_record: Optional[dict]) -> None:
        """Makes metrics.jsonl hold exactly epochs 1..`epochs_done` once each, as the checkpoint
        a run resumes from has them: lines a killed run cut short or wrote past it go, and the
        checkpoint's `last_record`, if its line never made it, is appended."""
        if not self.enabled:
            return
        kept = {}
        for record in read_metrics(self.workdir):
            if record.get("epoch", 0) <= epochs_done:
                kept.setdefault(record["epoch"], record)
        missing = last_record is not None and last_record["epoch"] not in kept
        if missing:
            kept[last_record["epoch"]] = last_record
        path = os.path.join(self.workdir, METRICS_FILE)
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(kept[epoch]) + "\n" for epoch in sorted(kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        if missing:
            self._epoch_scalars(last_record)

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        if self._writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(prefix + name, value, step)

    def epoch(self, record: dict) -> None:
        """Appends `record` to metrics.jsonl (one write, on disk before this returns) and logs
        its numbers as `epoch/<name>` scalars."""
        if not self.enabled:
            return
        with open(os.path.join(self.workdir, METRICS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._epoch_scalars(record)

    def _epoch_scalars(self, record: dict) -> None:
        self.scalars(record["step"], {k: v for k, v in record.items() if k != "step"}, "epoch/")
        self._writer.flush()

    def image(self, tag: str, epoch: int, step: int, grid: np.ndarray) -> Optional[str]:
        """Writes the picture (H, W, 3 uint8) as `<tag>/epoch_NNN.png` and to TensorBoard."""
        if not self.enabled:
            return None
        os.makedirs(os.path.join(self.workdir, tag), exist_ok=True)
        path = os.path.join(self.workdir, tag, f"epoch_{epoch:03d}.png")
        Image.fromarray(grid).save(path)
        self._writer.add_image(tag, grid, step, dataformats="HWC")
        self._writer.flush()
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def progress_bar(
    total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "img"
) -> tqdm.tqdm:
    """A bar with rate and ETA, counting `unit`s (images for training); callers set the loss as
    a postfix."""
    return tqdm.tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        disable=not enabled,
        dynamic_ncols=True,
        leave=True,
    )


def image_grid(
    columns: Sequence[tuple[str, Sequence[np.ndarray]]], max_tile: int = 0
) -> np.ndarray:
    """The one grid renderer: one row per sample, one labelled column per (title, images) pair,
    as (H, W, 3) uint8 RGB.

    Images are uint8 RGB (drawn as they are) or floats in [0, 1], (H, W), (H, W, 1) or
    (H, W, 3); single-channel float columns whose title contains "depth" go through the
    viridis colour map, other single-channel ones are grey. Tiles smaller than MIN_TILE are
    enlarged (nearest, by a whole factor); with `max_tile`, larger ones are scaled down
    (bilinear) to fit it.
    """
    tiles = [[to_rgb(title, image) for image in images] for title, images in columns]
    height, width = tiles[0][0].shape[:2]
    factor = max(1, -(-MIN_TILE // max(height, width)))
    h, w, resample = height * factor, width * factor, Image.NEAREST
    if max_tile and max(h, w) > max_tile:
        shrink = max_tile / max(h, w)
        h, w, resample = max(1, round(h * shrink)), max(1, round(w * shrink)), Image.BILINEAR
    rows, pad = max(len(column) for column in tiles), 2
    grid = Image.new("RGB", (len(tiles) * (w + pad), LABEL_HEIGHT + rows * (h + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for col, ((title, _), column) in enumerate(zip(columns, tiles)):
        left = col * (w + pad)
        draw.text((left + 2, 1), title, fill=(0, 0, 0))
        for row, tile in enumerate(column):
            image = Image.fromarray(tile).resize((w, h), resample)
            grid.paste(image, (left, LABEL_HEIGHT + row * (h + pad)))
    return np.asarray(grid)


def to_rgb(title: str, image: np.ndarray, colormap: str = "viridis") -> np.ndarray:
    """A tile as uint8 RGB: uint8 RGB as it is; [0, 1] floats through grey or, for a title
    containing "depth", `colormap`."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3:
        return image
    image = np.clip(image.astype(np.float32), 0.0, 1.0)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = (
            colormaps[colormap](image)[..., :3]
            if "depth" in title
            else np.repeat(image[..., None], 3, axis=-1)
        )
    return (image * 255.0 + 0.5).astype(np.uint8)
