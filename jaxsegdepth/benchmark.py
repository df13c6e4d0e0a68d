"""Speed benchmark: the real jitted train and eval steps, compile times, memory, FLOP/s, loader.

  python -m jaxsegdepth.benchmark [--resolutions 96,160,224] [--batch 8] [--dtype float32,bfloat16]
      [--model dsresnet] [--steps 2] [--repeats 5] [--workers 0,1,2] [--skip-loader] [--json out.json]

For every model x resolution x dtype x batch it builds the state with `steps.create_train_state`
and compiles `steps.jit_steps` over `mesh.create_mesh()` (the step the trainer runs: SGD momentum
0.9, the RMSE + (BCE & Dice) loss, BatchNorm statistics, the NaN sentinel, eval metrics), on a
fixed random batch shaped like the pipeline's. Then:

- compile time, first run and cached: with JAX's persistent compilation cache pointed at a fresh
  temporary folder (`--compile-cache`), each step is lowered and compiled once into the empty
  cache, then the in-memory caches are cleared and it is compiled again from the persistent one;
- after `--warmup` steps, `--repeats` timed runs of `--steps` train steps (and of 3x as many eval
  steps), interleaved train/eval; the median samples/s of the runs is reported, all runs kept;
- achieved FLOP/s = samples/s x FLOP per sample (forward: ../shared/SPEC.md's counts, 1.93 /
  5.37 / 10.52 GFLOP at 96 / 160 / 224 for DSResNet, scaled with the pixel count at other sizes;
  a train step counts 3x the forward); on a GPU also the fraction of the vendor's dense peak;
- host peak RSS of this process so far, the device's own memory statistics where it has them
  (`device.memory_stats()`, GPUs) and XLA's memory analysis of each compiled step;
- the input pipeline's delivered samples/s (`data.pipeline.measure_throughput`) on the prepared
  synthetic set at every resolution x worker count, and its ratio to the fastest train step.

Prints two tables and, with `--json`, writes every number (and the machine's load average,
which matters on shared CPUs: compare ratios measured in one run, not absolute figures).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Iterator, Sequence

import jax
import flax.linen as nn
import ml_collections
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

from jaxsegdepth import losses, mesh as mesh_lib, models, optim, steps

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

LOSS_SPECS = {  # the default recipe's loss (configs/default.py); MaskNet has only the mask head
    "dsresnet": {"depth": {"rmse": 2.0}, "mask": {"bce_dice": 1.0}},
    "masknet": {"mask": {"bce_dice": 1.0}},
}


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
    """XLA's memory analysis of one compiled step, in MiB."""
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


def _timed_compile(jitted, *args):
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - start


