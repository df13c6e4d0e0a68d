"""One validation pass (exact metric sums) and the preview grid, for the trainer and
`mode=evaluate`; for `mode=evaluate` also the trivial predictors (`trivial_baselines`) and the
held-out pairs of real photographs (`photo_pairs`).

`evaluate_split` runs the jitted eval step over every validation sample once. The last partial
batch is padded to the batch size with repeats of its real samples, weighted 0 (in the metric
sums and in the loss terms), so the result does not depend on the padding, nor on how many
processes read the split; `val_loss` averages the batch losses weighted by their numbers of
real samples.
"""
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxsegdepth import mesh as mesh_lib, metrics, names, reporting
from jaxsegdepth.data import pipeline, preprocess

FETCH_EVERY = 16  # evaluation sums come to the host (float64) every this many batches


def evaluate_split(config: ml_collections.ConfigDict, mesh, eval_step: Callable, state,
                   resolution: int, heads, first_batch: Optional[Callable] = None,
                   should_stop: Callable[[], bool] = lambda: False) -> Optional[dict]:
    """Loss, loss terms and metrics of `state` over the whole validation split at `resolution`.

    Keys are `val_loss`, `val_<metric>` and `val_<head>/<term>`. `first_batch(batch, host,
    real)` is called on the first batch (the trainer draws its preview there). Returns None,
    leaving the pass unfinished, as soon as `should_stop()` is true after a batch.
    """
    local_batch = mesh_lib.check_batch_size(mesh, config.batch_size)
    keys = names.INPUTS + tuple(heads)
    loader = pipeline.create_loader(
        config.dataset, "validation", resolution=resolution, batch_size=local_batch,
        shuffle=False, seed=config.seed, num_epochs=1, drop_remainder=False)
    global_batches = math.ceil(pipeline.split_size(config.dataset, "validation")
                               / (jax.process_count() * local_batch))
    # A process whose slice of a global batch is empty (or that has no sample at all) still
    # takes part in every step, with a batch of weight 0.
    last_real = {k: np.zeros((1, resolution, resolution, 3 if k in names.INPUTS else 1),
                             np.uint8) for k in keys}
    iterator, totals, pending = iter(loader), {}, []

    def fetch():
        for sums, batch_loss, terms in jax.device_get(pending):
            weight = float(sums.get("images", 1.0))
            _add(totals, {k: float(v) for k, v in sums.items()})
            _add(totals, {"loss": weight * float(batch_loss), "weight": weight,
                          **{k: weight * float(v) for k, v in terms.items()}})
        pending.clear()

    for index in range(global_batches):
        host = next(iterator, None)
        if host is None:  # this process's slice of this global batch is empty: all padding
            host, real = last_real, 0
        else:
            host = {k: np.asarray(host[k]) for k in keys}
            real = len(host["bg"])
            last_real = host
        take = np.arange(local_batch) % len(host["bg"])
        padded = {k: v[take] for k, v in host.items()}
        padded["weights"] = (np.arange(local_batch) < real).astype(np.float32)
        batch = mesh_lib.shard_batch(mesh, padded)
        out = eval_step(state, batch)
        terms = {k: v for k, v in out.items() if k not in ("loss", "sums")}
        pending.append((out["sums"], out["loss"], terms))
        if index == 0 and first_batch is not None:
            first_batch(batch, padded, real)
        if len(pending) >= FETCH_EVERY:
            fetch()
        if should_stop():
            return None
    fetch()
    weight = totals.pop("weight", 0.0)
    result = {"val_loss": totals.pop("loss") / weight if weight else float("nan")}
    sums = {k: v for k, v in totals.items() if "/" not in k}
    result.update({f"val_{k}": v for k, v in metrics.summarize(sums).items()})
    result.update({f"val_{k}": v / weight for k, v in totals.items() if "/" in k})
    return result


def _add(totals: dict, values: dict) -> None:
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + value


def preview_grid(config: ml_collections.ConfigDict, predict_step: Callable, state,
                 batch: dict, host: dict, real: int, heads) -> np.ndarray:
    """The first `num_preview` samples of a validation batch: inputs, targets, predictions.

    Every process takes part (the predictions are gathered); only process 0 needs the grid.
    """
    predictions = predict_step(state, batch["bg"], batch["bg_fg"])
    predictions = multihost_utils.process_allgather(predictions, tiled=True)
    n = max(1, min(config.num_preview, real))
    columns = [(name, host[name][:n]) for name in names.INPUTS]
    for head in heads:
        columns += [(head, preprocess.unit(host[head][:n])),
                    (f"pred {head}", np.asarray(predictions[head])[:n])]
    return reporting.image_grid(columns)


DIFF_THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)  # |bg - bg_fg| cut-offs tried


