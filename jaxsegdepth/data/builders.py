"""tfds builders for the synthetic museum set and MODEST Museum, written as array_record.

No TensorFlow is needed: images are handed to tfds as encoded bytes, stored as they are (the
original JPEG bytes of MODEST, never re-encoded) and read back undecoded
(`tfds.decode.SkipDecoding`); decoding happens in the grain pipeline.

Split rule (both datasets): indices `0..n-1` of the source order (file_map.txt lines for MODEST,
sample indices for the synthetic set) shuffled with NumPy's legacy `np.random.seed(1);
np.random.shuffle(...)`, the first `int(n * (1 - val_fraction))` are `train`, the rest
`validation` (the reference's rule with val_fraction=0.3). Records keep that order inside each
split (no tfds shuffling), and every record carries its source `index`. Building and opening
them is `datasets`'.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from jaxsegdepth import names
from jaxsegdepth.data import folder, modest, synthetic
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION

KEYS = names.INPUTS + names.HEADS  # record keys, in file_map.txt column order


def reference_split(n: int, val_fraction: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: the reference's seed-1 legacy shuffle of 0..n-1, first
    `int(n * (1 - val_fraction))` for training, `val_fraction` in [0, 1) (`datasets.validate`
    checks the config's). Leaves NumPy's global random state alone."""
    indices = np.arange(n)
    np.random.RandomState(1).shuffle(indices)  # == np.random.seed(1); np.random.shuffle(indices)
    n_train = int(n * round(1.0 - val_fraction, 12))
    return indices[:n_train], indices[n_train:]


def _fraction_tag(val_fraction: float) -> str:
    return "" if abs(val_fraction - 0.3) < 1e-12 else f"_val{val_fraction:g}".replace(".", "p")


def _image(channels: int) -> tfds.features.Image:
    return tfds.features.Image(shape=(None, None, channels), encoding_format="jpeg")


def _features(heads: tuple = names.HEADS):
    return tfds.features.FeaturesDict(
        {
            "bg": _image(3),
            "bg_fg": _image(3),
            **{head: _image(1) for head in heads},
            "index": np.int64,  # position in the source order (file_map.txt line order / sample index)
            "source": tfds.features.Text(),  # what to name in an error message
        }
    )


class SyntheticMuseumConfig(tfds.core.BuilderConfig):
    def __init__(self, *, num_samples: int = 3000, seed: int = 0, val_fraction: float = 0.3):
        super().__init__(
            name=f"n{num_samples}_seed{seed}{_fraction_tag(val_fraction)}"
            f"_g{synthetic.GENERATOR_VERSION}",
            description=f"{num_samples} generated samples, seed {seed}, generator version "
            f"{synthetic.GENERATOR_VERSION}",
        )
        self.num_samples, self.seed, self.val_fraction = int(num_samples), int(seed), val_fraction


def _dataset_info(
    builder: tfds.core.GeneratorBasedBuilder, heads: tuple = names.HEADS
) -> tfds.core.DatasetInfo:
    """The info the builders share: the images of a record (inputs and `heads`' targets), kept
    in split order."""
    return tfds.core.DatasetInfo(
        builder=builder,
        description=builder.__doc__,
        features=_features(heads),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )


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
        self.pixels = 0  # per channel
        self.samples = 0
        self.sums = {k: np.zeros(3) for k in names.INPUTS}
        self.squares = {k: np.zeros(3) for k in names.INPUTS}
        self.targets = {k: 0.0 for k in names.HEADS}

    def add(self, arrays):
        for key in self.sums:
            x = arrays[key][::2, ::2].reshape(-1, 3).astype(np.float64) / 255.0
            self.sums[key] += x.sum(0)
            self.squares[key] += (x * x).sum(0)
        for key in self.targets.keys() & arrays.keys():
            self.targets[key] += float(arrays[key][::2, ::2].mean()) / 255.0
        self.pixels += arrays["bg"][::2, ::2].shape[0] * arrays["bg"][::2, ::2].shape[1]
        self.samples += 1

    def normalization(self):
        out = {}
        for k in self.sums:
            mean = self.sums[k] / self.pixels
            std = np.sqrt(np.maximum(self.squares[k] / self.pixels - mean**2, 1e-12))
            out[k] = {
                "mean": [round(float(m), 5) for m in mean],
                "std": [round(float(s), 5) for s in std],
            }
        return out

    def target_means(self):
        return {k: round(v / max(1, self.samples), 5) for k, v in self.targets.items()}


