"""The grain input pipeline: global order, decoding, resizing, augmentation, batching, sharding.

Every process builds the same global `grain.MapDataset` chain over the whole split:
  tfds array_record source (JPEG bytes) -> shuffle(seed) -> DecodeResize ->
  RandomCrop (when asked) -> PhotometricAugment (train only, inputs only) -> Normalize
then cuts it into blocks of `batch_size` (the per-process batch) and keeps every
`process_count`-th block from its own index: global batch g of `batch_size * process_count`
samples is blocks g*count .. g*count+count-1, so process i's batch g is the slice
[i*batch_size, (i+1)*batch_size) of it and each process decodes only its own samples. The
blocks are repeated per epoch, then `to_iter_dataset` (read threads prefetch whole batches in
the background) and, with `worker_count > 0`, `mp_prefetch` (spawned worker processes).

Grain passes each element's global index, epoch * n + position, down the chain: the shuffle
reseeds from it per epoch and the `RandomMapTransform`'s generator is derived from it and the
seed. So the batches, augmentation included, depend on neither the process that reads them nor
the number of processes, and an iterator restored with `set_state(get_state())` yields exactly
the batches an uninterrupted one would. Every transform is a module-level, picklable class.

Batches are dicts of NumPy arrays: `bg`, `bg_fg` (N,H,W,3) float32 normalised with the
dataset's mean/std, `mask`, `depth` (N,H,W,1) float32 in [0,1].

Throughput: `measure_throughput`, reported by `python -m jaxsegdepth.benchmark` (docs/data.md).
"""
from __future__ import annotations

import dataclasses
import io
import time
from typing import Any

import grain
import jax
import numpy as np
from PIL import Image

from jaxsegdepth import names
from jaxsegdepth.data import builders
from jaxsegdepth.data.builders import DatasetError
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION, normalize

INPUTS, TARGETS = names.INPUTS, names.HEADS


def validate(ds_config) -> None:
    """Refuses bad dataset or loader settings (`config.dataset`) in one line."""
    builders.validate(ds_config)
    for field in ("worker_count", "read_threads", "prefetch_batches"):
        minimum = 0 if field == "worker_count" else 1
        if ds_config[field] < minimum:
            raise DatasetError(f"dataset.{field}={ds_config[field]}: expected >= {minimum}")
    for field in ("hsv_prob", "contrast_prob"):
        if not 0.0 <= ds_config[field] <= 1.0:
            raise DatasetError(f"dataset.{field}={ds_config[field]}: expected a probability "
                               "in [0, 1]")


def _split_name(split: str) -> str:
    if split not in builders.SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected one of {builders.SPLITS}")
    return split


def split_size(ds_config, split: str) -> int:
    """Global number of examples in `split` ("train" or "validation") of the built set."""
    return builders.load(ds_config).split_sizes[_split_name(split)]


def input_normalization(ds_config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"bg": (mean, std), "bg_fg": (mean, std)}: float32 3-vectors for inputs in [0,1]. MODEST:
    the SPEC values, without opening the set (predict/export may run where it is not);
    synthetic: measured over the generated set when it was built."""
    if ds_config.name == "modest_museum":
        norm = MODEST_NORMALIZATION
    else:
        norm = builders.load(ds_config).normalization
    return {k: (np.asarray(m, np.float32), np.asarray(s, np.float32)) for k, (m, s) in norm.items()}


# ------------------------------------------------------------------------------------------
# Transforms (module level and picklable: grain spawns its worker processes).


def decode_image(data: bytes, mode: str, resolution: int) -> np.ndarray:
    """Encoded image bytes -> a uint8 array at resolution x resolution in PIL `mode` ("RGB",
    "L"), resized bilinearly: the one decoding path of the datasets' images."""
    with Image.open(io.BytesIO(data)) as im:
        if im.size != (resolution, resolution):
            # JPEG: decode straight at the smallest DCT scale >= resolution (much faster).
            im.draft(im.mode, (resolution, resolution))
        im = im.convert(mode)  # grayscale inputs -> RGB, RGB targets -> L
        if im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.BILINEAR)
        return np.asarray(im)


