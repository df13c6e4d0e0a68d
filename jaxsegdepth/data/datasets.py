"""Building a dataset once and opening it: `prepare(ds_config)` and `load(ds_config)`.

`prepare` builds the dataset `ds_config.name` names once under `ds_config.data_dir` (default
`~/tensorflow_datasets`), reuses it on later calls, and returns a `Prepared` (split sizes,
normalisation statistics, skipped samples, data sources). MODEST input is checked in full
(`modest.scan_modest`) before anything is written, so before anything trains. Reusing a build
made with `skip_corrupt=True` under `skip_corrupt=False` is an error, so nothing is lost
silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import os
import shutil
from typing import Any, Sequence

import tensorflow_datasets as tfds
from absl import logging

from jaxsegdepth import names
from jaxsegdepth.data import builders, folder, modest
from jaxsegdepth.errors import DatasetError

SPLITS = ("train", "validation")
DEFAULT_DATA_DIR = "~/tensorflow_datasets"


def default_data_dir(data_dir: str = "") -> str:
    return os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A built dataset: what the pipeline needs to read it."""

    name: str
    dataset_dir: str  # the tfds folder of this build (data_dir/name/config/version)
    split_sizes: dict  # {"train": n, "validation": n}, global counts
    normalization: dict  # {"bg": (mean3, std3), "bg_fg": (mean3, std3)}, inputs in [0,1]
    skipped: tuple  # samples left out at build time (skip_corrupt): dicts line/file/error
    metadata: dict = dataclasses.field(repr=False)
    builder: Any = dataclasses.field(repr=False, compare=False)

    def data_source(self, split: str) -> Sequence[dict]:
        """Random-access records of a split: encoded images under bg/bg_fg/mask/depth (depth
        only where the set has it), plus index (int) and source (bytes), undecoded."""
        keys = [key for key in builders.KEYS if key in self.builder.info.features]
        return self.builder.as_data_source(
            split, decoders={k: tfds.decode.SkipDecoding() for k in keys}
        )


DATASETS = ("synthetic_museum", "modest_museum", "folder")


def validate(ds_config) -> None:
    """Refuses a bad `config.dataset` in one line, before anything is built or compiled."""
    if ds_config.name not in DATASETS:
        raise DatasetError(f"dataset.name={ds_config.name!r}: expected one of {DATASETS}")
    if not 0.0 <= ds_config.val_fraction < 1.0:
        raise DatasetError(
            f"dataset.val_fraction={ds_config.val_fraction}: expected a value in [0, 1)"
        )
    if ds_config.name == "synthetic_museum" and ds_config.num_samples < 2:
        raise DatasetError(f"dataset.num_samples={ds_config.num_samples}: expected at least 2")
    manual_dir = ds_config.manual_dir
    if ds_config.name == "folder":
        if not manual_dir:
            raise DatasetError(
                "dataset.name='folder' needs --config.dataset.manual_dir=ROOT, the folder "
                "holding bg/, bg_fg/, mask/ and optionally depth/ (docs/data.md)"
            )
        folder.list_samples(manual_dir)
    elif manual_dir:
        modest.check_manual_dir(manual_dir)
    if (
        ds_config.name == "modest_museum"
        and not manual_dir
        and not _builder(ds_config).is_prepared()
    ):
        raise DatasetError(
            f"dataset.name='modest_museum' is not built under {default_data_dir(ds_config.data_dir)}: "
            "it needs --config.dataset.manual_dir=DIR, the extracted MODEST Museum folder or its "
            ".zip (this project never downloads it)"
        )


def target_heads(ds_config) -> tuple:
    """The heads the samples of `ds_config`'s dataset have targets for: both, but for a
    folder set without depth maps."""
    if ds_config.name == "folder" and ds_config.manual_dir:
        return folder.target_heads(os.path.expanduser(ds_config.manual_dir))
    return names.HEADS


def _config_arg(cls, config):
    """tfds wants the name for a config the class lists, the object for any other."""
    return config.name if config.name in {c.name for c in cls.BUILDER_CONFIGS} else config


def _builder(ds_config, scan: modest.ModestScan | None = None) -> tfds.core.GeneratorBasedBuilder:
    """The tfds builder `ds_config` names (nothing is read or written yet); a MODEST build
    needs its `scan`."""
    data_dir = default_data_dir(ds_config.data_dir)
    if ds_config.name == "folder":
        samples = folder.list_samples(ds_config.manual_dir)
        config = builders.FolderConfig(
            digest=samples.digest, val_fraction=ds_config.val_fraction, has_depth=samples.has_depth
        )
        return builders.FolderDataset(
            config=config, data_dir=data_dir, file_format="array_record", samples=samples
        )
    if ds_config.name == "synthetic_museum":
        config = builders.SyntheticMuseumConfig(
            num_samples=ds_config.num_samples,
            seed=ds_config.seed,
            val_fraction=ds_config.val_fraction,
        )
        return builders.SyntheticMuseum(
            config=_config_arg(builders.SyntheticMuseum, config),
            data_dir=data_dir,
            file_format="array_record",
        )
    config = builders.ModestMuseumConfig(val_fraction=ds_config.val_fraction)
    return builders.ModestMuseum(
        config=_config_arg(builders.ModestMuseum, config),
        data_dir=data_dir,
        file_format="array_record",
        manual_path=ds_config.manual_dir,
        scan=scan,
    )


