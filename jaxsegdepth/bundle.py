"""The shipped model format: a model's variables in one safetensors file beside its card.

A bundle is a folder with two files:
- `model.safetensors`: every parameter and BatchNorm statistic as a tensor keyed by its path
  (`params/encoder/.../kernel`, `batch_stats/.../mean`), in float16 or float32; safetensors
  holds raw arrays and a JSON header, no pickle, so reading one runs no code;
- `card.json`: the model card (`card.py`: model, heads, the heads it was trained on, stride,
  input normalisation), plus `weights_dtype`, the checkpoint `step` and its `source`.

`jaxsegdepth export --format safetensors` writes one from a run; `inference.load` reads it
(the package's own copy under `jaxsegdepth/weights/` when no path is given).
"""

import json
import os
from typing import Optional

import numpy as np
from flax import traverse_util
from safetensors import numpy as safetensors_numpy

WEIGHTS = "model.safetensors"
CARD = "card.json"
DTYPES = ("float16", "float32")


def is_bundle(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, WEIGHTS))


def save(
    directory: str,
    variables: dict,
    model_card: dict,
    dtype: str = "float16",
    extra: Optional[dict] = None,
) -> list[str]:
    """Writes `variables` ({"params": ..., "batch_stats": ...}) as `dtype` and the card with
    `extra` fields into `directory`; returns the two paths."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {DTYPES}")
    flat = traverse_util.flatten_dict(variables, sep="/")
    tensors = {path: np.ascontiguousarray(np.asarray(leaf), dtype) for path, leaf in flat.items()}
    os.makedirs(directory, exist_ok=True)
    weights_path, card_path = os.path.join(directory, WEIGHTS), os.path.join(directory, CARD)
    safetensors_numpy.save_file(tensors, weights_path, metadata={"format": "jaxsegdepth"})
    os.chmod(weights_path, 0o644)  # safetensors writes 0600; package data must be readable
    with open(card_path, "w") as f:
        json.dump({**model_card, "weights_dtype": dtype, **(extra or {})}, f, indent=1)
        f.write("\n")
    return [weights_path, card_path]


def load(directory: str) -> tuple[dict, dict]:
    """(variables as float32 NumPy arrays in their nested dicts, card) of the bundle in
    `directory`; `ValueError` naming the file that is missing or cannot be read."""
    weights_path, card_path = os.path.join(directory, WEIGHTS), os.path.join(directory, CARD)
    for path in (weights_path, card_path):
        if not os.path.isfile(path):
            raise ValueError(f"{path}: no such file (a bundle holds {WEIGHTS} and {CARD})")
    try:
        with open(card_path) as f:
            model_card = json.load(f)
        tensors = safetensors_numpy.load_file(weights_path)
    except Exception as error:  # OSError, a JSON error, or safetensors' own SafetensorError
        raise ValueError(f"{directory}: the bundle cannot be read ({error})") from error
    variables = traverse_util.unflatten_dict(
        {tuple(path.split("/")): value.astype(np.float32) for path, value in tensors.items()}
    )
    return variables, model_card
