"""Reading a model written by `mode=export`: needs only JAX and NumPy, not the training stack.

    from jaxsegdepth import artifact
    model = artifact.load("WORKDIR/export")        # the folder, or model.jax_exported itself
    probabilities = model(bg_uint8, bg_fg_uint8)      # NHWC RGB, 0-255

The artifact (`model.jax_exported`, `Exported.serialize()` bytes) maps a pair of NHWC uint8 RGB
images to `{head: probability}`, normalising inside; `model.json` next to it holds the metadata
(input shape and dtype, the normalisation mean/std it applies, step, platforms). An artifact
whose `input_dtype` is float32 takes inputs already normalised: calling one converts the
inputs to its dtype, the normalisation is then the caller's.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

ARTIFACT = "model.jax_exported"
METADATA = "model.json"


@dataclasses.dataclass
class LoadedModel:
    """A deserialized export: call it like the model, `model(bg, bg_fg) -> {head: probability}`."""

    exported: jax.export.Exported
    metadata: dict

    def __call__(self, bg, bg_fg) -> dict:
        dtype = self.exported.in_avals[0].dtype
        return self.exported.call(
            *(_as_input(x, dtype, name) for name, x in (("bg", bg), ("bg_fg", bg_fg)))
        )


def _as_input(images, dtype, name: str) -> jax.Array:
    """`images` in the artifact's input dtype. A uint8 artifact takes 0-255 values of any
    numeric dtype; anything else (e.g. [0, 1] floats) is refused rather than truncated. A float32
    artifact (normalised inputs) refuses uint8 images, which it would take unnormalised."""
    images = np.asarray(images)
    if dtype != np.uint8 and images.dtype == np.uint8:
        raise ValueError(
            f"{name}: this model (input_dtype float32) takes float32 inputs already "
            "normalised, not uint8: apply data.normalization.normalize with its "
            f"{METADATA}'s mean/std, or export it again"
        )
    if dtype == np.uint8 and images.dtype != np.uint8:
        if images.size and not (
            np.all(images == np.round(images)) and images.min() >= 0 and images.max() <= 255
        ):
            raise ValueError(
                f"{name}: this model takes RGB values 0-255 (uint8); got "
                f"{images.dtype} in [{images.min()}, {images.max()}] (scale [0, 1] "
                "images by 255)"
            )
    return jnp.asarray(images, dtype)


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
