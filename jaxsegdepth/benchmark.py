"""Speed benchmark: the trainer's jitted train and eval steps, compile, memory, FLOP/s, loader.

  python -m jaxsegdepth.benchmark [--config configs/X.py[:arg]] [--model dsresnet,masknet]
      [--resolutions 96,160,224] [--batch 8|max] [--dtype float32,bfloat16] [--seed N]
      [--steps 2] [--repeats 5] [--workers auto,0,2] [--threads auto,1] [--input-steps 3]
      [--skip-loader] [--json out.json]

Run it from the repository root (recipes import `configs.default`). Like flax's ImageNet
`fake_data_benchmark` config, everything but the data comes from a recipe: the model, the loss
and its weighting (`state.jit_steps`) and the optimizer and schedule (`state.create_state`), so the
benchmarked step cannot drift from the one `launch.py` trains. The recipe is `--config`, else
`configs/default.py` for DSResNet and `configs/masknet_bce.py` for MaskNet (MaskNet has no depth
head, so it takes the mask-only BCE trial); `--model`, `--dtype` and `--seed` override it.

For every model x resolution x dtype x batch it compiles `steps.jit_steps` over
`mesh.create_mesh()` (BatchNorm statistics, the NaN sentinel, eval metrics, on-device
normalisation included) for a fixed random uint8 batch shaped like the loader's (`--batch max`:
the largest that fits the device, `largest_batch`). Then:

- compile time, first run and cached: with JAX's persistent compilation cache pointed at a fresh
  temporary folder (`--compile-cache`), both steps are compiled once into the empty cache, then
  the in-memory caches are cleared and they are compiled again from the persistent one;
- after `--warmup` steps, `--repeats` timed runs of `--steps` train steps (and of 3x as many eval
  steps), interleaved train/eval; the median samples/s of the runs is reported, all runs kept;
- achieved FLOP/s = samples/s x FLOP per sample (forward: SPEC.md's 1.93 / 5.37 / 10.52 GFLOP
  at 96 / 160 / 224 for DSResNet, scaled with the pixel count at other sizes; a train step
  counts 3x the forward); on a GPU also the fraction of the vendor's dense peak;
- host peak RSS of this process so far, the device's own memory statistics where it has them
  (`device.memory_stats()`, GPUs) and XLA's memory analysis of each compiled step;
- the input pipeline's delivered samples/s (`data.pipeline.measure_throughput`) on the synthetic
  set of `configs/default.py`'s dataset block (built by `builders.prepare` if needed) at every
  resolution x worker count x read threads ("auto" resolved), per CPU core, the bytes per
  sample it ships, and its ratio to the fastest train step;
- whether the train step waits for data (`benchmark_input`): per resolution, the loader alone,
  the step alone and the two overlapped as the trainer runs them, and the share of step time
  spent waiting.

Prints the tables and, with `--json`, writes every number (and the machine's load average,
which matters on shared CPUs: compare ratios measured in one run, not absolute figures).
PyTorch side by side: `python tools/torch_compare.py` (a script of the repository).
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags
from jax.experimental.compilation_cache import compilation_cache

import configs
from configs import default, masknet_bce
from jaxsegdepth import errors, mesh as mesh_lib, names, state as state_lib, steps
from jaxsegdepth.data import builders, pipeline
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION

# The input statistics the benchmarked steps normalise with: their values do not change the
# speed, and a fixed set needs no dataset built.
NORMALIZATION = MODEST_NORMALIZATION
# The recipe each model is benchmarked with when no --config is given.
DEFAULT_RECIPES = {"dsresnet": default, "masknet": masknet_bce}

# Forward cost of DSResNet in GFLOP per sample (multiply-adds x 2, all convolutions), SPEC.md.
DSRESNET_FORWARD_GFLOP = {96: 1.93, 160: 5.37, 224: 10.52}
# MaskNet's convolutions, multiply-adds per output pixel: two 3x3 3->32, a 1x1 64->32, a 3x3
# 32->64, a 3x3 64->64 and a 1x1 64->1 (same counting as SPEC.md's DSResNet figures).
MASKNET_MACS_PER_PIXEL = 2 * 27 * 32 + 64 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 64
TRAIN_FLOP_FACTOR = 3.0  # a train step is about 3x the forward (SPEC.md)

# Dense peak TFLOP/s by device, from the vendors' data sheets (NVIDIA H100/H200/A100/L4
# product pages; "dense" = without structured sparsity). bfloat16 compares with the bf16
# tensor-core peak; float32 with the TF32 tensor-core peak, which XLA's default precision
# uses for float32 convolutions and matmuls on these GPUs. Matched by substring of
# `device.device_kind`, first match wins.
PEAK_TFLOPS = (
    ("H200", {"bfloat16": 989.4, "float32": 494.7}),
    ("H100 PCIe", {"bfloat16": 756.5, "float32": 378.0}),
    ("H100 NVL", {"bfloat16": 835.5, "float32": 417.5}),
    ("H100", {"bfloat16": 989.4, "float32": 494.7}),  # SXM
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("L4", {"bfloat16": 121.0, "float32": 60.0}),
)
PEAK_SOURCE = ("vendor data-sheet dense peaks (NVIDIA); float32 against the TF32 tensor-core "
               "peak; none known for CPUs")


def forward_gflop(model: str, resolution: int) -> float:
    """Forward GFLOP per sample of `model` at `resolution` x `resolution`."""
    if model == "dsresnet":
        if resolution in DSRESNET_FORWARD_GFLOP:
            return DSRESNET_FORWARD_GFLOP[resolution]
        return DSRESNET_FORWARD_GFLOP[224] * (resolution / 224) ** 2
    if model == "masknet":
        return 2 * MASKNET_MACS_PER_PIXEL * resolution ** 2 / 1e9
    raise ValueError(f"no FLOP count for model {model!r}")


def peak_tflops(device: jax.Device, dtype: str) -> float | None:
    """The vendor's dense peak for `device` in `dtype`, or None (CPUs, unknown devices)."""
    if device.platform != "gpu":
        return None
    for pattern, peaks in PEAK_TFLOPS:
        if pattern in device.device_kind:
            return peaks.get(dtype)
    return None


