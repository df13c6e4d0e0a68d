"""tfds builders for the synthetic museum set and MODEST Museum, written as array_record.

No TensorFlow is needed: images are handed to tfds as encoded bytes, stored as they are (the
original JPEG bytes of MODEST, never re-encoded) and read back undecoded
(`tfds.decode.SkipDecoding`); decoding happens in the grain pipeline's workers.

`prepare(ds_config)` is the entry point: it builds the dataset named by `ds_config.name` once
under `ds_config.data_dir` (default `~/tensorflow_datasets`) and reuses it on later calls, and
returns a `Prepared` (split sizes, normalisation statistics, skipped samples, data sources).

Split rule (both datasets): indices `0..n-1` of the source order (file_map.txt lines for MODEST,
sample indices for the synthetic set) shuffled with NumPy's legacy `np.random.seed(1);
np.random.shuffle(...)`, the first `int(n * (1 - val_fraction))` are `train`, the rest
`validation` (the reference's rule with val_fraction=0.3). Records keep that order inside each
split (no tfds shuffling), and every record carries its source `index`.

MODEST input problems are found before anything is written (so before anything trains), and
raised as `DatasetError` with a message naming the file and quoting the file_map line:
- missing/empty/malformed file_map.txt, a line without exactly four tab-separated fields;
- a file listed in file_map.txt that does not exist;
- a corrupt or truncated image (every distinct file is decoded once at build time); with
  `skip_corrupt=True` its samples are left out instead, counted, logged and recorded in the
  dataset's metadata (`Prepared.skipped`). Reusing such a build with `skip_corrupt=False` is an
  error, so nothing is lost silently.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import io
import os
import shutil
import zipfile
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from jaxsegdepth import errors, names
from jaxsegdepth.data import synthetic
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION

FOLDERS = ("bg", "bg_fg", "bg_fg_mask", "bg_fg_depth_map")  # file_map.txt column order
KEYS = names.INPUTS + names.HEADS  # record keys, in file_map.txt column order
SPLITS = ("train", "validation")
DEFAULT_DATA_DIR = "~/tensorflow_datasets"

class DatasetError(errors.UsageError):
    """Bad dataset input or configuration; the message says what and where."""


def default_data_dir(data_dir: str = "") -> str:
    return os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))


def reference_split(n: int, val_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: the reference's seed-1 legacy shuffle of 0..n-1, first
    `int(n * (1 - val_fraction))` for training. Leaves NumPy's global random state alone."""
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"dataset.val_fraction must be in [0, 1), got {val_fraction}")
    indices = np.arange(n)
    np.random.RandomState(1).shuffle(indices)  # == np.random.seed(1); np.random.shuffle(indices)
    n_train = int(n * round(1.0 - val_fraction, 12))
    return indices[:n_train], indices[n_train:]


def _fraction_tag(val_fraction: float) -> str:
    return "" if abs(val_fraction - 0.3) < 1e-12 else f"_val{val_fraction:g}".replace(".", "p")


# ------------------------------------------------------------------------------------------
# MODEST source: the extracted folder or the zip.


