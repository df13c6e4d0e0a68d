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
import tqdm

from jaxsegdepth import checkpoints, losses, mesh as mesh_lib, optim, plots, steps
from jaxsegdepth.data import builders, pipeline


def smooth(raw_losses, smoothing: float) -> np.ndarray:
    """Bias-corrected exponential moving average; `smoothing` is the weight of the newest value."""
    tracker = _Tracker(smoothing, diverge_factor=math.inf)
    return np.asarray([tracker.add(float(loss))[0] for loss in raw_losses], np.float64)


def suggest(lrs, smoothed) -> dict:
    """`suggested_lr` (lowest smoothed loss) and `steepest_lr` (steepest fall against log lr)."""
    lrs, smoothed = np.asarray(lrs, np.float64), np.asarray(smoothed, np.float64)
    best = int(np.argmin(smoothed))
    result = {"suggested_lr": float(lrs[best]), "suggested_step": best,
              "min_smoothed_loss": float(smoothed[best]), "steepest_lr": None}
    if len(lrs) >= 3:
        slope = np.gradient(smoothed, np.log(lrs))
        result["steepest_lr"] = float(lrs[int(np.argmin(slope))])
    return result


class _Tracker:
    """Bias-corrected smoothing and the divergence test, one loss at a time."""

    def __init__(self, smoothing: float, diverge_factor: float):
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"lr_range.smoothing={smoothing}: expected a value in (0, 1]")
        self.smoothing, self.diverge_factor = smoothing, diverge_factor
        self.avg, self.count, self.best = 0.0, 0, math.inf

    def add(self, loss: float) -> tuple[float, bool]:
        self.avg = (1.0 - self.smoothing) * self.avg + self.smoothing * loss
        self.count += 1
        smoothed = self.avg / (1.0 - (1.0 - self.smoothing) ** self.count)
        diverged = self.count > 1 and smoothed > self.diverge_factor * self.best
        self.best = min(self.best, smoothed)
        return smoothed, diverged


def sweep(config: ml_collections.ConfigDict) -> dict:
    """Runs the sweep; returns the record written to `lr_range.json` (see the module doc)."""
    cfg = config.lr_range
    if not 0 < cfg.start_lr < cfg.end_lr:
        raise ValueError(f"lr_range: expected 0 < start_lr < end_lr, got {cfg.start_lr}, {cfg.end_lr}")
    if cfg.num_steps < 2:
        raise ValueError(f"lr_range.num_steps={cfg.num_steps}: expected at least 2")
    resolution = cfg.resolution or config.resolutions[0]
    global_batch = cfg.batch_size or config.batch_size
    mesh = mesh_lib.create_mesh()
    local_batch = mesh_lib.check_batch_size(mesh, global_batch)

    schedule = optim.range_schedule(cfg.start_lr, cfg.end_lr, cfg.num_steps, cfg.spacing)
    tx = optim.create_optimizer(config.optimizer, schedule)
    state = checkpoints.create_state(config, mesh=mesh, tx=tx)
    train_step, _, _ = steps.jit_steps(mesh, losses.compose(config.loss.to_dict()))

    builders.prepare(config.dataset)
    loader = pipeline.create_loader(config.dataset, "train", resolution=resolution,
                                    batch_size=local_batch, shuffle=True, seed=config.seed,
                                    num_epochs=None, drop_remainder=True)
    keys = ("bg", "bg_fg", *config.loss.keys())  # the inputs and the targets the loss uses
    tracker = _Tracker(cfg.smoothing, cfg.diverge_factor)
    lrs, raw, smoothed = [], [], []
    stop_reason = "completed"

    def record(step: int, loss) -> bool:
        """Adds one step's loss; True when the sweep must stop."""
        nonlocal stop_reason
        loss = float(loss)
        if not math.isfinite(loss):
            stop_reason = f"non-finite loss at step {step} (lr {float(schedule(step)):.3g})"
            return True
        value, diverged = tracker.add(loss)
        lrs.append(float(schedule(step)))
        raw.append(loss)
        smoothed.append(value)
        bar.update(1)
        if step % max(config.log_every_steps, 1) == 0:
            bar.set_postfix(lr=f"{lrs[-1]:.3g}", smoothed=f"{value:.4f}", refresh=False)
        if diverged:
            stop_reason = (f"diverged at step {step} (lr {lrs[-1]:.3g}): smoothed loss {value:.4g} > "
                           f"{cfg.diverge_factor} x best {tracker.best:.4g}")
        return diverged

    # The loss of step i is read after step i + 1 has been dispatched, so the device is never
    # idle waiting for the host; a stop discards that one extra step (the state is thrown away).
    pending, batches = None, iter(loader)
    bar = tqdm.tqdm(total=cfg.num_steps, desc="LR range test", unit="step", dynamic_ncols=True,
                    disable=jax.process_index() != 0)
    for step in range(cfg.num_steps):
        try:
            batch = next(batches)
        except StopIteration:
            stop_reason = f"the training split ran out after {step} batches"
            break
        batch = {key: batch[key] for key in keys}
        state, step_metrics = train_step(state, mesh_lib.shard_batch(mesh, batch))
        if pending is not None and record(*pending):
            pending = None
            break
        pending = (step, step_metrics["loss"])
    if pending is not None:
        record(*pending)
    bar.close()
    del state
    if len(lrs) < 2:
        raise RuntimeError(f"LR range test stopped after {len(lrs)} step(s): {stop_reason}; "
                           "lower lr_range.start_lr")

    return {
        "lrs": lrs, "losses": raw, "smoothed": smoothed, **suggest(lrs, smoothed),
        "stop_reason": stop_reason, "num_steps_run": len(lrs),
        "sweep": {"start_lr": cfg.start_lr, "end_lr": cfg.end_lr, "num_steps": cfg.num_steps,
                  "spacing": cfg.spacing, "smoothing": cfg.smoothing,
                  "diverge_factor": cfg.diverge_factor, "resolution": resolution,
                  "batch_size": global_batch, "optimizer": config.optimizer.to_dict(),
                  "model": config.model, "loss": config.loss.to_dict()},
    }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the sweep and writes `WORKDIR/lr_range.json` and `WORKDIR/lr_range.png`."""
    result = sweep(config)
    os.makedirs(workdir, exist_ok=True)
    json_path, png_path = os.path.join(workdir, "lr_range.json"), os.path.join(workdir, "lr_range.png")
    if jax.process_index() == 0:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        plots.lr_range(result, png_path)
        steepest = f"{result['steepest_lr']:.3g}" if result["steepest_lr"] else "n/a"
        print(f"LR range test: {result['num_steps_run']} steps, {result['stop_reason']}.\n"
              f"Suggested learning rate (lowest smoothed loss): {result['suggested_lr']:.4g} "
              f"(steepest descent at {steepest}); written to {json_path} and {png_path}")
        if result["suggested_step"] == result["num_steps_run"] - 1:
            print("Note: the smoothed loss was still falling at the last step, so the sweep never "
                  "reached divergence and the suggestion is a lower bound: raise lr_range.end_lr")
    return result