def host_peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def device_memory_mb(device: jax.Device) -> dict | None:
    """The device allocator's statistics in MiB, where the backend has them (GPU/TPU)."""
    stats = device.memory_stats()
    if not stats:
        return None
    keys = ("bytes_in_use", "peak_bytes_in_use", "bytes_limit")
    return {key.replace("bytes", "mb"): stats[key] / 2 ** 20 for key in keys if key in stats}


def executable_memory_mb(compiled) -> dict | None:
    """XLA's memory analysis of one compiled step, in MiB (None where the backend has none)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # pylint: disable=broad-except
        return None
    if analysis is None:
        return None
    mib = 2 ** 20
    out = {"arguments_mb": analysis.argument_size_in_bytes / mib,
           "outputs_mb": analysis.output_size_in_bytes / mib,
           "aliased_mb": analysis.alias_size_in_bytes / mib,
           "temp_mb": analysis.temp_size_in_bytes / mib}
    peak = getattr(analysis, "peak_memory_in_bytes", 0)
    if peak:
        out["peak_mb"] = peak / mib
    return out


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@contextlib.contextmanager
def persistent_cache(directory: str | None) -> Iterator[str | None]:
    """JAX's persistent compilation cache in `directory` ("" = a new temporary folder, removed
    afterwards; None = off), every compile cached; the previous settings come back after."""
    saved = {name: getattr(jax.config, name) for name in (
        "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes")}
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


def load_config(path: str = "", model: str = "dsresnet", dtype: str | None = None,
                seed: int | None = None) -> ml_collections.ConfigDict:
    """The recipe at `path` (`configs/X.py` or `configs/X.py:arg`; "": the model's default
    recipe, `DEFAULT_RECIPES`) with `model` and, when given, `dtype` and `seed` overriding it."""
    if path:
        config = _config_from_file(path)
    else:
        config = DEFAULT_RECIPES.get(model, default).get_config()  # unknown model: validate()
    config.model = model
    if dtype is not None:
        config.dtype = dtype
    if seed is not None:
        config.seed = seed
    return config


def recipe_name(path: str, model: str) -> str:
    """How the report names the recipe `load_config(path, model)` starts from."""
    if path:
        return path
    return f"configs/{DEFAULT_RECIPES.get(model, default).__name__.rsplit('.', 1)[-1]}.py"


def _config_from_file(path: str) -> ml_collections.ConfigDict:
    try:
        return configs.load_file(path)
    except (OSError, ValueError) as error:
        raise errors.UsageError(f"--config {path}: {error}") from None


def synthetic_batch(batch_size: int, resolution: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch as the loader ships it: uint8 images, a 0/255 mask, sample indices."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, resolution, resolution)
    return {"bg": rng.integers(0, 256, shape + (3,), np.uint8),
            "bg_fg": rng.integers(0, 256, shape + (3,), np.uint8),
            "mask": np.where(rng.random(shape + (1,)) > 0.9, 255, 0).astype(np.uint8),
            "depth": rng.integers(0, 256, shape + (1,), np.uint8),
            names.INDEX: np.arange(batch_size, dtype=np.int32)}


class StepRunner:
    """The trainer's train and eval steps for `config`, on one fixed batch.

    The state comes from `state.create_state(config)` (or `state`), the steps from
    `state.jit_steps(config, mesh, NORMALIZATION)`; `batch` defaults to `synthetic_batch` of this process's share
    of the global `batch_size`. Call `compile()` before `train`/`evaluate`.
    """

    def __init__(self, config: ml_collections.ConfigDict, resolution: int, batch_size: int, *,
                 mesh=None, state: steps.TrainState | None = None,
                 batch: dict[str, np.ndarray] | None = None):
        self.mesh = mesh_lib.create_mesh() if mesh is None else mesh
        local_batch = mesh_lib.check_batch_size(self.mesh, batch_size, "--batch")
        self.config = config
        self.state = state_lib.create_state(config, mesh=self.mesh) if state is None else state
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
        _, evaluate, _ = state_lib.jit_steps(self.config, self.mesh, NORMALIZATION)
        self.eval_step = evaluate.lower(self.state, self.batch).compile()
        return middle - start, time.perf_counter() - middle

    def compiled_train_step(self):
        """The train step lowered and compiled for this state and batch (not kept)."""
        train, _, _ = state_lib.jit_steps(self.config, self.mesh, NORMALIZATION)
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


def benchmark_step(config: ml_collections.ConfigDict, resolution: int, batch_size: int, *,
                   steps_per_run: int = 2, repeats: int = 5, warmup: int = 2,
                   cache: bool = True) -> dict[str, Any]:
    """Speed of the jitted train and eval steps for one configuration (see the module doc).

    With `cache`, a persistent compilation cache must be active (see `persistent_cache`): the
    first compile fills it and a second one, after `jax.clear_caches()`, reads it.
    """
    runner = StepRunner(config, resolution, batch_size)
    compiled = runner.compile()
    cached = runner.compile() if cache else (None, None)
    runner.train(warmup)
    runner.evaluate(warmup)
    load_before = load_average()
    train_rates, eval_rates = [], []
    for _ in range(repeats):
        train_rates.append(samples_per_s(runner.train, steps_per_run, batch_size))
        eval_rates.append(samples_per_s(runner.evaluate, 3 * steps_per_run, batch_size))
    row = {"model": config.model, "resolution": resolution, "dtype": config.dtype,
           "batch": batch_size, "steps_per_run": steps_per_run, "repeats": repeats,
           "loss": config.loss.to_dict(), "optimizer": config.optimizer.name,
           "train_samples_per_s_runs": train_rates, "eval_samples_per_s_runs": eval_rates,
           "final_loss": float(runner.train(1)["loss"]),
           "compile_train_s": compiled[0], "compile_eval_s": compiled[1],
           "cached_compile_train_s": cached[0], "cached_compile_eval_s": cached[1],
           "executable_memory_mb": {"train": executable_memory_mb(runner.train_step),
                                    "eval": executable_memory_mb(runner.eval_step)},
           "load_average": [load_before, load_average()]}
    return _add_rates(row, runner.mesh)


def _add_rates(row: dict, mesh) -> dict:
    """Medians, step time, FLOP/s, fraction of peak and memory for a `benchmark_step` row."""
    train_rate = statistics.median(row["train_samples_per_s_runs"])
    eval_rate = statistics.median(row["eval_samples_per_s_runs"])
    device = mesh.devices.flat[0]
    gflop = forward_gflop(row["model"], row["resolution"])
    train_flops = train_rate * gflop * TRAIN_FLOP_FACTOR * 1e9
    eval_flops = eval_rate * gflop * 1e9
    peak = peak_tflops(device, row["dtype"])  # of one device; the rates are the whole mesh's
    mesh_peak = None if peak is None else peak * 1e12 * mesh.devices.size
    return {**row,
            "train_samples_per_s": train_rate, "eval_samples_per_s": eval_rate,
            "train_step_ms": 1e3 * row["batch"] / train_rate,
            "forward_gflop_per_sample": gflop,
            "train_gflop_per_sample": gflop * TRAIN_FLOP_FACTOR,
            "train_flops_per_s": train_flops, "eval_flops_per_s": eval_flops,
            "peak_tflops": peak,
            "train_fraction_of_peak": None if peak is None else train_flops / mesh_peak,
            "eval_fraction_of_peak": None if peak is None else eval_flops / mesh_peak,
            "host_peak_rss_mb": host_peak_rss_mb(),
            "device_memory_mb": device_memory_mb(device)}


def loader_config(data_dir: str = "", num_samples: int | None = None) -> ml_collections.ConfigDict:
    """`configs/default.py`'s dataset block (the synthetic set), at `data_dir`, of `num_samples`."""
    ds_config = default.get_config().dataset
    ds_config.data_dir = data_dir
    if num_samples is not None:
        ds_config.num_samples = num_samples
    return ds_config


