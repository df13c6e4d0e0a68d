"""The benchmark command at a tiny setting, its FLOP counts, its recipes (the trainer's loss and
optimizer), the bfloat16 training path, and the PyTorch comparison script `tools/torch_compare.py`
(its PyTorch half only where torch is installed: it is optional), and `tools/conv_speed.py`.

(bfloat16 outputs against float32 on the same parameters: tests/test_models.py.)
"""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default, masknet_bce
from jaxsegdepth import build, errors, hardware, losses, mesh as mesh_lib, models, preprocess, steps
from jaxsegdepth.modes import benchmark
from jaxsegdepth.data import pipeline

from tools import benchmark as benchmark_tool, conv_speed, torch_compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEP_FIELDS = (
    "model",
    "resolution",
    "dtype",
    "batch",
    "loss",
    "optimizer",
    "train_samples_per_s",
    "train_samples_per_s_runs",
    "train_step_ms",
    "eval_samples_per_s",
    "eval_samples_per_s_runs",
    "final_loss",
    "compile_train_s",
    "compile_eval_s",
    "cached_compile_train_s",
    "cached_compile_eval_s",
    "forward_gflop_per_sample",
    "train_gflop_per_sample",
    "train_flops_per_s",
    "eval_flops_per_s",
    "peak_tflops",
    "train_fraction_of_peak",
    "eval_fraction_of_peak",
    "host_peak_rss_mb",
    "device_memory_mb",
    "executable_memory_mb",
    "load_average",
)
LOADER_FIELDS = (
    "resolution",
    "workers",
    "threads",
    "batch",
    "samples_per_s",
    "cpu_count",
    "samples_per_s_per_core",
    "bytes_per_sample",
    "fastest_train_samples_per_s",
    "loader_to_step_ratio",
)
INPUT_FIELDS = (
    "resolution",
    "batch",
    "workers",
    "threads",
    "loader_samples_per_s",
    "step_samples_per_s",
    "overlapped_samples_per_s",
    "wait_fraction",
    "input_bound",
)


@pytest.fixture
def rbg_prng():
    """JAX's default PRNG set to unsafe_rbg for one test, whose commands initialise models with
    `jax.random.PRNGKey`: the values drawn do not matter there, and rbg's initialisers compile
    in a fraction of threefry's time."""
    saved = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "unsafe_rbg")
    yield
    jax.config.update("jax_default_prng_impl", saved)


def _counted_forward_gflop(model: nn.Module, resolution: int) -> float:
    """2 x multiply-adds of every nn.Conv, from the output shapes of an abstract forward pass."""
    flops = []

    def record(call, args, kwargs, context):
        out = call(*args, **kwargs)
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            kh, kw = context.module.kernel_size
            cin = args[0].shape[-1]
            flops.append(2 * math.prod(out.shape[:-1]) * out.shape[-1] * kh * kw * cin)
        return out

    image = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda a, b: model.init(jax.random.key(0), a, b), image, image)
    return sum(flops) / 1e9


@pytest.mark.parametrize("resolution,spec", [(96, 1.93), (160, 5.37), (224, 10.52)])
def test_dsresnet_flop_counts_are_the_spec_and_the_model(resolution, spec):
    assert benchmark.forward_gflop("dsresnet", resolution) == spec
    counted = _counted_forward_gflop(models.DSResNet(), resolution)
    assert counted == pytest.approx(spec, rel=0.005)
    # other sizes scale with the pixel count
    assert benchmark.forward_gflop("dsresnet", 128) == pytest.approx(
        _counted_forward_gflop(models.DSResNet(), 128), rel=0.005
    )


def test_masknet_flop_count_is_the_model():
    assert benchmark.forward_gflop("masknet", 64) == pytest.approx(
        _counted_forward_gflop(models.MaskNet(), 64), rel=1e-9
    )


def test_gpu_peaks_by_device_kind():
    class Device:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    assert hardware.peak_tflops(Device(), "bfloat16") == 989.4
    Device.device_kind = "NVIDIA H200"
    assert hardware.peak_tflops(Device(), "bfloat16") == 989.4
    Device.platform = "cpu"
    assert hardware.peak_tflops(Device(), "bfloat16") is None


