"""Segmentation and depth losses, and a way to declare a total loss as data.

Every function is pure and safe under `jit` and `grad`, works on NHWC batches, and computes in
float32 whatever the input dtype. Means run over every pixel of the batch.

`compose({"depth": {"rmse": 2.0}, "mask": {"bce": 1.0, "dice": 2.0}})` builds
`fn(outputs, targets) -> (total, terms)` from model logits and [0, 1] targets; the ready
functions `rmse_bce_dice`, `ssim_dice` and `rmse_bce` are the reference's combinations.
"""

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import dm_pix
import jax
import jax.numpy as jnp
import optax

from jaxsegdepth.names import HEADS, task_loss

SSIM_WINDOW = 11
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Valid filtering needs a full window at the coarsest of the 5 scales, 2**4 times smaller.
MS_SSIM_MIN_SIZE = SSIM_WINDOW * 2 ** (len(MS_SSIM_WEIGHTS) - 1)
# SSIM's C1 = (k1 * data_range)**2; at this k1 it is so large that the luminance factor
# (2 mu_a mu_b + C1) / (mu_a**2 + mu_b**2 + C1) rounds to 1 in float32 for images in
# [0, data_range], and dm_pix's SSIM becomes MS-SSIM's contrast-structure term.
_NO_LUMINANCE_K1 = 1e5


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


# Every term takes optional per-sample `weights` (N,) of 0/1: samples weighted 0 (the padding
# of an evaluation batch) then count for nothing, so a loss does not depend on how a batch was
# padded. Without weights each term is the plain batch formula.


def _mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    """Mean over every element, or over the elements of the samples weighted 1."""
    if weights is None:
        return jnp.mean(values)
    per_sample = jnp.mean(values.reshape(values.shape[0], -1), axis=1)
    return jnp.sum(weights * per_sample) / jnp.sum(weights)


def _sum(values: jax.Array, weights: jax.Array | None) -> jax.Array:
    if weights is None:
        return jnp.sum(values)
    return jnp.sum(weights * jnp.sum(values.reshape(values.shape[0], -1), axis=1))


def bce(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Mean binary cross-entropy of sigmoid(logits) against [0, 1] targets (stable on logits)."""
    return _mean(optax.sigmoid_binary_cross_entropy(_f32(logits), _f32(targets)), weights)


def dice(
    probs: jax.Array, targets: jax.Array, smooth: float = 1.0, weights: jax.Array | None = None
) -> jax.Array:
    """1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth) over the whole flattened batch."""
    probs, targets = _f32(probs), _f32(targets)
    overlap = 2 * _sum(probs * targets, weights) + smooth
    return 1 - overlap / (_sum(probs, weights) + _sum(targets, weights) + smooth)


def bce_dice(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """bce + 2 * dice(sigmoid(logits), smooth=1e-6), as the reference's BCE & Dice loss."""
    return bce(logits, targets, weights) + 2 * dice(
        jax.nn.sigmoid(_f32(logits)), targets, smooth=1e-6, weights=weights
    )


