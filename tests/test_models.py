"""DSResNet and MaskNet: structure, parameter counts, shapes, BatchNorm, precision, a short fit."""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxsegdepth import losses, models


def _pair(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(n, size, size, 3)).astype(np.float32) for _ in range(2))


def _abstract_variables(model, size):
    bg = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), bg, bg)


def _param_count(params):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _numpy_variables(model, seed=0):
    """Variables of the model's structure filled on the host (kernels N(0, 1/fan_in), biases 0,
    fresh BatchNorm): DSResNet's real `init` takes seconds of XLA compile on a small CPU."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return (rng.normal(size=leaf.shape) / math.sqrt(fan_in)).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(fill, _abstract_variables(model, 32))


@pytest.fixture(scope="module")
def masknet():
    """A MaskNet with dropout 0.5, its initial variables and an 8x8 input pair."""
    model = models.MaskNet(dropout_rate=0.5)
    bg, bg_fg = _pair(2, 8)
    key = jax.random.key(0, impl="unsafe_rbg")  # compiles in a fraction of threefry's time
    return model, jax.jit(model.init)(key, bg, bg_fg), bg, bg_fg


@pytest.fixture(scope="module")
def initial_variables():
    """Each model's variables from its real `init`. The key is unsafe_rbg's: the initialisers'
    distributions do not depend on the PRNG, and DSResNet's init compiles in a fraction of
    threefry's time."""
    bg = jnp.zeros((1, 32, 32, 3), jnp.float32)
    key = jax.random.key(0, impl="unsafe_rbg")
    return {name: jax.jit(models.create(name).init)(key, bg, bg) for name in models.MODELS}


def _layers(params):
    """{path: {variable name: float64 array}} of every layer in a parameter tree."""
    layers = {}
    for path, value in traverse_util.flatten_dict(params).items():
        layers.setdefault("/".join(path[:-1]), {})[path[-1]] = np.asarray(value, np.float64)
    return layers


def _assert_uniform(values, bound, where):
    """Values in [-bound, bound]; with 32 or more of them (enough to tell all zeros apart), mean
    and variance within 5 standard errors of uniform(-bound, bound)'s 0 and bound^2/3 (for m
    values the sample variance's standard error is bound^2 sqrt(4 / (45 m)))."""
    assert np.abs(values).max() <= bound * (1 + 1e-6), where  # float32 rounding of the bound
    m = values.size
    if m >= 32:
        assert abs(values.mean()) < 5 * bound / math.sqrt(3 * m), where
        assert abs(values.var() - bound**2 / 3) < 5 * bound**2 * math.sqrt(4 / (45 * m)), where


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_initialisation_is_pytorchs_default(initial_variables, name):
    """Every conv's kernel and bias uniform in +-1/sqrt(fan_in) as PyTorch's Conv2d; BatchNorm
    scale 1, bias 0, running mean 0, running variance 1."""
    variables = initial_variables[name]
    layers = _layers(variables["params"])
    convs = {path: layer for path, layer in layers.items() if set(layer) == {"kernel", "bias"}}
    norms = {path: layer for path, layer in layers.items() if set(layer) == {"scale", "bias"}}
    assert len(convs) + len(norms) == len(layers) and convs and norms
    for path, layer in convs.items():
        height, width, in_channels, _ = layer["kernel"].shape
        bound = 1 / math.sqrt(in_channels * height * width)
        _assert_uniform(layer["kernel"], bound, f"{path}/kernel")
        _assert_uniform(layer["bias"], bound, f"{path}/bias")
    for path, layer in norms.items():
        assert np.all(layer["scale"] == 1) and np.all(layer["bias"] == 0), path
    stats = _layers(variables["batch_stats"])
    assert set(stats) == set(norms)
    for path, layer in stats.items():
        assert np.all(layer["mean"] == 0) and np.all(layer["var"] == 1), path


def test_parameter_counts_match_the_reference():
    params = _abstract_variables(models.DSResNet(), 32)["params"]
    assert _param_count(params) == 10_343_490
    for head in ("mask_head", "depth_head"):  # only the last two decoders merge bg and bg_fg skips
        assert {name for name, block in params[head].items() if "merge" in block} == {"e1", "e2"}
    assert _param_count(_abstract_variables(models.MaskNet(), 32)["params"]) == 59_745