def test_the_cpu_model_is_the_one_the_os_names(tmp_path, monkeypatch):
    real_open = open
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n")
    monkeypatch.setattr(
        hardware,
        "open",
        lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k),
        raising=False,
    )
    assert hardware.cpu_model() == "AMD EPYC"
    cpuinfo.unlink()  # no /proc/cpuinfo (macOS, Windows): what `platform` says
    monkeypatch.setattr("platform.processor", lambda: "arm")
    assert hardware.cpu_model() == "arm"
    assert hardware.environment()["cpu"] == "arm"


def _host_initialised_state(model, tx, resolution):
    """A TrainState like `steps.create_train_state`'s, with the variables filled on the host
    (kernels N(0, 1/fan_in), biases 0, fresh BatchNorm): compiling DSResNet's init would
    take longer than the training below."""
    image = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    shapes = jax.eval_shape(lambda a, b: model.init(jax.random.key(0), a, b), image, image)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            return (rng.normal(size=leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))).astype(
                np.float32
            )
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    params = variables["params"]
    plateau = optax.contrib.reduce_on_plateau()
    return steps.TrainState(
        step=jnp.zeros((), jnp.int32),
        apply_fn=model.apply,
        params=params,
        tx=tx,
        opt_state=jax.jit(tx.init)((params, {})),
        batch_stats=variables["batch_stats"],
        ema={},
        weighting={},
        plateau=jax.jit(plateau.init)(params),
        rng=jax.random.PRNGKey(0),
        nonfinite_step=jnp.full((), -1, jnp.int32),
    )


@pytest.mark.parametrize("model,recipe", [("dsresnet", default), ("masknet", masknet_bce)])
def test_the_benchmark_runs_the_trainers_recipe(model, recipe):
    """Loss, loss weighting, optimizer and schedule are the recipe's; the runner compiles its
    steps from that config (`state.jit_steps`, as the trainer does)."""
    config, expected = benchmark_tool.load_config("", model, "bfloat16", 5), recipe.get_config()
    assert (config.model, config.dtype, config.seed) == (model, "bfloat16", 5)
    for block in ("loss", "loss_weighting", "augment", "optimizer", "schedule"):
        assert config[block] == expected[block], block
    state = _host_initialised_state(models.create(model), optax.sgd(0.1), 32)
    runner = benchmark.StepRunner(config, 32, 2, state=state)
    targets = benchmark.synthetic_batch(2, 32, seed=2)
    assert runner.config is config
    assert {k: (np.asarray(v).shape, np.asarray(v).dtype) for k, v in runner.batch.items()} == {
        k: (v.shape, v.dtype) for k, v in targets.items()
    }


def test_the_synthetic_batch_is_shaped_like_the_loaders():
    """uint8 images, a 0/255 mask and uint8 depth, int32 global sample indices."""
    batch = benchmark.synthetic_batch(3, 32, seed=1)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "bg": ((3, 32, 32, 3), np.uint8),
        "bg_fg": ((3, 32, 32, 3), np.uint8),
        "mask": ((3, 32, 32, 1), np.uint8),
        "depth": ((3, 32, 32, 1), np.uint8),
        "index": ((3,), np.int32),
    }
    assert set(np.unique(batch["mask"])) == {0, 255}
    np.testing.assert_array_equal(batch["index"], [0, 1, 2])
    np.testing.assert_array_equal(benchmark.synthetic_batch(3, 32, seed=1)["bg"], batch["bg"])