@dataclasses.dataclass(frozen=True)
class DecodeResize(grain.transforms.Map):
    """JPEG bytes -> uint8 arrays at `resolution`: bg, bg_fg (r,r,3); mask, depth (r,r,1)."""

    resolution: int

    def map(self, record: dict[str, Any]) -> dict[str, np.ndarray]:
        out = {}
        for key in INPUTS + TARGETS:
            try:
                image = decode_image(record[key], "RGB" if key in INPUTS else "L",
                                     self.resolution)
            except Exception as e:  # noqa: BLE001 - re-raised with the sample's name
                source = record.get("source", b"?")
                source = source.decode() if isinstance(source, bytes) else str(source)
                raise DatasetError(f"cannot decode the {key!r} image of {source}: "
                                   f"{type(e).__name__}: {e}") from None
            out[key] = image if key in INPUTS else image[..., None]
        return out


_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float64)
_FROM_YIQ = np.linalg.inv(_TO_YIQ)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def hsv_matrix(hue_turns: float, saturation: float, value: float) -> np.ndarray:
    """3x3 RGB matrix M: hue rotation about the grey axis (in YIQ), saturation scaling (chroma),
    value scaling; applied as `rgb @ M.T`. (0, 1, 1) is the identity."""
    a = 2.0 * np.pi * hue_turns
    c, s = np.cos(a) * saturation, np.sin(a) * saturation
    chroma = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return (value * _FROM_YIQ @ chroma @ _TO_YIQ).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PhotometricAugment(grain.transforms.RandomMap):
    """Inputs only, targets never: with probability `hsv_prob` a hue/saturation/value jitter,
    with `contrast_prob` a contrast change about the image's mean luminance. One draw per
    sample, applied identically to bg and bg_fg (they are two shots of one scene). Output
    inputs are float32 in [0,1] when changed, else left as they are (uint8)."""

    hsv_prob: float = 0.25
    contrast_prob: float = 0.25
    hue: float = 0.05  # max hue rotation, in turns (18 degrees)
    saturation: float = 0.3  # saturation factor in [1 - s, 1 + s]
    value: float = 0.2  # value (brightness) factor in [1 - v, 1 + v]
    contrast: float = 0.2  # contrast factor in [1 - c, 1 + c]

    def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator):
        u = rng.random(6)  # always the same number of draws
        do_hsv, do_contrast = u[0] < self.hsv_prob, u[1] < self.contrast_prob
        if not (do_hsv or do_contrast):
            return element
        matrix = hsv_matrix((2 * u[2] - 1) * self.hue, 1 + (2 * u[3] - 1) * self.saturation,
                            1 + (2 * u[4] - 1) * self.value) if do_hsv else None
        matrix_t = np.ascontiguousarray(matrix.T) if do_hsv else None
        factor = 1 + (2 * u[5] - 1) * self.contrast
        out = dict(element)
        for key in INPUTS:
            x = element[key].astype(np.float32) * np.float32(1 / 255)
            if matrix_t is not None:
                x = np.clip(x @ matrix_t, 0.0, 1.0)
            if do_contrast:
                mean = float((x @ _LUMA).mean())
                x = np.clip((x - mean) * np.float32(factor) + np.float32(mean), 0.0, 1.0)
            out[key] = x
        return out


@dataclasses.dataclass(frozen=True)
class RandomCrop(grain.transforms.RandomMap):
    """One `size` x `size` window, uniformly placed, cut from all four images of a sample (the
    inputs and targets stay aligned): training at an image's own scale for the cost of a
    smaller one."""

    size: int

    def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator):
        height, width = element[INPUTS[0]].shape[:2]
        top, left = rng.integers(0, height - self.size + 1), rng.integers(0, width - self.size + 1)
        return {k: v[top:top + self.size, left:left + self.size] for k, v in element.items()}


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
    """Inputs -> `normalization.normalize`; targets -> [0,1]. Keeps only the four arrays."""

    bg_mean: tuple
    bg_std: tuple
    bg_fg_mean: tuple
    bg_fg_std: tuple

    def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {"bg": normalize(element["bg"], self.bg_mean, self.bg_std),
               "bg_fg": normalize(element["bg_fg"], self.bg_fg_mean, self.bg_fg_std)}
        for key in TARGETS:
            out[key] = element[key].astype(np.float32) * np.float32(1 / 255)
        return out


# ------------------------------------------------------------------------------------------
# Loader.