class _ModestSource:
    """Read access to a MODEST layout in a folder or a zip (file_map.txt at its root or in a
    subfolder up to two levels down)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        self._zip = None
        if os.path.isdir(self.path):
            self.root = self._find_root_dir(self.path)
            self._names: set[str] | None = None
        elif os.path.isfile(self.path) and zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
            maps = [n for n in self._zip.namelist()
                    if n.rsplit("/", 1)[-1] == "file_map.txt" and n.count("/") <= 2]
            if not maps:
                raise DatasetError(f"no file_map.txt in the zip {self.path} (looked at its root "
                                   "and two folder levels down)")
            fm = min(maps, key=lambda n: n.count("/"))
            self.root = fm[: -len("file_map.txt")]  # "" or "prefix/"
            self._names = {n[len(self.root):] for n in self._zip.namelist()
                           if n.startswith(self.root) and not n.endswith("/")}
        elif os.path.exists(self.path):
            raise DatasetError(f"dataset.manual_dir={path!r} is neither a folder nor a zip file")
        else:
            raise DatasetError(f"dataset.manual_dir={path!r} does not exist (give the extracted "
                               "MODEST folder or its .zip)")

    @staticmethod
    def _find_root_dir(path: str) -> str:
        candidates = [path]
        for _ in range(2):
            if any(os.path.isfile(os.path.join(c, "file_map.txt")) for c in candidates):
                break
            candidates = [os.path.join(c, d) for c in candidates
                          for d in sorted(os.listdir(c)) if os.path.isdir(os.path.join(c, d))]
        for c in candidates:
            if os.path.isfile(os.path.join(c, "file_map.txt")):
                return c
        raise DatasetError(f"no file_map.txt in {path} (looked in it and two folder levels down)")

    def describe(self, rel: str) -> str:
        if self._zip is not None:
            return f"{self.path}:{self.root}{rel}"
        return os.path.join(self.root, rel)

    def read(self, rel: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(self.root + rel)
        with open(os.path.join(self.root, rel), "rb") as f:
            return f.read()

    def names_in(self, folder: str) -> set[str]:
        """File names directly inside `folder` (empty when the folder is missing)."""
        if self._zip is not None:
            prefix = folder + "/"
            return {n[len(prefix):] for n in self._names if n.startswith(prefix)}
        full = os.path.join(self.root, folder)
        if not os.path.isdir(full):
            return set()
        with os.scandir(full) as it:
            return {e.name for e in it}

    def close(self):
        if self._zip is not None:
            self._zip.close()


def parse_file_map(text: str, origin: str = "file_map.txt") -> list[tuple[int, str, tuple[str, ...]]]:
    """[(line_number, line, 4 stems)] for every non-blank line; DatasetError quoting a bad line."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        fields = [f.strip() for f in fields]
        if len(fields) != 4 or not all(fields):
            raise DatasetError(
                f"{origin} line {number} is malformed: expected 4 tab-separated file stems "
                f"({', '.join(FOLDERS)}), got {len([f for f in fields if f])}: {line!r}")
        entries.append((number, line, tuple(fields)))
    if not entries:
        raise DatasetError(f"{origin} is empty: expected one line of 4 tab-separated file stems "
                           "per sample")
    return entries


def _resolve(stem: str, folder: str, names: set[str]) -> str | None:
    """Relative path of `folder/stem(.jpeg|.jpg)`, or None when there is no such file."""
    if "/" in stem:  # already "folder/name"
        folder, stem = stem.rsplit("/", 1)
    for candidate in (stem + ".jpeg", stem + ".jpg", stem):
        if candidate in names:
            return f"{folder}/{candidate}"
    return None


