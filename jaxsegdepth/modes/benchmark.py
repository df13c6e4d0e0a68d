"""`mode=benchmark`: the speed of the trainer's own jitted steps, compile time, memory, FLOP/s.

    python launch.py --config configs/rmse_bce_dice.py --config.mode=benchmark

measures the train and eval steps of the config it is given (model, dtype, loss, weighting,
optimizer, batch size) at each resolution of its stages and writes `WORKDIR/benchmark.json`.
The measurements are the functions below; `tools/benchmark.py` runs them over grids of models,
resolutions, dtypes and batches, and adds the input pipeline's.

For one configuration, `benchmark_step` compiles `steps.jit_steps` over `mesh.create_mesh()`
(BatchNorm statistics, the NaN sentinel, eval metrics, on-device normalisation included) for a
fixed random uint8 batch shaped like the loader's, then:
- compile time, and with a persistent compilation cache (`persistent_cache`) the time to
  compile again from it after clearing the in-memory caches;
- after `warmup` steps, `repeats` timed runs of `steps_per_run` train steps (and of 3x as many
  eval steps), interleaved train/eval; the median samples/s of the runs, all runs kept;
- achieved FLOP/s = samples/s x FLOP per sample (`forward_gflop`: the reference's figures in
  docs/reference.md, scaled with the pixel count at other sizes; a train step counts 3x the
  forward); on a GPU also the fraction of the vendor's dense peak;
- host peak RSS, the device's memory statistics where it has them and XLA's memory analysis
  of each compiled step. `largest_batch` plans the largest batch that fits a device.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import shutil
import time
from typing import Any, Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from jaxsegdepth import build, errors, hardware, mesh as mesh_lib, names, reporting, stages, steps
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION

# The input statistics the benchmarked steps normalise with: their values do not change the
# speed, and a fixed set needs no dataset built.
NORMALIZATION = MODEST_NORMALIZATION
RESULT_FILE = "benchmark.json"

# Forward cost of DSResNet in GFLOP per sample (multiply-adds x 2, all convolutions), docs/reference.md.
DSRESNET_FORWARD_GFLOP = {96: 1.93, 160: 5.37, 224: 10.52}
# MaskNet's convolutions, multiply-adds per output pixel: two 3x3 3->32, a 1x1 64->32, a 3x3
# 32->64, a 3x3 64->64 and a 1x1 64->1 (counted as docs/reference.md counts DSResNet).
MASKNET_MACS_PER_PIXEL = 2 * 27 * 32 + 64 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 64
TRAIN_FLOP_FACTOR = 3.0  # a train step is about 3x the forward (docs/reference.md)


def forward_gflop(model: str, resolution: int) -> float:
    """Forward GFLOP per sample of `model` at `resolution` x `resolution`."""
    if model == "dsresnet":
        if resolution in DSRESNET_FORWARD_GFLOP:
            return DSRESNET_FORWARD_GFLOP[resolution]
        return DSRESNET_FORWARD_GFLOP[224] * (resolution / 224) ** 2
    if model == "masknet":
        return 2 * MASKNET_MACS_PER_PIXEL * resolution**2 / 1e9
    raise ValueError(f"no FLOP count for model {model!r}")


@contextlib.contextmanager
def persistent_cache(directory: str | None) -> Iterator[str | None]:
    """JAX's persistent compilation cache in `directory` ("" = a new temporary folder, removed
    afterwards; None = off), every compile cached; the previous settings come back after."""
    saved = {
        name: getattr(jax.config, name)
        for name in (
            "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes",
        )
    }
    temporary = None
    if directory == "":
        directory = temporary = tempfile.mkdtemp(prefix="jaxsegdepth-benchmark-cache-")
    try:
        jax.config.update("jax_compilation_cache_dir", directory)
        if directory is not None:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        compilation_cache.reset_cache()
        yield directory
    finally:
        for name, value in saved.items():
            jax.config.update(name, value)
        compilation_cache.reset_cache()
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


def synthetic_batch(batch_size: int, resolution: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch as the loader ships it: uint8 images, a 0/255 mask, sample indices."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, resolution, resolution)
    return {
        "bg": rng.integers(0, 256, shape + (3,), np.uint8),
        "bg_fg": rng.integers(0, 256, shape + (3,), np.uint8),
        "mask": np.where(rng.random(shape + (1,)) > 0.9, 255, 0).astype(np.uint8),
        "depth": rng.integers(0, 256, shape + (1,), np.uint8),
        names.INDEX: np.arange(batch_size, dtype=np.int32),
    }


class StepRunner:
    """The trainer's train and eval steps for `config`, on one fixed batch.

    The state comes from `state.create_state(config)` (or `state`), the steps from
    `state.jit_steps(config, mesh, NORMALIZATION)`; `batch` defaults to `synthetic_batch` of this process's share
    of the global `batch_size`. Call `compile()` before `train`/`evaluate`.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        resolution: int,
        batch_size: int,
        *,
        mesh=None,
        state: steps.TrainState | None = None,
        batch: dict[str, np.ndarray] | None = None,
    ):
        self.mesh = mesh_lib.create_mesh() if mesh is None else mesh
        local_batch = mesh_lib.check_batch_size(self.mesh, batch_size, "--batch")
        self.config = config
        self.state = build.create_state(config, mesh=self.mesh) if state is None else state
        if batch is None:
            batch = synthetic_batch(local_batch, resolution, config.seed)
        self.batch = mesh_lib.shard_batch(self.mesh, batch)
        self.train_step = self.eval_step = None

    def compile(self) -> tuple[float, float]:
        """Clears JAX's in-memory caches, then lowers and compiles both steps (the persistent
        cache, if one is set, still serves them); returns the two times in seconds."""
        jax.clear_caches()
        start = time.perf_counter()
        self.train_step = self.compiled_train_step()
        middle = time.perf_counter()
        _, evaluate, _ = build.compiled_steps(self.config, self.mesh, NORMALIZATION)
        self.eval_step = evaluate.lower(self.state, self.batch).compile()
        return middle - start, time.perf_counter() - middle

    def compiled_train_step(self):
        """The train step lowered and compiled for this state and batch (not kept)."""
        train, _, _ = build.compiled_steps(self.config, self.mesh, NORMALIZATION)
        return train.lower(self.state, self.batch).compile()

    def train(self, num_steps: int) -> dict | None:
        """`num_steps` train steps; the last step's outputs, once computed."""
        out = None
        for _ in range(num_steps):
            self.state, out = self.train_step(self.state, self.batch)
        return jax.block_until_ready(out)

    def evaluate(self, num_steps: int) -> dict | None:
        """`num_steps` eval steps; the last step's outputs, once computed."""
        out = None
        for _ in range(num_steps):
            out = self.eval_step(self.state, self.batch)
        return jax.block_until_ready(out)


