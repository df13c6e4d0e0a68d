"""The grain input pipeline: global order, batching, sharding, decoding, resizing, crops.

Every process builds the same global `grain.MapDataset` chain over the split's record numbers:
  range(n) -> shuffle(seed) -> Keys (record number, global element index)
then cuts it into blocks of `batch_size` (the per-process batch) and keeps every
`process_count`-th block from its own index: global batch g of `batch_size * process_count`
samples is blocks g*count .. g*count+count-1, so process i's batch g is the slice
[i*batch_size, (i+1)*batch_size) of it. The blocks are repeated per epoch and `ReadBatch`
reads, decodes, resizes (and crops) each of this process's blocks, so a process decodes only
its own samples; then `to_iter_dataset` (read threads prepare whole batches in the
background) and, with worker processes, `mp_prefetch`.

Grain passes each element's global index, epoch * n + position, down the chain: the shuffle
reseeds from it per epoch, and `Keys` keeps it with the sample, so the crop's window is drawn
from it and the seed, and the jitted train step draws the photometric augmentation from it
(`preprocess`). So the batches depend on neither the process that reads them nor the
number of processes, and an iterator restored with `set_state(get_state())` yields exactly
the batches an uninterrupted one would. Every transform is a module-level, picklable class.

Batches are dicts of NumPy arrays, as the images were stored: `bg`, `bg_fg` (N,H,W,3) and
`mask`, `depth` (N,H,W,1) uint8, `index` (N,) int32. The steps normalise on the device: a
quarter of float32's bytes cross to it.

`dataset.worker_count` / `read_threads` = "auto" are chosen from the CPU count
(`loader_settings`). Throughput: `measure_throughput`, reported per core by
`python tools/benchmark.py` (docs/data.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from typing import Any, NamedTuple

import cv2
import grain
import jax
import numpy as np
import simplejpeg
from PIL import Image

from jaxsegdepth import names
from jaxsegdepth.data import datasets
from jaxsegdepth.errors import DatasetError
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION

INPUTS, TARGETS = names.INPUTS, names.HEADS
AUTO = "auto"  # dataset.worker_count / read_threads chosen from the CPU count
SINGLE_PROCESS_CPUS = 4  # "auto" reads in this process up to this many CPUs (`loader_settings`)
# The dataset block is not type-safe (so "auto" and ints both go in): the type of each field.
FIELD_TYPES = {
    "name": str,
    "data_dir": str,
    "manual_dir": str,
    "num_samples": int,
    "seed": int,
    "skip_corrupt": bool,
    "val_fraction": (int, float),
    "prefetch_batches": int,
}


class LoaderSettings(NamedTuple):
    """How many processes and threads read: `worker_count` grain worker processes (0: this
    process), each preparing `read_threads` batches at a time."""

    worker_count: int
    read_threads: int
    reason: str = ""  # how "auto" chose them


def cpu_count() -> int:
    """The CPUs this process may run on (a container's or taskset's share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def loader_count(value, name: str, minimum: int):
    """A loader setting (`name`, for the error) as an int >= minimum, or AUTO; anything else is
    a DatasetError. Strings of digits count (a command-line override of an "auto" field)."""
    original = value
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        value = int(text) if text.isdigit() else None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DatasetError(f"{name}={original!r}: expected {AUTO!r} or an integer >= {minimum}")
    return value


def loader_settings(ds_config, cpus: int | None = None) -> LoaderSettings:
    """`dataset.worker_count` and `read_threads`, "auto" resolved for `cpus` (default: this
    process's). Decoding releases the GIL but a sample's reading, parsing and batching hold
    it, so one process feeds about two cores (docs/data.md): up to 4 CPUs, no worker
    processes; beyond, one worker process per 2 CPUs after the first (the first is left to
    the training loop). Read threads: 2 in each worker; in this process, one per CPU but one,
    between 2 and 3."""
    cpus = cpu_count() if cpus is None else cpus
    workers = loader_count(ds_config.worker_count, "dataset.worker_count", 0)
    threads = loader_count(ds_config.read_threads, "dataset.read_threads", 1)
    auto_workers = max(1, (cpus - 1) // 2) if cpus > SINGLE_PROCESS_CPUS else 0
    in_process = (workers if workers != AUTO else auto_workers) == 0
    auto_threads = max(2, min(cpus - 1, 3)) if in_process else 2
    chosen = LoaderSettings(
        auto_workers if workers == AUTO else workers, auto_threads if threads == AUTO else threads
    )
    if AUTO not in (workers, threads):
        return chosen
    return chosen._replace(
        reason=f"dataset.worker_count={ds_config.worker_count}, "
        f"read_threads={ds_config.read_threads} on {cpus} CPU(s)"
    )


def validate(ds_config) -> None:
    """Refuses bad dataset or loader settings (`config.dataset`) in one line."""
    for field, kind in FIELD_TYPES.items():
        value = ds_config.get(field)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            expected = "number" if isinstance(kind, tuple) else kind.__name__
            raise DatasetError(f"dataset.{field}={value!r}: expected a {expected}")
    datasets.validate(ds_config)
    loader_settings(ds_config)
    if ds_config.prefetch_batches < 1:
        raise DatasetError(f"dataset.prefetch_batches={ds_config.prefetch_batches}: expected >= 1")


def _split_name(split: str) -> str:
    if split not in datasets.SPLITS:
        raise DatasetError(f"unknown split {split!r}: expected one of {datasets.SPLITS}")
    return split


def split_size(ds_config, split: str) -> int:
    """Global number of examples in `split` ("train" or "validation") of the built set."""
    return datasets.load(ds_config).split_sizes[_split_name(split)]


def input_normalization(ds_config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"bg": (mean, std), "bg_fg": (mean, std)}: float32 3-vectors for inputs in [0,1]. MODEST:
    the reference's values (docs/reference.md), without opening the set (predict/export may run where it is not);
    synthetic: measured over the generated set when it was built."""
    if ds_config.name == "modest_museum":
        norm = MODEST_NORMALIZATION
    else:
        norm = datasets.load(ds_config).normalization
    return {k: (np.asarray(m, np.float32), np.asarray(s, np.float32)) for k, (m, s) in norm.items()}


# ------------------------------------------------------------------------------------------
# Transforms (module level and picklable: grain spawns its worker processes).


def _read(data: bytes, mode: str, resolution: int) -> np.ndarray:
    """Encoded bytes -> uint8 (h, w, 3) for "RGB", (h, w) for "L", at least `resolution` a side
    when the image has it. JPEG: libjpeg-turbo (simplejpeg) decodes straight at the smallest
    DCT scale that keeps `resolution`, without the GIL; anything else, and what it refuses
    (e.g. CMYK), through PIL."""
    if data[:2] == b"\xff\xd8":
        try:
            image = simplejpeg.decode_jpeg(
                data,
                colorspace="RGB" if mode == "RGB" else "GRAY",
                min_height=resolution,
                min_width=resolution,
            )
            return image if mode == "RGB" else image[..., 0]
        except ValueError:
            pass
    with Image.open(io.BytesIO(data)) as im:
        im.draft(im.mode, (resolution, resolution))
        return np.asarray(im.convert(mode))  # grayscale inputs -> RGB, RGB targets -> L


def decode_image(data: bytes, mode: str, resolution: int) -> np.ndarray:
    """Encoded image bytes -> a uint8 array at resolution x resolution in PIL `mode` ("RGB",
    "L"): the one decoding path of the datasets' images. One OpenCV resize: bilinear, or
    area-averaged when shrinking 2x or more (a JPEG's DCT scale leaves less than 2x to go;
    area costs ~5x bilinear)."""
    image = _read(data, mode, resolution)
    height, width = image.shape[:2]
    if (height, width) != (resolution, resolution):
        far = min(height, width) >= 2 * resolution
        image = cv2.resize(
            image,
            (resolution, resolution),
            interpolation=cv2.INTER_AREA if far else cv2.INTER_LINEAR,
        )
    return image


def decode_sample(
    record: dict[str, Any], resolution: int, targets: tuple = TARGETS
) -> dict[str, np.ndarray]:
    """A record's encoded images -> uint8 arrays at `resolution`: bg, bg_fg (r,r,3); the
    `targets` mask, depth (r,r,1). A failure is a `DatasetError` naming the image and the
    sample's source."""
    out = {}
    for key in INPUTS + tuple(targets):
        try:
            image = decode_image(record[key], "RGB" if key in INPUTS else "L", resolution)
        except Exception as e:  # noqa: BLE001 - re-raised with the sample's name
            source = record.get("source", b"?")
            source = source.decode() if isinstance(source, bytes) else str(source)
            raise DatasetError(
                f"cannot decode the {key!r} image of {source}: {type(e).__name__}: {e}"
            ) from None
        out[key] = image if key in INPUTS else image[..., None]
    return out


@dataclasses.dataclass(frozen=True)
class Keys(grain.transforms.MapWithIndex):
    """A record number -> (record number, global element index): what a sample is read and
    cropped by, and what the train step draws its augmentation from (shipped as int32: it
    wraps after 2**31 elements, e.g. 1,000 epochs of 2 M samples, and the draws repeat)."""

    def map_with_index(self, index: int, record: int) -> np.ndarray:
        return np.array([record, index], np.int64)


@dataclasses.dataclass(frozen=True)
class ReadBatch(grain.transforms.Map):
    """(B, 2) keys -> one batch: each record read, decoded at `resolution` and, with `crop`,
    cut to one uniformly placed crop x crop window shared by its four images (inputs and
    targets stay aligned; the window is drawn from the seed and the element index). One
    transform per batch, writing into the batch's arrays: per-sample Python overhead and the
    copy of stacking are gone (docs/data.md)."""

    source: Any
    resolution: int
    crop: int = 0
    seed: int = 0
    targets: tuple = TARGETS  # the targets the dataset has (`datasets.target_heads`)

    def _window(self, element: int) -> tuple[slice, slice]:
        if not self.crop:
            return slice(None), slice(None)
        rng = np.random.default_rng((self.seed, int(element)))
        top, left = rng.integers(0, self.resolution - self.crop + 1, size=2)
        return slice(top, top + self.crop), slice(left, left + self.crop)

    def map(self, keys: np.ndarray) -> dict[str, np.ndarray]:
        size, count = self.crop or self.resolution, len(keys)
        batch = {
            key: np.empty((count, size, size, 3 if key in INPUTS else 1), np.uint8)
            for key in INPUTS + self.targets
        }
        for row, (record, element) in enumerate(keys):
            window = self._window(element)
            record = self.source[int(record)]
            for key, image in decode_sample(record, self.resolution, self.targets).items():
                batch[key][row] = image[window]
        batch[names.INDEX] = keys[:, 1].astype(np.int32)
        return batch


# ------------------------------------------------------------------------------------------
# Loader.


def create_loader(
    ds_config,
    split: str,
    *,
    resolution: int,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    worker_count: int | None = None,
    shard: tuple[int, int] | None = None,
    crop: int = 0,
) -> grain.IterDataset:
    """An iterable of this process's slices of the global batches of `split` (module doc).

    batch_size: per-process batch size; a global batch is `batch_size * count` samples.
    num_epochs: None repeats forever (each epoch reshuffled and re-cropped differently,
    deterministically); batches never straddle epochs. drop_remainder=True keeps the
    floor(n / global batch) whole global batches of each epoch, the same number on every
    process; False keeps the last, partial global batch, whose slice may be smaller on some
    processes and absent (no batch) on others. worker_count=None means `loader_settings`'
    (`dataset.worker_count`, "auto" resolved); the read threads are always its.
    shard=(index, count) overrides jax's process index/count. crop > 0 cuts a random
    crop x crop window from every sample at `resolution` (`ReadBatch`).

    `iter(loader)` gives a grain DatasetIterator: `get_state()` -> a small dict (JSON-able),
    `set_state(state)` resumes exactly there (same pipeline arguments and worker count).
    """
    split = _split_name(split)
    prepared = datasets.load(ds_config)
    index, count = _checked(resolution, batch_size, crop, shard)
    settings = loader_settings(ds_config)
    if worker_count is None:
        worker_count = settings.worker_count

    source = prepared.data_source(split)
    ds = grain.MapDataset.range(len(source)).seed(int(seed) % 2**32)
    if shuffle:
        ds = ds.shuffle()
    ds = ds.map_with_index(Keys())  # the global order: element e * n + p, epoch e, position p
    n, global_batch = len(ds), int(batch_size) * count
    if drop_remainder:
        ds = ds[: n - n % global_batch]  # whole global batches: every process, the same steps
    if len(ds) == 0:
        raise DatasetError(
            f"{prepared.name} {split}: {n} example(s), fewer than one global batch "
            f"of {global_batch} ({count} process(es) x batch_size {batch_size})"
        )
    ds = ds.batch(int(batch_size))[index::count]  # this process's block of each global batch
    ds = ds.repeat(num_epochs)  # reseeds the shuffle and crops every epoch
    targets = tuple(datasets.target_heads(ds_config))
    ds = ds.map(ReadBatch(source, int(resolution), int(crop), int(seed) % 2**32, targets))
    return _prefetched(ds, settings, ds_config.prefetch_batches, worker_count)


def _prefetched(ds, settings: LoaderSettings, prefetch_batches: int, worker_count: int):
    """`ds` read ahead by the read threads, in `worker_count` worker processes if any."""
    ids = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=settings.read_threads,
            prefetch_buffer_size=max(prefetch_batches, settings.read_threads),
        )
    )
    if worker_count > 0:
        ids = ids.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=int(worker_count), per_worker_buffer_size=1)
        )
    return ids


