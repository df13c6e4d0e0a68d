"""On the device, inside the jitted steps: a uint8 batch from the loader -> the model's inputs.

The loader ships bg, bg_fg (N,H,W,3), mask, depth (N,H,W,1) as uint8 and `index` (N,) int32,
each sample's global element index (epoch * n + position, the same on every process). Here:

- train only, when asked: photometric augmentation of the inputs (one draw for both: the
  scene's light), then capture nuisances (`capture`: each shot its own exposure, white
  balance, gamma and sensor noise, the plate nudged); targets never. Sample i's draws come
  from `fold_in(PRNGKey(seed), index[i])`, so they are a pure function of the seed and the
  sample, whatever the batch, device or process count, and a resume repeats them;
- the inputs normalised with the dataset's mean/std (`normalization.normalize`), the targets
  scaled to [0, 1], everything float32; `index` dropped.

Pure JAX, batched: a few elementwise passes over the batch, negligible next to the model.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxsegdepth import capture as capture_lib, errors, names
from jaxsegdepth.data.normalization import normalize

_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_FROM_YIQ = np.linalg.inv(_TO_YIQ)
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 weights of the contrast's mean luminance
NUM_DRAWS = 6  # uniforms per sample: hsv?, contrast?, hue, saturation, value, contrast factor


@dataclasses.dataclass(frozen=True)
class Photometric:
    """With probability `hsv_prob` a hue/saturation/value jitter, with `contrast_prob` a
    contrast change about the image's mean luminance; one draw per sample, applied identically
    to bg and bg_fg (two shots of one scene)."""

    hsv_prob: float = 0.25
    contrast_prob: float = 0.25
    hue: float = 0.05  # max hue rotation, in turns (18 degrees)
    saturation: float = 0.3  # saturation factor in [1 - s, 1 + s]
    value: float = 0.2  # value (brightness) factor in [1 - v, 1 + v]
    contrast: float = 0.2  # contrast factor in [1 - c, 1 + c]


def draws(seed: int, index: jax.Array) -> jax.Array:
    """(N, NUM_DRAWS) uniforms in [0, 1): row i depends only on `seed` and `index[i]`."""
    key = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i), (NUM_DRAWS,)))(index)


def hsv_matrices(hue_turns: jax.Array, saturation: jax.Array, value: jax.Array) -> jax.Array:
    """(N, 3, 3) RGB matrices M: a hue rotation about the grey axis (in YIQ), saturation
    scaling of the chroma, value scaling; a pixel maps as `M @ rgb`. (0, 1, 1) is the
    identity."""
    angle = 2.0 * jnp.pi * hue_turns
    c, s = jnp.cos(angle) * saturation, jnp.sin(angle) * saturation
    one, zero = jnp.ones_like(c), jnp.zeros_like(c)
    chroma = jnp.stack(
        [
            jnp.stack([one, zero, zero], -1),
            jnp.stack([zero, c, -s], -1),
            jnp.stack([zero, s, c], -1),
        ],
        -2,
    )
    from_yiq, to_yiq = (jnp.asarray(m, jnp.float32) for m in (_FROM_YIQ, _TO_YIQ))
    return value[:, None, None] * jnp.einsum(
        "ij,njk,kl->nil", from_yiq, chroma, to_yiq, precision=jax.lax.Precision.HIGHEST
    )


def unit(x: jax.Array) -> jax.Array:
    """uint8 -> float32 in [0, 1]; floats (already in [0, 1]) -> float32. NumPy or JAX."""
    return x.astype(jnp.float32) * (1.0 / 255.0) if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def _per_sample(x: jax.Array) -> jax.Array:
    return x[:, None, None, None]


def _mix_channels(images: jax.Array, matrices: jax.Array) -> jax.Array:
    """out[..., d] = sum_c M[d, c] x[..., c], as exact float32 multiply-adds (a matmul would
    run at TF32 on GPUs)."""
    return jnp.stack(
        [
            sum(images[..., c] * matrices[:, d, c][:, None, None] for c in range(3))
            for d in range(3)
        ],
        axis=-1,
    )


def photometric(images: dict, index: jax.Array, seed: int, params: Photometric) -> dict:
    """{input: (N,H,W,3) float in [0, 1]} -> the same, augmented per `params` (module doc)."""
    u = draws(seed, index)
    do_hsv, do_contrast = u[:, 0] < params.hsv_prob, u[:, 1] < params.contrast_prob
    matrices = hsv_matrices(
        (2 * u[:, 2] - 1) * params.hue,
        1 + (2 * u[:, 3] - 1) * params.saturation,
        1 + (2 * u[:, 4] - 1) * params.value,
    )
    factor = _per_sample(1 + (2 * u[:, 5] - 1) * params.contrast)
    out = {}
    for key, x in images.items():
        x = jnp.where(_per_sample(do_hsv), jnp.clip(_mix_channels(x, matrices), 0.0, 1.0), x)
        luma = sum(x[..., c] * LUMA[c] for c in range(3)).mean(axis=(1, 2))
        mean = _per_sample(luma)
        x = jnp.where(_per_sample(do_contrast), jnp.clip((x - mean) * factor + mean, 0.0, 1.0), x)
        out[key] = x
    return out


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """What the steps do to a loader batch before the model (module doc).

    normalization: ((input, mean, std), ...), the dataset's statistics for inputs in [0, 1],
    as tuples so that the whole is hashable (usable as a static argument).
    augment: the train step's photometric augmentation, None for none;
    capture: the train step's capture nuisances, None for none; `seed` draws both.
    """

    normalization: tuple
    augment: Optional[Photometric] = None
    seed: int = 0
    capture: Optional[capture_lib.Capture] = None

    def inputs(self, bg: jax.Array, bg_fg: jax.Array) -> tuple[jax.Array, jax.Array]:
        """uint8 (or [0, 1] float) RGB pair -> normalised float32 model inputs."""
        stats = {key: (mean, std) for key, mean, std in self.normalization}
        return tuple(normalize(x, *stats[key]) for key, x in zip(names.INPUTS, (bg, bg_fg)))

    def __call__(self, batch: dict, *, train: bool) -> dict:
        """A loader batch -> normalised float32 inputs, [0, 1] targets, other arrays (e.g.
        evaluation's `weights`) as they are; augmented when `train` (module doc)."""
        out = {
            k: unit(v) if k in names.HEADS else v
            for k, v in batch.items()
            if k != names.INDEX and k not in names.INPUTS
        }
        images = {key: batch[key] for key in names.INPUTS}
        if train and (self.augment is not None or self.capture is not None):
            images = {k: unit(v) for k, v in images.items()}
            if self.augment is not None:
                images = photometric(images, batch[names.INDEX], self.seed, self.augment)
            if self.capture is not None:
                images = capture_lib.apply(images, batch[names.INDEX], self.seed, self.capture)
        out["bg"], out["bg_fg"] = self.inputs(images["bg"], images["bg_fg"])
        return out


def from_normalization(
    normalization: dict,
    augment: Optional[Photometric] = None,
    seed: int = 0,
    capture: Optional[capture_lib.Capture] = None,
) -> Preprocess:
    """A `Preprocess` from {input: (mean, std)} of any array-likes."""
    return Preprocess(
        tuple(
            (k, tuple(map(float, m)), tuple(map(float, s))) for k, (m, s) in normalization.items()
        ),
        augment,
        int(seed),
        capture,
    )


CAPTURE_FIELDS = tuple(field.name for field in dataclasses.fields(capture_lib.Capture))
GENERATED_DATASET = "synthetic_museum"  # where "auto" turns the capture nuisances on


def validate(augment_config) -> None:
    """Refuses, in one line, augmentation settings (`config.augment`) that cannot be drawn: the
    photometric probabilities and the capture strengths."""
    if not isinstance(augment_config.photometric, bool):
        raise errors.UsageError(
            f"augment.photometric={augment_config.photometric!r}: expected True or False"
        )
    for field in ("hsv_prob", "contrast_prob"):
        _check_number(f"augment.{field}", augment_config[field], "a probability in [0, 1]", 1.0)
    settings = augment_config.capture
    _capture_switch(settings.enabled)
    for field in CAPTURE_FIELDS:
        _check_number(f"augment.capture.{field}", settings[field], "a number >= 0")
    _check_number("augment.capture.prob", settings.prob, "a probability", 1.0)
    if settings.scale >= 1:
        raise errors.UsageError(f"augment.capture.scale={settings.scale}: expected < 1")


def _check_number(field: str, value, expected: str, upper: float = float("inf")) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= upper:
        raise errors.UsageError(f"{field}={value!r}: expected {expected}")


def _capture_switch(value):
    """`augment.capture.enabled` as True, False or "auto" (a command line's "true"/"false"
    read as the bools)."""
    if isinstance(value, str) and value.lower() in ("true", "false", "auto"):
        return {"true": True, "false": False}.get(value.lower(), "auto")
    if not isinstance(value, bool):
        raise errors.UsageError(
            f"augment.capture.enabled={value!r}: expected True, False or 'auto'"
        )
    return value


def capture_enabled(augment_config, dataset_name: str) -> bool:
    """Whether a run on `dataset_name` draws capture nuisances: `augment.capture.enabled`, its
    "auto" on for the generated set (exact plates) and off for datasets of real captures."""
    switch = _capture_switch(augment_config.capture.enabled)
    return dataset_name == GENERATED_DATASET if switch == "auto" else switch


def from_config(augment_config, normalization: dict, seed: int, dataset_name: str) -> Preprocess:
    """The `Preprocess` of `config.augment` (photometric and capture) and a run's seed, with
    the model's input `normalization`, for a run on `dataset_name`."""
    augment = (
        Photometric(hsv_prob=augment_config.hsv_prob, contrast_prob=augment_config.contrast_prob)
        if augment_config.photometric
        else None
    )
    settings = augment_config.capture
    capture = (
        capture_lib.Capture(**{field: float(settings[field]) for field in CAPTURE_FIELDS})
        if capture_enabled(augment_config, dataset_name)
        else None
    )
    return from_normalization(normalization, augment, seed, capture)
