"""Speed benchmark over grids: train/eval steps, compile, memory, FLOP/s, and the loader.

  python tools/benchmark.py [--config configs/X.py[:arg]] [--model dsresnet,masknet]
      [--resolutions 96,160,224] [--batch 8|max] [--dtype float32,bfloat16] [--seed N]
      [--steps 2] [--repeats 5] [--workers auto,0,2] [--threads auto,1] [--input-steps 3]
      [--skip-loader] [--json out.json]

A script of the repository, run from the root of a clone (it puts that root on `sys.path`; the
recipes are `configs/`). Everything but the data comes from a recipe, as in flax's ImageNet
`fake_data_benchmark` config: the model, the loss and its weighting and the optimizer, so the
benchmarked step cannot drift from the one `launch.py` trains. The recipe is `--config`, else
`configs/default.py` for DSResNet and `configs/masknet_bce.py` for MaskNet (MaskNet has no depth
head, so it takes the mask-only BCE trial); `--model`, `--dtype` and `--seed` override it.

For every model x resolution x dtype x batch (`--batch max`: the largest that fits the device)
it runs `jaxsegdepth.modes.benchmark.benchmark_step` (see there), with JAX's persistent
compilation cache pointed at a fresh temporary folder (`--compile-cache`) for the cached
compile time. Then, unless skipped:
- the input pipeline's delivered samples/s (`data.pipeline.measure_throughput`) on the synthetic
  set of `configs/default.py`'s dataset block (built if needed) at every resolution x worker
  count x read threads ("auto" resolved), per CPU core, the bytes per sample it ships, and its
  ratio to the fastest train step;
- whether the train step waits for data (`benchmark_input`): per resolution, the loader alone,
  the step alone and the two overlapped as the trainer runs them, and the share of step time
  spent waiting.

Prints the tables and, with `--json`, writes every number (and the machine's load average,
which matters on shared CPUs: compare ratios measured in one run, not absolute figures).
PyTorch side by side: `python tools/torch_compare.py`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/benchmark.py` puts only tools/ on the path

import configs
from configs import default, masknet_bce
from jaxsegdepth import build, errors, hardware, mesh as mesh_lib
from jaxsegdepth.data import datasets, pipeline
from jaxsegdepth.modes.benchmark import (
    StepRunner,
    benchmark_step,
    format_steps,
    format_value,
    largest_batch,
    out_of_memory,
    persistent_cache,
    samples_per_s,
)

# The recipe each model is benchmarked with when no --config is given.
DEFAULT_RECIPES = {"dsresnet": default, "masknet": masknet_bce}


def load_config(
    path: str = "", model: str = "dsresnet", dtype: str | None = None, seed: int | None = None
) -> ml_collections.ConfigDict:
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


def loader_config(data_dir: str = "", num_samples: int | None = None) -> ml_collections.ConfigDict:
    """`configs/default.py`'s dataset block (the synthetic set), at `data_dir`, of `num_samples`."""
    ds_config = default.get_config().dataset
    ds_config.data_dir = data_dir
    if num_samples is not None:
        ds_config.num_samples = num_samples
    return ds_config


def bytes_per_sample(batch: dict[str, np.ndarray]) -> float:
    """Bytes a batch ships to the device, per sample."""
    arrays = list(batch.values())
    return sum(a.nbytes for a in arrays) / len(arrays[0])


def _with_settings(ds_config, workers, threads):
    ds_config = ds_config.copy_and_resolve_references()
    ds_config.worker_count, ds_config.read_threads = workers, threads
    return ds_config


