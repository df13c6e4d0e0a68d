"""The grain input pipeline: sharding, shuffling, decoding, resizing, augmentation, batching.

Per split, a `grain.MapDataset` chain:
  tfds array_record source (JPEG bytes) -> this process's shard -> shuffle(seed) ->
  DecodeResize -> PhotometricAugment (train only, inputs only) -> Normalize -> batch -> repeat
then `to_iter_dataset` (read threads prefetch whole batches in the background) and, with
`worker_count > 0`, `mp_prefetch` (spawned worker processes). Every transform is a
module-level, picklable class; the random one is a grain `RandomMapTransform`, whose generator
grain derives from the seed and the element's position, so an iterator restored with
`set_state(get_state())` yields exactly the batches an uninterrupted one would.

Batches are dicts of NumPy arrays: `bg`, `bg_fg` (N,H,W,3) float32 normalised with the
dataset's mean/std, `mask`, `depth` (N,H,W,1) float32 in [0,1].

Benchmark: `python -m jaxsegdepth.data.pipeline --benchmark` (see docs/data.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import time
from typing import Any

import grain
import ml_collections
import numpy as np
from PIL import Image

from jaxsegdepth.data import builders
from jaxsegdepth.data.builders import DatasetError

INPUTS = ("bg", "bg_fg")
TARGETS = ("mask", "depth")


def default_config() -> ml_collections.ConfigDict:
    """The `config.dataset` block (see configs/default.py)."""
    return ml_collections.ConfigDict(dict(
        name="synthetic_museum",  # synthetic_museum | modest_museum
        data_dir="",  # prepared tfds data; "" = ~/tensorflow_datasets
        manual_dir="",  # modest_museum: the extracted MODEST folder or its .zip (never downloaded)
        num_samples=3000,  # synthetic_museum: size of the generated set
        seed=0,  # synthetic_museum: generation seed
        skip_corrupt=False,  # modest_museum: leave out samples with corrupt JPEGs (else: error)
        val_fraction=0.3,  # reference split: seed-1 shuffle, first 70% train
        worker_count=0,  # grain worker processes; 0 = decode in this process (read threads)
        read_threads=2,  # threads preparing batches ahead of the consumer (in each process)
        prefetch_batches=2,  # batches prepared ahead per reading process
        augment=True,  # photometric augmentation of the inputs on the train split
        hsv_prob=0.25,  # probability of hue/saturation/value jitter
        contrast_prob=0.25,  # probability of random contrast
    ))


def _get(ds_config, key, default=None):
    return ds_config.get(key, default) if hasattr(ds_config, "get") else getattr(ds_config, key, default)


def _split_name(split: str) -> str:
    split = {"val": "validation", "valid": "validation", "eval": "validation"}.get(split, split)
    if split not in builders.SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected 'train' or 'validation'")
    return split


def prepare(ds_config) -> builders.Prepared:
    """Builds (first call) or opens the dataset; see `builders.prepare`."""
    return builders.prepare(ds_config)


def split_size(ds_config, split: str) -> int:
    """Global number of examples in `split` ("train" or "validation")."""
    return builders.prepare(ds_config).split_sizes[_split_name(split)]


def normalization(ds_config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"bg": (mean, std), "bg_fg": (mean, std)}: float32 3-vectors for inputs in [0,1]. MODEST:
    the SPEC values, without building the set (predict/export may run where it is not);
    synthetic: measured over the generated set when it was built."""
    if _get(ds_config, "name", "synthetic_museum") == "modest_museum":
        norm = builders.MODEST_NORMALIZATION
    else:
        norm = builders.prepare(ds_config).normalization
    return {k: (np.asarray(m, np.float32), np.asarray(s, np.float32)) for k, (m, s) in norm.items()}


def denormalize(images, mean, std) -> np.ndarray:
    """Normalised (..., 3) images back to float32 RGB in [0,1] (for drawing)."""
    images = np.asarray(images, np.float32)
    return np.clip(images * np.asarray(std, np.float32) + np.asarray(mean, np.float32), 0.0, 1.0)


# ------------------------------------------------------------------------------------------
# Transforms (module level and picklable: grain spawns its worker processes).


def _decode(data: bytes, mode: str, resolution: int) -> np.ndarray:
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
                image = _decode(record[key], "RGB" if key in INPUTS else "L", self.resolution)
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


