"""DSResNet train and eval speed, PyTorch eager against this project's jitted JAX steps.

  python tools/torch_compare.py [--res 96] [--batch 8] [--rounds 5] [--threads 0]
      [--steps 2] [--warmup 2] [--config configs/rmse_bce_dice.py:published] [--json out.json]
      [--bare] [--processes]

A script of the repository, not of the installed package: run it from the root of a clone (it
puts that root on `sys.path`, and the recipe paths are relative to it). PyTorch is optional
and not in requirements.txt: run this with a Python that has it (a CPU wheel in a venv made
with `--system-site-packages`, so it also sees JAX). The PyTorch side is the reference's
DSResNet, the network of `jaxsegdepth.models.DSResNet` (10,343,490 parameters, NCHW), trained
with SGD and the recipe's learning rate and momentum (0.01 and 0.9 in the default, the
reference's) on 2 rmse(sigmoid depth) + bce(mask) + 2 dice(mask, smooth 1e-6); its eval is the
forward pass and the loss under `torch.inference_mode`. The JAX side is
`benchmark.StepRunner`: the trainer's steps for the same recipe, whose loss must be that one.

Both run in this process on the same random batch, in interleaved rounds, so that a machine
that slows down or speeds up affects both alike; each round times `--steps` train steps and 3x
as many eval steps per side, and starts one side later than the round before (torch, JAX; JAX,
torch; ...), so that no side always follows the same other one, whose threads may still be
spinning. Printed: median samples/s per side and the median of the per-round ratios JAX /
torch, with the load average before and after.
`--threads` sets torch's thread count (0: its default); JAX uses every core.

`--processes` runs each side in a worker process of its own, still in interleaved rounds (this
process asks each worker in turn to time one round): no side's thread pool then shares a
process with another's (PyTorch's OpenMP threads, XLA's), and each process holds only its own
side's memory. Both ways are in docs/performance.md with what they gave.

`--bare` adds a third side, `bare`: the plainest JAX steps of the same model, loss and SGD on
the normalised float32 batch the PyTorch side gets, without what the trainer's steps add (the
uint8 inputs normalised on the device, the NaN sentinel, the plateau scale, the eval step's
metric sums). The ratio jax / bare is what those cost; bare / torch is the compiler against
PyTorch's kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import multiprocessing
import os
import statistics
import sys
from typing import Any, Sequence

import jax
import numpy as np
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/torch_compare.py` puts only tools/ on the path

from jaxsegdepth import build, errors, hardware, losses, mesh as mesh_lib, preprocess, steps
from jaxsegdepth.modes import benchmark
from tools import benchmark as benchmark_tool

# The loss the PyTorch side computes, as a `losses.compose` spec: the JAX recipe must match it.
TORCH_LOSS = {"depth": {"rmse": 2.0}, "mask": {"bce_dice": 1.0}}
DEFAULT_CONFIG = "configs/rmse_bce_dice.py:published"


def import_torch():
    """The torch module, or a `UsageError` saying how to get it."""
    try:
        import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
        raise errors.UsageError(
            "PyTorch is not installed in this Python; it is optional and not in "
            "requirements.txt. Install a CPU wheel into a separate environment, e.g. `python -m "
            "venv --system-site-packages ~/torchenv && ~/torchenv/bin/pip install torch "
            "--index-url https://download.pytorch.org/whl/cpu`, and run this script with "
            "~/torchenv/bin/python"
        ) from None
    return torch


def build_network():
    """DSResNet in PyTorch: an `nn.ModuleDict` of blocks that `forward` wires up."""
    nn = import_torch().nn

    def conv(cin, cout, kernel):
        return nn.Conv2d(cin, cout, kernel, padding=kernel // 2)

    def residual(cin, cout):  # (conv3x3 -> ReLU -> BatchNorm) x 2, plus a 1x1 shortcut
        return nn.ModuleDict(
            {
                "body": nn.Sequential(
                    conv(cin, cout, 3),
                    nn.ReLU(),
                    nn.BatchNorm2d(cout),
                    conv(cout, cout, 3),
                    nn.ReLU(),
                    nn.BatchNorm2d(cout),
                ),
                "shortcut": conv(cin, cout, 1),
            }
        )

    def up_block(cin, cout, merges_skip):
        parts = {"reduce": conv(cin, cout, 1), "block": residual(cin, cout)}
        if merges_skip:
            parts["merge"] = conv(cin, cout, 1)
        return nn.ModuleDict(parts)

    widths = (512, 256, 128, 64, 32, 16)  # decoder: the last two blocks merge two skips

    def decoder():
        blocks = {
            f"up{i}": up_block(cin, cout, i >= 3)
            for i, (cin, cout) in enumerate(zip(widths, widths[1:]))
        }
        return nn.ModuleDict({**blocks, "out": conv(widths[-1], 1, 1)})

    encoders = {
        "bg1": (3, 16),
        "bg2": (16, 32),
        "fg1": (3, 16),
        "fg2": (16, 32),
        "enc1": (32, 64),
        "enc2": (64, 128),
        "enc3": (128, 256),
        "enc4": (256, 512),
    }
    return nn.ModuleDict(
        {
            **{name: residual(*io) for name, io in encoders.items()},
            "merge": conv(64, 32, 1),
            "mask": decoder(),
            "depth": decoder(),
        }
    )


def forward(net, bg, bg_fg) -> dict:
    """Mask and depth logits (N, 1, H, W) of `build_network`'s `net` for NCHW inputs."""
    torch = import_torch()
    functional = torch.nn.functional

    def residual(block, x):
        return block["body"](x) + block["shortcut"](x)

    bg1 = residual(net["bg1"], bg)
    bg2 = residual(net["bg2"], functional.max_pool2d(bg1, 2))
    fg1 = residual(net["fg1"], bg_fg)
    fg2 = residual(net["fg2"], functional.max_pool2d(fg1, 2))
    x = net["merge"](torch.cat([functional.max_pool2d(bg2, 2), functional.max_pool2d(fg2, 2)], 1))
    skips = []
    for i in range(1, 5):  # enc4's unpooled output is the bottleneck
        x = residual(net[f"enc{i}"], x if i == 1 else functional.max_pool2d(x, 2))
        skips.append(x)
    enc1, enc2, enc3, bottleneck = skips
    joins = ((enc3, None), (enc2, None), (enc1, None), (bg2, fg2), (bg1, fg1))
    outputs = {}
    for head in ("mask", "depth"):
        x = bottleneck
        for i, (skip, extra) in enumerate(joins):
            block = net[head][f"up{i}"]
            x = functional.interpolate(
                block["reduce"](x), scale_factor=2, mode="bilinear", align_corners=False
            )
            if extra is not None:
                skip = block["merge"](torch.cat([skip, extra], 1))
            x = residual(block["block"], torch.cat([x, skip], 1))
        outputs[head] = net[head]["out"](x)
    return outputs