def test_parameters_stay_float32_with_bfloat16_compute():
    variables = _abstract_variables(models.create("dsresnet", "bfloat16"), 32)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("size", [96, 160, 224])
def test_output_shapes(size):
    bg = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    for name, heads in (("dsresnet", {"mask", "depth"}), ("masknet", {"mask"})):
        model = models.create(name)
        variables = _abstract_variables(model, 32)
        outputs = jax.eval_shape(lambda v, a, b: model.apply(v, a, b), variables, bg, bg)
        assert set(outputs) == heads
        for out in outputs.values():
            assert out.shape == (2, size, size, 1) and out.dtype == jnp.float32


def test_dsresnet_rejects_sizes_not_multiple_of_32():
    model = models.DSResNet()
    variables = _abstract_variables(model, 32)
    bg = jnp.zeros((1, 96, 100, 3))
    with pytest.raises(ValueError, match=r"96x100 .*multiple of 32"):
        model.apply(variables, bg, bg)
    with pytest.raises(ValueError, match=r"96x100 .*multiple of 32"):
        model.init(jax.random.key(0), bg, bg)


def test_mismatched_pair_is_rejected(masknet):
    model, variables, bg, _ = masknet
    with pytest.raises(ValueError, match="one shape"):
        model.apply(variables, bg, bg[:, :4])


def test_create_rejects_unknown_model():
    with pytest.raises(ValueError, match="dsresnet"):
        models.create("unet")


def test_bilinear_upsampling_matches_pytorch_half_pixel_rule():
    # PyTorch (align_corners=False) samples output i of a 2x enlargement at input coordinate
    # (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1]: the per-axis weights
    # of inputs (0, 1) are (1, 0), (.75, .25), (.25, .75), (0, 1). For x = [[0, 4], [8, 0]],
    # out[r, c] = 4 a_r b_c + 8 b_r a_c with a = (1, .75, .25, 0) and b = 1 - a.
    x = jnp.array([[0.0, 4.0], [8.0, 0.0]]).reshape(1, 2, 2, 1)
    expected = np.array(
        [[0.0, 1.0, 3.0, 4.0], [2.0, 2.25, 2.75, 3.0], [6.0, 4.75, 2.25, 1.0], [8.0, 6.0, 2.0, 0.0]]
    )
    np.testing.assert_allclose(models.upsample_bilinear_2x(x)[0, :, :, 0], expected, atol=1e-6)