def _checked(resolution: int, batch_size: int, crop: int, shard) -> tuple[int, int]:
    """(this reader's index, the readers' count) after refusing a bad size, crop or shard."""
    if resolution <= 0 or batch_size <= 0:
        raise DatasetError(
            f"resolution and batch_size must be positive, got {resolution}, {batch_size}"
        )
    if not 0 <= crop <= resolution:
        raise DatasetError(f"crop={crop}: expected 0 (none) up to the resolution {resolution}")
    index, count = shard if shard is not None else (jax.process_index(), jax.process_count())
    if not 0 <= index < count:
        raise DatasetError(f"shard={shard}: expected (index, count) with 0 <= index < count")
    return index, count


def train_batches(
    ds_config,
    seed: int,
    resolution: int,
    batch_size: int,
    crop: int = 0,
    worker_count: int | None = None,
) -> grain.IterDataset:
    """The training split for ever, as the trainer's stages, the LR range test and the
    benchmarks read it: shuffled and re-cropped every epoch, whole global batches only
    (`batch_size` per process)."""
    return create_loader(
        ds_config,
        "train",
        resolution=resolution,
        batch_size=batch_size,
        shuffle=True,
        seed=seed,
        worker_count=worker_count,
        crop=crop,
    )


def eval_batches(
    ds_config,
    split: str,
    seed: int,
    resolution: int,
    batch_size: int,
    shard: tuple[int, int] | None = None,
) -> grain.IterDataset:
    """Every sample of `split` once, in a fixed order, the last global batch partial, as
    validation and the baselines read it (`shard=(0, 1)`: all of it in this process)."""
    return create_loader(
        ds_config,
        split,
        resolution=resolution,
        batch_size=batch_size,
        shuffle=False,
        seed=seed,
        num_epochs=1,
        drop_remainder=False,
        shard=shard,
    )


def measure_throughput(
    ds_config,
    resolution: int,
    batch_size: int = 32,
    worker_count: int | None = None,
    num_batches: int = 20,
    warmup: int = 3,
    split: str = "train",
) -> float:
    """Samples/s the loader delivers (worker_count=None: `loader_settings`'), measured over
    `num_batches` batches after `warmup` (worker start-up excluded)."""
    loader = create_loader(
        ds_config,
        split,
        resolution=resolution,
        batch_size=batch_size,
        shuffle=True,
        seed=0,
        worker_count=worker_count,
    )
    with iterate(loader) as batches:
        for _ in range(warmup):
            next(batches)
        start = time.perf_counter()
        for _ in range(num_batches):
            next(batches)
        return num_batches * batch_size / (time.perf_counter() - start)


@contextlib.contextmanager
def iterate(loader):
    """An iterator over `loader` whose worker processes, if it has any, stop on leaving."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        if hasattr(batches, "close"):
            batches.close()
