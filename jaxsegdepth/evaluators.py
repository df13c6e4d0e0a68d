"""Evaluators: small objects listed in `config.evals`, each `run(state, resolution) -> Result`.

`config.evals` maps a name to `{type, every, evaluate, ...}`: `type` one of `TYPES`, `every` the
training epochs between runs (0: never during training), `evaluate` whether `mode=evaluate` runs
it; other fields are the type's own. A result's metrics are reported under the name
(`val_loss`, `photos_model_iou`, ...), its images as `<tag>` pictures. Adding an evaluation set
is one class here and one config entry.

- `validation`: loss, loss terms and metrics over the whole validation split, exact: the last
  partial batch is padded with repeats of its real samples weighted 0 (in the metric sums and
  the loss terms), so the result depends neither on the padding nor on how many processes read
  the split; `loss` averages the batch losses weighted by their numbers of real samples. Of the
  model's weights (the moving average when the run keeps one), or with `weights="trained"`
  (training only) of the trained weights behind that average.
- `preview`: a grid of the first `samples` validation samples: inputs, targets, predictions.
- `baselines`: what a model must beat on the validation split (the best `max_channel |bg -
  bg_fg|` threshold, chosen on the training split; the mean training depth map) and what no
  model can beat (`ceiling_iou`).
- `photos`: held-out pairs made of real photographs (`data.photos`, the set `set`: of the
  generator's shapes or others, clean or with capture nuisances), the model's mask IoU beside
  the best difference threshold, chosen on other pairs of the same set; a grid of the pairs the
  model does worst on.
"""

import dataclasses
import math
from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxsegdepth import errors, mesh as mesh_lib, metrics, names, preprocess, reporting
from jaxsegdepth.data import photos, pipeline

TYPES = ("validation", "preview", "baselines", "photos")
VALIDATION = "val"  # the evaluator whose val_loss picks the best checkpoint and steps the plateau
FETCH_EVERY = 16  # evaluation sums come to the host (float64) every this many batches
DIFF_THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)  # |bg - bg_fg| cut-offs tried
PHOTO_PREVIEW = 6  # pairs drawn in the held-out photographs' grid
WEIGHTS = ("model", "trained")  # a validation's weights: the model's (EMA if kept), the trained


@dataclasses.dataclass
class Result:
    """What one run of an evaluator gives: named numbers and named RGB pictures."""

    metrics: dict = dataclasses.field(default_factory=dict)
    images: dict = dataclasses.field(default_factory=dict)  # tag -> (H, W, 3) uint8


