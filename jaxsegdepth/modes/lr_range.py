"""`mode=lr_range_test`: sweep the learning rate over a short run and suggest one.

The rate goes from `lr_range.start_lr` to `lr_range.end_lr` over `lr_range.num_steps` training
steps (`spacing` "exp": geometric, "linear": arithmetic), with the recipe's optimizer (SGD,
momentum 0.9 in `configs/lr_range_test.py`) following `optim.range_schedule`, and the normal
`steps.train_step` on training batches at `lr_range.resolution`.

Smoothing: `smoothing` (s) is the weight of the newest loss in an exponential moving average,
bias-corrected so the first values are not pulled towards 0:
    avg_i = (1 - s) * avg_{i-1} + s * loss_i,  avg_{-1} = 0,   smoothed_i = avg_i / (1 - (1 - s)^(i+1)).
The sweep stops early at the first step whose smoothed loss exceeds `diverge_factor` times the
lowest smoothed loss so far (that step is still recorded), or whose loss is not finite (that step
is not recorded).

Suggestion: `suggested_lr` is the rate at the lowest smoothed loss, as in the reference project
(its runs gave 0.1-0.45 for DSResNet). That rate is close to the edge of stability; a tenth of
it is the common cautious choice. `steepest_lr`, the rate where the smoothed loss falls fastest
against log(lr), is also in the JSON, for reference only.

Writes `WORKDIR/lr_range.json` and `WORKDIR/lr_range.png`; the model and optimizer state are
thrown away.
"""

import json
import math
import os

import jax
import ml_collections
import numpy as np

from jaxsegdepth import charts, errors, mesh as mesh_lib, names, optim, reporting, setup, stages
from jaxsegdepth.data import datasets, pipeline


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, sweep settings that would fail (before anything compiles)."""
    cfg = config.lr_range
    if not 0 < cfg.start_lr < cfg.end_lr:
        raise errors.UsageError(
            f"lr_range: expected 0 < start_lr < end_lr, got start_lr="
            f"{cfg.start_lr}, end_lr={cfg.end_lr}"
        )
    if cfg.num_steps < 2:
        raise errors.UsageError(f"lr_range.num_steps={cfg.num_steps}: expected at least 2")
    if cfg.spacing not in optim.SPACINGS:
        raise errors.UsageError(
            f"lr_range.spacing={cfg.spacing!r}: expected one of {optim.SPACINGS}"
        )
    if not 0.0 < cfg.smoothing <= 1.0:
        raise errors.UsageError(f"lr_range.smoothing={cfg.smoothing}: expected a value in (0, 1]")
    if not cfg.diverge_factor > 1.0:
        raise errors.UsageError(f"lr_range.diverge_factor={cfg.diverge_factor}: expected > 1")
    setup.validate(
        config, (cfg.resolution or stages.of(config)[0].resolution,), "lr_range.resolution"
    )
    optim.validate(config)
    pipeline.validate(config.dataset)
    mesh_lib.check_batch_size(
        mesh_lib.create_mesh(),
        cfg.batch_size or config.batch_size,
        "lr_range.batch_size" if cfg.batch_size else "batch_size",
    )


def suggest(lrs, smoothed) -> dict:
    """`suggested_lr` (lowest smoothed loss) and `steepest_lr` (steepest fall against log lr)."""
    lrs, smoothed = np.asarray(lrs, np.float64), np.asarray(smoothed, np.float64)
    best = int(np.argmin(smoothed))
    result = {
        "suggested_lr": float(lrs[best]),
        "suggested_step": best,
        "min_smoothed_loss": float(smoothed[best]),
        "steepest_lr": None,
    }
    if len(lrs) >= 3:
        slope = np.gradient(smoothed, np.log(lrs))
        result["steepest_lr"] = float(lrs[int(np.argmin(slope))])
    return result


class _Record:
    """The sweep so far: rates, raw and bias-corrected smoothed losses, and why it stopped."""

    def __init__(self, cfg: ml_collections.ConfigDict, schedule, bar):
        self.cfg, self.schedule, self.bar = cfg, schedule, bar
        self.lrs, self.raw, self.smoothed = [], [], []
        self.avg, self.best, self.stop_reason = 0.0, math.inf, "completed"

    def add(self, step: int, loss: float) -> bool:
        """Adds one step's loss; True when the sweep must stop (divergence, non-finite loss)."""
        lr = float(self.schedule(step))
        if not math.isfinite(loss):
            self.stop_reason = f"non-finite loss at step {step} (lr {lr:.3g})"
            return True
        weight = self.cfg.smoothing
        self.avg = (1.0 - weight) * self.avg + weight * loss
        value = self.avg / (1.0 - (1.0 - weight) ** (len(self.raw) + 1))
        diverged = bool(self.raw) and value > self.cfg.diverge_factor * self.best
        self.best = min(self.best, value)
        self.lrs.append(lr)
        self.raw.append(loss)
        self.smoothed.append(value)
        self.bar.update(1)
        self.bar.set_postfix(lr=f"{lr:.3g}", smoothed=f"{value:.4f}", refresh=False)
        if diverged:
            self.stop_reason = (
                f"diverged at step {step} (lr {lr:.3g}): smoothed loss "
                f"{value:.4g} > {self.cfg.diverge_factor} x best {self.best:.4g}"
            )
        return diverged