def _check_image(data: bytes) -> tuple[str, tuple[int, int]]:
    """Decodes the image fully (fast DCT-scaled for JPEG, which still reads every byte); raises
    on a corrupt or truncated file. Returns (mode, size)."""
    with Image.open(io.BytesIO(data)) as im:
        mode, size = im.mode, im.size
        im.draft(im.mode, (max(1, size[0] // 8), max(1, size[1] // 8)))
        im.load()
    return mode, size


@dataclasses.dataclass
class ModestScan:
    entries: list  # [(position, line_number, line, (4 relative paths))], the samples to write;
    #                position = index among the non-blank file_map lines (the sample index)
    skipped: list  # [{"line": n, "file": path, "error": str}], samples left out
    num_lines: int
    file_map_sha256: str
    grayscale_inputs: int  # distinct bg/bg_fg files that are not RGB (converted when loading)
    odd_sized: int  # distinct files that are not 224x224 (resized when loading)


def _file_map_digest(source: _ModestSource) -> str:
    return hashlib.sha256(source.read("file_map.txt")).hexdigest()


def scan_modest(manual_dir: str, skip_corrupt: bool = False, num_threads: int = 0) -> ModestScan:
    """Validates a MODEST folder/zip: file_map syntax, every listed file exists, every distinct
    file decodes. Raises DatasetError (see module doc); never writes anything."""
    source = _ModestSource(manual_dir)
    try:
        raw = source.read("file_map.txt")
        entries = parse_file_map(raw.decode("utf-8", errors="replace"),
                                 source.describe("file_map.txt"))
        resolved = _resolve_entries(source, entries)
        info, bad = _decode_all(source, sorted({p for *_, paths in resolved for p in paths}),
                                num_threads)
        grayscale = sum(1 for r, (mode, _) in info.items()
                        if r.split("/")[0] in FOLDERS[:2] and mode != "RGB")
        odd = sum(1 for _, (_, size) in info.items() if size != (224, 224))
        skipped, kept = [], []
        for position, number, line, paths in resolved:
            broken = [p for p in paths if p in bad]
            skipped.extend({"line": number, "file": source.describe(p), "error": bad[p]}
                           for p in broken)
            if not broken:
                kept.append((position, number, line, paths))
        if bad and not skip_corrupt:
            users = sorted({s["line"] for s in skipped})
            raise DatasetError(
                f"{len(bad)} corrupt or unreadable image file(s) in {source.describe('')} "
                f"(used by {len(users)} sample(s), file_map.txt line(s) "
                f"{', '.join(map(str, users[:10]))}{' ...' if len(users) > 10 else ''}):\n"
                f"{_first_ten([f'  {source.describe(p)}: {e}' for p, e in sorted(bad.items())])}"
                "\nSet dataset.skip_corrupt=True to leave those samples out.")
        if not kept:
            raise DatasetError(f"no usable samples in {source.describe('')}")
        return ModestScan(kept, skipped, len(entries), hashlib.sha256(raw).hexdigest(),
                          grayscale, odd)
    finally:
        source.close()


def _first_ten(lines: list[str]) -> str:
    more = f"\n  ... and {len(lines) - 10} more" if len(lines) > 10 else ""
    return "\n".join(lines[:10]) + more


def _resolve_entries(source: "_ModestSource", entries) -> list[tuple]:
    """(position, line number, line, paths) per file_map entry; DatasetError listing the
    missing files, if any."""
    names = {folder: source.names_in(folder) for folder in FOLDERS}
    resolved, missing = [], []
    for position, (number, line, stems) in enumerate(entries):
        paths = []
        for folder, stem in zip(FOLDERS, stems):
            rel = _resolve(stem, folder, names[folder])
            if rel is None:
                missing.append(f"  line {number}: {folder}/{stem}.jpeg  (line: {line!r})")
            paths.append(rel)
        resolved.append((position, number, line, tuple(paths)))
    if missing:
        raise DatasetError(f"{len(missing)} file(s) listed in {source.describe('file_map.txt')} "
                           f"are missing under {source.describe('')}:\n{_first_ten(missing)}")
    return resolved


def _decode_all(source: "_ModestSource", files: list[str], num_threads: int):
    """Decodes every file once (threads: PIL releases the GIL while decoding); returns
    ({file: (mode, size)}, {file: error})."""
    def check(rel):
        try:
            return rel, _check_image(source.read(rel)), None
        except Exception as e:  # noqa: BLE001 - reported by the caller with the file name
            return rel, None, f"{type(e).__name__}: {e}"

    threads = num_threads or min(8, 2 * (os.cpu_count() or 1))
    info, bad = {}, {}
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for rel, meta, err in pool.map(check, files, chunksize=64):
            if err is None:
                info[rel] = meta
            else:
                bad[rel] = err
    return info, bad


# ------------------------------------------------------------------------------------------
# tfds builders.


def _features():
    image = lambda channels: tfds.features.Image(shape=(None, None, channels), encoding_format="jpeg")
    return tfds.features.FeaturesDict({
        "bg": image(3), "bg_fg": image(3), "mask": image(1), "depth": image(1),
        "index": np.int64,  # position in the source order (file_map.txt line order / sample index)
        "source": tfds.features.Text(),  # what to name in an error message
    })


class SyntheticMuseumConfig(tfds.core.BuilderConfig):
    def __init__(self, *, num_samples: int = 3000, seed: int = 0, val_fraction: float = 0.3):
        super().__init__(
            name=f"n{num_samples}_seed{seed}{_fraction_tag(val_fraction)}"
                 f"_g{synthetic.GENERATOR_VERSION}",
            description=f"{num_samples} generated samples, seed {seed}, generator version "
                        f"{synthetic.GENERATOR_VERSION}")
        self.num_samples, self.seed, self.val_fraction = int(num_samples), int(seed), val_fraction


def _dataset_info(builder: tfds.core.GeneratorBasedBuilder) -> tfds.core.DatasetInfo:
    """The info both builders share: the four JPEG images per record, kept in split order."""
    return tfds.core.DatasetInfo(
        builder=builder, description=builder.__doc__, features=_features(), disable_shuffling=True,
        metadata=tfds.core.MetadataDict())


class SyntheticMuseum(tfds.core.GeneratorBasedBuilder):
    """Procedural museum scenes (jaxsegdepth.data.synthetic), MODEST Museum layout and format."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First generator."}
    BUILDER_CONFIGS = [SyntheticMuseumConfig()]

    def _info(self):
        return _dataset_info(self)

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg = self.builder_config
        if cfg.num_samples < 2:
            raise DatasetError(f"dataset.num_samples must be >= 2, got {cfg.num_samples}")
        train, val = reference_split(cfg.num_samples, cfg.val_fraction)
        self._stats = _StatsAccumulator()
        return {"train": self._generate_examples(train), "validation": self._generate_examples(val)}

    def _generate_examples(self, indices):
        cfg = self.builder_config
        for key, i in enumerate(indices):  # tfds keeps key order (disable_shuffling)
            arrays = synthetic.render(cfg.seed, int(i))
            self._stats.add(arrays)
            example = synthetic.encode(arrays)
            example.update(index=int(i), source=f"synthetic_museum seed={cfg.seed} index={int(i)}")
            yield key, example
        # Both splits are generated before tfds writes dataset_info/metadata.
        self.info.metadata["normalization"] = self._stats.normalization()
        self.info.metadata["target_means"] = self._stats.target_means()


class _StatsAccumulator:
    """Per-channel mean/std of bg and bg_fg in [0,1] over every sample (on every second pixel
    of the rendered image, before JPEG: indistinguishable from the decoded files)."""

    def __init__(self):
        self.n = 0  # pixels per channel
        self.samples = 0
        self.sums = {k: np.zeros(3) for k in ("bg", "bg_fg")}
        self.sq = {k: np.zeros(3) for k in ("bg", "bg_fg")}
        self.targets = {k: 0.0 for k in ("mask", "depth")}

    def add(self, arrays):
        for k in self.sums:
            x = arrays[k][::2, ::2].reshape(-1, 3).astype(np.float64) / 255.0
            self.sums[k] += x.sum(0)
            self.sq[k] += (x * x).sum(0)
        for k in self.targets:
            self.targets[k] += float(arrays[k][::2, ::2].mean()) / 255.0
        self.n += arrays["bg"][::2, ::2].shape[0] * arrays["bg"][::2, ::2].shape[1]
        self.samples += 1

    def normalization(self):
        out = {}
        for k in self.sums:
            mean = self.sums[k] / self.n
            std = np.sqrt(np.maximum(self.sq[k] / self.n - mean ** 2, 1e-12))
            out[k] = {"mean": [round(float(m), 5) for m in mean], "std": [round(float(s), 5) for s in std]}
        return out

    def target_means(self):
        return {k: round(v / max(1, self.samples), 5) for k, v in self.targets.items()}


class ModestMuseumConfig(tfds.core.BuilderConfig):
    def __init__(self, *, val_fraction: float = 0.3):
        super().__init__(name="default" + _fraction_tag(val_fraction),
                         description="MODEST Museum, reference split")
        self.val_fraction = val_fraction


class ModestMuseum(tfds.core.GeneratorBasedBuilder):
    """MODEST Museum (bg, bg_fg, mask, depth JPEGs + file_map.txt), from a manual folder or zip."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Original JPEG bytes, reference split."}
    BUILDER_CONFIGS = [ModestMuseumConfig()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the MODEST Museum zip yourself and set dataset.manual_dir to the zip or to the "
        "folder it extracts to (bg/, bg_fg/, bg_fg_mask/, bg_fg_depth_map/, file_map.txt).")

    def __init__(self, *, manual_path: str = "", skip_corrupt: bool = False, scan=None, **kwargs):
        self._manual_path, self._skip_corrupt, self._scan = manual_path, skip_corrupt, scan
        super().__init__(**kwargs)

    def _info(self):
        return _dataset_info(self)

    def _split_generators(self, dl_manager):
        del dl_manager
        if self._scan is None and not self._manual_path:
            raise DatasetError("modest_museum needs manual_path: the extracted MODEST folder or its zip")
        scan = self._scan or scan_modest(self._manual_path, self._skip_corrupt)
        train, val = reference_split(scan.num_lines, self.builder_config.val_fraction)
        # The split is over all file_map lines (as the reference); skipped samples just drop out.
        by_position = {e[0]: e for e in scan.entries}
        self.info.metadata.update(
            normalization={k: {"mean": list(m), "std": list(s)} for k, (m, s) in MODEST_NORMALIZATION.items()},
            file_map_sha256=scan.file_map_sha256, num_lines=scan.num_lines, skipped=scan.skipped,
            grayscale_inputs=scan.grayscale_inputs, odd_sized=scan.odd_sized,
            source=os.path.abspath(os.path.expanduser(self._manual_path)))
        return {"train": self._generate_examples([by_position[i] for i in train if i in by_position]),
                "validation": self._generate_examples([by_position[i] for i in val if i in by_position])}

    def _generate_examples(self, entries):
        source = _ModestSource(self._manual_path)
        try:
            for key, (position, number, line, paths) in enumerate(entries):
                example = {k: source.read(p) for k, p in zip(KEYS, paths)}
                example.update(index=position, source=f"file_map.txt line {number} ({line.strip()!r})")
                yield key, example  # tfds keeps key order (disable_shuffling): the split's order
        finally:
            source.close()


# ------------------------------------------------------------------------------------------
# prepare(): build once, reuse.


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
        """Random-access records of a split: JPEG bytes under bg/bg_fg/mask/depth, plus
        index (int) and source (bytes), undecoded."""
        return self.builder.as_data_source(
            split, decoders={k: tfds.decode.SkipDecoding() for k in KEYS})


DATASETS = ("synthetic_museum", "modest_museum")


def validate(ds_config) -> None:
    """Refuses a bad `config.dataset` in one line, before anything is built or compiled."""
    if ds_config.name not in DATASETS:
        raise DatasetError(f"dataset.name={ds_config.name!r}: expected one of {DATASETS}")
    if not 0.0 <= ds_config.val_fraction < 1.0:
        raise DatasetError(f"dataset.val_fraction={ds_config.val_fraction}: expected a value in "
                           "[0, 1)")
    if ds_config.name == "synthetic_museum" and ds_config.num_samples < 2:
        raise DatasetError(f"dataset.num_samples={ds_config.num_samples}: expected at least 2")
    manual_dir = ds_config.manual_dir
    if manual_dir and not os.path.exists(os.path.expanduser(manual_dir)):
        raise DatasetError(f"dataset.manual_dir={manual_dir!r} does not exist (give the extracted "
                           "MODEST folder or its .zip)")
    if ds_config.name == "modest_museum" and not manual_dir and not _builder(ds_config).is_prepared():
        raise DatasetError(
            f"dataset.name='modest_museum' is not built under {default_data_dir(ds_config.data_dir)}: "
            "it needs --config.dataset.manual_dir=DIR, the extracted MODEST Museum folder or its "
            ".zip (this project never downloads it)")


def _config_arg(cls, config):
    """tfds wants the name for a config the class lists, the object for any other."""
    return config.name if config.name in {c.name for c in cls.BUILDER_CONFIGS} else config


def _builder(ds_config) -> tfds.core.GeneratorBasedBuilder:
    """The tfds builder `ds_config` names (nothing is read or written yet)."""
    data_dir = default_data_dir(ds_config.data_dir)
    if ds_config.name == "synthetic_museum":
        config = SyntheticMuseumConfig(num_samples=ds_config.num_samples, seed=ds_config.seed,
                                       val_fraction=ds_config.val_fraction)
        return SyntheticMuseum(config=_config_arg(SyntheticMuseum, config), data_dir=data_dir,
                               file_format="array_record")
    config = ModestMuseumConfig(val_fraction=ds_config.val_fraction)
    return ModestMuseum(config=_config_arg(ModestMuseum, config), data_dir=data_dir,
                        file_format="array_record", manual_path=ds_config.manual_dir,
                        skip_corrupt=ds_config.skip_corrupt)


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
            _build(builder, ds_config)
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


def _build(builder, ds_config) -> None:
    for stale in glob.glob(os.path.join(os.path.dirname(str(builder.data_dir)), "incomplete.*")):
        logging.warning("removing %s, left by a build that was killed", stale)
        shutil.rmtree(stale)
    if ds_config.name == "modest_museum":
        logging.info("checking %s before building modest_museum", ds_config.manual_dir)
        builder._scan = scan_modest(  # pylint: disable=protected-access
            ds_config.manual_dir, ds_config.skip_corrupt)
    logging.info("building %s/%s under %s", ds_config.name, builder.builder_config.name,
                 builder.data_dir)
    builder.download_and_prepare()


def _check_file_map(builder, manual: str) -> None:
    """A MODEST set built from another file_map.txt than the one in `manual` is refused."""
    stored = builder.info.metadata.get("file_map_sha256")
    source = _ModestSource(manual)
    try:
        digest = _file_map_digest(source)
    finally:
        source.close()
    if stored and digest != stored:
        raise DatasetError(
            f"{builder.data_dir} holds modest_museum built from a different file_map.txt "
            f"than the one in {manual}: delete that folder to rebuild, or point "
            "dataset.data_dir elsewhere")


def load(ds_config) -> Prepared:
    """Opens the dataset `ds_config` names, which `prepare` must have built (nothing is written).
    Opened sets are remembered for the life of the process."""
    key = _key(ds_config)
    if key not in _OPENED:
        validate(ds_config)
        builder = _builder(ds_config)
        if not builder.is_prepared():
            raise DatasetError(f"{ds_config.name} is not built under {builder.data_dir}: "
                               "a training run builds it first (or call builders.prepare)")
        _open(builder, ds_config)
    return _OPENED[key]


_OPENED: dict[tuple, Prepared] = {}


def _key(ds_config) -> tuple:
    return tuple(ds_config[field] for field in (
        "name", "data_dir", "manual_dir", "num_samples", "seed", "val_fraction", "skip_corrupt"))


def _open(builder, ds_config) -> Prepared:
    meta = dict(builder.info.metadata)
    skipped = tuple(meta.get("skipped", ()))
    if skipped and not ds_config.skip_corrupt:
        files = sorted({s["file"] for s in skipped})
        raise DatasetError(
            f"{builder.data_dir} was built with dataset.skip_corrupt=True and leaves out "
            f"{len({s['line'] for s in skipped})} sample(s) with corrupt files "
            f"({', '.join(files[:5])}{' ...' if len(files) > 5 else ''}): set "
            "dataset.skip_corrupt=True to use it, or delete the folder to rebuild")
    if skipped:
        logging.warning("%s: %d sample(s) with corrupt files were left out (skip_corrupt=True): %s",
                    ds_config.name, len({s["line"] for s in skipped}),
                    ", ".join(sorted({s["file"] for s in skipped})[:10]))
    norm = {k: (tuple(v["mean"]), tuple(v["std"])) for k, v in meta["normalization"].items()}
    _OPENED[_key(ds_config)] = Prepared(
        name=ds_config.name, dataset_dir=str(builder.data_dir),
        split_sizes={s: builder.info.splits[s].num_examples for s in SPLITS},
        normalization=norm, skipped=skipped, metadata=meta, builder=builder)
    return _OPENED[_key(ds_config)]
