"""Held-out real photographs.

- `photos`: held-out pairs made of real photographs (`data.photos`, the set `set`: of the
  generator's shapes or others, clean or with capture nuisances), the model's mask IoU beside
  the best difference threshold, chosen on other pairs of the same set; a grid of the pairs the
  model does worst on.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxsegdepth import errors, mesh as mesh_lib, metrics, names, preprocess, reporting
from jaxsegdepth.data import photos, pipeline
from jaxsegdepth.evaluators import base, baselines

PHOTO_PREVIEW = 6  # pairs drawn in the held-out photographs' grid


def _per_image_iou(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of each image of a binary (N, H, W, 1) prediction with its soft target."""
    prediction, target = prediction.astype(np.float64), target.astype(np.float64)
    overlap = (prediction * target).sum((1, 2, 3))
    union = (prediction + target).sum((1, 2, 3)) - overlap
    return (overlap + metrics.IOU_SMOOTH) / (union + metrics.IOU_SMOOTH)


@base.register
class Photos(base.Evaluator):
    """Mask IoU of the model and of the best `max_channel |bg - bg_fg|` threshold on `pairs`
    held-out pairs of real photographs of the set `photo_set` (`data.photos.SETS`), which the
    model never saw, decoded as the training data is; the threshold is chosen on as many pairs
    of the set's tuning split. Masks only (the pairs have no depth). The grid draws the pairs
    the model does worst on. Every process takes part: each predicts its slice, then all are
    gathered."""

    TYPE = "photos"
    TITLE = (
        "held-out pairs of real photographs (masks only; model_iou against difference_iou, "
        "the best threshold on other such pairs)"
    )

    @classmethod
    def check(cls, settings, field: str) -> None:
        base.check_count(settings, field, "pairs")
        mesh_lib.check_batch_size(mesh_lib.create_mesh(), settings.pairs, f"{field}.pairs")
        if settings.get("set", "photos") not in photos.SETS:
            raise errors.UsageError(
                f"{field}.set={settings.set!r}: expected one of {sorted(photos.SETS)}"
            )

    @classmethod
    def create(cls, name, settings, context, should_stop):
        return cls(context, settings.pairs, settings.get("set", "photos"), tag=name)

    def __init__(
        self, context: base.Context, pairs: int, photo_set: str = "photos", tag: str = "photos"
    ):
        self.context, self.count, self.tag = context, pairs, tag
        chosen = photos.SETS[photo_set]
        self._pairs = {
            split: photos.pairs(chosen, 0, pairs, split=split) for split in photos.SPLITS
        }
        self._prepared = {}  # resolution -> (the tuning split's best threshold, eval images)

    def _decoded(self, split: str, resolution: int) -> dict:
        return {
            key: np.stack(
                [
                    pipeline.decode_image(pair[key], "L" if key == "mask" else "RGB", resolution)
                    for pair in self._pairs[split]
                ]
            )
            for key in (*names.INPUTS, "mask")
        }

    def _prepare(self, resolution: int) -> tuple[float, dict]:
        """The tuning split's best threshold and the decoded eval pairs at `resolution`, made
        once: the trainer evaluates every epoch at the same few resolutions."""
        if resolution not in self._prepared:
            tuning = self._decoded("tuning", resolution)
            difference = baselines.channel_difference(
                {k: preprocess.unit(tuning[k]) for k in names.INPUTS}
            )
            sums = baselines.threshold_iou_sums(
                difference, preprocess.unit(tuning["mask"][..., None]), baselines.DIFF_THRESHOLDS
            )
            threshold = baselines.best_threshold(np.asarray(sums))
            self._prepared[resolution] = threshold, self._decoded("eval", resolution)
        return self._prepared[resolution]

    def run(self, state, resolution: int) -> base.Result:
        if "mask" not in self.context.heads:
            return base.Result()
        threshold, images = self._prepare(resolution)
        mask = preprocess.unit(images["mask"][..., None])
        local = self.count // jax.process_count()
        mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
        batch = mesh_lib.shard_batch(
            self.context.mesh, {key: images[key][mine] for key in names.INPUTS}
        )
        probabilities = np.asarray(
            multihost_utils.process_allgather(
                self.context.predict_step(state, batch["bg"], batch["bg_fg"])["mask"], tiled=True
            )
        )
        difference = baselines.channel_difference(
            {key: preprocess.unit(images[key]) for key in names.INPUTS}
        )
        model_ious = _per_image_iou(probabilities > 0.5, mask)
        result = {
            "pairs": self.count,
            "model_iou": float(model_ious.mean()),
            "difference_threshold": threshold,
            "difference_iou": float(_per_image_iou(difference > threshold, mask).mean()),
            "ceiling_iou": baselines.ceiling_iou(mask) / self.count,
        }
        worst = np.argsort(model_ious, kind="stable")[:PHOTO_PREVIEW]
        grid = reporting.image_grid(
            [
                ("bg", images["bg"][worst]),
                ("bg_fg", images["bg_fg"][worst]),
                ("mask", mask[worst]),
                ("pred mask", probabilities[worst]),
                (f"|diff| > {threshold:g}", difference[worst] > threshold),
            ]
        )
        return base.Result(metrics=result, images={self.tag: grid})
