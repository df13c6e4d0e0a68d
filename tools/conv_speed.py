"""Where a CPU train step's convolution time goes: each convolution alone, and the whole step with
small-map 3x3 convolutions as matrix products.

  python tools/conv_speed.py layers [--res 96] [--batch 8] [--rounds 5] [--threads 2]
      [--model dsresnet] [--json out.json]
  python tools/conv_speed.py patches [--res 96] [--batch 8] [--rounds 5]
      [--max-pixels 0,36,144,576] [--config RECIPE] [--model dsresnet] [--json out.json]

A script of the repository: run it from the root of a clone.

`layers` lists the model's convolutions at `--res` from an abstract forward pass (input side,
input and output channels, kernel, how many layers share that shape) and times, for each shape,
one jitted forward and backward (output, input gradient, kernel gradient; no input gradient for
3-channel convolutions, which read the images) with XLA's convolution, with the same
convolution as one matrix product over gathered 3x3 patches (`patches_conv`; 1x1 kernels as a
plain product), and, when PyTorch is installed, `nn.Conv2d` forward + backward on `--threads`
threads. Each shape's sides run in interleaved rounds; printed are the medians in ms and the
sums weighted by the layer counts.

`patches` times the trainer's own train and eval steps (`benchmark.StepRunner`, as
tools/torch_compare.py) for `--config` (default: configs/rmse_bce_dice.py:published for
DSResNet, the model's own recipe otherwise) once per `--max-pixels` value P: the model's 3x3 convolutions whose
maps have at most P pixels per image run as patch products (0: none, the model as it is), in
interleaved rounds; printed are ms per step and the median per-round ratio to the first P.
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/conv_speed.py` puts only tools/ on the path

from jaxsegdepth import build, errors, hardware, models
from jaxsegdepth.modes import benchmark
from tools import benchmark as benchmark_tool, torch_compare


def patches_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A "same", stride-1 convolution of NHWC `x` with a square HWIO `kernel` as one matrix
    product: the k x k neighbourhood of every pixel side by side on the channel axis (in the
    order the kernel flattens), times the kernel as a (k * k * in, out) matrix."""
    k, (h, w) = kernel.shape[0], x.shape[1:3]
    pad = k // 2
    padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    patches = jnp.concatenate(
        [padded[:, i : i + h, j : j + w] for i in range(k) for j in range(k)], axis=-1
    )
    return patches @ kernel.reshape(-1, kernel.shape[-1])