def loss(outputs: dict, targets: dict):
    """2 rmse(sigmoid depth) + bce(mask logits) + 2 dice(sigmoid mask, smooth 1e-6)."""
    torch = import_torch()
    functional = torch.nn.functional
    depth = torch.sigmoid(outputs["depth"])
    rmse = torch.sqrt(functional.mse_loss(depth, targets["depth"]) + 1e-6)
    bce = functional.binary_cross_entropy_with_logits(outputs["mask"], targets["mask"])
    probs, mask = torch.sigmoid(outputs["mask"]), targets["mask"]
    dice = 1 - (2 * torch.sum(probs * mask) + 1e-6) / (torch.sum(probs) + torch.sum(mask) + 1e-6)
    return 2 * rmse + bce + 2 * dice


def parameter_count(net) -> int:
    """Trainable parameters, as the reference counts them (BatchNorm statistics excluded)."""
    return sum(p.numel() for p in net.parameters())


def to_torch(batch: dict[str, np.ndarray]) -> dict:
    """NHWC NumPy arrays -> contiguous NCHW torch tensors (same values)."""
    torch = import_torch()
    return {
        k: torch.from_numpy(np.ascontiguousarray(v.transpose(0, 3, 1, 2))) for k, v in batch.items()
    }


def torch_steps(net, optimizer, batch: dict) -> tuple:
    """`train(n)` and `evaluate(n)`: n eager train steps, n forward passes with the loss."""
    torch = import_torch()
    targets = {"mask": batch["mask"], "depth": batch["depth"]}

    def train(num_steps: int) -> None:
        net.train()
        for _ in range(num_steps):
            optimizer.zero_grad(set_to_none=True)
            loss(forward(net, batch["bg"], batch["bg_fg"]), targets).backward()
            optimizer.step()

    def evaluate(num_steps: int) -> None:
        net.eval()
        with torch.inference_mode():
            for _ in range(num_steps):
                loss(forward(net, batch["bg"], batch["bg_fg"]), targets)

    return train, evaluate