def rmse(preds: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """sqrt(mse + 1e-6); the epsilon keeps the gradient finite at a perfect prediction."""
    return jnp.sqrt(_mean((_f32(preds) - _f32(targets)) ** 2, weights) + 1e-6)


def _per_image_ssim(a: jax.Array, b: jax.Array, data_range: float, k1: float = 0.01) -> jax.Array:
    """dm_pix's Gaussian SSIM (window 11, sigma 1.5, K2 0.03, valid filtering), one per image."""
    return dm_pix.ssim(
        _f32(a),
        _f32(b),
        max_val=data_range,
        filter_size=SSIM_WINDOW,
        filter_sigma=1.5,
        k1=k1,
        k2=0.03,
    )


def _require_size(images: jax.Array, minimum: int, what: str) -> None:
    """Raises a ValueError if H or W of NHWC `images` is below `minimum`."""
    height, width = jnp.shape(images)[-3:-1]
    if min(height, width) < minimum:
        raise ValueError(
            f"{what} needs images of at least {minimum}x{minimum}, got {height}x{width}"
        )


def ssim(
    preds: jax.Array, targets: jax.Array, data_range: float = 1.0, weights: jax.Array | None = None
) -> jax.Array:
    """Mean SSIM over the batch (dm_pix: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03,
    valid filtering); channels are averaged. H and W must be at least 11."""
    _require_size(preds, SSIM_WINDOW, "ssim (11x11 window, valid filtering)")
    return _mean(_per_image_ssim(preds, targets, data_range), weights)


def ssim_loss(
    preds: jax.Array, targets: jax.Array, data_range: float = 1.0, weights: jax.Array | None = None
) -> jax.Array:
    """1 - ssim."""
    return 1 - ssim(preds, targets, data_range, weights)


def _avg_pool_2x(x: jax.Array) -> jax.Array:
    """2x2 mean with stride 2 over H and W; an odd last row or column is dropped."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _relu_power(x: jax.Array, exponent: float) -> jax.Array:
    """relu(x) ** exponent with a zero (not NaN) gradient where x <= 0."""
    positive = x > 0
    return jnp.where(positive, jnp.where(positive, x, 1.0) ** exponent, 0.0)


def ms_ssim(
    preds: jax.Array, targets: jax.Array, data_range: float = 1.0, weights: jax.Array | None = None
) -> jax.Array:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), averaged over the batch.

    Five scales, 2x average pooling between them; the contrast-structure term at the first
    four and full SSIM at the last, raised to the standard weights and multiplied. Negative
    terms are clamped to 0 (relu) before the power, as common implementations do, with a zero
    gradient there (a plain power of 0 would give NaN). H and W
    must be at least `MS_SSIM_MIN_SIZE` (176) so that the coarsest scale fits an 11x11 window.
    """
    _require_size(preds, MS_SSIM_MIN_SIZE, "ms_ssim (5 scales, 11x11 window at the coarsest)")
    a, b = _f32(preds), _f32(targets)
    result = 1.0
    for scale, weight in enumerate(MS_SSIM_WEIGHTS):
        if scale == len(MS_SSIM_WEIGHTS) - 1:
            term = _per_image_ssim(a, b, data_range)
        else:
            term = _per_image_ssim(a, b, data_range, k1=_NO_LUMINANCE_K1)
            a, b = _avg_pool_2x(a), _avg_pool_2x(b)
        result = result * _relu_power(term, weight)
    return _mean(result, weights)


def ms_ssim_loss(
    preds: jax.Array, targets: jax.Array, data_range: float = 1.0, weights: jax.Array | None = None
) -> jax.Array:
    """1 - ms_ssim."""
    return 1 - ms_ssim(preds, targets, data_range, weights)


# Term name -> (loss function, whether it takes probabilities rather than logits).
# "ssim" and "ms_ssim" name the losses 1 - ssim and 1 - ms_ssim.
TERMS: dict[str, tuple[Callable[[jax.Array, jax.Array], jax.Array], bool]] = {
    "bce": (bce, False),
    "bce_dice": (bce_dice, False),
    "dice": (dice, True),
    "rmse": (rmse, True),
    "ssim": (ssim_loss, True),
    "ms_ssim": (ms_ssim_loss, True),
}

# (outputs, targets, weights=None) -> (total, {"head/term": value}); see `compose`.
LossFn = Callable[..., tuple[jax.Array, dict]]


def validate_spec(spec: Any) -> dict[str, dict[str, float]]:
    """The spec as plain dicts of float weights, or a ValueError/TypeError saying what is wrong."""
    if hasattr(spec, "to_dict"):  # an ml_collections.ConfigDict
        spec = spec.to_dict()
    if not isinstance(spec, Mapping) or not spec:
        raise ValueError(
            f"a loss spec is a non-empty mapping head -> {{term: weight}}, got {spec!r}"
        )
    checked = {}
    for head, terms in spec.items():
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r} in loss spec: expected one of {HEADS}")
        if not isinstance(terms, Mapping) or not terms:
            raise ValueError(
                f"loss spec for {head!r} must be a non-empty mapping term -> weight, got {terms!r}"
            )
        checked[head] = {}
        for term, weight in terms.items():
            if term not in TERMS:
                raise ValueError(
                    f"unknown loss term {term!r} for {head!r}: expected one of {sorted(TERMS)}"
                )
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real):
                raise TypeError(f"weight of {head}/{term} must be a real number, got {weight!r}")
            if not math.isfinite(weight):
                raise ValueError(f"weight of {head}/{term} must be finite, got {weight!r}")
            checked[head][term] = float(weight)
    return checked


def compose(spec: Mapping[str, Mapping[str, float]]) -> LossFn:
    """A total loss declared as data: `{head: {term: weight}}` -> `fn(outputs, targets)`.

    Heads are "mask" and "depth"; terms are the keys of `TERMS` ("dice" with smooth 1,
    "bce_dice" the reference's BCE & Dice with smooth 1e-6). The spec may be any mapping
    or an `ml_collections.ConfigDict`, and is checked now: an unknown head or term raises a
    ValueError listing the allowed names, a weight that is not a real number a TypeError.

    `fn(outputs, targets, weights=None)` takes dicts of logits and [0, 1] targets keyed by head
    (extra keys are ignored) and optional per-sample 0/1 `weights` (padding weighted 0),
    applies the sigmoid for terms on probabilities, and returns `(total, terms)`:
    `terms` holds the unweighted values keyed like `"mask/bce"` and each head's loss
    `sum(weight * term)` keyed `"mask/loss"`; `total` is the sum of the heads' losses.
    Shapes are checked at trace time (a ValueError names the head).
    """
    checked = validate_spec(spec)

    def loss_fn(
        outputs: Mapping[str, jax.Array],
        targets: Mapping[str, jax.Array],
        weights: jax.Array | None = None,
    ) -> tuple[jax.Array, dict]:
        total, values = jnp.zeros((), jnp.float32), {}
        for head, terms in checked.items():
            if head not in outputs or head not in targets:
                raise ValueError(
                    f"loss needs {head!r} in both outputs (keys {sorted(outputs)}) "
                    f"and targets (keys {sorted(targets)})"
                )
            logits, target = outputs[head], targets[head]
            if jnp.shape(logits) != jnp.shape(target):
                raise ValueError(
                    f"{head!r}: outputs shape {jnp.shape(logits)} does not match "
                    f"targets shape {jnp.shape(target)}"
                )
            probs = jax.nn.sigmoid(_f32(logits))
            head_total = jnp.zeros((), jnp.float32)
            for term, weight in terms.items():
                fn, on_probs = TERMS[term]
                values[f"{head}/{term}"] = fn(
                    probs if on_probs else logits, target, weights=weights
                )
                head_total = head_total + weight * values[f"{head}/{term}"]
            values[task_loss(head)] = head_total
            total = total + head_total
        return total, values

    return loss_fn