def xla_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The convolution `nn.Conv` computes (without bias)."""
    pad = kernel.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((pad, pad),) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_layers(model: nn.Module, resolution: int) -> collections.Counter:
    """{(input side, in channels, out channels, kernel): number of layers} of `model`'s
    convolutions for one `resolution` x `resolution` pair, in call order."""
    layers = collections.Counter()

    def record(call, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            x = args[0]
            features, (kernel, _) = context.module.features, context.module.kernel_size
            layers[(x.shape[1], x.shape[-1], features, kernel)] += 1
        return call(*args, **kwargs)

    image = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), image, image)
    return layers


def _jax_side(conv: Callable, shape: tuple, batch: int) -> Callable[[], Any]:
    """One jitted forward and backward of `conv` at `shape`, on fixed random arrays."""
    side, cin, cout, k = shape
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (batch, side, side, cin))
    kernel = jax.random.normal(keys[1], (k, k, cin, cout)) / math.sqrt(k * k * cin)
    dy = jax.random.normal(keys[2], (batch, side, side, cout))
    inputs_grad = cin != 3

    @jax.jit
    def step(x, kernel, dy):
        if inputs_grad:
            y, vjp = jax.vjp(conv, x, kernel)
        else:
            y, vjp = jax.vjp(lambda kernel: conv(x, kernel), kernel)
        return y, vjp(dy)

    return lambda: jax.block_until_ready(step(x, kernel, dy))


def _torch_side(torch, shape: tuple, batch: int) -> Callable[[], Any]:
    """`nn.Conv2d` (no bias, as the JAX sides) forward and backward at `shape` (NCHW)."""
    side, cin, cout, k = shape
    conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
    x = torch.randn(batch, cin, side, side, requires_grad=cin != 3)
    dy = torch.randn(batch, cout, side, side)

    def step():
        conv.zero_grad(set_to_none=True)
        x.grad = None
        conv(x).backward(dy)

    return step


def _interleaved_ms(sides: dict[str, Callable], rounds: int, calls: int = 3) -> dict[str, float]:
    """Median ms per call of each side over `rounds` interleaved rounds, after one warm call."""
    times = {name: [] for name in sides}
    for fn in sides.values():
        fn()
    for _ in range(rounds):
        for name, fn in sides.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def run_layers(args: argparse.Namespace) -> dict:
    """Per convolution shape, ms of XLA's convolution, the patch product and (if present) torch."""
    try:
        torch = torch_compare.import_torch()
    except errors.UsageError:
        torch = None
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
    layers = conv_layers(models.create(args.model), args.res)
    rows, load_start = [], hardware.load_average()
    for shape, count in layers.items():
        sides = {
            "xla": _jax_side(xla_conv, shape, args.batch),
            "patches": _jax_side(patches_conv, shape, args.batch),
        }
        if torch is not None:
            sides["torch"] = _torch_side(torch, shape, args.batch)
        rows.append({"shape": list(shape), "count": count, **_interleaved_ms(sides, args.rounds)})
    sides = [name for name in ("xla", "patches", "torch") if name in rows[0]]
    return {
        "kind": "layers",
        "model": args.model,
        "res": args.res,
        "batch": args.batch,
        "torch": torch.__version__ if torch else None,
        "rows": rows,
        "totals": {name: sum(row["count"] * row[name] for row in rows) for name in sides},
        "load_average": [load_start, hardware.load_average()],
    }


def patches_interceptor(max_pixels: int) -> Callable:
    """A `nn.intercept_methods` function that recomputes every 3x3 `nn.Conv` whose map has at
    most `max_pixels` pixels per image with `patches_conv` (XLA drops the unused original).
    Those convolutions must be stride-1, "same" and biased, as `models` makes them."""

    def intercept(call, args, kwargs, context):
        out = call(*args, **kwargs)
        module = context.module
        if (
            isinstance(module, nn.Conv)
            and context.method_name == "__call__"
            and module.kernel_size == (3, 3)
            and out.shape[1] * out.shape[2] <= max_pixels
        ):
            x = args[0] if args else kwargs["inputs"]
            if x.shape[:3] != out.shape[:3] or not module.use_bias:
                raise ValueError(f"{module.name}: only stride-1 'same' convolutions with a bias")
            params = module.variables["params"]
            kernel, bias = (params[name].astype(module.dtype) for name in ("kernel", "bias"))
            return patches_conv(x.astype(module.dtype), kernel) + bias
        return out

    return intercept


def run_patches(args: argparse.Namespace) -> dict:
    """The trainer's steps compiled once per `--max-pixels`, timed in interleaved rounds."""
    config = benchmark_tool.load_config(args.config, args.model, "float32")
    build.validate(config, [args.res])
    batch = benchmark.synthetic_batch(args.batch, args.res, config.seed)
    runners = {}
    for max_pixels in args.max_pixels:
        runner = benchmark.StepRunner(config, args.res, args.batch, batch=batch)
        with nn.intercept_methods(patches_interceptor(max_pixels)):
            runner.compile()
            runner.train(1)
            runner.evaluate(1)
        runners[max_pixels] = runner
    load_start = hardware.load_average()
    ms = {p: {"train": [], "eval": []} for p in runners}
    for _ in range(args.rounds):
        for p, runner in runners.items():
            # samples/s of one-sample "batches" = steps/s
            ms[p]["train"].append(1000 / benchmark.samples_per_s(runner.train, 2, 1))
            ms[p]["eval"].append(1000 / benchmark.samples_per_s(runner.evaluate, 6, 1))
    first = args.max_pixels[0]
    rows = [
        {
            "max_pixels": p,
            **{
                kind: {
                    "ms": statistics.median(ms[p][kind]),
                    "ratio": statistics.median(
                        [a / b for a, b in zip(ms[p][kind], ms[first][kind])]
                    ),
                    "runs": ms[p][kind],
                }
                for kind in ("train", "eval")
            },
        }
        for p in runners
    ]
    return {
        "kind": "patches",
        "model": args.model,
        "config": args.config,
        "res": args.res,
        "batch": args.batch,
        "rows": rows,
        "load_average": [load_start, hardware.load_average()],
    }


