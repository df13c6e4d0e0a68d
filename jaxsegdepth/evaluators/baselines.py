"""Trivial predictors, and what none can beat.

- `baselines`: what a model must beat on the validation split (the best `max_channel |bg -
  bg_fg|` threshold, chosen on the training split; the mean training depth map) and what no
  model can beat (`ceiling_iou`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxsegdepth import metrics, names, preprocess
from jaxsegdepth.data import pipeline
from jaxsegdepth.evaluators import base

DIFF_THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)  # |bg - bg_fg| cut-offs tried


def channel_difference(images: dict) -> np.ndarray:
    """max_channel |bg - bg_fg| of [0, 1] images, (N, H, W, 1)."""
    return np.abs(images["bg"] - images["bg_fg"]).max(axis=-1, keepdims=True)


@jax.jit
def threshold_iou_sums(difference, mask, thresholds):
    """Per-image IoU of `difference > t` summed over the batch, for every threshold t."""
    count = difference.shape[0]
    return jax.vmap(lambda t: count * metrics.iou((difference > t).astype(jnp.float32), mask))(
        thresholds
    )


def best_threshold(iou_sums: np.ndarray) -> float:
    """The threshold of `DIFF_THRESHOLDS` whose summed IoU is the largest."""
    return float(DIFF_THRESHOLDS[int(np.argmax(iou_sums))])


def ceiling_iou(mask: np.ndarray) -> float:
    """The best IoU any binary prediction can score against each soft target in `mask` (N,H,W,1),
    summed over images. Resized and JPEG-coded, targets are soft at object borders, and IoU is
    taken against them as they are (the reference's metric), so a perfect model scores below 1.
    The best mask takes the k largest target values for some k (adding a pixel of value t
    raises the overlap by t and the union by 1 - t), so the best prefix of the sorted values is
    the optimum."""
    t = np.asarray(mask, np.float64).reshape(len(mask), -1)
    overlap = np.cumsum(-np.sort(-t, axis=1), axis=1)
    union = np.arange(1, t.shape[1] + 1) + t.sum(1, keepdims=True) - overlap
    best = np.maximum(
        ((overlap + metrics.IOU_SMOOTH) / (union + metrics.IOU_SMOOTH)).max(1),
        metrics.IOU_SMOOTH / (t.sum(1) + metrics.IOU_SMOOTH),
    )  # or nothing at all
    return float(best.sum())


@base.register
class Baselines(base.Evaluator):
    """What a model must beat on the validation split, and what none can (module doc). Both
    splits are streamed batch by batch (a real training split does not fit in memory)."""

    TYPE = "baselines"
    TITLE = (
        "trivial predictors on the same images (difference_iou: max-channel |bg - bg_fg| > a "
        "threshold chosen on the training split; mean_depth_*: the mean training depth map for "
        "every image; ceiling_iou: the best any binary mask scores against the soft targets)"
    )

    @classmethod
    def create(cls, name, settings, context, should_stop):
        return cls(context)

    def __init__(self, context: base.Context):
        self.context = context

    def _batches(self, split: str, resolution: int):
        """Every sample of a split once, in batches on the host, images as floats in [0, 1]."""
        config = self.context.config
        for batch in pipeline.eval_batches(
            config.dataset, split, config.seed, resolution, 64, shard=(0, 1)
        ):
            yield {k: preprocess.unit(v) for k, v in batch.items() if k != names.INDEX}

    def run(self, state, resolution: int) -> base.Result:
        del state
        iou_sums, depth_sum, count = np.zeros(len(DIFF_THRESHOLDS)), 0.0, 0
        for batch in self._batches("train", resolution):
            iou_sums += np.asarray(
                threshold_iou_sums(channel_difference(batch), batch["mask"], DIFF_THRESHOLDS)
            )
            if "depth" in batch:  # a dataset without depth maps has no mean depth map
                depth_sum = depth_sum + batch["depth"].astype(np.float64).sum(axis=0)
            count += len(batch["mask"])
        threshold = best_threshold(iou_sums)
        mean_map, totals = (depth_sum / count).astype(np.float32), {}
        for batch in self._batches("validation", resolution):
            n = len(batch["mask"])
            sums = {
                "iou": float(
                    threshold_iou_sums(
                        channel_difference(batch), batch["mask"], np.array([threshold])
                    )[0]
                ),
                "ceiling_iou": ceiling_iou(batch["mask"]),
                "images": n,
            }
            if "depth" in batch:
                sums.update(
                    metrics.depth_sums(
                        np.broadcast_to(mean_map, batch["depth"].shape),
                        batch["depth"],
                        np.ones(n, np.float32),
                    )
                )
            base.add(totals, {k: float(v) for k, v in sums.items()})
        result = {}
        if "mask" in self.context.heads:
            result.update(
                difference_threshold=threshold,
                difference_iou=totals["iou"] / totals["images"],
                ceiling_iou=totals["ceiling_iou"] / totals["images"],
            )
        if "depth" in self.context.heads:
            summary = metrics.summarize(
                {k: v for k, v in totals.items() if k not in ("iou", "ceiling_iou", "images")}
            )
            result.update({f"mean_depth_{k}": v for k, v in summary.items()})
        return base.Result(metrics=result)
