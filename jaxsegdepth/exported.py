"""Reading a model written by `mode=export`: needs only JAX and NumPy, not the training stack.

    from jaxsegdepth import exported
    model = exported.load("WORKDIR/export")        # the folder, or model.jax_exported itself
    probabilities = model(model.normalize(bg_uint8, "bg"), model.normalize(bg_fg_uint8, "bg_fg"))

The artifact (`model.jax_exported`, `Exported.serialize()` bytes) maps a pair of normalised NHWC
float32 images to `{head: probability}`; `model.json` next to it holds the metadata (input
shape, normalisation mean/std, step, platforms).
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxsegdepth import errors
from jaxsegdepth.data import normalization

ARTIFACT = "model.jax_exported"
METADATA = "model.json"


@dataclasses.dataclass
class LoadedModel:
    """A deserialized export: call it like the model, `model(bg, bg_fg) -> {head: probability}`."""
    exported: jax.export.Exported
    metadata: dict

    def __call__(self, bg, bg_fg) -> dict:
        return self.exported.call(jnp.asarray(bg, jnp.float32), jnp.asarray(bg_fg, jnp.float32))

    def normalize(self, images: np.ndarray, which: str) -> np.ndarray:
        """uint8 or [0, 1] float RGB images -> the normalised inputs for `which` (`bg`/`bg_fg`)."""
        if "normalization" not in self.metadata:
            raise errors.RunError(f"no normalisation mean/std: {METADATA} was not next to "
                                  f"{ARTIFACT} when it was loaded")
        return normalization.normalize(images, *self.metadata["normalization"][which])


def load(path: str) -> LoadedModel:
    """Loads `model.jax_exported` (a file, or the folder holding it) and, when it is next to
    it, `model.json`."""
    if os.path.isdir(path):
        path = os.path.join(path, ARTIFACT)
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    meta_path = os.path.join(os.path.dirname(path), METADATA)
    metadata = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            metadata = json.load(f)
    return LoadedModel(exported, metadata)