def samples_per_s(run: Callable[[int], Any], num_steps: int, batch_size: int) -> float:
    """Samples/s of `run(num_steps)`, which must return only once its work is done."""
    start = time.perf_counter()
    run(num_steps)
    return num_steps * batch_size / (time.perf_counter() - start)


def benchmark_step(
    config: ml_collections.ConfigDict,
    resolution: int,
    batch_size: int,
    *,
    steps_per_run: int = 2,
    repeats: int = 5,
    warmup: int = 2,
    cache: bool = True,
) -> dict[str, Any]:
    """Speed of the jitted train and eval steps for one configuration (see the module doc).

    With `cache`, a persistent compilation cache must be active (see `persistent_cache`): the
    first compile fills it and a second one, after `jax.clear_caches()`, reads it.
    """
    runner = StepRunner(config, resolution, batch_size)
    compiled = runner.compile()
    cached = runner.compile() if cache else (None, None)
    runner.train(warmup)
    runner.evaluate(warmup)
    load_before = hardware.load_average()
    train_rates, eval_rates = [], []
    for _ in range(repeats):
        train_rates.append(samples_per_s(runner.train, steps_per_run, batch_size))
        eval_rates.append(samples_per_s(runner.evaluate, 3 * steps_per_run, batch_size))
    row = {
        "model": config.model,
        "resolution": resolution,
        "dtype": config.dtype,
        "batch": batch_size,
        "steps_per_run": steps_per_run,
        "repeats": repeats,
        "loss": config.loss.to_dict(),
        "optimizer": config.optimizer.name,
        "train_samples_per_s_runs": train_rates,
        "eval_samples_per_s_runs": eval_rates,
        "final_loss": float(runner.train(1)["loss"]),
        "compile_train_s": compiled[0],
        "compile_eval_s": compiled[1],
        "cached_compile_train_s": cached[0],
        "cached_compile_eval_s": cached[1],
        "executable_memory_mb": {
            "train": hardware.executable_memory_mb(runner.train_step),
            "eval": hardware.executable_memory_mb(runner.eval_step),
        },
        "load_average": [load_before, hardware.load_average()],
    }
    return _add_rates(row, runner.mesh)


