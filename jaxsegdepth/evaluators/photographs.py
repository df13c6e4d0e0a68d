"""Held-out real photographs.

- `photos`: held-out pairs made of real photographs (`data.photos`, the set `set`: of the
  generator's shapes or others, clean or with capture nuisances), the model's mask IoU beside
  the best difference threshold, chosen on other pairs of the same set; a grid of the pairs the
  model does worst on. Plates are registered onto their scenes first as `config.align` says
  (the threshold gets the same plates); with `unaligned=True` the set is also scored on the
  plates as they are (`*_unaligned`), e.g. for the moved-camera sets.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxsegdepth import align, errors, mesh as mesh_lib, metrics, names, preprocess, reporting
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
        "the best threshold on other such pairs; plates registered as config.align says, "
        "*_unaligned: without)"
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
        return cls(
            context,
            settings.pairs,
            settings.get("set", "photos"),
            tag=name,
            unaligned=settings.get("unaligned", False),
        )

    def __init__(
        self,
        context: base.Context,
        pairs: int,
        photo_set: str = "photos",
        tag: str = "photos",
        unaligned: bool = False,
    ):
        self.context, self.count, self.tag = context, pairs, tag
        self.alignments = [align.Settings.from_config(context.config.get("align"))]
        if unaligned and self.alignments[0].enabled:
            self.alignments.append(align.Settings(enabled=False))
        chosen, self.photo_set = photos.SETS[photo_set], photo_set
        self._pairs = {
            split: photos.pairs(chosen, 0, pairs, split=split) for split in photos.SPLITS
        }
        self._prepared = {}  # (resolution, alignment) -> (best threshold, eval images, estimates)

    def _decoded(self, split: str, resolution: int, alignment: align.Settings) -> tuple:
        """The split's pairs at `resolution`, each plate registered onto its scene, and the
        estimates."""
        images = {
            key: np.stack(
                [
                    pipeline.decode_image(pair[key], "L" if key == "mask" else "RGB", resolution)
                    for pair in self._pairs[split]
                ]
            )
            for key in (*names.INPUTS, "mask")
        }
        plates, found = [], []
        for index, (plate, scene) in enumerate(zip(images["bg"], images["bg_fg"])):
            registered, estimate = align.register(plate, scene, alignment)
            if estimate.refused:
                reporting.warn(
                    f"{self.photo_set} {split} pair {index}: registration {estimate.status}; "
                    "the plate is used unaligned"
                )
            plates.append(registered)
            found.append(estimate)
        images["bg"] = np.stack(plates)
        return images, found

    def _prepare(self, resolution: int, alignment: align.Settings) -> tuple[float, dict, list]:
        """The tuning split's best threshold, the eval pairs and their registration estimates
        at `resolution`, made once: the trainer evaluates every epoch at the same few
        resolutions."""
        key = resolution, alignment
        if key not in self._prepared:
            tuning, _ = self._decoded("tuning", resolution, alignment)
            difference = baselines.channel_difference(
                {k: preprocess.unit(tuning[k]) for k in names.INPUTS}
            )
            sums = baselines.threshold_iou_sums(
                difference, preprocess.unit(tuning["mask"][..., None]), baselines.DIFF_THRESHOLDS
            )
            threshold = baselines.best_threshold(np.asarray(sums))
            self._prepared[key] = (threshold, *self._decoded("eval", resolution, alignment))
        return self._prepared[key]

    def run(self, state, resolution: int) -> base.Result:
        if "mask" not in self.context.heads:
            return base.Result()
        result = base.Result()
        for alignment in self.alignments:
            scored = self._score(state, resolution, alignment)
            suffix = "" if alignment is self.alignments[0] else "_unaligned"
            result.metrics.update({f"{k}{suffix}": v for k, v in scored.metrics.items()})
            if not suffix:
                result.images.update(scored.images)
                result.details.update(scored.details)
        return result

    def _score(self, state, resolution: int, alignment: align.Settings) -> base.Result:
        threshold, images, found = self._prepare(resolution, alignment)
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
        details = {}
        if alignment.enabled:
            result["aligned_pairs"] = sum(f.applied for f in found)
            result["refused_pairs"] = sum(f.refused for f in found)
            details["registration"] = [f.to_json() for f in found]
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
        return base.Result(metrics=result, images={self.tag: grid}, details=details)
