"""`mode=export`: a trained model as one self-contained, serialized `jax.export` artifact.

The exported function is `steps.predict_step` with the trained state and the model's input
normalisation (its model card's) baked in: it maps a pair of NHWC uint8 RGB images `(bg, bg_fg)` to a dict of
probabilities (`sigmoid` of the logits), `{"mask": (N,H,W,1), "depth": (N,H,W,1)}` (MaskNet:
only `"mask"`); `model.json`'s `input_dtype` says what an artifact takes. Parameters, BatchNorm statistics and the mean/std
are constants, so running it needs JAX and the artifact, not this package's model code:

    import jax
    with open("WORKDIR/export/model.jax_exported", "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    out = exported.call(bg, bg_fg)          # {"mask": ..., "depth": ...}

`artifact.load(path)` does the same and also reads the JSON metadata written next to the
artifact (resolution, batch, the normalisation mean/std it applies).

Files, in `export.output_dir` (default `WORKDIR/export`):
- `model.jax_exported`: `Exported.serialize()` bytes (StableHLO plus calling convention).
- `model.json`: metadata.
"""

import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp

from jaxsegdepth import build, errors, mesh as mesh_lib, preprocess, reporting, steps
from jaxsegdepth.checkpointing import select, store
from jaxsegdepth.data import pipeline
from jaxsegdepth.artifact import ARTIFACT, METADATA

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def validate(config) -> None:
    """Refuses, in one line naming the field, export settings that cannot work (before the
    checkpoint loads)."""
    cfg = config.export
    build.validate(config, (cfg.resolution,), "export.resolution")
    if cfg.batch_size < 0:
        raise errors.UsageError(
            f"export.batch_size={cfg.batch_size}: expected 0 (any batch) or a positive size"
        )
    unknown = [p for p in cfg.platforms if p not in PLATFORMS]
    if unknown:
        raise errors.UsageError(
            f"export.platforms={tuple(cfg.platforms)}: {unknown} unknown, "
            f"expected names among {PLATFORMS} (or () for the default backend)"
        )
    store.validate(config)
    pipeline.validate(config.dataset)


def export_fn(
    state,
    normalization: dict,
    *,
    resolution: int,
    batch_size: int = 0,
    platforms: Sequence[str] | None = None,
) -> jax.export.Exported:
    """Exports `steps.predict_step` with `state` (a `steps.TrainState`) and the inputs'
    `normalization` ({input: (mean, std)}) baked in, for `resolution`x`resolution` uint8 inputs.

    `batch_size=0` gives a symbolic batch dimension (any N >= 1 at call time). `platforms`
    (e.g. `("cpu", "cuda")`) lowers for each, so the artifact runs on any of them; `None` lowers
    for the default backend only.
    """
    # Host copies: the constants must not be tied to the devices of a training mesh.
    state = state.replace(
        params=jax.device_get(state.params), batch_stats=jax.device_get(state.batch_stats)
    )
    batch = jax.export.symbolic_shape("batch")[0] if batch_size == 0 else batch_size
    spec = jax.ShapeDtypeStruct((batch, resolution, resolution, 3), jnp.uint8)
    predict = functools.partial(
        steps.predict_step, state, preprocess=preprocess.from_normalization(normalization)
    )
    try:
        return jax.export.export(
            jax.jit(predict), platforms=tuple(platforms) if platforms else None
        )(spec, spec)
    except Exception as error:  # shape polymorphism is the usual culprit; say what to try
        if batch_size == 0:
            raise errors.RunError(
                f"exporting with a symbolic batch dimension failed ({error}); "
                "set --config.export.batch_size to a fixed size"
            ) from error
        raise


def export_state(
    state,
    output_dir: str,
    normalization: dict,
    *,
    resolution: int,
    batch_size: int = 0,
    platforms: Sequence[str] | None = None,
    metadata: dict | None = None,
) -> tuple[str, jax.export.Exported]:
    """Exports a `steps.TrainState`'s model with the inputs' `normalization` to `output_dir`;
    returns the artifact's path and it."""
    exported = export_fn(
        state, normalization, resolution=resolution, batch_size=batch_size, platforms=platforms
    )
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ARTIFACT)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    meta = {
        "inputs": ["bg", "bg_fg"],
        "input_shape": [batch_size or None, resolution, resolution, 3],
        "input_dtype": "uint8",
        "input_note": "RGB 0-255; the model normalises ((x / 255 - mean) / std per channel, "
        "see normalization)",
        "normalization": {
            k: [list(map(float, m)), list(map(float, s))] for k, (m, s) in normalization.items()
        },
        "outputs": {
            head: [None if jax.export.is_symbolic_dim(d) else int(d) for d in aval.shape]
            for head, aval in jax.tree.unflatten(exported.out_tree, exported.out_avals).items()
        },
        "output_note": "probabilities (sigmoid of the logits)",
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        **(metadata or {}),
    }
    with open(os.path.join(output_dir, METADATA), "w") as f:
        json.dump(meta, f, indent=2)
    return path, exported


def run(config, workdir: str) -> str:
    """Exports the best checkpoint of the run in `workdir`, or the one `config.model_path` names."""
    loaded = select.for_inference(config, workdir, mesh_lib.create_mesh(jax.local_devices()[:1]))
    model, cfg = loaded.model, config.export
    output_dir = cfg.output_dir or os.path.join(workdir, "export")
    metadata = {"model": config.model, "step": int(jax.device_get(model.state.step))}
    if model.card is not None:
        metadata["card"] = model.card
    path, exported = export_state(
        model.state,
        output_dir,
        loaded.normalization,
        resolution=cfg.resolution,
        batch_size=cfg.batch_size,
        platforms=tuple(cfg.platforms) or None,
        metadata=metadata,
    )
    reporting.say(
        f"Exported {config.model} (step {metadata['step']}) for batch "
        f"{cfg.batch_size or 'any'} x {cfg.resolution}x{cfg.resolution} on "
        f"{', '.join(exported.platforms)}: {path}"
    )
    return path
