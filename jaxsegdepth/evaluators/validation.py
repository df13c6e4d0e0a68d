"""Evaluators over the validation split.

- `validation`: loss, loss terms and metrics over the whole validation split, exact: the last
  partial batch is padded with repeats of its real samples weighted 0 (in the metric sums and
  the loss terms), so the result depends neither on the padding nor on how many processes read
  the split; `loss` averages the batch losses weighted by their numbers of real samples. Of the
  model's weights (the moving average when the run keeps one), or with `weights="trained"`
  (training only) of the trained weights behind that average.
- `preview`: a grid of the first `samples` validation samples: inputs, targets, predictions.
"""

from typing import Callable, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxsegdepth import errors, metrics, names, preprocess, reporting
from jaxsegdepth.evaluators import base

FETCH_EVERY = 16  # evaluation sums come to the host (float64) every this many batches
WEIGHTS = ("model", "trained")  # a validation's weights: the model's (EMA if kept), the trained


@base.register
class Validation(base.Evaluator):
    """Loss, loss terms and metrics over the whole validation split (module doc)."""

    TYPE = "validation"
    TITLE = "samples of the validation split (iou: threshold 0.5; iou_soft: on probabilities)"

    @classmethod
    def check(cls, settings, field: str) -> None:
        if settings.get("weights", "model") not in WEIGHTS:
            raise errors.UsageError(
                f"{field}.weights={settings.weights!r}: expected one of {WEIGHTS}"
            )
        if settings.get("weights") == "trained" and settings.evaluate:
            raise errors.UsageError(
                f"{field}: weights='trained' runs in training only (evaluate, predict and "
                "export read the moving average when a run keeps one): set evaluate=False"
            )

    @classmethod
    def create(cls, name, settings, context, should_stop):
        return cls(context, should_stop, settings.get("weights", "model"))

    def __init__(
        self,
        context: base.Context,
        should_stop: Callable[[], bool] = lambda: False,
        weights: str = "model",
    ):
        self.context, self.should_stop, self.weights = context, should_stop, weights

    def run(self, state, resolution: int) -> Optional[base.Result]:
        """Keys `loss`, the metrics of `names.metric_names` and `<head>/<term>`; None, leaving
        the pass unfinished, as soon as `should_stop()` is true after a batch."""
        if self.weights == "trained":
            state = state.replace(ema={})
        totals, pending = {}, []

        def fetch():
            for sums, batch_loss, terms in jax.device_get(pending):
                weight = float(sums.get("images", 1.0))
                base.add(totals, {k: float(v) for k, v in sums.items()})
                base.add(
                    totals,
                    {
                        "loss": weight * float(batch_loss),
                        "weight": weight,
                        **{k: weight * float(v) for k, v in terms.items()},
                    },
                )
            pending.clear()

        for batch, _, _ in base.validation_batches(self.context, resolution):
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
        return base.Result(metrics=result)


@base.register
class Preview(base.Evaluator):
    """The first `samples` validation samples: inputs, targets and predictions, as one grid.

    Every process takes part (the predictions are gathered); only process 0 needs the grid."""

    TYPE = "preview"
    TITLE = "the preview grid"

    @classmethod
    def check(cls, settings, field: str) -> None:
        base.check_count(settings, field, "samples")

    @classmethod
    def create(cls, name, settings, context, should_stop):
        return cls(context, settings.samples)

    def __init__(self, context: base.Context, samples: int):
        self.context, self.samples = context, samples

    def run(self, state, resolution: int) -> base.Result:
        batch, host, real = next(base.validation_batches(self.context, resolution))
        predictions = self.context.predict_step(state, batch["bg"], batch["bg_fg"])
        predictions = multihost_utils.process_allgather(predictions, tiled=True)
        n = max(1, min(self.samples, real))
        columns = [(name, host[name][:n]) for name in names.INPUTS]
        for head in self.context.heads:
            columns += [
                (head, preprocess.unit(host[head][:n])),
                (f"pred {head}", np.asarray(predictions[head])[:n]),
            ]
        return base.Result(images={"predictions": reporting.image_grid(columns)})