def synthetic_batch(batch_size: int, resolution: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch shaped like the pipeline's: normalised inputs, [0, 1] depth, 0/1 mask."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, resolution, resolution)
    return {"bg": rng.standard_normal(shape + (3,), np.float32),
            "bg_fg": rng.standard_normal(shape + (3,), np.float32),
            "mask": (rng.random(shape + (1,)) > 0.9).astype(np.float32),
            "depth": rng.random(shape + (1,), np.float32)}


def _optimizer():
    config = ml_collections.ConfigDict(dict(
        optimizer=dict(name="sgd", learning_rate=0.01, momentum=0.9, nesterov=False,
                       weight_decay=0.0, grad_clip_norm=0.0),
        schedule=dict(name="plateau", patience=2, factor=0.1, min_lr=1e-6, rtol=1e-4)))
    tx = optim.create_optimizer(config.optimizer, optim.learning_rate_schedule(config, 1))
    return tx, optim.plateau(config)


def create_state(model: nn.Module, resolution: int, mesh, seed: int = 0) -> steps.TrainState:
    """`steps.create_train_state` under `jit` (eager init of DSResNet takes far longer than
    compiling it), with the reference's SGD, replicated on `mesh`."""
    tx, plateau = _optimizer()
    init = jax.jit(steps.create_train_state, static_argnums=(0, 1, 2, 4),
                   out_shardings=mesh_lib.replicated(mesh))
    return init(model, tx, plateau, jax.random.PRNGKey(seed), resolution)


def benchmark_step(model_name: str, resolution: int, dtype: str, batch_size: int, *,
                   steps_per_run: int = 2, repeats: int = 5, warmup: int = 2,
                   cache: bool = True, seed: int = 0) -> dict[str, Any]:
    """Speed of the jitted train and eval steps for one configuration (see the module doc).

    With `cache`, a persistent compilation cache must be active (see `persistent_cache`): the
    first compile fills it and a second one, after `jax.clear_caches()`, reads it.
    """
    mesh = mesh_lib.create_mesh()
    local_batch = mesh_lib.check_batch_size(mesh, batch_size)  # this process's share
    model = models.create(model_name, dtype)
    loss_fn = losses.compose(LOSS_SPECS[model_name])
    state = create_state(model, resolution, mesh, seed)
    batch = mesh_lib.shard_batch(mesh, synthetic_batch(local_batch, resolution, seed))

    jax.clear_caches()
    train, evaluate, _ = steps.jit_steps(mesh, loss_fn)
    train_c, compile_train = _timed_compile(train, state, batch)
    eval_c, compile_eval = _timed_compile(evaluate, state, batch)
    cached_train = cached_eval = None
    if cache:
        jax.clear_caches()
        train, evaluate, _ = steps.jit_steps(mesh, loss_fn)
        train_c, cached_train = _timed_compile(train, state, batch)
        eval_c, cached_eval = _timed_compile(evaluate, state, batch)

    def run_train(n):
        nonlocal state
        for _ in range(n):
            state, out = train_c(state, batch)
        jax.block_until_ready(out["loss"])
        return out

    def run_eval(n):
        for _ in range(n):
            out = eval_c(state, batch)
        jax.block_until_ready(out["loss"])

    run_train(warmup)
    run_eval(warmup)
    load_before = load_average()
    train_rates, eval_rates = [], []
    eval_steps = 3 * steps_per_run
    for _ in range(repeats):
        start = time.perf_counter()
        last = run_train(steps_per_run)
        train_rates.append(steps_per_run * batch_size / (time.perf_counter() - start))
        start = time.perf_counter()
        run_eval(eval_steps)
        eval_rates.append(eval_steps * batch_size / (time.perf_counter() - start))
    train_rate, eval_rate = statistics.median(train_rates), statistics.median(eval_rates)

    device = mesh.devices.flat[0]
    gflop = forward_gflop(model_name, resolution)
    train_flops = train_rate * gflop * TRAIN_FLOP_FACTOR * 1e9
    eval_flops = eval_rate * gflop * 1e9
    peak = peak_tflops(device, dtype)  # of one device; the rates are the whole mesh's
    mesh_peak = None if peak is None else peak * 1e12 * mesh.devices.size
    return {
        "model": model_name, "resolution": resolution, "dtype": dtype, "batch": batch_size,
        "steps_per_run": steps_per_run, "repeats": repeats,
        "train_samples_per_s": train_rate, "train_samples_per_s_runs": train_rates,
        "train_step_ms": 1e3 * batch_size / train_rate,
        "eval_samples_per_s": eval_rate, "eval_samples_per_s_runs": eval_rates,
        "final_loss": float(last["loss"]),
        "compile_train_s": compile_train, "compile_eval_s": compile_eval,
        "cached_compile_train_s": cached_train, "cached_compile_eval_s": cached_eval,
        "forward_gflop_per_sample": gflop,
        "train_gflop_per_sample": gflop * TRAIN_FLOP_FACTOR,
        "train_flops_per_s": train_flops, "eval_flops_per_s": eval_flops,
        "peak_tflops": peak,
        "train_fraction_of_peak": None if peak is None else train_flops / mesh_peak,
        "eval_fraction_of_peak": None if peak is None else eval_flops / mesh_peak,
        "host_peak_rss_mb": host_peak_rss_mb(),
        "device_memory_mb": device_memory_mb(device),
        "executable_memory_mb": {"train": executable_memory_mb(train_c),
                                 "eval": executable_memory_mb(eval_c)},
        "load_average": [load_before, load_average()],
    }


def benchmark_loader(ds_config, resolutions: Sequence[int], workers: Sequence[int],
                     batch_size: int, num_batches: int) -> list[dict]:
    """Delivered samples/s of the input pipeline for every resolution x worker count."""
    from jaxsegdepth.data import pipeline  # pylint: disable=g-import-not-at-top

    pipeline.prepare(ds_config)  # build the synthetic set once, outside the timing
    rows = []
    for resolution in resolutions:
        for worker_count in workers:
            rate = pipeline.measure_throughput(ds_config, resolution, batch_size=batch_size,
                                               worker_count=worker_count, num_batches=num_batches)
            rows.append({"resolution": resolution, "workers": worker_count, "batch": batch_size,
                         "num_batches": num_batches, "samples_per_s": rate,
                         "load_average": load_average()})
    return rows


def _attach_step_ratios(loader_rows: list[dict], step_rows: list[dict]) -> None:
    """Each loader row gets the fastest train step at its resolution and loader/step."""
    for row in loader_rows:
        rates = [s["train_samples_per_s"] for s in step_rows if s["resolution"] == row["resolution"]]
        fastest = max(rates) if rates else None
        row["fastest_train_samples_per_s"] = fastest
        row["loader_to_step_ratio"] = None if not fastest else row["samples_per_s"] / fastest


def environment() -> dict[str, Any]:
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


def format_tables(result: dict) -> str:
    env = result["environment"]
    lines = [f"jax {env['jax']} on {env['device_count']} x {env['device_kind']} "
             f"({env['backend']}); load average {result['load_average_start']} -> "
             f"{result['load_average_end']}"]
    header = (f"{'model':9} {'res':>4} {'dtype':8} {'batch':>5} | {'train/s':>8} {'eval/s':>8} "
              f"{'step ms':>8} | {'train GF/s':>10} {'eval GF/s':>9} {'%peak':>6} | "
              f"{'compile train':>13} {'compile eval':>12} | {'RSS MB':>7} {'dev MB':>7}")
    lines += [header, "-" * len(header)]
    for r in result["steps"]:
        frac = r["train_fraction_of_peak"]
        dev = r["device_memory_mb"] or {}
        compile_train = f"{r['compile_train_s']:.1f}/{_fmt(r['cached_compile_train_s'], '.2f')}"
        compile_eval = f"{r['compile_eval_s']:.1f}/{_fmt(r['cached_compile_eval_s'], '.2f')}"
        lines.append(
            f"{r['model']:9} {r['resolution']:>4} {r['dtype']:8} {r['batch']:>5} | "
            f"{r['train_samples_per_s']:>8.2f} {r['eval_samples_per_s']:>8.2f} "
            f"{r['train_step_ms']:>8.1f} | {r['train_flops_per_s'] / 1e9:>10.1f} "
            f"{r['eval_flops_per_s'] / 1e9:>9.1f} {_fmt(None if frac is None else 100 * frac):>6} | "
            f"{compile_train:>13} {compile_eval:>12} | {r['host_peak_rss_mb']:>7.0f} "
            f"{_fmt(dev.get('peak_mb_in_use'), '.0f'):>7}")
    lines.append("compile: first run / from the persistent cache, seconds; samples/s: median of "
                 "the repeats; train GFLOP = 3 x forward (SPEC.md)")
    if result.get("loader"):
        lines += ["", f"{'loader res':>10} {'workers':>7} {'samples/s':>10} {'train/s':>8} "
                      f"{'loader/step':>11}"]
        for r in result["loader"]:
            lines.append(f"{r['resolution']:>10} {r['workers']:>7} {r['samples_per_s']:>10.1f} "
                         f"{_fmt(r['fastest_train_samples_per_s'], '.2f'):>8} "
                         f"{_fmt(r['loader_to_step_ratio'], '.2f'):>11}")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jaxsegdepth.benchmark",
        description="Train/eval step speed, compile time, memory, FLOP/s and loader throughput.")
    parser.add_argument("--resolutions", default="96,160,224", help="comma-separated sizes")
    parser.add_argument("--batch", default="8", help="global batch size(s), comma-separated")
    parser.add_argument("--dtype", default="float32,bfloat16", help="compute dtype(s)")
    parser.add_argument("--model", default="dsresnet", help="model name(s): dsresnet, masknet")
    parser.add_argument("--steps", type=int, default=2, help="train steps per timed run "
                        "(eval runs 3x as many)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--workers", default="0,1,2", help="loader worker counts")
    parser.add_argument("--skip-loader", action="store_true", help="don't measure the loader")
    parser.add_argument("--loader-batch", type=int, default=0,
                        help="loader batch size (0: the first --batch)")
    parser.add_argument("--loader-batches", type=int, default=20, help="timed loader batches")
    parser.add_argument("--data-dir", default="", help="prepared tfds data ('' = the default)")
    parser.add_argument("--num-samples", type=int, default=3000,
                        help="size of the synthetic set the loader reads")
    parser.add_argument("--compile-cache", default="",
                        help="persistent compilation cache for the cached-compile figure: '' a "
                             "new temporary folder, 'off' none, else this folder (if it "
                             "already holds the steps, 'first run' is a cache hit too)")
    parser.add_argument("--json", default="", help="write the full result here")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict:
    resolutions, batches, workers = _ints(args.resolutions), _ints(args.batch), _ints(args.workers)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    names = [m.strip() for m in args.model.split(",") if m.strip()]
    for name in names:
        if name not in LOSS_SPECS:
            raise SystemExit(f"--model {name!r}: expected one of {sorted(LOSS_SPECS)}")
    result = {"environment": environment(), "arguments": vars(args),
              "load_average_start": load_average(), "steps": [], "loader": []}
    cache_dir = None if args.compile_cache.lower() == "off" else args.compile_cache
    with persistent_cache(cache_dir) as directory:
        result["compile_cache_dir"] = directory
        for name in names:
            for resolution in resolutions:
                for dtype in dtypes:
                    for batch_size in batches:
                        row = benchmark_step(name, resolution, dtype, batch_size,
                                             steps_per_run=args.steps, repeats=args.repeats,
                                             warmup=args.warmup, cache=directory is not None)
                        result["steps"].append(row)
                        print(f"  {name} {resolution} {dtype} batch {batch_size}: "
                              f"train {row['train_samples_per_s']:.2f}/s, eval "
                              f"{row['eval_samples_per_s']:.2f}/s", file=sys.stderr, flush=True)
    if not args.skip_loader:
        from jaxsegdepth.data import pipeline  # pylint: disable=g-import-not-at-top

        ds_config = pipeline.default_config()
        ds_config.update(dict(name="synthetic_museum", data_dir=args.data_dir,
                              num_samples=args.num_samples))
        result["dataset"] = {"name": "synthetic_museum", "data_dir": args.data_dir,
                             "num_samples": args.num_samples}
        result["loader"] = benchmark_loader(ds_config, resolutions, workers,
                                            args.loader_batch or batches[0], args.loader_batches)
        _attach_step_ratios(result["loader"], result["steps"])
    result["load_average_end"] = load_average()
    return result


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(format_tables(result), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