def format_result(result: dict) -> str:
    """The table `run_layers` or `run_patches` prints as."""
    head = (
        f"{result['model']} {result['res']}x{result['res']}, batch {result['batch']}; "
        f"load average {result['load_average'][0]} -> {result['load_average'][1]}"
    )
    if result["kind"] == "patches":
        lines = [
            head,
            f"{'max pixels':>10} {'train ms':>9} {'ratio':>6} {'eval ms':>8} {'ratio':>6}",
        ]
        for row in result["rows"]:
            train, evaluate = row["train"], row["eval"]
            lines.append(
                f"{row['max_pixels']:>10} {train['ms']:>9.1f} {train['ratio']:>6.3f} "
                f"{evaluate['ms']:>8.1f} {evaluate['ratio']:>6.3f}"
            )
        return "\n".join(lines + ["ratios: medians of the per-round ratios to the first row"])
    sides = list(result["totals"])
    lines = [
        head + (f"; torch {result['torch']}" if result["torch"] else "; no torch installed"),
        f"{'side':>5} {'cin':>4} {'cout':>4} {'k':>2} {'n':>2} "
        + " ".join(f"{name + ' ms':>10}" for name in sides),
    ]
    for row in result["rows"]:
        side, cin, cout, k = row["shape"]
        lines.append(
            f"{side:>5} {cin:>4} {cout:>4} {k:>2} {row['count']:>2} "
            + " ".join(f"{row[name]:>10.2f}" for name in sides)
        )
    totals = " ".join(f"{result['totals'][name]:>10.1f}" for name in sides)
    lines.append(f"{'sum over the layers':>21} {totals}")
    return "\n".join(lines + ["medians of interleaved rounds: forward + backward, ms per call"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the module doc."""
    parser = argparse.ArgumentParser(
        prog="python tools/conv_speed.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("what", choices=("layers", "patches"))
    parser.add_argument("--res", type=int, default=96, help="input side")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--model", choices=sorted(models.MODELS), default="dsresnet")
    parser.add_argument(
        "--config",
        default=None,
        help="the recipe of `patches` (default: the published one for DSResNet, else the model's)",
    )
    parser.add_argument(
        "--max-pixels",
        default="0,36,144,576",
        help="`patches`: comma-separated map sizes (pixels per image), one step pair each",
    )
    parser.add_argument("--json", default="", help="write the figures here")
    args = parser.parse_args(argv)
    try:
        args.max_pixels = [int(p) for p in args.max_pixels.split(",")]
    except ValueError:
        parser.error(f"--max-pixels must be comma-separated integers, got {args.max_pixels!r}")
    for name in ("res", "batch", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.threads < 0 or min(args.max_pixels) < 0:
        parser.error("--threads and --max-pixels must be at least 0")
    if args.config is None:
        args.config = torch_compare.DEFAULT_CONFIG if args.model == "dsresnet" else ""
    if len(set(args.max_pixels)) < len(args.max_pixels):
        parser.error(f"--max-pixels repeats a value: {args.max_pixels}")
    stride = models.MODELS[args.model].STRIDE
    if args.res % stride:
        parser.error(f"--res {args.res}: {args.model} needs a multiple of {stride}")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs `layers` or `patches` and prints its table."""
    args = parse_args(argv)
    run = run_layers if args.what == "layers" else run_patches
    return benchmark_tool.run_command(args, run, format_result)


if __name__ == "__main__":
    main()