def test_batchnorm_follows_relu_and_updates_like_pytorch(masknet):
    """Momentum 0.9 (PyTorch's 0.1) and the unbiased variance of the layer's input (relu(conv))."""
    model, variables, bg, bg_fg = masknet
    state = jax.jit(
        lambda v: model.apply(
            v,
            bg,
            bg_fg,
            train=True,
            rngs={"dropout": jax.random.key(1)},
            mutable=["batch_stats", "intermediates"],
            capture_intermediates=True,
        )[1]
    )(variables)
    conv = np.asarray(state["intermediates"]["bg_conv"]["__call__"][0], np.float64)
    activations = np.maximum(conv, 0)
    stats = state["batch_stats"]["bg_bn"]
    np.testing.assert_allclose(stats["mean"], 0.1 * activations.mean((0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        stats["var"], 0.9 + 0.1 * activations.var((0, 1, 2), ddof=1), rtol=1e-5
    )


def test_masknet_dropout_only_in_training(masknet):
    model, variables, bg, bg_fg = masknet
    with pytest.raises(Exception, match="dropout"):
        jax.eval_shape(
            lambda v: model.apply(v, bg, bg_fg, train=True, mutable=["batch_stats"]), variables
        )

    @functools.partial(jax.jit, static_argnums=1)
    def mask(seed, train):
        outputs = model.apply(
            variables,
            bg,
            bg_fg,
            train=train,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(seed)},
        )[0]
        return outputs["mask"]

    assert not np.allclose(mask(1, True), mask(2, True))
    np.testing.assert_array_equal(mask(1, False), mask(2, False))


def test_bfloat16_outputs_close_to_float32():
    variables = _numpy_variables(models.DSResNet())
    bg, bg_fg = _pair(2, 32)
    out32, out16 = (
        jax.jit(models.create("dsresnet", dtype).apply)(variables, bg, bg_fg)
        for dtype in ("float32", "bfloat16")
    )
    for head in ("mask", "depth"):
        assert out16[head].dtype == jnp.float32
        scale = np.abs(out32[head]).max()
        assert np.abs(out16[head] - out32[head]).max() < 0.05 * scale
        assert np.corrcoef(np.ravel(out16[head]), np.ravel(out32[head]))[0, 1] > 0.999


def test_summary_lists_layers_and_total():
    text = models.summary(models.DSResNet(), 96)
    assert "enc4/convs" in text and "1x1x1x512, 1x3x3x512" in text
    assert "mask_head/out" in text and "1x96x96x1" in text
    assert text.splitlines()[-1].startswith("Total parameters: 10,343,490")


def test_dsresnet_overfits_four_samples():
    rng = np.random.default_rng(0)
    bg, bg_fg = _pair(4, 64)
    mask = np.zeros((4, 64, 64, 1), np.float32)
    for i, (y, x) in enumerate(rng.integers(8, 40, (4, 2))):
        mask[i, y : y + 16, x : x + 16] = 1
        bg_fg[i, y : y + 16, x : x + 16] = 1.5
    targets = {"mask": mask, "depth": 0.7 - 0.4 * mask}
    model = models.DSResNet()
    variables = _numpy_variables(model)
    tx = optax.adam(5e-4)
    loss_of = losses.compose({"depth": {"rmse": 2.0}, "mask": {"bce_dice": 1.0}})

    @jax.jit
    def step(params, batch_stats, opt_state):
        def loss_fn(params):
            outputs, state = model.apply(
                {"params": params, "batch_stats": batch_stats},
                bg,
                bg_fg,
                train=True,
                mutable=["batch_stats"],
            )
            return loss_of(outputs, targets)[0], state["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    history = []
    for _ in range(10):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state)
        history.append(float(loss))
    assert history[0] > 2.0
    assert history[-1] < history[0] / 5


# The speed reformulations (max pool by reshape, upsampling by shifts, BatchNorm with a
# hand-written backward) against the plain formulations. Compared in float64, where they agree
# to rounding (~1e-12): in float32 random-init BatchNorm channels of near-zero variance amplify
# any change of summation order.


class _PlainBatchNorm(nn.Module):
    """BatchNorm as PyTorch defines it, differentiated by autodiff: the batch normalised with its
    biased variance (two-pass), the running variance updated with the unbiased one."""

    train: bool
    dtype: Any

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,))
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,))
        x = x.astype(self.dtype)
        mean, var = ra_mean.value, ra_var.value
        if self.train:
            mean, var, n = jnp.mean(x, (0, 1, 2)), jnp.var(x, (0, 1, 2)), x.size // c
            ra_mean.value = 0.9 * ra_mean.value + 0.1 * mean
            ra_var.value = 0.9 * ra_var.value + 0.1 * var * n / (n - 1)
        return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias


