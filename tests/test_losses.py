"""Losses against float64 NumPy formulas and scikit-image; gradients, jit, dtypes, composition."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy.signal import convolve2d
from skimage.metrics import structural_similarity

from configs import rmse_bce, rmse_bce_dice, ssim_dice
from jaxsegdepth import losses

RNG = np.random.default_rng(0)
LOGITS = RNG.uniform(-5, 5, (2, 16, 16, 1)).astype(np.float32)
MASK = (RNG.uniform(size=(2, 16, 16, 1)) > 0.7).astype(np.float32)
DEPTH = RNG.uniform(size=(2, 16, 16, 1)).astype(np.float32)
DEPTH_LOGITS = RNG.normal(size=(2, 16, 16, 1)).astype(np.float32)


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def _bce(logits, t):
    p = _sigmoid(logits)
    return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))


def _dice(p, t, smooth):
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    return 1 - (2 * np.sum(p * t) + smooth) / (np.sum(p) + np.sum(t) + smooth)


def _rmse(p, t):
    return np.sqrt(np.mean((np.asarray(p, np.float64) - t) ** 2) + 1e-6)


def _ssim_skimage(a, b):
    return np.mean(
        [
            structural_similarity(
                np.asarray(x[..., c], np.float64),
                np.asarray(y[..., c], np.float64),
                data_range=1.0,
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
            )
            for x, y in zip(a, b)
            for c in range(a.shape[-1])
        ]
    )


def _ssim_maps(a, b):
    """Float64 luminance and contrast-structure maps: 11x11 Gaussian (sigma 1.5), valid."""
    g = np.exp(-(np.arange(-5, 6) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.sum(g) ** 2

    def blur(x):
        return convolve2d(x, window, mode="valid")

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    return (
        (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1),
        (2 * cov + c2) / (var_a + var_b + c2),
    )


def _ms_ssim_reference(a, b):
    weights = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scores = []
    for x, y in zip(np.asarray(a[..., 0], np.float64), np.asarray(b[..., 0], np.float64)):
        score = 1.0
        for scale, weight in enumerate(weights):
            luminance, cs = _ssim_maps(x, y)
            term = np.mean(luminance * cs) if scale == 4 else np.mean(cs)
            score *= max(term, 0.0) ** weight
            h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
            x, y = (z[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3)) for z in (x, y))
        scores.append(score)
    return np.mean(scores)


def _correlated_images(shape, noise, seed):
    """Smooth random images in [0, 1] and a noisy copy, so SSIM is far from 0 and 1."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(size=shape)
    for axis in (1, 2):
        base = (base + np.roll(base, 1, axis) + np.roll(base, 2, axis)) / 3
    other = np.clip(base + noise * rng.normal(size=shape), 0, 1)
    return base.astype(np.float32), other.astype(np.float32)


def test_bce_dice_rmse_match_numpy():
    probs = _sigmoid(LOGITS).astype(np.float32)
    assert losses.bce(LOGITS, MASK) == pytest.approx(_bce(LOGITS, MASK), rel=1e-5)
    assert losses.dice(probs, MASK) == pytest.approx(_dice(probs, MASK, 1.0), rel=1e-5)
    assert losses.dice(probs, MASK, smooth=1e-6) == pytest.approx(
        _dice(probs, MASK, 1e-6), rel=1e-5
    )
    assert losses.bce_dice(LOGITS, MASK) == pytest.approx(
        _bce(LOGITS, MASK) + 2 * _dice(probs, MASK, 1e-6), rel=1e-5
    )
    assert losses.rmse(probs, DEPTH) == pytest.approx(_rmse(probs, DEPTH), rel=1e-5)


def test_bce_is_stable_for_large_logits():
    logits = np.array([-50.0, 50.0, 30.0], np.float32)
    targets = np.array([1.0, 0.0, 1.0], np.float32)
    # log(1 + exp(50)) = 50 + log1p(exp(-50)); sigmoid(30) is 1 in float32.
    expected = np.mean([50.0, 50.0, np.log1p(np.exp(-30.0))])
    assert losses.bce(logits, targets) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_scikit_image(channels):
    a, b = _correlated_images((3, 24, 20, channels), noise=0.1, seed=channels)
    expected = _ssim_skimage(a, b)
    assert 0.2 < expected < 0.95
    assert abs(float(losses.ssim(a, b)) - expected) < 1e-5
    assert abs(float(losses.ssim_loss(a, b)) - (1 - expected)) < 1e-5