def prepare(ds_config) -> Prepared:
    """Builds the dataset `ds_config` names under `ds_config.data_dir` unless it is built, and
    opens it. The one call that writes a dataset; modes make it once, before training.

    Processes that share a `data_dir` build a set once: the first takes a file lock and
    builds, the others wait for it and open what it built. tfds builds into an `incomplete.*`
    folder and renames it when done, so a half-built set is never opened; one left behind by a
    killed build is removed before the next build. Raises DatasetError with a clear message
    for bad configuration or bad MODEST input."""
    validate(ds_config)
    with _build_lock(_builder(ds_config)):
        builder = _builder(ds_config)  # made again under the lock: another may have built it
        if not builder.is_prepared():
            builder = _build(builder, ds_config)
        elif ds_config.name == "modest_museum" and ds_config.manual_dir:
            _check_file_map(builder, ds_config.manual_dir)
        return _open(builder, ds_config)


@contextlib.contextmanager
def _build_lock(builder):
    """An exclusive lock on the folder of one dataset config, held while it is built."""
    folder = os.path.dirname(str(builder.data_dir))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".build.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(builder, ds_config) -> tfds.core.GeneratorBasedBuilder:
    """Builds the set of `builder` (a MODEST one after checking its folder); returns the
    builder that wrote it."""
    for stale in glob.glob(os.path.join(os.path.dirname(str(builder.data_dir)), "incomplete.*")):
        logging.warning("removing %s, left by a build that was killed", stale)
        shutil.rmtree(stale)
    if ds_config.name == "modest_museum":
        logging.info("checking %s before building modest_museum", ds_config.manual_dir)
        builder = _builder(
            ds_config, modest.scan_modest(ds_config.manual_dir, ds_config.skip_corrupt)
        )
    logging.info(
        "building %s/%s under %s", ds_config.name, builder.builder_config.name, builder.data_dir
    )
    builder.download_and_prepare()
    return builder


def _check_file_map(builder, manual: str) -> None:
    """A MODEST set built from another file_map.txt than the one in `manual` is refused."""
    stored = builder.info.metadata.get("file_map_sha256")
    source = modest.ModestSource(manual)
    try:
        digest = modest.file_map_digest(source)
    finally:
        source.close()
    if stored and digest != stored:
        raise DatasetError(
            f"{builder.data_dir} holds modest_museum built from a different file_map.txt "
            f"than the one in {manual}: delete that folder to rebuild, or point "
            "dataset.data_dir elsewhere"
        )


def load(ds_config) -> Prepared:
    """Opens the dataset `ds_config` names, which `prepare` must have built (nothing is written).
    Opened sets are remembered for the life of the process."""
    key = _key(ds_config)
    if key not in _OPENED:
        validate(ds_config)
        builder = _builder(ds_config)
        if not builder.is_prepared():
            raise DatasetError(
                f"{ds_config.name} is not built under {builder.data_dir}: "
                "a training run builds it first (or call datasets.prepare)"
            )
        _open(builder, ds_config)
    return _OPENED[key]


_OPENED: dict[tuple, Prepared] = {}


def _key(ds_config) -> tuple:
    return tuple(
        ds_config[field]
        for field in (
            "name",
            "data_dir",
            "manual_dir",
            "num_samples",
            "seed",
            "val_fraction",
            "skip_corrupt",
        )
    )


def _open(builder, ds_config) -> Prepared:
    meta = dict(builder.info.metadata)
    skipped = tuple(meta.get("skipped", ()))
    if skipped and not ds_config.skip_corrupt:
        files = sorted({s["file"] for s in skipped})
        raise DatasetError(
            f"{builder.data_dir} was built with dataset.skip_corrupt=True and leaves out "
            f"{len({s['line'] for s in skipped})} sample(s) with corrupt files "
            f"({', '.join(files[:5])}{' ...' if len(files) > 5 else ''}): set "
            "dataset.skip_corrupt=True to use it, or delete the folder to rebuild"
        )
    if skipped:
        logging.warning(
            "%s: %d sample(s) with corrupt files were left out (skip_corrupt=True): %s",
            ds_config.name,
            len({s["line"] for s in skipped}),
            ", ".join(sorted({s["file"] for s in skipped})[:10]),
        )
    norm = {k: (tuple(v["mean"]), tuple(v["std"])) for k, v in meta["normalization"].items()}
    _OPENED[_key(ds_config)] = Prepared(
        name=ds_config.name,
        dataset_dir=str(builder.data_dir),
        split_sizes={s: builder.info.splits[s].num_examples for s in SPLITS},
        normalization=norm,
        skipped=skipped,
        metadata=meta,
        builder=builder,
    )
    return _OPENED[_key(ds_config)]