class ModestMuseumConfig(tfds.core.BuilderConfig):
    def __init__(self, *, val_fraction: float = 0.3):
        super().__init__(
            name="default" + _fraction_tag(val_fraction),
            description="MODEST Museum, reference split",
        )
        self.val_fraction = val_fraction


class ModestMuseum(tfds.core.GeneratorBasedBuilder):
    """MODEST Museum (bg, bg_fg, mask, depth JPEGs + file_map.txt), from a manual folder or zip."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Original JPEG bytes, reference split."}
    BUILDER_CONFIGS = [ModestMuseumConfig()]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the MODEST Museum zip yourself and set dataset.manual_dir to the zip or to the "
        "folder it extracts to (bg/, bg_fg/, bg_fg_mask/, bg_fg_depth_map/, file_map.txt)."
    )

    def __init__(self, *, manual_path: str = "", scan: modest.ModestScan | None = None, **kwargs):
        """`scan`: `modest.scan_modest(manual_path)`'s result, needed to build (not to open)."""
        self._manual_path, self._scan = manual_path, scan
        super().__init__(**kwargs)

    def _info(self):
        return _dataset_info(self)

    def _split_generators(self, dl_manager):
        del dl_manager
        scan = self._scan
        train, val = reference_split(scan.num_lines, self.builder_config.val_fraction)
        # The split is over all file_map lines (as the reference); skipped samples just drop out.
        by_position = {e[0]: e for e in scan.entries}
        self.info.metadata.update(
            normalization={
                k: {"mean": list(m), "std": list(s)} for k, (m, s) in MODEST_NORMALIZATION.items()
            },
            file_map_sha256=scan.file_map_sha256,
            num_lines=scan.num_lines,
            skipped=scan.skipped,
            grayscale_inputs=scan.grayscale_inputs,
            odd_sized=scan.odd_sized,
            source=os.path.abspath(os.path.expanduser(self._manual_path)),
        )
        return {
            "train": self._generate_examples([by_position[i] for i in train if i in by_position]),
            "validation": self._generate_examples(
                [by_position[i] for i in val if i in by_position]
            ),
        }

    def _generate_examples(self, entries):
        source = modest.ModestSource(self._manual_path)
        try:
            for key, (position, number, line, paths) in enumerate(entries):
                example = {k: source.read(p) for k, p in zip(KEYS, paths)}
                example.update(
                    index=position, source=f"file_map.txt line {number} ({line.strip()!r})"
                )
                yield key, example  # tfds keeps key order (disable_shuffling): the split's order
        finally:
            source.close()


class FolderConfig(tfds.core.BuilderConfig):
    def __init__(self, *, digest: str = "none", val_fraction: float = 0.3, has_depth: bool = True):
        super().__init__(
            name=f"{digest}{_fraction_tag(val_fraction)}",
            description="your own pairs (data/folder.py), reference split",
        )
        self.val_fraction, self.has_depth = val_fraction, has_depth


class FolderDataset(tfds.core.GeneratorBasedBuilder):
    """Your own pairs from a plain folder (`data/folder.py`), original file bytes, reference
    split over the samples in name order; depth images only when the folder has them."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Original file bytes, reference split."}
    BUILDER_CONFIGS = [FolderConfig()]

    def __init__(self, *, samples: folder.FolderSamples | None = None, **kwargs):
        """`samples`: `folder.list_samples(ROOT)`, needed to build (not to open)."""
        self._samples = samples
        super().__init__(**kwargs)

    def _info(self):
        return _dataset_info(self, names.HEADS if self.builder_config.has_depth else ("mask",))

    def _split_generators(self, dl_manager):
        del dl_manager
        train, val = reference_split(len(self._samples.files), self.builder_config.val_fraction)
        self._stats = _StatsAccumulator()
        self.info.metadata["source"] = self._samples.root
        return {"train": self._generate_examples(train), "validation": self._generate_examples(val)}

    def _generate_examples(self, indices):
        for key, i in enumerate(indices):
            paths = self._samples.files[int(i)]
            self._stats.add(
                {
                    sub: folder.read_small(path, "RGB" if sub in names.INPUTS else "L")
                    for sub, path in paths.items()
                }
            )
            example = {}
            for sub, path in paths.items():
                with open(path, "rb") as f:
                    example[sub] = f.read()
            name = os.path.splitext(os.path.basename(paths["bg_fg"]))[0]
            example.update(index=int(i), source=f"{self._samples.root} sample {name!r}")
            yield key, example
        self.info.metadata["normalization"] = self._stats.normalization()
        self.info.metadata["target_means"] = self._stats.target_means()