def test_ssim_data_range_scales_constants():
    a, b = _correlated_images((2, 16, 16, 1), noise=0.1, seed=3)
    assert float(losses.ssim(255 * a, 255 * b, data_range=255.0)) == pytest.approx(
        float(losses.ssim(a, b)), abs=1e-5
    )


def test_ms_ssim_matches_numpy_reference():
    a, b = _correlated_images((2, 180, 177, 1), noise=0.2, seed=4)
    expected = _ms_ssim_reference(a, b)
    assert 0.2 < expected < 0.99
    ms_ssim = jax.jit(losses.ms_ssim)  # compiled once: eager dispatch of every op is slow
    assert abs(float(ms_ssim(a, b)) - expected) < 1e-5
    assert float(ms_ssim(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(jax.jit(losses.ms_ssim_loss)(a, b)) == pytest.approx(1 - expected, abs=1e-5)


def test_too_small_images_are_rejected():
    small = jnp.zeros((1, 175, 224, 1))
    with pytest.raises(ValueError, match="ms_ssim .*at least 176x176, got 175x224"):
        losses.ms_ssim(small, small)
    tiny = jnp.zeros((1, 10, 16, 1))
    with pytest.raises(ValueError, match="ssim .*at least 11x11, got 10x16"):
        losses.ssim(tiny, tiny)


def test_ms_ssim_clamps_negative_terms_with_finite_gradient():
    a, _ = _correlated_images((1, 176, 176, 1), noise=0.0, seed=5)
    value, grad = jax.jit(jax.value_and_grad(losses.ms_ssim_loss))(a, 1 - a)
    assert float(value) == pytest.approx(1.0)  # anticorrelated: cs < 0, clamped to 0
    assert np.all(np.isfinite(grad))


def test_losses_compute_in_float32_for_bfloat16_inputs():
    probs = _sigmoid(LOGITS).astype(np.float32)
    for fn, args in (
        (losses.bce, (LOGITS, MASK)),
        (losses.dice, (probs, MASK)),
        (losses.bce_dice, (LOGITS, MASK)),
        (losses.rmse, (probs, DEPTH)),
        (losses.ssim, (probs, DEPTH)),
    ):
        value32 = fn(*args)
        value16 = fn(*(jnp.asarray(x, jnp.bfloat16) for x in args))
        assert value16.dtype == jnp.float32
        assert float(value16) == pytest.approx(float(value32), rel=2e-2, abs=2e-3)


def _recipe_loss(recipe):
    """The total loss of a recipe config's `loss` block, as the trainer composes it."""
    return lambda outputs, targets: losses.compose(recipe.get_config().loss)(outputs, targets)[0]


def test_same_value_under_jit():
    outputs, targets = {"mask": LOGITS, "depth": DEPTH_LOGITS}, {"mask": MASK, "depth": DEPTH}
    for recipe in (rmse_bce_dice, ssim_dice, rmse_bce):
        fn = _recipe_loss(recipe)
        assert float(jax.jit(fn)(outputs, targets)) == pytest.approx(
            float(fn(outputs, targets)), rel=1e-6
        )


_EVERY_TERM = {term: 1.0 for term in losses.TERMS if term != "ms_ssim"}  # 16x16 is too small
_total_and_grads = jax.jit(
    jax.value_and_grad(
        lambda outputs, targets: losses.compose({"mask": _EVERY_TERM, "depth": _EVERY_TERM})(
            outputs, targets
        )[0]
    )
)


@pytest.mark.parametrize("logit", [-50.0, 50.0])
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_gradients_finite_at_extremes(logit, target):
    outputs = {head: jnp.full((2, 16, 16, 1), logit) for head in ("mask", "depth")}
    targets = {head: jnp.full((2, 16, 16, 1), target) for head in ("mask", "depth")}
    total, grads = _total_and_grads(outputs, targets)
    assert np.isfinite(float(total))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_recipe_losses_are_the_spec_combinations():
    """Each recipe config's loss block is the reference's combination (docs/reference.md), checked in NumPy float64."""
    outputs, targets = {"mask": LOGITS, "depth": DEPTH_LOGITS}, {"mask": MASK, "depth": DEPTH}
    p_mask, p_depth = _sigmoid(LOGITS), _sigmoid(DEPTH_LOGITS)
    assert float(_recipe_loss(rmse_bce_dice)(outputs, targets)) == pytest.approx(
        2 * _rmse(p_depth, DEPTH) + _bce(LOGITS, MASK) + 2 * _dice(p_mask, MASK, 1e-6), rel=1e-5
    )
    assert float(_recipe_loss(rmse_bce)(outputs, targets)) == pytest.approx(
        2 * _rmse(p_depth, DEPTH) + _bce(LOGITS, MASK), rel=1e-5
    )
    ssim_loss = 1 - _ssim_skimage(p_depth.astype(np.float32), DEPTH)
    assert float(_recipe_loss(ssim_dice)(outputs, targets)) == pytest.approx(
        2 * ssim_loss + _dice(p_mask, MASK, 1.0), abs=2e-5
    )


def test_compose_weights_terms_and_reports_them_unweighted():
    spec = ml_collections.ConfigDict(
        {"depth": {"rmse": 2.0, "ssim": 0.5}, "mask": {"bce": 1, "dice": 3.0}}
    )
    total, terms = losses.compose(spec)(
        {"mask": LOGITS, "depth": DEPTH_LOGITS, "extra": LOGITS}, {"mask": MASK, "depth": DEPTH}
    )
    p_mask, p_depth = _sigmoid(LOGITS), _sigmoid(DEPTH_LOGITS)
    expected = {
        "depth/rmse": _rmse(p_depth, DEPTH),
        "depth/ssim": 1 - _ssim_skimage(p_depth.astype(np.float32), DEPTH),
        "mask/bce": _bce(LOGITS, MASK),
        "mask/dice": _dice(p_mask, MASK, 1.0),
    }
    expected["depth/loss"] = 2 * expected["depth/rmse"] + 0.5 * expected["depth/ssim"]
    expected["mask/loss"] = expected["mask/bce"] + 3 * expected["mask/dice"]
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, abs=2e-5)
    weighted = (
        2 * expected["depth/rmse"]
        + 0.5 * expected["depth/ssim"]
        + expected["mask/bce"]
        + 3 * expected["mask/dice"]
    )
    assert float(total) == pytest.approx(weighted, abs=5e-5)


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ({"edges": {"bce": 1.0}}, ValueError, r"unknown head 'edges'.*'mask', 'depth'"),
        ({"mask": {"focal": 1.0}}, ValueError, r"unknown loss term 'focal'.*'bce', 'bce_dice'"),
        ({"mask": {"bce": "1.0"}}, TypeError, r"mask/bce must be a real number"),
        ({"mask": {"bce": True}}, TypeError, r"mask/bce must be a real number"),
        ({"mask": {"bce": float("nan")}}, ValueError, r"mask/bce must be finite"),
        ({"mask": {}}, ValueError, r"non-empty"),
        ({}, ValueError, r"non-empty"),
    ],
)
def test_compose_rejects_bad_specs_eagerly(spec, error, message):
    with pytest.raises(error, match=message):
        losses.compose(spec)