def benchmark_loader(
    ds_config,
    resolutions: Sequence[int],
    workers: Sequence,
    threads: Sequence,
    batch_size: int,
    num_batches: int,
) -> list[dict]:
    """Delivered samples/s of the input pipeline for every resolution x worker count x read
    threads ("auto" allowed: resolved as the trainer would), per CPU core too, and the bytes
    per sample it ships.

    Loader workers read absl flags: outside `absl.app`, mark them parsed first (see `main`).
    """
    datasets.prepare(ds_config)  # build the set once (if it is not built), outside the timing
    cpus = pipeline.cpu_count()
    rows = []
    for resolution in resolutions:
        with pipeline.iterate(
            pipeline.train_batches(ds_config, 0, resolution, batch_size, worker_count=0)
        ) as sample_batches:
            shipped = bytes_per_sample(next(sample_batches))
        for worker_count, read_threads in itertools.product(workers, threads):
            config = _with_settings(ds_config, worker_count, read_threads)
            settings = pipeline.loader_settings(config)
            rate = pipeline.measure_throughput(
                config, resolution, batch_size=batch_size, num_batches=num_batches
            )
            rows.append(
                {
                    "resolution": resolution,
                    "workers": settings.worker_count,
                    "threads": settings.read_threads,
                    "asked": [worker_count, read_threads],
                    "batch": batch_size,
                    "num_batches": num_batches,
                    "samples_per_s": rate,
                    "cpu_count": cpus,
                    "samples_per_s_per_core": rate / cpus,
                    "bytes_per_sample": shipped,
                    "load_average": hardware.load_average(),
                }
            )
    return rows


def benchmark_input(
    config: ml_collections.ConfigDict,
    ds_config,
    resolution: int,
    batch_size: int,
    num_steps: int,
    warmup: int = 2,
) -> dict[str, Any]:
    """Would the train step wait for data? At `resolution` and `batch_size`, with the loader's
    "auto" settings (or `ds_config`'s): the loader alone, the train step alone (one fixed
    batch), and the two together as the trainer runs them: each step dispatched, then the next
    batch read and put on the device while the step runs (JAX's asynchronous dispatch is the
    double buffer). `wait_fraction` = the share of the overlapped step time spent waiting."""
    loader_rate = pipeline.measure_throughput(
        ds_config, resolution, batch_size=batch_size, num_batches=max(num_steps, 10)
    )
    runner = StepRunner(config, resolution, batch_size)
    runner.train_step = runner.compiled_train_step()  # the eval step is not needed here
    runner.train(warmup)
    step_rate = samples_per_s(runner.train, num_steps, batch_size)
    local_batch = mesh_lib.check_batch_size(runner.mesh, batch_size, "--batch")
    loader = pipeline.train_batches(ds_config, 0, resolution, local_batch)
    with pipeline.iterate(loader) as batches:

        def overlapped(count: int):
            out = None
            for _ in range(count):
                batch = mesh_lib.shard_batch(runner.mesh, next(batches))
                runner.state, out = runner.train_step(runner.state, batch)
            return jax.block_until_ready(out)

        overlapped(warmup)
        together = samples_per_s(overlapped, num_steps, batch_size)
    settings = pipeline.loader_settings(ds_config)
    return {
        "model": config.model,
        "dtype": config.dtype,
        "resolution": resolution,
        "batch": batch_size,
        "steps": num_steps,
        "workers": settings.worker_count,
        "threads": settings.read_threads,
        "loader_samples_per_s": loader_rate,
        "step_samples_per_s": step_rate,
        "overlapped_samples_per_s": together,
        "wait_fraction": max(0.0, 1.0 - together / step_rate),
        "input_bound": loader_rate < step_rate,
        "load_average": hardware.load_average(),
    }


def _attach_step_ratios(loader_rows: list[dict], step_rows: list[dict]) -> None:
    """Each loader row gets the fastest train step at its resolution and loader/step."""
    for row in loader_rows:
        rates = [
            s["train_samples_per_s"] for s in step_rows if s["resolution"] == row["resolution"]
        ]
        fastest = max(rates) if rates else None
        row["fastest_train_samples_per_s"] = fastest
        row["loader_to_step_ratio"] = None if not fastest else row["samples_per_s"] / fastest