def _batches(config: ml_collections.ConfigDict, split: str, resolution: int):
    """Every sample of a split once, in batches on the host, images as floats in [0, 1]."""
    for batch in pipeline.create_loader(
            config.dataset, split, resolution=resolution, batch_size=64, shuffle=False,
            seed=config.seed, num_epochs=1, drop_remainder=False, shard=(0, 1)):
        yield {k: preprocess.unit(batch[k]) for k in names.INPUTS + names.HEADS}


def _difference(batch: dict) -> np.ndarray:
    return np.abs(batch["bg"] - batch["bg_fg"]).max(axis=-1, keepdims=True)


@jax.jit
def _iou_sums(difference, mask, thresholds):
    """Per-image IoU of `difference > t` summed over the batch, for every threshold t."""
    count = difference.shape[0]
    return jax.vmap(lambda t: count * metrics.iou((difference > t).astype(jnp.float32), mask))(
        thresholds)


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
    best = np.maximum(((overlap + metrics.IOU_SMOOTH) / (union + metrics.IOU_SMOOTH)).max(1),
                      metrics.IOU_SMOOTH / (t.sum(1) + metrics.IOU_SMOOTH))  # or nothing at all
    return float(best.sum())


def trivial_baselines(config: ml_collections.ConfigDict, resolution: int, heads) -> dict:
    """What a model must beat, on the validation split at `resolution`: the IoU of the mask
    `max_channel |bg - bg_fg| > t`, with t the best of `DIFF_THRESHOLDS` on the training split,
    and the depth metrics of predicting the mean training depth map for every image. Also
    what no model can beat: `ceiling_iou`. Both splits are streamed batch by batch (a real
    training split does not fit in memory)."""
    iou_sums, depth_sum, count = np.zeros(len(DIFF_THRESHOLDS)), 0.0, 0
    for batch in _batches(config, "train", resolution):
        iou_sums += np.asarray(_iou_sums(_difference(batch), batch["mask"], DIFF_THRESHOLDS))
        depth_sum = depth_sum + batch["depth"].astype(np.float64).sum(axis=0)
        count += len(batch["depth"])
    best = DIFF_THRESHOLDS[int(np.argmax(iou_sums))]
    mean_map, totals = (depth_sum / count).astype(np.float32), {}
    for batch in _batches(config, "validation", resolution):
        n = len(batch["mask"])
        sums = {"iou": float(_iou_sums(_difference(batch), batch["mask"], best[None])[0]),
                "ceiling_iou": ceiling_iou(batch["mask"]), "images": n}
        sums.update(metrics.depth_sums(np.broadcast_to(mean_map, batch["depth"].shape),
                                       batch["depth"], np.ones(n, np.float32)))
        _add(totals, {k: float(v) for k, v in sums.items()})
    result = {}
    if "mask" in heads:
        result.update(difference_threshold=float(best),
                      difference_iou=totals["iou"] / totals["images"],
                      ceiling_iou=totals["ceiling_iou"] / totals["images"])
    if "depth" in heads:
        summary = metrics.summarize({k: v for k, v in totals.items()
                                     if k not in ("iou", "ceiling_iou", "images")})
        result.update({f"mean_depth_{k}": v for k, v in summary.items()})
    return result


PHOTO_PREVIEW = 6  # pairs drawn in the held-out photographs' grid


def photo_pairs(config: ml_collections.ConfigDict, mesh, predict_step: Callable, state,
                resolution: int, threshold: float, pairs: list[dict]) -> tuple[dict, np.ndarray]:
    """Mask IoU of the model and of `max_channel |bg - bg_fg| > threshold` on held-out `pairs`
    of real photographs (`data.photos.generate`'s JPEG bytes, which the model never saw), at
    `resolution`, decoded and normalised as the training data is; and a grid of the first pairs.

    Every process takes part: each predicts its slice of the pairs, then all are gathered.
    """
    count = len(pairs)
    local = mesh_lib.check_batch_size(mesh, count, "evaluate.photos")
    images = {key: np.stack([pipeline.decode_image(pair[key], "L" if key == "mask" else "RGB",
                                                   resolution) for pair in pairs])
              for key in (*names.INPUTS, "mask")}
    mask = preprocess.unit(images["mask"][..., None])
    mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    batch = mesh_lib.shard_batch(mesh, {key: images[key][mine] for key in names.INPUTS})
    probs = multihost_utils.process_allgather(
        predict_step(state, batch["bg"], batch["bg_fg"])["mask"], tiled=True)
    difference = _difference({key: preprocess.unit(images[key]) for key in names.INPUTS})
    result = {"pairs": count, "model_iou": float(metrics.iou(probs, mask)),
              "difference_iou": float(metrics.iou(difference, mask, threshold)),
              "ceiling_iou": ceiling_iou(mask) / count}
    n = min(PHOTO_PREVIEW, count)
    grid = reporting.image_grid([("bg", images["bg"][:n]), ("bg_fg", images["bg_fg"][:n]),
                                 ("mask", mask[:n]), ("pred mask", np.asarray(probs)[:n]),
                                 (f"|diff| > {threshold:g}", (difference[:n] > threshold))])
    return result, grid