def _samples(ds_config, prepared, split: str, *, resolution: int, shuffle: bool, seed: int,
             augment: bool, crop: int) -> grain.MapDataset:
    """The whole split, decoded, in the global order: element epoch * n + p is position p of
    epoch e's shuffle, cropped and augmented from that index (the same on every process)."""
    ds = grain.MapDataset.source(prepared.data_source(split)).seed(int(seed) % 2 ** 32)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.map(DecodeResize(int(resolution)))
    if crop:
        ds = ds.random_map(RandomCrop(int(crop)))
    if augment:
        ds = ds.random_map(PhotometricAugment(
            hsv_prob=ds_config.hsv_prob, contrast_prob=ds_config.contrast_prob))
    norm = prepared.normalization
    return ds.map(Normalize(*norm["bg"], *norm["bg_fg"]))


def create_loader(ds_config, split: str, *, resolution: int, batch_size: int, shuffle: bool,
                  seed: int, num_epochs: int | None = None, drop_remainder: bool = True,
                  augment: bool | None = None, worker_count: int | None = None,
                  shard: tuple[int, int] | None = None, crop: int = 0) -> grain.IterDataset:
    """An iterable of this process's slices of the global batches of `split` (module doc).

    batch_size: per-process batch size; a global batch is `batch_size * count` samples.
    num_epochs: None repeats forever (each epoch reshuffled and re-augmented differently,
    deterministically); batches never straddle epochs. drop_remainder=True keeps the
    floor(n / global batch) whole global batches of each epoch, the same number on every
    process; False keeps the last, partial global batch, whose slice may be smaller on some
    processes and absent (no batch) on others. augment=None means `ds_config.augment` on
    "train", False on "validation". worker_count=None means `ds_config.worker_count`.
    shard=(index, count) overrides jax's process index/count. crop > 0 cuts a random
    crop x crop window from every sample at `resolution` (`RandomCrop`).

    `iter(loader)` gives a grain DatasetIterator: `get_state()` -> a small dict (JSON-able),
    `set_state(state)` resumes exactly there (same pipeline arguments and worker count).
    """
    split = _split_name(split)
    prepared = builders.load(ds_config)
    if resolution <= 0 or batch_size <= 0:
        raise DatasetError(f"resolution and batch_size must be positive, got {resolution}, {batch_size}")
    if not 0 <= crop <= resolution:
        raise DatasetError(f"crop={crop}: expected 0 (none) up to the resolution {resolution}")
    if augment is None:
        augment = ds_config.augment and split == "train"
    if worker_count is None:
        worker_count = ds_config.worker_count
    index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
    if not 0 <= index < count:
        raise DatasetError(f"shard={shard}: expected (index, count) with 0 <= index < count")

    ds = _samples(ds_config, prepared, split, resolution=resolution, shuffle=shuffle, seed=seed,
                  augment=augment, crop=crop)
    n, global_batch = len(ds), int(batch_size) * count
    if drop_remainder:
        ds = ds[: n - n % global_batch]  # whole global batches: every process, the same steps
    if len(ds) == 0:
        raise DatasetError(f"{prepared.name} {split}: {n} example(s), fewer than one global batch "
                           f"of {global_batch} ({count} process(es) x batch_size {batch_size})")
    ds = ds.batch(int(batch_size))[index::count]  # this process's block of each global batch
    ds = ds.repeat(num_epochs)  # reseeds shuffle and augmentation every epoch
    ids = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=ds_config.read_threads, prefetch_buffer_size=ds_config.prefetch_batches))
    if worker_count > 0:
        ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(worker_count),
                                                           per_worker_buffer_size=1))
    return ids


def measure_throughput(ds_config, resolution: int, batch_size: int = 32, worker_count: int = 0,
                       num_batches: int = 20, warmup: int = 3, split: str = "train") -> float:
    """Samples/s the loader delivers (augmentation as configured for `split`), measured over
    `num_batches` batches after `warmup` (worker start-up excluded)."""
    loader = create_loader(ds_config, split, resolution=resolution, batch_size=batch_size,
                           shuffle=True, seed=0, worker_count=worker_count)
    it = iter(loader)
    try:
        for _ in range(warmup):
            next(it)
        t = time.perf_counter()
        for _ in range(num_batches):
            next(it)
        return num_batches * batch_size / (time.perf_counter() - t)
    finally:
        if hasattr(it, "close"):
            it.close()