@functools.lru_cache(maxsize=32)
def _affine_row(mean: tuple, std: tuple, width: int, from_uint8: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) tiled to a whole image row (width*3,): a per-channel affine map over a
    length-3 axis is ~8x slower in NumPy than over a (H, W*3) view."""
    std = np.asarray(std, np.float64)
    scale = 1.0 / (std * 255.0) if from_uint8 else 1.0 / std
    offset = -np.asarray(mean, np.float64) / std
    return np.tile(scale, width).astype(np.float32), np.tile(offset, width).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Normalize(grain.transforms.Map):
    """Inputs -> (x - mean) / std with x in [0,1] (uint8 is divided by 255 first); targets ->
    [0,1]. Keeps only the four arrays."""

    bg_mean: tuple
    bg_std: tuple
    bg_fg_mean: tuple
    bg_fg_std: tuple

    def map(self, element: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for key, mean, std in (("bg", self.bg_mean, self.bg_std), ("bg_fg", self.bg_fg_mean, self.bg_fg_std)):
            x = element[key]
            h, w, c = x.shape
            scale, offset = _affine_row(tuple(mean), tuple(std), w, x.dtype == np.uint8)
            y = x.reshape(h, w * c).astype(np.float32)
            y *= scale
            y += offset
            out[key] = y.reshape(h, w, c)
        for key in TARGETS:
            out[key] = element[key].astype(np.float32) * np.float32(1 / 255)
        return out


# ------------------------------------------------------------------------------------------
# Loader.


def _process_shard() -> tuple[int, int]:
    import jax  # pylint: disable=g-import-not-at-top

    return jax.process_index(), jax.process_count()


def _ensure_absl_flags_parsed():
    """grain reads its absl flags; outside absl.app (pytest, plain scripts) nobody parsed them."""
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def create_loader(ds_config, split: str, *, resolution: int, batch_size: int, shuffle: bool,
                  seed: int, num_epochs: int | None = None, drop_remainder: bool = True,
                  augment: bool | None = None, worker_count: int | None = None,
                  shard: tuple[int, int] | None = None) -> grain.IterDataset:
    """An iterable of batches of this process's share of `split` (see the module doc).

    batch_size: per-process batch size. num_epochs: None repeats forever (each epoch
    reshuffled and re-augmented differently, deterministically); batches never straddle
    epochs. drop_remainder=False keeps each epoch's last, smaller batch. augment=None means
    `ds_config.augment` on "train", False on "validation". worker_count=None means
    `ds_config.worker_count`. shard=(index, count) overrides jax's process index/count.

    `iter(loader)` gives a grain DatasetIterator: `get_state()` -> a small dict (JSON-able),
    `set_state(state)` resumes exactly there (same pipeline arguments and worker count).
    """
    split = _split_name(split)
    prepared = builders.prepare(ds_config)
    if resolution <= 0 or batch_size <= 0:
        raise DatasetError(f"resolution and batch_size must be positive, got {resolution}, {batch_size}")
    if augment is None:
        augment = bool(_get(ds_config, "augment", False)) and split == "train"
    if worker_count is None:
        worker_count = int(_get(ds_config, "worker_count", 0))
    index, count = shard if shard is not None else _process_shard()

    ds = grain.MapDataset.source(prepared.data_source(split))
    n = len(ds)
    if count > 1:
        if drop_remainder:  # equal shards, so every process runs the same number of steps
            ds = ds[: n - n % count]
        ds = ds[index::count]
    if len(ds) < (batch_size if drop_remainder else 1):
        raise DatasetError(f"{prepared.name} {split}: {len(ds)} example(s) in this process's shard, "
                           f"fewer than one batch of {batch_size}")
    ds = ds.seed(int(seed) % 2 ** 32)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.map(DecodeResize(int(resolution)))
    if augment:
        ds = ds.random_map(PhotometricAugment(
            hsv_prob=float(_get(ds_config, "hsv_prob", 0.25)),
            contrast_prob=float(_get(ds_config, "contrast_prob", 0.25))))
    norm = prepared.normalization
    ds = ds.map(Normalize(*norm["bg"], *norm["bg_fg"]))
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder)
    ds = ds.repeat(num_epochs)  # reseeds shuffle and augmentation every epoch
    ids = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=int(_get(ds_config, "read_threads", 2)),
        prefetch_buffer_size=int(_get(ds_config, "prefetch_batches", 2))))
    if worker_count > 0:
        _ensure_absl_flags_parsed()
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Loader benchmark: samples/s per resolution and worker count.")
    parser.add_argument("--benchmark", action="store_true", help="run the benchmark (default action)")
    parser.add_argument("--name", default="synthetic_museum")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--manual_dir", default="")
    parser.add_argument("--num_samples", type=int, default=3000)
    parser.add_argument("--resolutions", default="96,160,224")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_batches", type=int, default=20)
    parser.add_argument("--no_augment", action="store_true")
    args = parser.parse_args(argv)
    cfg = default_config()
    cfg.update(dict(name=args.name, data_dir=args.data_dir, manual_dir=args.manual_dir,
                    num_samples=args.num_samples, augment=not args.no_augment))
    prepared = prepare(cfg)
    print(f"{prepared.name} at {prepared.dataset_dir}: {prepared.split_sizes}; batch {args.batch_size}, "
          f"{args.num_batches} batches, augment={cfg.augment}")
    resolutions = [int(r) for r in args.resolutions.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    print("resolution " + " ".join(f"{w:>3d} worker(s)" for w in workers))
    for r in resolutions:
        rates = [measure_throughput(cfg, r, args.batch_size, w, args.num_batches) for w in workers]
        print(f"{r:>10d} " + " ".join(f"{x:>9.0f}/s  " for x in rates), flush=True)


if __name__ == "__main__":
    main()