def test_a_recipe_file_with_its_argument_and_overrides():
    config = benchmark_tool.load_config(
        "configs/rmse_bce_dice.py:published", "dsresnet", "bfloat16", 3
    )
    assert (config.optimizer.name, config.optimizer.momentum, config.dtype, config.seed) == (
        "sgd",
        0.9,
        "bfloat16",
        3,
    )
    assert config.loss == default.get_config().loss
    assert benchmark_tool.recipe_name("", "masknet") == "configs/masknet_bce.py"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "nope"], "model='nope'"),
        (["--dtype", "float16"], "dtype='float16'"),
        (["--resolutions", "48"], "not a multiple of 32"),
        (["--config", "configs/missing.py"], "No such file or directory"),
        (["--config", "configs/rmse_bce_dice.py:bogus"], "unknown config argument"),
        (
            ["--config", "configs/masknet_bce.py", "--model", "dsresnet,masknet", "--batch", "0"],
            "--batch=0",
        ),
    ],
)
def test_bad_settings_exit_2_before_compiling(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark_tool.main(argv + ["--skip-loader"])
    assert exit_info.value.code == errors.UsageError.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_benchmark_at_a_tiny_setting_writes_every_field(tmp_path, capsys, rbg_prng):
    out = tmp_path / "bench.json"
    benchmark_tool.main(
        [
            "--model",
            "masknet",
            "--resolutions",
            "32",
            "--batch",
            "2",
            "--dtype",
            "float32,bfloat16",
            "--steps",
            "1",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--workers",
            "0",
            "--data-dir",
            str(tmp_path / "tfds"),
            "--num-samples",
            "12",
            "--loader-batch",
            "2",
            "--loader-batches",
            "2",
            "--json",
            str(out),
        ]
    )
    table = capsys.readouterr().out
    assert "train/s" in table and "loader/step" in table
    assert "masknet: configs/masknet_bce.py, loss {'mask': {'bce': 1.0}}, optimizer adam" in table
    result = json.loads(out.read_text())
    assert result["environment"]["backend"] == jax.default_backend()
    assert (result["dataset"]["name"], result["dataset"]["num_samples"]) == ("synthetic_museum", 12)
    assert len(result["steps"]) == 2
    for row in result["steps"]:
        assert set(STEP_FIELDS) <= set(row)
        assert row["model"] == "masknet" and row["resolution"] == 32 and row["batch"] == 2
        assert row["loss"] == masknet_bce.get_config().loss.to_dict()
        assert len(row["train_samples_per_s_runs"]) == 2
        for key in (
            "train_samples_per_s",
            "eval_samples_per_s",
            "compile_train_s",
            "compile_eval_s",
            "cached_compile_train_s",
            "cached_compile_eval_s",
            "host_peak_rss_mb",
        ):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert np.isfinite(row["final_loss"])
        # the persistent cache skips XLA's compile: far below the first, which compiles
        assert row["cached_compile_train_s"] < row["compile_train_s"]
        assert row["train_step_ms"] == pytest.approx(1e3 * 2 / row["train_samples_per_s"])
        forward = 2 * 32 * 32 * (2 * 27 * 32 + 64 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 64) / 1e9
        assert row["forward_gflop_per_sample"] == pytest.approx(forward)
        assert row["train_flops_per_s"] == pytest.approx(
            row["train_samples_per_s"] * 3 * forward * 1e9
        )
        assert row["eval_flops_per_s"] == pytest.approx(row["eval_samples_per_s"] * forward * 1e9)
        train_memory = row["executable_memory_mb"]["train"]
        assert train_memory is None or train_memory["arguments_mb"] > 0
        if jax.default_backend() == "cpu":
            assert row["peak_tflops"] is None and row["train_fraction_of_peak"] is None
    assert [r["dtype"] for r in result["steps"]] == ["float32", "bfloat16"]
    (loader,) = result["loader"]
    assert set(LOADER_FIELDS) <= set(loader)
    assert loader["samples_per_s"] > 0 and loader["workers"] == 0
    assert (
        loader["threads"] == pipeline.loader_settings(benchmark_tool.loader_config()).read_threads
    )
    assert loader["samples_per_s_per_core"] == pytest.approx(
        loader["samples_per_s"] / loader["cpu_count"]
    )
    assert loader["bytes_per_sample"] == 32 * 32 * (3 + 3 + 1 + 1) + 4  # uint8 images, int32 index
    fastest = max(r["train_samples_per_s"] for r in result["steps"])
    assert loader["loader_to_step_ratio"] == pytest.approx(loader["samples_per_s"] / fastest)
    (fed,) = result["input"]  # the first recipe (float32) at the first batch, fed by the loader
    assert set(INPUT_FIELDS) <= set(fed) and (fed["batch"], fed["dtype"]) == (2, "float32")
    assert (
        min(fed["loader_samples_per_s"], fed["step_samples_per_s"], fed["overlapped_samples_per_s"])
        > 0
    )
    assert fed["wait_fraction"] == pytest.approx(
        max(0.0, 1 - fed["overlapped_samples_per_s"] / fed["step_samples_per_s"])
    )
    assert fed["input_bound"] == (fed["loader_samples_per_s"] < fed["step_samples_per_s"])
    assert "input-bound" in table
    # the benchmark leaves no persistent cache configured behind it
    assert jax.config.jax_compilation_cache_dir != result["compile_cache_dir"]


def test_the_largest_batch_extrapolates_the_planned_memory():
    """A plan of 1 GB + 10 MB per sample under a 16 GB limit: (0.9 x 16e9 - 1e9) / 1e7 = 1340
    samples, rounded down to a multiple of 64."""
    found = benchmark.largest_batch(
        None, 224, mesh=object(), plan=lambda b: 1e9 + 1e7 * b, limit=16e9
    )
    assert found["batch"] == 1280 and found["bytes_per_sample"] == pytest.approx(1e7)
    assert found["fixed_bytes"] == pytest.approx(1e9)
    tight = benchmark.largest_batch(
        None, 224, mesh=object(), plan=lambda b: 1e9 + 1e7 * b, limit=1e9
    )
    assert tight["batch"] == 64  # never below one step of 64
    capped = benchmark.largest_batch(
        None, 224, mesh=object(), plan=lambda b: 1e3 * b, limit=1e12, cap=4096
    )
    assert capped["batch"] == 4096


def test_batch_max_needs_a_device_that_reports_its_memory(capsys):
    if jax.default_backend() != "cpu":
        pytest.skip("checks the CPU's refusal")
    with pytest.raises(SystemExit) as exit_info:
        benchmark_tool.main(
            [
                "--model",
                "masknet",
                "--resolutions",
                "32",
                "--batch",
                "max",
                "--dtype",
                "float32",
                "--skip-loader",
            ]
        )
    assert exit_info.value.code == 2
    assert "--batch max needs a device that reports its memory limit" in capsys.readouterr().err


def test_bfloat16_dsresnet_trains():
    """The benchmark's train step computing in bfloat16 learns a fixed batch (a bright square
    in bg_fg is the mask and a nearer depth); parameters, optimizer state and BatchNorm
    statistics stay float32. Only the train step is compiled: the eval step plays no part."""
    config = benchmark_tool.load_config("", "dsresnet", "bfloat16")
    state = _host_initialised_state(models.create("dsresnet", "bfloat16"), optax.adam(1e-3), 32)
    batch = benchmark.synthetic_batch(4, 32)
    batch["mask"][:] = 0
    batch["mask"][:, 8:24, 8:24] = 255
    square = batch["bg_fg"][:, 8:24, 8:24].astype(np.int32)
    batch["bg_fg"][:, 8:24, 8:24] = np.minimum(square + 128, 255).astype(np.uint8)  # brighter
    batch["depth"] = np.where(batch["mask"] > 0, 77, 179).astype(np.uint8)  # 0.3 in, 0.7 out
    runner = benchmark.StepRunner(config, 32, 4, state=state, batch=batch)
    runner.train_step = runner.compiled_train_step()
    history = [float(runner.train(1)["loss"]) for _ in range(8)]
    assert np.all(np.isfinite(history)) and int(runner.state.nonfinite_step) == -1
    assert history[-1] < 0.5 * history[0], history
    leaves = jax.tree.leaves(
        (runner.state.params, runner.state.opt_state, runner.state.batch_stats)
    )
    assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)
    }