def _train_step_bytes(config: ml_collections.ConfigDict, resolution: int, batch_size: int,
                      mesh) -> int:
    """Device bytes XLA plans for one compiled train step (per device): arguments, outputs
    and temporaries, less what is aliased (the donated state)."""
    analysis = StepRunner(config, resolution, batch_size,
                          mesh=mesh).compiled_train_step().memory_analysis()
    return (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def largest_batch(config: ml_collections.ConfigDict, resolution: int, mesh=None, *,
                  step: int = 64, headroom: float = 0.9, cap: int = 4096,
                  plan: Callable[[int], int] | None = None,
                  limit: int | None = None) -> dict[str, Any]:
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
        raise errors.UsageError("--batch max needs a device that reports its memory limit (a "
                                f"GPU or TPU); this run has {mesh.devices.flat[0].platform}: "
                                "give --batch sizes")
    plan = plan or (lambda batch: _train_step_bytes(config, resolution, batch, mesh))
    small, large = plan(step), plan(2 * step)
    per_sample = max((large - small) / step, 1.0)
    fixed = small - per_sample * step
    batch = int((headroom * limit - fixed) / per_sample) // step * step
    return {"batch": max(step, min(batch, cap)), "bytes_limit": limit,
            "planned_bytes": {step: small, 2 * step: large}, "bytes_per_sample": per_sample,
            "fixed_bytes": fixed, "headroom": headroom}


def _out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower()


def bytes_per_sample(batch: dict[str, np.ndarray]) -> float:
    """Bytes a batch ships to the device, per sample."""
    arrays = list(batch.values())
    return sum(a.nbytes for a in arrays) / len(arrays[0])


def _with_settings(ds_config, workers, threads):
    ds_config = ds_config.copy_and_resolve_references()
    ds_config.worker_count, ds_config.read_threads = workers, threads
    return ds_config


def benchmark_loader(ds_config, resolutions: Sequence[int], workers: Sequence, threads: Sequence,
                     batch_size: int, num_batches: int) -> list[dict]:
    """Delivered samples/s of the input pipeline for every resolution x worker count x read
    threads ("auto" allowed: resolved as the trainer would), per CPU core too, and the bytes
    per sample it ships.

    Loader workers read absl flags: outside `absl.app`, mark them parsed first (see `main`).
    """
    builders.prepare(ds_config)  # build the set once (if it is not built), outside the timing
    cpus = pipeline.cpu_count()
    rows = []
    for resolution in resolutions:
        sample_iterator = iter(pipeline.create_loader(
            ds_config, "train", resolution=resolution, batch_size=batch_size, shuffle=True,
            seed=0, worker_count=0))
        shipped = bytes_per_sample(next(sample_iterator))
        if hasattr(sample_iterator, "close"):
            sample_iterator.close()
        for worker_count, read_threads in itertools.product(workers, threads):
            config = _with_settings(ds_config, worker_count, read_threads)
            settings = pipeline.loader_settings(config)
            rate = pipeline.measure_throughput(config, resolution, batch_size=batch_size,
                                               num_batches=num_batches)
            rows.append({"resolution": resolution, "workers": settings.worker_count,
                         "threads": settings.read_threads, "asked": [worker_count, read_threads],
                         "batch": batch_size, "num_batches": num_batches, "samples_per_s": rate,
                         "cpu_count": cpus, "samples_per_s_per_core": rate / cpus,
                         "bytes_per_sample": shipped,
                         "load_average": load_average()})
    return rows


def benchmark_input(config: ml_collections.ConfigDict, ds_config, resolution: int,
                    batch_size: int, num_steps: int, warmup: int = 2) -> dict[str, Any]:
    """Would the train step wait for data? At `resolution` and `batch_size`, with the loader's
    "auto" settings (or `ds_config`'s): the loader alone, the train step alone (one fixed
    batch), and the two together as the trainer runs them: each step dispatched, then the next
    batch read and put on the device while the step runs (JAX's asynchronous dispatch is the
    double buffer). `wait_fraction` = the share of the overlapped step time spent waiting."""
    loader_rate = pipeline.measure_throughput(ds_config, resolution, batch_size=batch_size,
                                              num_batches=max(num_steps, 10))
    runner = StepRunner(config, resolution, batch_size)
    runner.train_step = runner.compiled_train_step()  # the eval step is not needed here
    runner.train(warmup)
    step_rate = samples_per_s(runner.train, num_steps, batch_size)
    local_batch = mesh_lib.check_batch_size(runner.mesh, batch_size, "--batch")
    iterator = iter(pipeline.create_loader(ds_config, "train", resolution=resolution,
                                           batch_size=local_batch, shuffle=True, seed=0))

    def overlapped(count: int):
        out = None
        for _ in range(count):
            batch = mesh_lib.shard_batch(runner.mesh, next(iterator))
            runner.state, out = runner.train_step(runner.state, batch)
        return jax.block_until_ready(out)

    try:
        overlapped(warmup)
        together = samples_per_s(overlapped, num_steps, batch_size)
    finally:
        if hasattr(iterator, "close"):
            iterator.close()
    settings = pipeline.loader_settings(ds_config)
    return {"model": config.model, "dtype": config.dtype, "resolution": resolution,
            "batch": batch_size, "steps": num_steps, "workers": settings.worker_count,
            "threads": settings.read_threads, "loader_samples_per_s": loader_rate,
            "step_samples_per_s": step_rate, "overlapped_samples_per_s": together,
            "wait_fraction": max(0.0, 1.0 - together / step_rate),
            "input_bound": loader_rate < step_rate, "load_average": load_average()}


def _attach_step_ratios(loader_rows: list[dict], step_rows: list[dict]) -> None:
    """Each loader row gets the fastest train step at its resolution and loader/step."""
    for row in loader_rows:
        rates = [s["train_samples_per_s"] for s in step_rows
                 if s["resolution"] == row["resolution"]]
        fastest = max(rates) if rates else None
        row["fastest_train_samples_per_s"] = fastest
        row["loader_to_step_ratio"] = None if not fastest else row["samples_per_s"] / fastest


def environment() -> dict[str, Any]:
    """Versions, backend, devices and XLA flags this run measured."""
    import flax  # pylint: disable=g-import-not-at-top
    import jaxlib  # pylint: disable=g-import-not-at-top

    device = jax.devices()[0]
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "process_count": jax.process_count(),
            "cpu_count": os.cpu_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "peak_source": PEAK_SOURCE}


