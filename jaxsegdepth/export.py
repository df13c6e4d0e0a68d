"""`mode=export`: a trained model as one self-contained, serialized `jax.export` artifact.

The exported function maps a pair of *normalised* NHWC float32 images `(bg, bg_fg)` to a dict of
probabilities (`sigmoid` of the logits), `{"mask": (N,H,W,1), "depth": (N,H,W,1)}` (MaskNet: only
`"mask"`). Parameters and BatchNorm statistics are baked in as constants, so running it needs JAX
and the artifact, not this package's model code:

    import jax
    with open("WORKDIR/export/model.jax_exported", "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    out = exported.call(bg, bg_fg)          # {"mask": ..., "depth": ...}

`load(path)` below does the same and also reads the JSON metadata written next to the artifact
(resolution, batch, normalisation mean/std to apply to the [0, 1] RGB inputs).

Files, in `export.output_dir` (default `WORKDIR/export`):
- `model.jax_exported`: `Exported.serialize()` bytes (StableHLO plus calling convention).
- `model.json`: metadata.

This module imports only JAX and NumPy at the top, so `load` works without the training stack.
"""
import dataclasses
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ARTIFACT = "model.jax_exported"
METADATA = "model.json"


def inference_fn(apply_fn: Callable, variables: dict) -> Callable:
    """`(bg, bg_fg) -> {head: probability}` with `variables` closed over (baked in when exported)."""
    def infer(bg, bg_fg):
        outputs = apply_fn(variables, bg, bg_fg, train=False)
        return {head: jax.nn.sigmoid(logits.astype(jnp.float32)) for head, logits in outputs.items()}
    return infer


def export_fn(apply_fn: Callable, variables: dict, *, resolution: int, batch_size: int = 0,
              platforms: Sequence[str] | None = None) -> jax.export.Exported:
    """Exports `inference_fn(apply_fn, variables)` for `resolution`x`resolution` inputs.

    `batch_size=0` gives a symbolic batch dimension (any N >= 1 at call time). `platforms`
    (e.g. `("cpu", "cuda")`) lowers for each, so the artifact runs on any of them; `None` lowers
    for the default backend only.
    """
    # Host copies: the constants must not be tied to the devices of a training mesh.
    variables = jax.device_get(variables)
    if batch_size < 0:
        raise ValueError(f"export.batch_size={batch_size}: expected 0 (any batch) or a positive size")
    if resolution <= 0:
        raise ValueError(f"export.resolution={resolution}: expected a positive size")
    batch = jax.export.symbolic_shape("batch")[0] if batch_size == 0 else batch_size
    spec = jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.float32)
    try:
        return jax.export.export(jax.jit(inference_fn(apply_fn, variables)),
                                 platforms=tuple(platforms) if platforms else None)(spec, spec)
    except Exception as error:  # shape polymorphism is the usual culprit; say what to try
        if batch_size == 0:
            raise RuntimeError(f"exporting with a symbolic batch dimension failed ({error}); "
                               "set --config.export.batch_size to a fixed size") from error
        raise


def export_state(state, output_dir: str, *, resolution: int, batch_size: int = 0,
                 platforms: Sequence[str] | None = None,
                 metadata: dict | None = None) -> tuple[str, jax.export.Exported]:
    """Exports a `steps.TrainState`'s model to `output_dir`; returns the artifact's path and it."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    exported = export_fn(state.apply_fn, variables, resolution=resolution, batch_size=batch_size,
                         platforms=platforms)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ARTIFACT)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    meta = {
        "inputs": ["bg", "bg_fg"],
        "input_shape": [batch_size or None, resolution, resolution, 3],
        "input_dtype": "float32",
        "input_note": "RGB scaled to [0, 1], then (x - mean) / std per channel (see normalization)",
        "outputs": {head: [None if jax.export.is_symbolic_dim(d) else int(d) for d in aval.shape]
                    for head, aval in jax.tree.unflatten(exported.out_tree,
                                                         exported.out_avals).items()},
        "output_note": "probabilities (sigmoid of the logits)",
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        **(metadata or {}),
    }
    with open(os.path.join(output_dir, METADATA), "w") as f:
        json.dump(meta, f, indent=2)
    return path, exported


@dataclasses.dataclass
class LoadedModel:
    """A deserialized export: call it like the model, `model(bg, bg_fg) -> {head: probability}`."""
    exported: jax.export.Exported
    metadata: dict

    def __call__(self, bg, bg_fg) -> dict:
        return self.exported.call(jnp.asarray(bg, jnp.float32), jnp.asarray(bg_fg, jnp.float32))

    def normalize(self, images: np.ndarray, which: str) -> np.ndarray:
        """uint8 or [0, 1] float RGB images -> the normalised inputs for `which` (`bg`/`bg_fg`)."""
        images = np.asarray(images)
        images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
        mean, std = self.metadata["normalization"][which]
        return (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def load(path: str) -> LoadedModel:
    """Loads `model.jax_exported` (a file, or the folder holding it) and its metadata, if present."""
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


def run(config, workdir: str) -> str:
    """Exports the best checkpoint (or `config.checkpoint.step`) of the run in `workdir`."""
    from jaxsegdepth import checkpoints  # the training stack only for the mode, not `load`
    from jaxsegdepth.data import pipeline

    state = checkpoints.load_for_inference(config, workdir)
    cfg = config.export
    output_dir = cfg.output_dir or os.path.join(workdir, "export")
    norm = pipeline.normalization(config.dataset)
    metadata = {
        "model": config.model,
        "step": int(jax.device_get(state.step)),
        "normalization": {k: [np.asarray(m).tolist(), np.asarray(s).tolist()]
                          for k, (m, s) in norm.items()},
    }
    path, exported = export_state(state, output_dir, resolution=cfg.resolution, batch_size=cfg.batch_size,
                        platforms=tuple(cfg.platforms) or None, metadata=metadata)
    batch = cfg.batch_size or "any"
    print(f"Exported {config.model} (step {metadata['step']}) for batch {batch} x "
          f"{cfg.resolution}x{cfg.resolution} on {', '.join(exported.platforms)}: {path}")
    return path