def _add_rates(row: dict, mesh) -> dict:
    """Medians, step time, FLOP/s, fraction of peak and memory for a `benchmark_step` row."""
    train_rate = statistics.median(row["train_samples_per_s_runs"])
    eval_rate = statistics.median(row["eval_samples_per_s_runs"])
    device = mesh.devices.flat[0]
    gflop = forward_gflop(row["model"], row["resolution"])
    train_flops = train_rate * gflop * TRAIN_FLOP_FACTOR * 1e9
    eval_flops = eval_rate * gflop * 1e9
    peak = hardware.peak_tflops(
        device, row["dtype"]
    )  # of one device; the rates are the whole mesh's
    mesh_peak = None if peak is None else peak * 1e12 * mesh.devices.size
    return {
        **row,
        "train_samples_per_s": train_rate,
        "eval_samples_per_s": eval_rate,
        "train_step_ms": 1e3 * row["batch"] / train_rate,
        "forward_gflop_per_sample": gflop,
        "train_gflop_per_sample": gflop * TRAIN_FLOP_FACTOR,
        "train_flops_per_s": train_flops,
        "eval_flops_per_s": eval_flops,
        "peak_tflops": peak,
        "train_fraction_of_peak": None if peak is None else train_flops / mesh_peak,
        "eval_fraction_of_peak": None if peak is None else eval_flops / mesh_peak,
        "host_peak_rss_mb": hardware.host_peak_rss_mb(),
        "device_memory_mb": hardware.device_memory_mb(device),
    }


def _train_step_bytes(
    config: ml_collections.ConfigDict, resolution: int, batch_size: int, mesh
) -> int:
    """Device bytes XLA plans for one compiled train step (per device): arguments, outputs
    and temporaries, less what is aliased (the donated state)."""
    analysis = (
        StepRunner(config, resolution, batch_size, mesh=mesh)
        .compiled_train_step()
        .memory_analysis()
    )
    return (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )


def largest_batch(
    config: ml_collections.ConfigDict,
    resolution: int,
    mesh=None,
    *,
    step: int = 64,
    headroom: float = 0.9,
    cap: int = 4096,
    plan: Callable[[int], int] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The largest global batch, a multiple of `step`, whose train step should fit in
    `headroom` of the device's memory: the bytes XLA plans at `step` and 2 x `step` give a
    fixed part and a part per sample, extrapolated to the device's limit (the benchmark then
    runs it, and steps down if it still does not fit), at most `cap` (so that the loader's set,
    4,200 training scenes in tools/gpu_check.sh, holds a batch). `plan(batch)` and `limit`
    default to `_train_step_bytes` and the device's `bytes_limit`."""
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    if limit is None:
        limit = (mesh.devices.flat[0].memory_stats() or {}).get("bytes_limit")
    if not limit:
        raise errors.UsageError(
            "--batch max needs a device that reports its memory limit (a "
            f"GPU or TPU); this run has {mesh.devices.flat[0].platform}: "
            "give --batch sizes"
        )
    plan = plan or (lambda batch: _train_step_bytes(config, resolution, batch, mesh))
    small, large = plan(step), plan(2 * step)
    per_sample = max((large - small) / step, 1.0)
    fixed = small - per_sample * step
    batch = int((headroom * limit - fixed) / per_sample) // step * step
    return {
        "batch": max(step, min(batch, cap)),
        "bytes_limit": limit,
        "planned_bytes": {step: small, 2 * step: large},
        "bytes_per_sample": per_sample,
        "fixed_bytes": fixed,
        "headroom": headroom,
    }


