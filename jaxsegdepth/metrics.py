"""Mask IoU and depth metrics, with additive sums that make evaluation exact across batches.

For an evaluation loop, `batch_sums(outputs, targets, weights)` gives per-batch float32 sums
(jit-safe); add them key by key over every batch (in float64 on the host for very large sets:
float32 counts are exact only up to 2**24) and `summarize` turns the totals into metrics.
IoU is per image, averaged over images; depth metrics are over every valid pixel of the set.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

IOU_SMOOTH = 1e-6
MIN_DEPTH = 1e-4  # target pixels at or below this carry no depth; predictions clip to it
DELTAS = {"delta1": 1.25, "delta2": 1.25**2, "delta3": 1.25**3}
# Depth sums that summarize divides by the valid-pixel count ("sq_err" becomes rmse).
_PIXEL_MEANS = ("mae", "abs_rel", "sq_rel", "log10", *DELTAS)


def _per_image_iou(probs: jax.Array, targets: jax.Array, threshold: float | None) -> jax.Array:
    """(sum(p t) + 1e-6) / (sum(p) + sum(t) - sum(p t) + 1e-6) per image, shape (N,)."""
    probs, targets = jnp.asarray(probs, jnp.float32), jnp.asarray(targets, jnp.float32)
    if threshold is not None:
        probs = (probs > threshold).astype(jnp.float32)
    axes = tuple(range(1, probs.ndim))
    overlap = jnp.sum(probs * targets, axes)
    union = jnp.sum(probs + targets, axes) - overlap
    return (overlap + IOU_SMOOTH) / (union + IOU_SMOOTH)


def iou(probs: jax.Array, targets: jax.Array, threshold: float | None = 0.5) -> jax.Array:
    """Mean over images of the IoU of `probs > threshold` with 0/1 `targets`.

    `threshold=None` gives the reference's soft IoU on the probabilities themselves. Public
    library API for one batch in any JAX program; evaluation over many batches uses
    `batch_sums`.
    """
    return jnp.mean(_per_image_iou(probs, targets, threshold))


def depth_sums(preds: jax.Array, targets: jax.Array, weights: jax.Array) -> dict:
    """Sums over pixels with target > MIN_DEPTH of images with weight 1, and their count.

    Additive over batches; `summarize` turns the totals into metrics. Predictions are in
    [0, 1] (not logits) and are clipped to >= MIN_DEPTH for log10 and the delta ratios only, so a zero
    prediction counts as a large (finite) error there instead of an infinity.
    """
    preds, targets = jnp.asarray(preds, jnp.float32), jnp.asarray(targets, jnp.float32)
    valid = (targets > MIN_DEPTH) & (weights.reshape(-1, *([1] * (preds.ndim - 1))) > 0)
    safe_targets = jnp.where(valid, targets, 1.0)
    clipped = jnp.maximum(preds, MIN_DEPTH)
    error = preds - safe_targets
    ratio = jnp.maximum(clipped / safe_targets, safe_targets / clipped)
    per_pixel = {
        "sq_err": error**2,
        "mae": jnp.abs(error),
        "abs_rel": jnp.abs(error) / safe_targets,
        "sq_rel": error**2 / safe_targets,
        "log10": jnp.abs(jnp.log10(clipped) - jnp.log10(safe_targets)),
        **{name: (ratio < limit).astype(jnp.float32) for name, limit in DELTAS.items()},
    }
    sums = {name: jnp.sum(jnp.where(valid, value, 0.0)) for name, value in per_pixel.items()}
    return {**sums, "pixels": jnp.sum(valid, dtype=jnp.float32)}


def batch_sums(
    outputs: Mapping[str, jax.Array],
    targets: Mapping[str, jax.Array],
    weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Additive float32 sums for one batch of logits `outputs` against [0, 1] `targets`.

    Mask: per-image IoU sums at threshold 0.5 (`iou`) and soft (`iou_soft`), and `images`.
    Depth (when the model predicts it): per-pixel error sums and the valid-pixel count
    `pixels`. `weights` (N,) of 0/1 leaves out padded samples; None counts every sample.
    """
    first = next(iter(outputs.values()))
    weights = (
        jnp.ones(first.shape[0], jnp.float32)
        if weights is None
        else jnp.asarray(weights, jnp.float32)
    )
    sums = {}
    if "mask" in outputs:
        probs = jax.nn.sigmoid(jnp.asarray(outputs["mask"], jnp.float32))
        sums["iou"] = jnp.sum(weights * _per_image_iou(probs, targets["mask"], 0.5))
        sums["iou_soft"] = jnp.sum(weights * _per_image_iou(probs, targets["mask"], None))
        sums["images"] = jnp.sum(weights)
    if "depth" in outputs:
        preds = jax.nn.sigmoid(jnp.asarray(outputs["depth"], jnp.float32))
        sums.update(depth_sums(preds, targets["depth"], weights))
    return sums


def summarize(sums: Mapping[str, jax.Array | np.ndarray | float]) -> dict[str, float]:
    """Python-float metrics from `batch_sums` added over batches.

    iou and iou_soft; rmse, mae, abs_rel, sq_rel, log10 and delta1-3 when depth was summed.
    A metric with nothing counted (no images, no valid depth pixel) is NaN.
    """
    totals = {name: float(np.asarray(value, np.float64)) for name, value in sums.items()}

    def mean(name, count):
        return totals[name] / totals[count] if totals[count] else float("nan")

    metrics = {}
    if "images" in totals:
        metrics.update(iou=mean("iou", "images"), iou_soft=mean("iou_soft", "images"))
    if "pixels" in totals:
        metrics["rmse"] = float(np.sqrt(mean("sq_err", "pixels")))
        metrics.update({name: mean(name, "pixels") for name in _PIXEL_MEANS})
    return metrics


def depth_metrics(preds: jax.Array, targets: jax.Array) -> dict[str, float]:
    """Depth metrics of one batch of predictions in [0, 1] (not logits), as Python floats.

    rmse, mae, abs_rel, sq_rel, log10 and delta1-3 over every pixel whose target > MIN_DEPTH.
    Public library API for one batch; evaluation over many batches uses `batch_sums`.
    """
    return summarize(depth_sums(preds, targets, jnp.ones(jnp.shape(preds)[0], jnp.float32)))
