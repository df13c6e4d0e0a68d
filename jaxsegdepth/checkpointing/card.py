"""The model card every checkpoint carries: what it takes to use the model without its data.

A card is JSON: the model's name, heads, the heads its loss trained (`trained_heads`: a
head without a loss term, e.g. depth on a dataset without depth maps, is left out of
predictions) and input stride, its compute dtype, the input
normalisation it was trained with (`{input: {"mean": [3], "std": [3]}}`, for inputs in
[0, 1]), the resolution it last trained at, the dataset it trained on and this package's
version. `evaluate`, `predict` and `export` normalise with the card's statistics, so a run
folder copied alone to another machine predicts and exports, and a model evaluated on another
dataset sees the inputs it was trained on.
"""

from importlib import metadata

import ml_collections
import numpy as np

from jaxsegdepth import models


def create(
    config: ml_collections.ConfigDict, normalization: dict, resolution: int, trained_heads
) -> dict:
    """The card of `config`'s model trained on `trained_heads` with `normalization` ({input:
    (mean, std)}), last at `resolution`."""
    model = models.MODELS[config.model]
    return {
        "model": config.model,
        "heads": list(model.HEADS),
        "trained_heads": list(trained_heads),
        "stride": model.STRIDE,
        "dtype": config.dtype,
        "normalization": {
            key: {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}
            for key, (mean, std) in normalization.items()
        },
        "resolution": int(resolution),
        "dataset": config.dataset.name,
        "version": _version(),
    }


def normalization(card: dict) -> dict:
    """{input: (mean, std)} float32 3-vectors from a card, as `pipeline.input_normalization`."""
    return {
        key: (np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32))
        for key, stats in card["normalization"].items()
    }


def _version() -> str:
    try:
        return metadata.version("jaxsegdepth")
    except metadata.PackageNotFoundError:
        return "unknown"