# ---- tools/torch_compare.py -------------------------------------------------------------------


def test_torch_compare_runs_as_a_script_from_a_clone():
    result = subprocess.run(
        [sys.executable, "tools/torch_compare.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: python tools/torch_compare.py")


def test_torch_compare_arguments():
    args = torch_compare.parse_args([])
    assert (args.res, args.batch, args.rounds, args.threads, args.steps) == (96, 8, 5, 0, 2)
    assert args.config == "configs/rmse_bce_dice.py:published"
    args = torch_compare.parse_args(
        ["--res", "160", "--batch", "4", "--rounds", "3", "--threads", "2"]
    )
    assert (args.res, args.batch, args.rounds, args.threads) == (160, 4, 3, 2)
    for bad in (["--rounds", "0"], ["--threads", "-1"], ["--res", "x"]):
        with pytest.raises(SystemExit):
            torch_compare.parse_args(bad)


def test_torch_compare_rounds_rotate_which_side_goes_first():
    names = ["torch", "jax", "bare"]
    orders = [torch_compare._round_order(names, i) for i in range(4)]
    assert orders == [names, ["jax", "bare", "torch"], ["bare", "torch", "jax"], names]
    # over len(names) rounds every side holds every position once
    assert all(sorted(order[p] for order in orders[:3]) == sorted(names) for p in range(3))


def test_torch_compare_runs_the_reference_recipe_or_refuses():
    config = torch_compare.jax_config(torch_compare.DEFAULT_CONFIG)
    assert (config.optimizer.name, config.optimizer.learning_rate, config.optimizer.momentum) == (
        "sgd",
        0.01,
        0.9,
    )
    assert config.loss.to_dict() == torch_compare.TORCH_LOSS == default.get_config().loss.to_dict()
    with pytest.raises(errors.UsageError, match="optimizer adam"):
        torch_compare.jax_config("configs/default.py")
    with pytest.raises(errors.UsageError, match="loss"):
        torch_compare.jax_config("configs/ssim_dice.py:published")


def test_the_bare_jax_steps_compute_the_trainers_losses(monkeypatch, rbg_prng):
    """`--bare`'s eval step, from the trainer's initial state on the normalised batch: the same
    loss as the trainer's eval step, on that state (the one `bare_steps` has
    `build.create_state` make), on the uint8 batch; its train step lowers the loss."""
    config = torch_compare.jax_config(torch_compare.DEFAULT_CONFIG)
    created = []
    create_state = build.create_state
    monkeypatch.setattr(
        build, "create_state", lambda *a, **k: created.append(create_state(*a, **k)) or created[-1]
    )
    batch = benchmark.synthetic_batch(2, 32, seed=5)
    model_batch = jax.device_get(
        preprocess.from_normalization(benchmark.NORMALIZATION)(batch, train=False)
    )
    train, evaluate = torch_compare.bare_steps(config, model_batch)
    (state,) = created
    mesh = mesh_lib.create_mesh()
    _, trainer_eval, _ = build.compiled_steps(config, mesh, benchmark.NORMALIZATION)
    before = evaluate(1)
    assert before == pytest.approx(
        float(trainer_eval(state, mesh_lib.shard_batch(mesh, batch))["loss"]), rel=1e-5
    )
    train(5)  # donates the state's parameters
    assert evaluate(1) < before


def test_a_side_in_a_process_of_its_own_times_rounds_and_passes_errors_on(monkeypatch):
    """`--processes`: a worker times a round per call and stops when closed; a bad recipe's
    error reaches the caller as the same exception. The worker inherits settings that make its
    compiles cheap (the unsafe_rbg PRNG, XLA's lowest optimisation level): what its steps
    compute does not matter here."""
    monkeypatch.setenv("JAX_DEFAULT_PRNG_IMPL", "unsafe_rbg")
    flags = os.environ.get("XLA_FLAGS", "")
    monkeypatch.setenv("XLA_FLAGS", f"{flags} --xla_backend_optimization_level=0".strip())
    argv = ["--res", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--processes"]
    side = torch_compare.SideProcess("bare", torch_compare.parse_args(argv))
    try:
        rounds = [side() for _ in range(2)]
    finally:
        side.close()
    assert len(rounds) == 2
    assert all(
        len(rates) == 2 and all(math.isfinite(r) and r > 0 for r in rates) for rates in rounds
    )
    assert side.process.exitcode == 0
    bad = torch_compare.parse_args([*argv, "--config", "configs/default.py"])
    with pytest.raises(errors.UsageError, match="optimizer adam"):
        torch_compare.SideProcess("jax", bad)


def test_torch_compare_with_a_process_per_side(capsys):
    pytest.importorskip("torch")
    result = torch_compare.main(
        ["--res", "32", "--batch", "2", "--rounds", "1", "--steps", "1", "--warmup", "0"]
        + ["--threads", "1", "--bare", "--processes"]
    )
    assert result["processes"] is True and result["torch_threads"] == 1
    for kind in ("train", "eval"):
        rates = {side: result["rates"][side][kind] for side in ("torch", "jax", "bare")}
        assert all(len(r) == 1 and r[0] > 0 for r in rates.values())
        assert result[kind]["ratio"] == pytest.approx(rates["jax"][0] / rates["torch"][0])
        assert result[kind]["jax_bare"] == pytest.approx(rates["jax"][0] / rates["bare"][0])
    assert "a process per side" in capsys.readouterr().out


def test_torch_compare_without_torch_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(SystemExit) as exit_info:
        torch_compare.main(["--rounds", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: PyTorch is not installed") and "pip install torch" in err


def test_torch_network_is_the_spec_and_its_loss_is_the_recipes():
    torch = pytest.importorskip("torch")
    net = torch_compare.build_network()
    assert torch_compare.parameter_count(net) == 10_343_490
    # what the JAX steps feed the model: normalised inputs, [0, 1] targets
    batch = jax.device_get(
        preprocess.from_normalization(benchmark.NORMALIZATION)(
            benchmark.synthetic_batch(2, 32, seed=3), train=False
        )
    )
    inputs = torch_compare.to_torch(batch)
    with torch.no_grad():
        outputs = torch_compare.forward(net.eval(), inputs["bg"], inputs["bg_fg"])
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        "mask": (2, 1, 32, 32),
        "depth": (2, 1, 32, 32),
    }
    rng = np.random.default_rng(4)
    logits = {
        head: rng.normal(size=(2, 32, 32, 1)).astype(np.float32) for head in ("mask", "depth")
    }
    got = torch_compare.loss(torch_compare.to_torch(logits), torch_compare.to_torch(batch))
    want, _ = losses.compose(torch_compare.TORCH_LOSS)(logits, batch)
    assert float(got) == pytest.approx(float(want), rel=1e-5)


# ---- tools/conv_speed.py ----------------------------------------------------------------------


def _numpy_conv_same(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """A "same" stride-1 NHWC x HWIO convolution by explicit shifted sums, in float64."""
    k, (h, w) = kernel.shape[0], x.shape[1:3]
    padded = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + kernel.shape[-1:])
    for i in range(k):
        for j in range(k):
            out += padded[:, i : i + h, j : j + w] @ kernel[i, j]
    return out


@pytest.mark.parametrize("k", [1, 3])
def test_patch_product_and_xla_convolution_are_the_numpy_convolution(k):
    rng = np.random.default_rng(k)
    x, kernel = rng.normal(size=(2, 5, 7, 4)), rng.normal(size=(k, k, 4, 3))
    want = _numpy_conv_same(x, kernel)
    with jax.enable_x64(True):
        for conv in (conv_speed.patches_conv, conv_speed.xla_conv):
            np.testing.assert_allclose(conv(jnp.asarray(x), jnp.asarray(kernel)), want, rtol=1e-12)


def test_conv_layers_are_every_convolution_of_the_model():
    layers = conv_speed.conv_layers(models.DSResNet(), 96)
    params = jax.eval_shape(
        lambda: models.DSResNet().init(
            jax.random.key(0), jnp.zeros((1, 96, 96, 3)), jnp.zeros((1, 96, 96, 3))
        )
    )["params"]
    kernels = [x.shape for x in jax.tree.leaves(params) if x.ndim == 4]
    # 4 image encoder blocks x 3 + merge + 4 shared blocks x 3 = 25; per head 3 decoders x 4
    # (reduce, two 3x3, shortcut) + 2 x 5 (and a skip merge) + the output = 23
    assert sum(layers.values()) == len(kernels) == 25 + 2 * 23
    assert sorted(
        (k, k, cin, cout) for (_, cin, cout, k), n in layers.items() for _ in range(n)
    ) == (sorted(kernels))
    # the two image encoders' first convolutions; the bottleneck's 3x3 at 96 / 32 = 3 pixels
    assert layers[(96, 3, 16, 3)] == 2 and layers[(3, 512, 512, 3)] == 1


def test_patches_interceptor_changes_only_the_small_3x3_convolutions(monkeypatch):
    model = models.MaskNet()
    rng = np.random.default_rng(0)
    bg, bg_fg = (jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32) for _ in range(2))
    variables = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), bg, bg_fg)

    def mask(max_pixels):
        with nn.intercept_methods(conv_speed.patches_interceptor(max_pixels)):
            return np.asarray(model.apply(variables, bg, bg_fg)["mask"])

    plain = mask(0)
    np.testing.assert_allclose(mask(16 * 16), plain, rtol=1e-4, atol=1e-5)
    # what the interceptor returns is the product's: a product of twice the kernel shows
    monkeypatch.setattr(conv_speed, "patches_conv", lambda x, k: x[..., :1] * 0 + 7.0)
    np.testing.assert_array_equal(mask(16 * 16 - 1), plain)  # no map is that small
    assert not np.allclose(mask(16 * 16), plain)