def _fmt(value, spec=".1f", missing="-"):
    return missing if value is None else format(value, spec)


def _step_line(r: dict) -> str:
    frac = r["train_fraction_of_peak"]
    dev = r["device_memory_mb"] or {}
    compile_train = f"{r['compile_train_s']:.1f}/{_fmt(r['cached_compile_train_s'], '.2f')}"
    compile_eval = f"{r['compile_eval_s']:.1f}/{_fmt(r['cached_compile_eval_s'], '.2f')}"
    return (f"{r['model']:9} {r['resolution']:>4} {r['dtype']:8} {r['batch']:>5} | "
            f"{r['train_samples_per_s']:>8.2f} {r['eval_samples_per_s']:>8.2f} "
            f"{r['train_step_ms']:>8.1f} | {r['train_flops_per_s'] / 1e9:>10.1f} "
            f"{r['eval_flops_per_s'] / 1e9:>9.1f} "
            f"{_fmt(None if frac is None else 100 * frac):>6} | "
            f"{compile_train:>13} {compile_eval:>12} | {r['host_peak_rss_mb']:>7.0f} "
            f"{_fmt(dev.get('peak_mb_in_use'), '.0f'):>7}")


def format_tables(result: dict) -> str:
    """The step table, the recipes it ran and, if measured, the loader table."""
    env = result["environment"]
    lines = [f"jax {env['jax']} on {env['device_count']} x {env['device_kind']} "
             f"({env['backend']}); load average {result['load_average_start']} -> "
             f"{result['load_average_end']}"]
    header = (f"{'model':9} {'res':>4} {'dtype':8} {'batch':>5} | {'train/s':>8} {'eval/s':>8} "
              f"{'step ms':>8} | {'train GF/s':>10} {'eval GF/s':>9} {'%peak':>6} | "
              f"{'compile train':>13} {'compile eval':>12} | {'RSS MB':>7} {'dev MB':>7}")
    lines += [header, "-" * len(header)] + [_step_line(r) for r in result["steps"]]
    lines.append("compile: first run / from the persistent cache, seconds; samples/s: median of "
                 "the repeats; train GFLOP = 3 x forward (SPEC.md)")
    for model, recipe in result["recipes"].items():
        lines.append(f"{model}: {recipe['config']}, loss {recipe['loss']}, optimizer "
                     f"{recipe['optimizer']}")
    for found in result.get("largest_batch", []):
        lines.append(f"--batch max, {found['model']} {found['resolution']} {found['dtype']}: "
                     f"{found['batch']} (planned {found['bytes_per_sample'] / 2**20:.1f} MiB per "
                     f"sample, limit {found['bytes_limit'] / 2**30:.1f} GiB x "
                     f"{found['headroom']:g}; tried {found['tried']})")
    if result.get("loader"):
        lines += ["", f"{'loader res':>10} {'workers':>7} {'threads':>7} {'samples/s':>10} "
                      f"{'per core':>8} {'KB/sample':>9} {'train/s':>8} {'loader/step':>11}"]
        for r in result["loader"]:
            lines.append(f"{r['resolution']:>10} {r['workers']:>7} {r['threads']:>7} "
                         f"{r['samples_per_s']:>10.1f} {r['samples_per_s_per_core']:>8.1f} "
                         f"{r['bytes_per_sample'] / 1e3:>9.1f} "
                         f"{_fmt(r['fastest_train_samples_per_s'], '.2f'):>8} "
                         f"{_fmt(r['loader_to_step_ratio'], '.2f'):>11}")
        lines.append(f"on {result['loader'][0]['cpu_count']} CPU(s); workers/threads as run "
                     "('auto' resolved)")
    if result.get("input"):
        lines += ["", f"{'input res':>10} {'batch':>5} {'loader/s':>9} {'step/s':>8} "
                      f"{'together/s':>10} {'waiting':>7} {'input-bound':>11}"]
        for r in result["input"]:
            lines.append(f"{r['resolution']:>10} {r['batch']:>5} {r['loader_samples_per_s']:>9.1f} "
                         f"{r['step_samples_per_s']:>8.2f} {r['overlapped_samples_per_s']:>10.2f} "
                         f"{100 * r['wait_fraction']:>6.0f}% {str(r['input_bound']):>11}")
        lines.append("together: the trainer's loop, loader and step overlapped; waiting: the "
                     "share of its step time lost to the input")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the module doc."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxsegdepth.benchmark",
        description="Train/eval step speed, compile time, memory, FLOP/s and loader throughput.")
    parser.add_argument("--config", default="", help="recipe file, optionally with :arg "
                        "(default: configs/default.py; configs/masknet_bce.py for masknet)")
    parser.add_argument("--model", default="dsresnet", help="model name(s): dsresnet, masknet")
    parser.add_argument("--resolutions", default="96,160,224", help="comma-separated sizes")
    parser.add_argument("--batch", default="8", help="global batch size(s), comma-separated, or "
                        "'max': the largest that fits the device (GPU/TPU)")
    parser.add_argument("--dtype", default="float32,bfloat16", help="compute dtype(s)")
    parser.add_argument("--seed", type=int, default=None, help="initialisation seed (default: "
                        "the recipe's)")
    parser.add_argument("--steps", type=int, default=2, help="train steps per timed run "
                        "(eval runs 3x as many)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--workers", default="auto", help="loader worker counts ('auto' or "
                        "integers, comma-separated)")
    parser.add_argument("--threads", default="auto", help="loader read threads per process "
                        "('auto' or integers, comma-separated)")
    parser.add_argument("--input-steps", type=int, default=3,
                        help="train steps fed by the loader per resolution, to see whether the "
                             "step waits for data (0: skip)")
    parser.add_argument("--skip-loader", action="store_true", help="don't measure the loader")
    parser.add_argument("--skip-steps", action="store_true",
                        help="measure the loader only (no train/eval steps)")
    parser.add_argument("--loader-batch", type=int, default=32,
                        help="loader batch size of the loader table")
    parser.add_argument("--loader-batches", type=int, default=20, help="timed loader batches")
    parser.add_argument("--data-dir", default="", help="prepared tfds data ('' = the default)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="size of the synthetic set the loader reads (default: the "
                             "default recipe's, so the trainer's set is reused)")
    parser.add_argument("--compile-cache", default="",
                        help="persistent compilation cache for the cached-compile figure: '' a "
                             "new temporary folder, 'off' none, else this folder (if it "
                             "already holds the steps, 'first run' is a cache hit too)")
    parser.add_argument("--json", default="", help="write the full result here")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    return args


def _settings(text: str, flag: str) -> list:
    """'auto' and integers from a comma-separated loader setting (`pipeline.loader_count`)."""
    minimum = 0 if flag == "--workers" else 1
    return [pipeline.loader_count(item, flag, minimum) for item in _names(text)]


def _batches(args: argparse.Namespace) -> list:
    """--batch as integers, and "max" where asked."""
    batches = []
    for item in _names(args.batch):
        if item.lower() != "max" and not item.isdigit():
            raise errors.UsageError(f"--batch {args.batch}: expected integers or 'max', "
                                    "comma-separated")
        batches.append("max" if item.lower() == "max" else int(item))
    return batches


def _configs(args: argparse.Namespace) -> dict[tuple[str, str], ml_collections.ConfigDict]:
    """One checked config per model x dtype, before anything compiles (`UsageError` if bad)."""
    recipes = {}
    for model in _names(args.model):
        for dtype in _names(args.dtype):
            config = load_config(args.config, model, dtype, args.seed)
            state_lib.validate(config, _ints(args.resolutions), "--resolutions")
            recipes[model, dtype] = config
    mesh = mesh_lib.create_mesh()
    for batch_size in _batches(args):
        if batch_size != "max":
            mesh_lib.check_batch_size(mesh, batch_size, "--batch")
    _settings(args.workers, "--workers")
    _settings(args.threads, "--threads")
    return recipes


def _fitting_step(config, resolution: int, batch_size, args, directory, result) -> dict:
    """`benchmark_step` at `batch_size`; "max" is `largest_batch`'s, stepped down by a fifth
    while the device runs out of memory."""
    if batch_size != "max":
        return benchmark_step(config, resolution, batch_size, steps_per_run=args.steps,
                              repeats=args.repeats, warmup=args.warmup,
                              cache=directory is not None)
    found = largest_batch(config, resolution)
    found.update(model=config.model, dtype=config.dtype, resolution=resolution, tried=[])
    result["largest_batch"].append(found)
    step = 64
    batch_size = found["batch"]
    while True:
        found["tried"].append(batch_size)
        try:
            row = benchmark_step(config, resolution, batch_size, steps_per_run=args.steps,
                                 repeats=args.repeats, warmup=args.warmup,
                                 cache=directory is not None)
            found["batch"] = batch_size
            return row
        except Exception as error:  # pylint: disable=broad-except
            if not _out_of_memory(error) or batch_size <= step:
                raise
            jax.clear_caches()
            batch_size = max(step, int(batch_size * 0.8) // step * step)


def _benchmark_steps(args: argparse.Namespace, recipes: dict, result: dict) -> None:
    """`benchmark_step` for every model x resolution x dtype x batch, rows into `result`."""
    cache_dir = None if args.compile_cache.lower() == "off" else args.compile_cache
    with persistent_cache(cache_dir) as directory:
        result["compile_cache_dir"] = directory
        for model, resolution, dtype, batch_size in itertools.product(
                _names(args.model), _ints(args.resolutions), _names(args.dtype),
                _batches(args)):
            row = _fitting_step(recipes[model, dtype], resolution, batch_size, args, directory,
                                result)
            result["steps"].append(row)
            print(f"  {model} {resolution} {dtype} batch {row['batch']}: train "
                  f"{row['train_samples_per_s']:.2f}/s, eval {row['eval_samples_per_s']:.2f}/s",
                  file=sys.stderr, flush=True)


def _input_batch(args: argparse.Namespace, result: dict, resolution: int, ds_config) -> int:
    """The batch the input check runs: the first --batch (for "max", the one found), at most
    the loader's training split (in whole multiples of the device count)."""
    first = _batches(args)[0]
    if first == "max":
        first = next(r["batch"] for r in result["steps"] if r["resolution"] == resolution)
    devices = jax.device_count()
    return min(first, pipeline.split_size(ds_config, "train") // devices * devices)


def run(args: argparse.Namespace) -> dict:
    """Every measurement the arguments ask for, as one JSON-able dict."""
    recipes = _configs(args)
    result = {"environment": environment(), "arguments": vars(args),
              "load_average_start": load_average(), "steps": [], "loader": [], "input": [],
              "largest_batch": [],
              "recipes": {model: {"config": recipe_name(args.config, model),
                                  "loss": config.loss.to_dict(),
                                  "optimizer": config.optimizer.name}
                          for (model, _), config in recipes.items()}}
    if not args.skip_steps:
        _benchmark_steps(args, recipes, result)
    if not args.skip_loader:
        ds_config = loader_config(args.data_dir, args.num_samples)
        result["dataset"] = ds_config.to_dict()
        result["loader"] = benchmark_loader(ds_config, _ints(args.resolutions),
                                            _settings(args.workers, "--workers"),
                                            _settings(args.threads, "--threads"),
                                            args.loader_batch, args.loader_batches)
        _attach_step_ratios(result["loader"], result["steps"])
        if args.input_steps and not args.skip_steps:
            config = next(iter(recipes.values()))
            for resolution in _ints(args.resolutions):
                row = benchmark_input(config, ds_config, resolution,
                                      _input_batch(args, result, resolution, ds_config),
                                      args.input_steps)
                result["input"].append(row)
                print(f"  input {resolution}: loader {row['loader_samples_per_s']:.1f}/s, step "
                      f"{row['step_samples_per_s']:.2f}/s, together "
                      f"{row['overlapped_samples_per_s']:.2f}/s", file=sys.stderr, flush=True)
    result["load_average_end"] = load_average()
    return result


def run_command(args: argparse.Namespace, run_fn: Callable, format_fn: Callable) -> dict:
    """`run_fn(args)`, its `format_fn` table printed and, with `--json`, written; a bad setting
    or failed run prints `error: ...` and exits with its status. Shared with tools/torch_compare.py."""
    try:
        result = run_fn(args)
    except (errors.UsageError, errors.RunError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)
    print(format_fn(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark and prints its tables."""
    args = parse_args(argv)
    if not args.skip_loader and not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    return run_command(args, run, format_tables)


if __name__ == "__main__":
    main()