def _plain(monkeypatch):
    """models.py with the plain formulations put back."""
    monkeypatch.setattr(models, "_max_pool_2x", lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
    monkeypatch.setattr(
        models,
        "upsample_bilinear_2x",
        lambda x: jax.image.resize(
            x, (x.shape[0], 2 * x.shape[1], 2 * x.shape[2], x.shape[3]), method="bilinear"
        ),
    )
    monkeypatch.setattr(
        models, "_batch_norm", lambda train, dtype, name: _PlainBatchNorm(train, dtype, name=name)
    )


class _SmallUNet(nn.Module):
    """DSResNet's own blocks at small widths: two encoders (BatchNorm, pooling 12 -> 6 -> 3),
    two decoders (upsampling 3 -> 6 -> 12, a skip merge) and an output conv. The blocks call
    the reformulations as DSResNet does, and they act per layer: a DSResNet-sized network would
    check nothing more, at many times the compile."""

    @nn.compact
    def __call__(self, x, train):
        blocks = {"dtype": jnp.float64}
        x, skip1 = models.Encoder(features=4, name="enc1", **blocks)(x, train)
        x, skip2 = models.Encoder(features=8, name="enc2", **blocks)(x, train)
        x = models.Decoder(features=8, name="dec2", **blocks)(x, skip2, train)
        x = models.Decoder(features=4, name="dec1", **blocks)(x, skip1, train, extra=skip1)
        return nn.Conv(2, (1, 1), dtype=jnp.float64, name="out")(x)


def _loss_outputs_stats_grads(variables, x):
    model = _SmallUNet()

    def loss(params):
        out, state = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(out[..., 0] ** 2) + jnp.mean(jnp.sin(out[..., 1])), (out, state)

    # A fresh function each call: jit traces whichever formulations models.py holds right now.
    (value, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return value, aux, grads


def test_fast_formulations_match_the_plain_ones_in_float64(monkeypatch):
    """Loss, outputs, BatchNorm statistics and gradients of `_SmallUNet`, fast against plain."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((2, 12, 12, 3)))
        key = jax.random.key(0, impl="unsafe_rbg")  # compiles in a fraction of threefry's time
        variables = jax.jit(_SmallUNet().init, static_argnums=2)(key, x, False)
        variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), variables)
        fast = _loss_outputs_stats_grads(variables, x)
        with monkeypatch.context() as m:
            _plain(m)
            plain = _loss_outputs_stats_grads(variables, x)
        assert float(fast[0]) == pytest.approx(float(plain[0]), rel=1e-12)
        assert jax.tree.structure(fast[1:]) == jax.tree.structure(plain[1:])
        for a, b in zip(jax.tree.leaves(fast[1:]), jax.tree.leaves(plain[1:])):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * float(jnp.max(jnp.abs(b))))


def test_batchnorm_running_variance_is_the_unbiased_one():
    """PyTorch's update: running var = 0.9 * 1 + 0.1 * var * n/(n-1) over the n = N*H*W values of
    each channel; the batch itself is normalised with the biased variance."""
    x = (np.random.default_rng(2).standard_normal((3, 5, 4, 6)) * 2 + 0.5).astype(np.float32)
    bn = models.BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), x)
    y, state = bn.apply(variables, x, mutable=["batch_stats"])
    x64 = x.astype(np.float64)
    mean, var = x64.mean((0, 1, 2)), x64.var((0, 1, 2))
    np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        state["batch_stats"]["var"], 0.9 + 0.1 * x64.var((0, 1, 2), ddof=1), rtol=1e-6
    )
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5), atol=1e-5)
    with pytest.raises(ValueError, match="more than one value per channel"):
        bn.apply(variables, x[:1, :1, :1], mutable=["batch_stats"])


def test_outputs_running_statistics_and_eval_mode_match_flax_batchnorm():
    """Flax's BatchNorm but for the running variance: Flax averages in the biased batch
    variance, ours (as PyTorch) the unbiased one, n/(n-1) times larger."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 6, 6, 5)) * 3 + 1, jnp.float32)
    ours, flax_bn = (
        cls(use_running_average=False, momentum=0.9, epsilon=1e-5)
        for cls in (models.BatchNorm, nn.BatchNorm)
    )
    v_ours, v_flax = ours.init(jax.random.key(0), x), flax_bn.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_flax)
    y_ours, s_ours = ours.apply(v_ours, x, mutable=["batch_stats"])
    y_flax, s_flax = flax_bn.apply(v_flax, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y_ours, y_flax, atol=1e-5)
    stats_ours, stats_flax, n = s_ours["batch_stats"], s_flax["batch_stats"], 4 * 6 * 6
    np.testing.assert_allclose(stats_ours["mean"], stats_flax["mean"], atol=1e-6)
    np.testing.assert_allclose(
        stats_ours["var"] - 0.9, (stats_flax["var"] - 0.9) * n / (n - 1), atol=1e-6
    )
    evaluated = {"params": v_ours["params"], **s_ours}
    np.testing.assert_allclose(
        models.BatchNorm(use_running_average=True).apply(evaluated, x),
        nn.BatchNorm(use_running_average=True).apply(evaluated, x),
        atol=1e-5,
    )


def test_max_pool_drops_an_odd_last_row_like_valid_pooling():
    x = jnp.arange(2 * 3 * 5 * 2, dtype=jnp.float32).reshape(2, 3, 5, 2)
    np.testing.assert_array_equal(models._max_pool_2x(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