def test_conv_speed_layers_times_every_shape_of_the_model(capsys):
    result = conv_speed.main(
        ["layers", "--model", "masknet", "--res", "16", "--batch", "1", "--rounds", "1"]
    )
    # the two image convolutions, the 1x1 merge, two 3x3 blocks and the 1x1 output (models.py)
    shapes = {(16, 3, 32, 3): 2, (16, 64, 32, 1): 1, (16, 32, 64, 3): 1, (16, 64, 64, 3): 1}
    shapes[(16, 64, 1, 1)] = 1
    assert conv_speed.conv_layers(models.MaskNet(), 16) == shapes
    rows = result["rows"]
    assert {tuple(row["shape"]): row["count"] for row in rows} == shapes
    sides = ["xla", "patches"] + (["torch"] if result["torch"] else [])
    assert list(result["totals"]) == sides
    for side in sides:
        assert all(row[side] > 0 for row in rows)
        assert result["totals"][side] == pytest.approx(sum(r["count"] * r[side] for r in rows))
    out = capsys.readouterr().out
    assert out.startswith("masknet 16x16, batch 1;") and "sum over the layers" in out


def test_conv_speed_patches_times_each_setting_against_the_first(capsys, rbg_prng):
    result = conv_speed.main(
        ["patches", "--model", "masknet", "--res", "16", "--batch", "2", "--rounds", "1"]
        + ["--max-pixels", "0,256"]
    )
    assert result["config"] == ""  # MaskNet's own recipe
    rows = result["rows"]
    assert [row["max_pixels"] for row in rows] == [0, 256]
    assert rows[0]["train"]["ratio"] == rows[0]["eval"]["ratio"] == 1.0
    assert all(row[kind]["ms"] > 0 for row in rows for kind in ("train", "eval"))
    assert capsys.readouterr().out.startswith("masknet 16x16, batch 2;")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["patches", "--max-pixels", "0,x"], "comma-separated integers"),
        (["patches", "--max-pixels", "0,0"], "repeats a value"),
        (["layers", "--res", "100"], "dsresnet needs a multiple of 32"),
    ],
)
def test_conv_speed_refuses_bad_settings(argv, message, capsys):
    with pytest.raises(SystemExit):
        conv_speed.parse_args(argv)
    assert message in capsys.readouterr().err