@dataclasses.dataclass(frozen=True)
class Context:
    """What evaluators share in one mode: the config, the mesh, the compiled steps, the heads."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    heads: tuple
    eval_step: Callable
    predict_step: Callable


def validate(config: ml_collections.ConfigDict, training: bool = False) -> None:
    """Refuses, in one line, an `evals` entry that cannot run (in a training run: a validation
    that does not run every epoch, whose val_loss the best checkpoint and the plateau read)."""
    for name, settings in config.evals.items():
        field = f"evals.{name}"
        if settings.get("type") not in TYPES:
            raise errors.UsageError(
                f"{field}.type={settings.get('type')!r}: expected one of {TYPES}"
            )
        if settings.get("every", 0) < 0:
            raise errors.UsageError(
                f"{field}.every={settings.every}: expected >= 0 (epochs "
                "between runs in training; 0: never)"
            )
        for count in ("samples", "pairs"):
            if settings.get(count, 1) < 1:
                raise errors.UsageError(f"{field}.{count}={settings[count]}: expected >= 1")
        if settings.type == "validation" and settings.get("weights", "model") not in WEIGHTS:
            raise errors.UsageError(
                f"{field}.weights={settings.weights!r}: expected one of {WEIGHTS}"
            )
        if settings.get("weights") == "trained" and settings.evaluate:
            raise errors.UsageError(
                f"{field}: weights='trained' runs in training only (evaluate, predict and "
                "export read the moving average when a run keeps one): set evaluate=False"
            )
        if settings.type == "photos":
            mesh_lib.check_batch_size(mesh_lib.create_mesh(), settings.pairs, f"{field}.pairs")
            if settings.get("set", "photos") not in photos.SETS:
                raise errors.UsageError(
                    f"{field}.set={settings.set!r}: expected one of {sorted(photos.SETS)}"
                )
    validation = config.evals.get(VALIDATION)
    if validation is None or validation.type != "validation":
        raise errors.UsageError(
            f"evals.{VALIDATION}: expected a validation evaluator (its "
            "val_loss picks the best checkpoint)"
        )
    if training and validation.every != 1:
        raise errors.UsageError(
            f"evals.{VALIDATION}.every={validation.every}: expected 1 (the best checkpoint and "
            "the plateau schedule read val_loss every epoch)"
        )


def for_training(config: ml_collections.ConfigDict, epoch: int) -> list[str]:
    """The names of the evaluators due after training epoch `epoch` (1-based)."""
    return [
        name
        for name, settings in config.evals.items()
        if settings.every and epoch % settings.every == 0
    ]


def for_evaluate_mode(config: ml_collections.ConfigDict) -> list[str]:
    return [name for name, settings in config.evals.items() if settings.evaluate]


def create(name: str, context: Context, should_stop: Callable[[], bool] = lambda: False):
    """The evaluator `config.evals[name]` describes."""
    settings = context.config.evals[name]
    if settings.type == "validation":
        return Validation(context, should_stop, settings.get("weights", "model"))
    if settings.type == "preview":
        return Preview(context, settings.samples)
    if settings.type == "baselines":
        return Baselines(context)
    return Photos(context, settings.pairs, settings.get("set", "photos"), tag=name)


# -- the validation split, padded to whole batches ------------------------------------------


def _validation_batches(context: Context, resolution: int) -> Iterator[tuple[dict, dict, int]]:
    """(sharded batch, this process's padded host batch, its number of real samples) for every
    global batch of the validation split. A process whose slice of a global batch is empty (or
    that has no sample at all) still takes part in every step, with a batch of weight 0."""
    config = context.config
    local_batch = mesh_lib.check_batch_size(context.mesh, config.batch_size)
    keys = names.INPUTS + tuple(context.heads)
    loader = pipeline.create_loader(
        config.dataset,
        "validation",
        resolution=resolution,
        batch_size=local_batch,
        shuffle=False,
        seed=config.seed,
        num_epochs=1,
        drop_remainder=False,
    )
    global_batches = math.ceil(
        pipeline.split_size(config.dataset, "validation") / (jax.process_count() * local_batch)
    )
    last_real = {
        k: np.zeros((1, resolution, resolution, 3 if k in names.INPUTS else 1), np.uint8)
        for k in keys
    }
    iterator = iter(loader)
    for _ in range(global_batches):
        host = next(iterator, None)
        if host is None:
            host, real = last_real, 0
        else:
            host = {k: np.asarray(host[k]) for k in keys}
            real = len(host["bg"])
            last_real = host
        take = np.arange(local_batch) % len(host["bg"])
        padded = {k: v[take] for k, v in host.items()}
        padded["weights"] = (np.arange(local_batch) < real).astype(np.float32)
        yield mesh_lib.shard_batch(context.mesh, padded), padded, real


def _add(totals: dict, values: dict) -> None:
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + value


class Validation:
    """Loss, loss terms and metrics over the whole validation split (module doc)."""

    def __init__(
        self,
        context: Context,
        should_stop: Callable[[], bool] = lambda: False,
        weights: str = "model",
    ):
        self.context, self.should_stop, self.weights = context, should_stop, weights

    def run(self, state, resolution: int) -> Optional[Result]:
        """Keys `loss`, the metrics of `names.metric_names` and `<head>/<term>`; None, leaving
        the pass unfinished, as soon as `should_stop()` is true after a batch."""
        if self.weights == "trained":
            state = state.replace(ema={})
        totals, pending = {}, []

        def fetch():
            for sums, batch_loss, terms in jax.device_get(pending):
                weight = float(sums.get("images", 1.0))
                _add(totals, {k: float(v) for k, v in sums.items()})
                _add(
                    totals,
                    {
                        "loss": weight * float(batch_loss),
                        "weight": weight,
                        **{k: weight * float(v) for k, v in terms.items()},
                    },
                )
            pending.clear()

        for batch, _, _ in _validation_batches(self.context, resolution):
            out = self.context.eval_step(state, batch)
            terms = {k: v for k, v in out.items() if k not in ("loss", "sums")}
            pending.append((out["sums"], out["loss"], terms))
            if len(pending) >= FETCH_EVERY:
                fetch()
            if self.should_stop():
                return None
        fetch()
        weight = totals.pop("weight", 0.0)
        result = {"loss": totals.pop("loss") / weight if weight else float("nan")}
        result.update(metrics.summarize({k: v for k, v in totals.items() if "/" not in k}))
        result.update({k: v / weight for k, v in totals.items() if "/" in k})
        return Result(metrics=result)


class Preview:
    """The first `samples` validation samples: inputs, targets and predictions, as one grid.

    Every process takes part (the predictions are gathered); only process 0 needs the grid."""

    def __init__(self, context: Context, samples: int):
        self.context, self.samples = context, samples

    def run(self, state, resolution: int) -> Result:
        batch, host, real = next(_validation_batches(self.context, resolution))
        predictions = self.context.predict_step(state, batch["bg"], batch["bg_fg"])
        predictions = multihost_utils.process_allgather(predictions, tiled=True)
        n = max(1, min(self.samples, real))
        columns = [(name, host[name][:n]) for name in names.INPUTS]
        for head in self.context.heads:
            columns += [
                (head, preprocess.unit(host[head][:n])),
                (f"pred {head}", np.asarray(predictions[head])[:n]),
            ]
        return Result(images={"predictions": reporting.image_grid(columns)})


# -- trivial predictors -----------------------------------------------------------------------


def _difference(images: dict) -> np.ndarray:
    """max_channel |bg - bg_fg| of [0, 1] images, (N, H, W, 1)."""
    return np.abs(images["bg"] - images["bg_fg"]).max(axis=-1, keepdims=True)


@jax.jit
def _iou_sums(difference, mask, thresholds):
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


class Baselines:
    """What a model must beat on the validation split, and what none can (module doc). Both
    splits are streamed batch by batch (a real training split does not fit in memory)."""

    def __init__(self, context: Context):
        self.context = context

    def _batches(self, split: str, resolution: int):
        """Every sample of a split once, in batches on the host, images as floats in [0, 1]."""
        for batch in pipeline.create_loader(
            self.context.config.dataset,
            split,
            resolution=resolution,
            batch_size=64,
            shuffle=False,
            seed=self.context.config.seed,
            num_epochs=1,
            drop_remainder=False,
            shard=(0, 1),
        ):
            yield {k: preprocess.unit(v) for k, v in batch.items() if k != names.INDEX}

    def run(self, state, resolution: int) -> Result:
        del state
        iou_sums, depth_sum, count = np.zeros(len(DIFF_THRESHOLDS)), 0.0, 0
        for batch in self._batches("train", resolution):
            iou_sums += np.asarray(_iou_sums(_difference(batch), batch["mask"], DIFF_THRESHOLDS))
            if "depth" in batch:
                depth_sum = depth_sum + batch["depth"].astype(np.float64).sum(axis=0)
            count += len(batch["mask"])
        threshold = best_threshold(iou_sums)
        mean_map, totals = (depth_sum / count).astype(np.float32), {}
        for batch in self._batches("validation", resolution):
            n = len(batch["mask"])
            sums = {
                "iou": float(
                    _iou_sums(_difference(batch), batch["mask"], np.array([threshold]))[0]
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
            _add(totals, {k: float(v) for k, v in sums.items()})
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
        return Result(metrics=result)


# -- held-out real photographs ----------------------------------------------------------------


def _per_image_iou(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """IoU of each image of a binary (N, H, W, 1) prediction with its soft target."""
    prediction, target = prediction.astype(np.float64), target.astype(np.float64)
    overlap = (prediction * target).sum((1, 2, 3))
    union = (prediction + target).sum((1, 2, 3)) - overlap
    return (overlap + metrics.IOU_SMOOTH) / (union + metrics.IOU_SMOOTH)


class Photos:
    """Mask IoU of the model and of the best `max_channel |bg - bg_fg|` threshold on `pairs`
    held-out pairs of real photographs of the set `photo_set` (`data.photos.SETS`), which the
    model never saw, decoded as the training data is; the threshold is chosen on as many pairs
    of the set's tuning split. Masks only (the pairs have no depth). The grid draws the pairs
    the model does worst on. Every process takes part: each predicts its slice, then all are
    gathered."""

    def __init__(
        self, context: Context, pairs: int, photo_set: str = "photos", tag: str = "photos"
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
            difference = _difference({k: preprocess.unit(tuning[k]) for k in names.INPUTS})
            sums = _iou_sums(
                difference, preprocess.unit(tuning["mask"][..., None]), DIFF_THRESHOLDS
            )
            threshold = best_threshold(np.asarray(sums))
            self._prepared[resolution] = threshold, self._decoded("eval", resolution)
        return self._prepared[resolution]

    def run(self, state, resolution: int) -> Result:
        if "mask" not in self.context.heads:
            return Result()
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
        difference = _difference({key: preprocess.unit(images[key]) for key in names.INPUTS})
        model_ious = _per_image_iou(probabilities > 0.5, mask)
        result = {
            "pairs": self.count,
            "model_iou": float(model_ious.mean()),
            "difference_threshold": threshold,
            "difference_iou": float(_per_image_iou(difference > threshold, mask).mean()),
            "ceiling_iou": ceiling_iou(mask) / self.count,
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
        return Result(metrics=result, images={self.tag: grid})