def bare_steps(config, model_batch: dict) -> tuple:
    """`train(n)` and `evaluate(n)` of the plainest jitted JAX steps on the normalised float32
    `model_batch`: the model's loss and SGD with momentum, nothing else (module doc)."""
    model, loss_fn = build.create_model(config), losses.compose(config.loss)
    state = build.create_state(config, mesh=mesh_lib.create_mesh(jax.devices()[:1]))
    tx = optax.sgd(config.optimizer.learning_rate, momentum=config.optimizer.momentum)
    inputs = (model_batch["bg"], model_batch["bg_fg"])
    targets = {"mask": model_batch["mask"], "depth": model_batch["depth"]}
    options = steps.compiler_options(jax.default_backend())
    dropout = jax.random.fold_in(state.rng, 0)  # the trainer's at its first step

    @functools.partial(jax.jit, donate_argnums=0, compiler_options=options)
    def train_step(carry, inputs, targets):
        params, batch_stats, opt_state = carry

        def objective(params):
            outputs, mutated = model.apply(
                {"params": params, "batch_stats": batch_stats},
                *inputs,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout},
            )
            return loss_fn(outputs, targets)[0], mutated["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

    @functools.partial(jax.jit, compiler_options=options)
    def eval_step(variables, inputs, targets):
        return loss_fn(model.apply(variables, *inputs, train=False), targets)[0]

    carry = [(state.params, state.batch_stats, tx.init(state.params))]

    def train(num_steps: int) -> float:
        """The last step's loss, once computed."""
        for _ in range(num_steps):
            carry[0], loss = train_step(carry[0], inputs, targets)
        return float(loss)

    def evaluate(num_steps: int) -> float:
        variables = {"params": carry[0][0], "batch_stats": carry[0][1]}
        for _ in range(num_steps):
            loss = eval_step(variables, inputs, targets)
        return float(loss)

    return train, evaluate


def jax_config(path: str):
    """The recipe the JAX side runs (DSResNet, float32); its loss must be `TORCH_LOSS` and its
    optimizer SGD, which is all the PyTorch side implements."""
    config = benchmark_tool.load_config(path, "dsresnet", "float32")
    if config.loss.to_dict() != TORCH_LOSS:
        raise errors.UsageError(
            f"--config {path}: loss {config.loss.to_dict()}, but the PyTorch "
            f"side computes {TORCH_LOSS}"
        )
    if config.optimizer.name != "sgd" or config.optimizer.weight_decay:
        raise errors.UsageError(
            f"--config {path}: optimizer {config.optimizer.name} (weight decay "
            f"{config.optimizer.weight_decay}); the PyTorch side runs SGD"
        )
    return config


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line of the module doc."""
    parser = argparse.ArgumentParser(
        prog="python tools/torch_compare.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--res", type=int, default=96, help="input side (a multiple of 32)")
    parser.add_argument("--batch", type=int, default=8, help="batch size")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument(
        "--steps", type=int, default=2, help="train steps per side and round (eval runs 3x as many)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind first")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the JAX side's recipe")
    parser.add_argument("--json", default="", help="write every round's figures here")
    parser.add_argument(
        "--bare", action="store_true", help="add the plainest JAX steps as a third side"
    )
    parser.add_argument(
        "--processes", action="store_true", help="run each side in a worker process of its own"
    )
    args = parser.parse_args(argv)
    for name in ("res", "batch", "rounds", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.threads < 0 or args.warmup < 0:
        parser.error("--threads and --warmup must be at least 0")
    return args


def _build_side(name: str, args: argparse.Namespace) -> tuple:
    """`(train, evaluate)` of side `name` ("torch", "jax" or "bare") on the recipe's random
    batch, compiled and warmed up. Every side builds the same batch from the recipe's seed."""
    config = jax_config(args.config)
    build.validate(config, [args.res])
    batch = benchmark.synthetic_batch(args.batch, args.res, config.seed)
    if name != "jax":  # torch and bare take what the trainer's steps feed the model
        model_batch = jax.device_get(
            preprocess.from_normalization(benchmark.NORMALIZATION)(batch, train=False)
        )
    if name == "torch":
        torch = import_torch()
        if args.threads:
            torch.set_num_threads(args.threads)
        torch.manual_seed(config.seed)
        net = build_network()
        optimizer = torch.optim.SGD(
            net.parameters(),
            lr=config.optimizer.learning_rate,
            momentum=config.optimizer.momentum,
            nesterov=config.optimizer.nesterov,
        )
        train, evaluate = torch_steps(net, optimizer, to_torch(model_batch))
    elif name == "jax":
        runner = benchmark.StepRunner(config, args.res, args.batch, batch=batch)
        runner.compile()
        train, evaluate = runner.train, runner.evaluate
    elif name == "bare":
        train, evaluate = bare_steps(config, model_batch)
    else:
        raise ValueError(f"side {name!r}: expected torch, jax or bare")
    if args.warmup:
        train(args.warmup)
        evaluate(args.warmup)
    return train, evaluate


def _time_round(train, evaluate, args: argparse.Namespace) -> tuple[float, float]:
    """Train and eval samples/s of one round: `--steps` train steps, 3x as many eval steps."""
    return (
        benchmark.samples_per_s(train, args.steps, args.batch),
        benchmark.samples_per_s(evaluate, 3 * args.steps, args.batch),
    )


def _serve_side(name: str, args: argparse.Namespace, connection) -> None:
    """A worker process of `--processes`: builds side `name`, then times one round per request
    until told to stop (a false request). Sends "ready", then each round's rates, or the
    exception that stopped it."""
    try:
        train, evaluate = _build_side(name, args)
        connection.send("ready")
        while connection.recv():
            connection.send(_time_round(train, evaluate, args))
    except (EOFError, OSError):  # the parent went away: nobody to tell
        return
    except Exception as error:  # pylint: disable=broad-except
        try:
            connection.send(error)
        except Exception:  # pylint: disable=broad-except
            connection.send(errors.RunError(f"the {name} side failed: {error!r}"))


class SideProcess:
    """One side in a process of its own (`--processes`); calling it times one round there."""

    def __init__(self, name: str, args: argparse.Namespace):
        context = multiprocessing.get_context("spawn")  # JAX does not survive a fork
        self.name = name
        self._connection, child = context.Pipe()
        self.process = context.Process(
            target=_serve_side, args=(name, args, child), name=f"torch_compare-{name}"
        )
        self.process.start()
        child.close()  # so that the worker's end closing reads as EOF here
        try:
            self._receive()  # "ready"
        except BaseException:
            self.close()
            raise

    def _receive(self):
        if not self._connection.poll(timeout=1800):
            raise errors.RunError(f"the {self.name} side's process did not answer in 30 min")
        try:
            message = self._connection.recv()
        except EOFError:
            raise self._ended() from None
        if isinstance(message, Exception):
            raise message
        return message

    def __call__(self) -> tuple[float, float]:
        try:
            self._connection.send(True)
        except OSError:
            raise self._ended() from None
        return self._receive()

    def _ended(self) -> errors.RunError:
        """The error for a worker that ended unasked, with its exit code."""
        self.process.join(timeout=10)
        return errors.RunError(
            f"the {self.name} side's process ended (exit code {self.process.exitcode})"
        )

    def close(self) -> None:
        """Asks the process to stop and waits for it; kills it if it does not."""
        with contextlib.suppress(OSError):  # a process that already ended closed its end
            self._connection.send(False)
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._connection.close()


def _round_order(names: list, round_index: int) -> list:
    """The sides in the order round `round_index` times them: rotated by one per round."""
    start = round_index % len(names)
    return names[start:] + names[:start]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved rounds; per kind (train, eval) every side's samples/s and the ratios."""
    torch = import_torch()
    names = ("torch", "jax", "bare") if args.bare else ("torch", "jax")
    with contextlib.ExitStack() as stack:
        sides = {}
        for name in names:
            if args.processes:
                sides[name] = stack.enter_context(contextlib.closing(SideProcess(name, args)))
            else:
                sides[name] = functools.partial(_time_round, *_build_side(name, args), args)
        rates = {side: {"train": [], "eval": []} for side in sides}
        load_start = hardware.load_average()
        for round_index in range(args.rounds):
            for side in _round_order(list(sides), round_index):
                train_rate, eval_rate = sides[side]()
                rates[side]["train"].append(train_rate)
                rates[side]["eval"].append(eval_rate)
    result = {
        "torch": torch.__version__,
        "torch_threads": args.threads or torch.get_num_threads(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpu": hardware.cpu_model(),
        "config": args.config,
        "res": args.res,
        "batch": args.batch,
        "rounds": args.rounds,
        "processes": args.processes,
        "rates": rates,
        "load_average": [load_start, hardware.load_average()],
    }
    for kind in ("train", "eval"):
        ratios = [j / t for j, t in zip(rates["jax"][kind], rates["torch"][kind])]
        result[kind] = {
            **{side: statistics.median(rates[side][kind]) for side in sides},
            "ratio": statistics.median(ratios),
            "ratios": ratios,
        }
        if "bare" in sides:
            for name, (a, b) in (("bare_ratio", ("bare", "torch")), ("jax_bare", ("jax", "bare"))):
                result[kind][name] = statistics.median(
                    [x / y for x, y in zip(rates[a][kind], rates[b][kind])]
                )
    return result


def format_result(result: dict) -> str:
    """The one-line header and the train/eval table `run`'s result prints as."""
    lines = [
        f"DSResNet {result['res']}x{result['res']}, batch {result['batch']}, "
        f"{result['rounds']} rounds: torch {result['torch']} eager ({result['torch_threads']}"
        f" threads) vs jax {result['jax']} jit ({result['backend']}), "
        f"{'a process per side' if result['processes'] else 'one process'}, {result['cpu']}; "
        "load average "
        f"{result['load_average'][0]} -> {result['load_average'][1]}",
        f"{'samples/s':9} {'torch':>8} {'jax':>8} {'jax/torch':>9}",
    ]
    bare = "bare" in result["train"]
    if bare:
        lines[-1] += f" {'bare':>8} {'bare/torch':>10} {'jax/bare':>8}"
    for kind in ("train", "eval"):
        r = result[kind]
        line = f"{kind:9} {r['torch']:>8.2f} {r['jax']:>8.2f} {r['ratio']:>8.2f}x"
        if bare:
            line += f" {r['bare']:>8.2f} {r['bare_ratio']:>9.2f}x {r['jax_bare']:>7.2f}x"
        lines.append(line)
    lines.append("medians of the rounds; ratios: medians of the per-round ratios")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the comparison and prints it; a missing torch or bad setting exits with `error:`."""
    return benchmark_tool.run_command(parse_args(argv), run, format_result)


if __name__ == "__main__":
    main()