def format_tables(result: dict) -> str:
    """The step table of `format_steps` and, if measured, the loader and input tables."""
    lines = [format_steps(result)]
    if result.get("loader"):
        lines += [
            "",
            f"{'loader res':>10} {'workers':>7} {'threads':>7} {'samples/s':>10} "
            f"{'per core':>8} {'KB/sample':>9} {'train/s':>8} {'loader/step':>11}",
        ]
        for r in result["loader"]:
            lines.append(
                f"{r['resolution']:>10} {r['workers']:>7} {r['threads']:>7} "
                f"{r['samples_per_s']:>10.1f} {r['samples_per_s_per_core']:>8.1f} "
                f"{r['bytes_per_sample'] / 1e3:>9.1f} "
                f"{format_value(r['fastest_train_samples_per_s'], '.2f'):>8} "
                f"{format_value(r['loader_to_step_ratio'], '.2f'):>11}"
            )
        lines.append(
            f"on {result['loader'][0]['cpu_count']} CPU(s); workers/threads as run "
            "('auto' resolved)"
        )
    if result.get("input"):
        lines += [
            "",
            f"{'input res':>10} {'batch':>5} {'loader/s':>9} {'step/s':>8} "
            f"{'together/s':>10} {'waiting':>7} {'input-bound':>11}",
        ]
        for r in result["input"]:
            lines.append(
                f"{r['resolution']:>10} {r['batch']:>5} {r['loader_samples_per_s']:>9.1f} "
                f"{r['step_samples_per_s']:>8.2f} {r['overlapped_samples_per_s']:>10.2f} "
                f"{100 * r['wait_fraction']:>6.0f}% {str(r['input_bound']):>11}"
            )
        lines.append(
            "together: the trainer's loop, loader and step overlapped; waiting: the "
            "share of its step time lost to the input"
        )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the module doc."""
    parser = argparse.ArgumentParser(
        prog="python tools/benchmark.py",
        description="Train/eval step speed, compile time, memory, FLOP/s and loader throughput.",
    )
    parser.add_argument(
        "--config",
        default="",
        help="recipe file, optionally with :arg "
        "(default: configs/default.py; configs/masknet_bce.py for masknet)",
    )
    parser.add_argument("--model", default="dsresnet", help="model name(s): dsresnet, masknet")
    parser.add_argument("--resolutions", default="96,160,224", help="comma-separated sizes")
    parser.add_argument(
        "--batch",
        default="8",
        help="global batch size(s), comma-separated, or "
        "'max': the largest that fits the device (GPU/TPU)",
    )
    parser.add_argument("--dtype", default="float32,bfloat16", help="compute dtype(s)")
    parser.add_argument(
        "--seed", type=int, default=None, help="initialisation seed (default: the recipe's)"
    )
    parser.add_argument(
        "--steps", type=int, default=2, help="train steps per timed run (eval runs 3x as many)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument(
        "--workers",
        default="auto",
        help="loader worker counts ('auto' or integers, comma-separated)",
    )
    parser.add_argument(
        "--threads",
        default="auto",
        help="loader read threads per process ('auto' or integers, comma-separated)",
    )
    parser.add_argument(
        "--input-steps",
        type=int,
        default=3,
        help="train steps fed by the loader per resolution, to see whether the "
        "step waits for data (0: skip)",
    )
    parser.add_argument("--skip-loader", action="store_true", help="don't measure the loader")
    parser.add_argument(
        "--skip-steps", action="store_true", help="measure the loader only (no train/eval steps)"
    )
    parser.add_argument(
        "--loader-batch", type=int, default=32, help="loader batch size of the loader table"
    )
    parser.add_argument("--loader-batches", type=int, default=20, help="timed loader batches")
    parser.add_argument("--data-dir", default="", help="prepared tfds data ('' = the default)")
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="size of the synthetic set the loader reads (default: the "
        "default recipe's, so the trainer's set is reused)",
    )
    parser.add_argument(
        "--compile-cache",
        default="",
        help="persistent compilation cache for the cached-compile figure: '' a "
        "new temporary folder, 'off' none, else this folder (if it "
        "already holds the steps, 'first run' is a cache hit too)",
    )
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
            raise errors.UsageError(
                f"--batch {args.batch}: expected integers or 'max', comma-separated"
            )
        batches.append("max" if item.lower() == "max" else int(item))
    return batches


def _configs(args: argparse.Namespace) -> dict[tuple[str, str], ml_collections.ConfigDict]:
    """One checked config per model x dtype, before anything compiles (`UsageError` if bad)."""
    recipes = {}
    for model in _names(args.model):
        for dtype in _names(args.dtype):
            config = load_config(args.config, model, dtype, args.seed)
            build.validate(config, _ints(args.resolutions), "--resolutions")
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
        return benchmark_step(
            config,
            resolution,
            batch_size,
            steps_per_run=args.steps,
            repeats=args.repeats,
            warmup=args.warmup,
            cache=directory is not None,
        )
    found = largest_batch(config, resolution)
    found.update(model=config.model, dtype=config.dtype, resolution=resolution, tried=[])
    result["largest_batch"].append(found)
    step = 64
    batch_size = found["batch"]
    while True:
        found["tried"].append(batch_size)
        try:
            row = benchmark_step(
                config,
                resolution,
                batch_size,
                steps_per_run=args.steps,
                repeats=args.repeats,
                warmup=args.warmup,
                cache=directory is not None,
            )
            found["batch"] = batch_size
            return row
        except Exception as error:  # pylint: disable=broad-except
            if not out_of_memory(error) or batch_size <= step:
                raise
            jax.clear_caches()
            batch_size = max(step, int(batch_size * 0.8) // step * step)


def _benchmark_steps(args: argparse.Namespace, recipes: dict, result: dict) -> None:
    """`benchmark_step` for every model x resolution x dtype x batch, rows into `result`."""
    cache_dir = None if args.compile_cache.lower() == "off" else args.compile_cache
    with persistent_cache(cache_dir) as directory:
        result["compile_cache_dir"] = directory
        for model, resolution, dtype, batch_size in itertools.product(
            _names(args.model), _ints(args.resolutions), _names(args.dtype), _batches(args)
        ):
            row = _fitting_step(
                recipes[model, dtype], resolution, batch_size, args, directory, result
            )
            result["steps"].append(row)
            print(
                f"  {model} {resolution} {dtype} batch {row['batch']}: train "
                f"{row['train_samples_per_s']:.2f}/s, eval {row['eval_samples_per_s']:.2f}/s",
                file=sys.stderr,
                flush=True,
            )


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
    result = {
        "environment": hardware.environment(),
        "arguments": vars(args),
        "load_average_start": hardware.load_average(),
        "steps": [],
        "loader": [],
        "input": [],
        "largest_batch": [],
        "recipes": {
            model: {
                "config": recipe_name(args.config, model),
                "loss": config.loss.to_dict(),
                "optimizer": config.optimizer.name,
            }
            for (model, _), config in recipes.items()
        },
    }
    if not args.skip_steps:
        _benchmark_steps(args, recipes, result)
    if not args.skip_loader:
        ds_config = loader_config(args.data_dir, args.num_samples)
        result["dataset"] = ds_config.to_dict()
        result["loader"] = benchmark_loader(
            ds_config,
            _ints(args.resolutions),
            _settings(args.workers, "--workers"),
            _settings(args.threads, "--threads"),
            args.loader_batch,
            args.loader_batches,
        )
        _attach_step_ratios(result["loader"], result["steps"])
        if args.input_steps and not args.skip_steps:
            config = next(iter(recipes.values()))
            for resolution in _ints(args.resolutions):
                row = benchmark_input(
                    config,
                    ds_config,
                    resolution,
                    _input_batch(args, result, resolution, ds_config),
                    args.input_steps,
                )
                result["input"].append(row)
                print(
                    f"  input {resolution}: loader {row['loader_samples_per_s']:.1f}/s, step "
                    f"{row['step_samples_per_s']:.2f}/s, together "
                    f"{row['overlapped_samples_per_s']:.2f}/s",
                    file=sys.stderr,
                    flush=True,
                )
    result["load_average_end"] = hardware.load_average()
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


if __name__ == "__main__":
    main()