def test_composed_loss_rejects_mismatched_shapes_and_missing_heads():
    loss_fn = losses.compose({"mask": {"bce": 1.0}})
    with pytest.raises(ValueError, match=r"'mask'.*\(2, 16, 16, 1\).*\(2, 16, 16\)"):
        loss_fn({"mask": LOGITS}, {"mask": MASK[..., 0]})
    with pytest.raises(ValueError, match=r"'mask'.*targets"):
        loss_fn({"mask": LOGITS}, {"depth": DEPTH})


@pytest.mark.parametrize("term", sorted(set(losses.TERMS) - {"ms_ssim"}))
def test_samples_weighted_0_count_for_nothing(term):
    """An evaluation batch padded with anything, weighted 0, has the loss of its real samples."""
    real = {"mask": LOGITS[:2], "depth": DEPTH_LOGITS[:2]}, {"mask": MASK[:2], "depth": DEPTH[:2]}
    padding = np.random.default_rng(7)
    padded = [
        {
            k: np.concatenate([v, padding.normal(size=v.shape).astype(np.float32)])
            for k, v in part.items()
        }
        for part in real
    ]
    weights = np.array([1, 1, 0, 0], np.float32)
    loss_fn = losses.compose({"mask": {term: 1.0}, "depth": {term: 1.0}})
    expected, _ = loss_fn(*real)
    got, _ = loss_fn(*padded, weights)
    assert float(got) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert float(loss_fn(*real, np.ones(2, np.float32))[0]) == pytest.approx(
        float(expected), rel=1e-6
    )