def out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def format_value(value, spec=".1f", missing="-"):
    return missing if value is None else format(value, spec)


def _step_line(r: dict) -> str:
    frac = r["train_fraction_of_peak"]
    dev = r["device_memory_mb"] or {}
    compile_train = f"{r['compile_train_s']:.1f}/{format_value(r['cached_compile_train_s'], '.2f')}"
    compile_eval = f"{r['compile_eval_s']:.1f}/{format_value(r['cached_compile_eval_s'], '.2f')}"
    return (
        f"{r['model']:9} {r['resolution']:>4} {r['dtype']:8} {r['batch']:>5} | "
        f"{r['train_samples_per_s']:>8.2f} {r['eval_samples_per_s']:>8.2f} "
        f"{r['train_step_ms']:>8.1f} | {r['train_flops_per_s'] / 1e9:>10.1f} "
        f"{r['eval_flops_per_s'] / 1e9:>9.1f} "
        f"{format_value(None if frac is None else 100 * frac):>6} | "
        f"{compile_train:>13} {compile_eval:>12} | {r['host_peak_rss_mb']:>7.0f} "
        f"{format_value(dev.get('peak_mb_in_use'), '.0f'):>7}"
    )


def format_steps(result: dict) -> str:
    """The step table, the recipes it ran and the largest batches found."""
    env = result["environment"]
    lines = [
        f"jax {env['jax']} on {env['device_count']} x {env['device_kind']} "
        f"({env['backend']}); load average {result['load_average_start']} -> "
        f"{result['load_average_end']}"
    ]
    header = (
        f"{'model':9} {'res':>4} {'dtype':8} {'batch':>5} | {'train/s':>8} {'eval/s':>8} "
        f"{'step ms':>8} | {'train GF/s':>10} {'eval GF/s':>9} {'%peak':>6} | "
        f"{'compile train':>13} {'compile eval':>12} | {'RSS MB':>7} {'dev MB':>7}"
    )
    lines += [header, "-" * len(header)] + [_step_line(r) for r in result["steps"]]
    lines.append(
        "compile: first run / from the persistent cache, seconds; samples/s: median of "
        "the repeats; train GFLOP = 3 x forward (docs/reference.md)"
    )
    for model, recipe in result["recipes"].items():
        lines.append(
            f"{model}: {recipe['config']}, loss {recipe['loss']}, optimizer {recipe['optimizer']}"
        )
    for found in result.get("largest_batch", []):
        lines.append(
            f"--batch max, {found['model']} {found['resolution']} {found['dtype']}: "
            f"{found['batch']} (planned {found['bytes_per_sample'] / 2**20:.1f} MiB per "
            f"sample, limit {found['bytes_limit'] / 2**30:.1f} GiB x "
            f"{found['headroom']:g}; tried {found['tried']})"
        )
    return "\n".join(lines)


def resolutions(config: ml_collections.ConfigDict) -> list[int]:
    """The distinct resolutions of the config's stages, in order."""
    return list(dict.fromkeys(stage.resolution for stage in stages.of(config)))


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses, in one line, a model, dtype, loss or batch the steps cannot run."""
    build.validate(config, resolutions(config), "stages")
    mesh_lib.check_batch_size(mesh_lib.create_mesh(), config.batch_size)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Measures the config's steps at each of its resolutions; prints the table and writes
    `WORKDIR/benchmark.json`."""
    result = {
        "environment": hardware.environment(),
        "load_average_start": hardware.load_average(),
        "steps": [],
        "recipes": {
            config.model: {
                "config": "as given",
                "loss": config.loss.to_dict(),
                "optimizer": config.optimizer.name,
            }
        },
    }
    for resolution in resolutions(config):
        result["steps"].append(benchmark_step(config, resolution, config.batch_size, cache=False))
    result["load_average_end"] = hardware.load_average()
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, RESULT_FILE)
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)
    reporting.say(f"{format_steps(result)}\nwritten to {path}")
    return result