def sweep(config: ml_collections.ConfigDict) -> dict:
    """Runs the sweep; returns the record written to `lr_range.json` (see the module doc)."""
    cfg = config.lr_range
    resolution = cfg.resolution or stages.of(config)[0].resolution
    global_batch = cfg.batch_size or config.batch_size
    mesh = mesh_lib.create_mesh()
    schedule = optim.range_schedule(cfg.start_lr, cfg.end_lr, cfg.num_steps, cfg.spacing)
    state = setup.create_state(
        config, mesh=mesh, tx=optim.create_optimizer(config.optimizer, schedule)
    )
    datasets.prepare(config.dataset)
    train_step, _, _ = setup.compiled_steps(
        config, mesh, pipeline.input_normalization(config.dataset)
    )
    batches = iter(
        pipeline.create_loader(
            config.dataset,
            "train",
            resolution=resolution,
            batch_size=mesh_lib.check_batch_size(mesh, global_batch),
            shuffle=True,
            seed=config.seed,
            num_epochs=None,
            drop_remainder=True,
        )
    )
    keys = names.INPUTS + tuple(setup.loss_spec(config)) + (names.INDEX,)  # what the step uses
    bar = reporting.progress_bar(
        cfg.num_steps, "LR range test", enabled=jax.process_index() == 0, unit="step"
    )
    record = _Record(cfg, schedule, bar)
    # The loss of step i is read after step i + 1 has been dispatched, so the device is never
    # idle waiting for the host; a stop discards that one extra step (the state is thrown away).
    pending = None
    for step, batch in zip(range(cfg.num_steps), batches):
        state, step_metrics = train_step(
            state, mesh_lib.shard_batch(mesh, {key: batch[key] for key in keys})
        )
        if pending is not None and record.add(pending[0], float(pending[1])):
            pending = None
            break
        pending = (step, step_metrics["loss"])
    if pending is not None:
        record.add(pending[0], float(pending[1]))
    bar.close()
    if len(record.lrs) < 2:
        raise errors.RunError(
            f"LR range test stopped after {len(record.lrs)} step(s): "
            f"{record.stop_reason}; lower lr_range.start_lr"
        )
    return {
        "lrs": record.lrs,
        "losses": record.raw,
        "smoothed": record.smoothed,
        **suggest(record.lrs, record.smoothed),
        "stop_reason": record.stop_reason,
        "num_steps_run": len(record.lrs),
        "sweep": {
            "start_lr": cfg.start_lr,
            "end_lr": cfg.end_lr,
            "num_steps": cfg.num_steps,
            "spacing": cfg.spacing,
            "smoothing": cfg.smoothing,
            "diverge_factor": cfg.diverge_factor,
            "resolution": resolution,
            "batch_size": global_batch,
            "optimizer": config.optimizer.to_dict(),
            "model": config.model,
            "loss": config.loss.to_dict(),
        },
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the sweep and writes `WORKDIR/lr_range.json` and `WORKDIR/lr_range.png`."""
    result = sweep(config)
    os.makedirs(workdir, exist_ok=True)
    json_path, png_path = (
        os.path.join(workdir, "lr_range.json"),
        os.path.join(workdir, "lr_range.png"),
    )
    if jax.process_index() == 0:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        charts.lr_range(result, png_path)
        steepest = f"{result['steepest_lr']:.3g}" if result["steepest_lr"] else "n/a"
        reporting.say(
            f"LR range test: {result['num_steps_run']} steps, {result['stop_reason']}.\n"
            f"Suggested learning rate (lowest smoothed loss): {result['suggested_lr']:.4g} "
            f"(steepest descent at {steepest}); written to {json_path} and {png_path}"
        )
        if result["suggested_step"] == result["num_steps_run"] - 1:
            reporting.say(
                "Note: the smoothed loss was still falling at the last step, so the sweep never "
                "reached divergence and the suggestion is a lower bound: raise lr_range.end_lr"
            )
    return result
