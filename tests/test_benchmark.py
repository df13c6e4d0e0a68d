"""The benchmark command at a tiny setting, its FLOP counts, and the bfloat16 training path.

(bfloat16 outputs against float32 on the same parameters: tests/test_models.py.)
"""
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsegdepth import benchmark, losses, mesh as mesh_lib, models, steps

STEP_FIELDS = (
    "model", "resolution", "dtype", "batch", "train_samples_per_s", "train_samples_per_s_runs",
    "train_step_ms", "eval_samples_per_s", "eval_samples_per_s_runs", "final_loss",
    "compile_train_s", "compile_eval_s", "cached_compile_train_s", "cached_compile_eval_s",
    "forward_gflop_per_sample", "train_gflop_per_sample", "train_flops_per_s",
    "eval_flops_per_s", "peak_tflops", "train_fraction_of_peak", "eval_fraction_of_peak",
    "host_peak_rss_mb", "device_memory_mb", "executable_memory_mb", "load_average")
LOADER_FIELDS = ("resolution", "workers", "batch", "samples_per_s",
                 "fastest_train_samples_per_s", "loader_to_step_ratio")


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
        _counted_forward_gflop(models.DSResNet(), 128), rel=0.005)


def test_masknet_flop_count_is_the_model():
    assert benchmark.forward_gflop("masknet", 64) == pytest.approx(
        _counted_forward_gflop(models.MaskNet(), 64), rel=1e-9)


def test_gpu_peaks_by_device_kind():
    class Device:
        platform, device_kind = "gpu", "NVIDIA H100 80GB HBM3"

    assert benchmark.peak_tflops(Device(), "bfloat16") == 989.4
    Device.device_kind = "NVIDIA H200"
    assert benchmark.peak_tflops(Device(), "bfloat16") == 989.4
    Device.platform = "cpu"
    assert benchmark.peak_tflops(Device(), "bfloat16") is None


def test_benchmark_at_a_tiny_setting_writes_every_field(tmp_path, capsys):
    out = tmp_path / "bench.json"
    benchmark.main(["--model", "masknet", "--resolutions", "32", "--batch", "2",
                    "--dtype", "float32,bfloat16", "--steps", "1", "--repeats", "2",
                    "--warmup", "1", "--workers", "0", "--data-dir", str(tmp_path / "tfds"),
                    "--num-samples", "12", "--loader-batches", "2", "--json", str(out)])
    table = capsys.readouterr().out
    assert "train/s" in table and "loader/step" in table
    result = json.loads(out.read_text())
    assert result["environment"]["backend"] == jax.default_backend()
    assert len(result["steps"]) == 2
    for row in result["steps"]:
        assert set(STEP_FIELDS) <= set(row)
        assert row["model"] == "masknet" and row["resolution"] == 32 and row["batch"] == 2
        assert len(row["train_samples_per_s_runs"]) == 2
        for key in ("train_samples_per_s", "eval_samples_per_s", "compile_train_s",
                    "compile_eval_s", "cached_compile_train_s", "cached_compile_eval_s",
                    "host_peak_rss_mb"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert np.isfinite(row["final_loss"])
        # the persistent cache skips XLA's compile: far below the first, which compiles
        assert row["cached_compile_train_s"] < row["compile_train_s"]
        assert row["train_step_ms"] == pytest.approx(1e3 * 2 / row["train_samples_per_s"])
        forward = 2 * 32 * 32 * (2 * 27 * 32 + 64 * 32 + 9 * 32 * 64 + 9 * 64 * 64 + 64) / 1e9
        assert row["forward_gflop_per_sample"] == pytest.approx(forward)
        assert row["train_flops_per_s"] == pytest.approx(
            row["train_samples_per_s"] * 3 * forward * 1e9)
        assert row["eval_flops_per_s"] == pytest.approx(row["eval_samples_per_s"] * forward * 1e9)
        train_memory = row["executable_memory_mb"]["train"]
        assert train_memory is None or train_memory["arguments_mb"] > 0
        if jax.default_backend() == "cpu":
            assert row["peak_tflops"] is None and row["train_fraction_of_peak"] is None
    assert [r["dtype"] for r in result["steps"]] == ["float32", "bfloat16"]
    (loader,) = result["loader"]
    assert set(LOADER_FIELDS) <= set(loader)
    assert loader["samples_per_s"] > 0 and loader["workers"] == 0
    fastest = max(r["train_samples_per_s"] for r in result["steps"])
    assert loader["loader_to_step_ratio"] == pytest.approx(loader["samples_per_s"] / fastest)
    # the benchmark leaves no persistent cache configured behind it
    assert jax.config.jax_compilation_cache_dir != result["compile_cache_dir"]


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
            return (rng.normal(size=leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))
                    ).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    variables = jax.tree_util.tree_map_with_path(fill, shapes)
    params = variables["params"]
    plateau = optax.contrib.reduce_on_plateau()
    return steps.TrainState(
        step=jnp.zeros((), jnp.int32), apply_fn=model.apply, params=params, tx=tx,
        opt_state=jax.jit(tx.init)(params), batch_stats=variables["batch_stats"],
        plateau=jax.jit(plateau.init)(params), rng=jax.random.PRNGKey(0),
        nonfinite_step=jnp.full((), -1, jnp.int32))


def test_bfloat16_dsresnet_trains():
    """The real jitted train step computing in bfloat16 learns a fixed batch (a bright square
    in bg_fg is the mask and a nearer depth); parameters, optimizer state and BatchNorm
    statistics stay float32."""
    model = models.create("dsresnet", "bfloat16")
    mesh = mesh_lib.create_mesh()
    state = _host_initialised_state(model, optax.adam(1e-3), 32)
    batch = benchmark.synthetic_batch(4, 32)
    batch["mask"][:] = 0.0
    batch["mask"][:, 8:24, 8:24] = 1.0
    batch["bg_fg"][:, 8:24, 8:24] += 2.0
    batch["depth"] = 0.7 - 0.4 * batch["mask"]
    batch = mesh_lib.shard_batch(mesh, batch)
    train, _, _ = steps.jit_steps(mesh, losses.compose(benchmark.LOSS_SPECS["dsresnet"]))
    history = []
    for _ in range(8):
        state, out = train(state, batch)
        history.append(float(out["loss"]))
    assert np.all(np.isfinite(history)) and int(state.nonfinite_step) == -1
    assert history[-1] < 0.5 * history[0], history
    leaves = jax.tree.leaves((state.params, state.opt_state, state.batch_stats))
    assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)}
