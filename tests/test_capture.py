"""Capture nuisances (`capture`): identity when off, per-sample determinism, the photometric
chain, the plate's warp and the sensor noise against independent NumPy float64 references."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxsegdepth import capture

SIZE = 32
# Well above the defaults, so that every nuisance shows at 32 px.
STRONG = capture.Capture(
    exposure=1.0,
    white_balance=0.2,
    gamma=0.5,
    noise=0.05,
    shift_px=20.0,
    rotate_deg=5.0,
    scale=0.05,
)
PHOTOMETRIC_ONLY = dataclasses.replace(STRONG, shift_px=0.0, rotate_deg=0.0, scale=0.0)
BATCH = 4  # most tests share one batch shape and a traced seed, so that they share compiles
apply_jit = jax.jit(capture.apply, static_argnums=(3,))


def _images(n=BATCH, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    return {key: rng.random((n, size, size, 3), dtype=np.float32) for key in ("bg", "bg_fg")}


def _index(*values):
    return np.asarray(values, np.int32)


def _reference_nuisances(u, params, height, width):
    """The documented draw -> parameter formulas in float64 (layout: selected, per shot
    exposure, three white-balance gains, gamma, noise; shift x, shift y, rotation, scale)."""
    u = np.asarray(u, np.float64)
    signed = 2 * u - 1
    shots = np.stack([u[:, 1:7], u[:, 7:13]], axis=1)
    exposure = 2 ** ((2 * shots[..., :1] - 1) * params.exposure)
    balance = 1 + (2 * shots[..., 1:4] - 1) * params.white_balance
    pixels = params.shift_px * min(height, width) / 224
    return {
        "selected": u[:, 0] < params.prob,
        "gain": exposure * balance / balance.mean(-1, keepdims=True),
        "gamma": (1 + params.gamma) ** (2 * shots[..., 4] - 1),
        "noise": shots[..., 5] * params.noise,
        "shift": signed[:, 13:15] * pixels,
        "angle": signed[:, 15] * params.rotate_deg * np.pi / 180,
        "scale": 1 + signed[:, 16] * params.scale,
    }


def _bilinear_reference(image, shift, angle, scale):
    """One (H,W,C) image warped in float64: output pixel q samples the input at
    c + R(-angle) (q - c - shift) / scale, bilinear, coordinates clamped to the image."""
    height, width, _ = image.shape
    cx, cy = (width - 1) / 2, (height - 1) / 2
    qy, qx = np.mgrid[0:height, 0:width].astype(np.float64)
    dx, dy = qx - cx - shift[0], qy - cy - shift[1]
    sx = np.clip(cx + (np.cos(angle) * dx + np.sin(angle) * dy) / scale, 0, width - 1)
    sy = np.clip(cy + (-np.sin(angle) * dx + np.cos(angle) * dy) / scale, 0, height - 1)
    x0 = np.minimum(np.floor(sx).astype(int), width - 2)
    y0 = np.minimum(np.floor(sy).astype(int), height - 2)
    wx, wy = (sx - x0)[..., None], (sy - y0)[..., None]
    image = image.astype(np.float64)
    return (
        (1 - wy) * (1 - wx) * image[y0, x0]
        + (1 - wy) * wx * image[y0, x0 + 1]
        + wy * (1 - wx) * image[y0 + 1, x0]
        + wy * wx * image[y0 + 1, x0 + 1]
    )


def _record_reference(x, gain, gamma, std_at_white, normals):
    """One shot in float64: channel gains, saturation, tone curve, read + shot noise, clip."""
    x = np.clip(x * gain, 0, 1) ** gamma
    read = capture.READ_FRACTION * std_at_white
    shot = std_at_white**2 - read**2  # variance per unit signal: std at white is std_at_white
    return np.clip(x + np.sqrt(read**2 + shot * x) * normals, 0, 1)


def test_all_strengths_zero_or_prob_zero_is_the_identity():
    images = _images(4)
    index = _index(0, 1, 2, 3)
    off = capture.Capture.off()
    runs = [(capture.apply, off), (apply_jit, off), (apply_jit, capture.Capture(prob=0.0))]
    for fn, params in runs + [(apply_jit, dataclasses.replace(STRONG, prob=0.0))]:
        out = fn(images, index, 3, params)
        for key in images:
            np.testing.assert_array_equal(np.asarray(out[key]), images[key])


def test_unselected_samples_pass_through_bit_for_bit():
    params = dataclasses.replace(STRONG, prob=0.5)
    index = _index(100, 101, 102, 103)
    selected = np.asarray(capture.draws(3, index))[:, 0] < 0.5
    assert 0 < selected.sum() < BATCH
    images = _images()
    out = apply_jit(images, index, 3, params)
    for key in images:
        result = np.asarray(out[key])
        np.testing.assert_array_equal(result[~selected], images[key][~selected])
        changed = np.abs(result - images[key]).reshape(BATCH, -1).max(1)
        assert np.all(changed[selected] > 1e-3)


def test_a_samples_nuisances_depend_only_on_the_seed_and_its_index():
    images = _images(4)
    index = _index(40, 41, 42, 43)
    batch = apply_jit(images, index, 5, STRONG)
    alone = apply_jit({k: v[2:3] for k, v in images.items()}, index[2:3], 5, STRONG)
    order = np.array([3, 0, 2, 1])
    shuffled = apply_jit({k: v[order] for k, v in images.items()}, index[order], 5, STRONG)
    np.testing.assert_array_equal(
        np.asarray(capture.draws(5, index))[2], np.asarray(capture.draws(5, index[2:3]))[0]
    )
    for shot in (0, 1):
        np.testing.assert_array_equal(
            np.asarray(capture.normals(5, index, shot, SIZE, SIZE))[2],
            np.asarray(capture.normals(5, index[2:3], shot, SIZE, SIZE))[0],
        )
    for key in images:
        # Bit-identical draws; the arithmetic may differ in the last bit with how XLA
        # vectorises each batch shape.
        np.testing.assert_allclose(
            np.asarray(alone[key])[0], np.asarray(batch[key])[2], atol=2e-6, rtol=0
        )
        np.testing.assert_allclose(
            np.asarray(shuffled[key])[2], np.asarray(batch[key])[2], atol=2e-6, rtol=0
        )
    other_index = apply_jit({k: v[2:3] for k, v in images.items()}, _index(1042), 5, STRONG)
    other_seed = apply_jit({k: v[2:3] for k, v in images.items()}, index[2:3], 6, STRONG)
    assert not np.allclose(np.asarray(other_index["bg"]), np.asarray(alone["bg"]))
    assert not np.allclose(np.asarray(other_seed["bg"]), np.asarray(alone["bg"]))


def test_a_stream_apart_from_the_photometric_augmentation():
    index = _index(0, 1, 2)
    u = np.asarray(capture.draws(0, index))
    key = jax.random.PRNGKey(0)
    photometric = np.stack(
        [np.asarray(jax.random.uniform(jax.random.fold_in(key, i), (6,))) for i in index]
    )
    assert not np.any(np.isin(u, photometric))
    u = np.asarray(capture.draws(0, np.arange(20000, dtype=np.int32)))
    assert u.shape == (20000, capture.NUM_DRAWS) and u.min() >= 0 and u.max() < 1
    assert np.abs(np.corrcoef(u.T) - np.eye(capture.NUM_DRAWS)).max() < 0.04


def test_plate_and_scene_get_separate_draws():
    image = _images()["bg"]
    index = _index(5, 6, 7, 8)
    out = apply_jit({"bg": image, "bg_fg": image}, index, 0, PHOTOMETRIC_ONLY)
    difference = np.abs(np.asarray(out["bg"]) - np.asarray(out["bg_fg"]))
    assert np.all(difference.reshape(BATCH, -1).mean(1) > 1e-3)
    drawn = capture.nuisances(capture.draws(0, index), PHOTOMETRIC_ONLY, SIZE, SIZE)
    for field in ("gain", "gamma", "noise"):
        values = np.asarray(getattr(drawn, field))
        assert np.all(values[:, 0] != values[:, 1])
    plate_noise, scene_noise = (capture.normals(0, index, shot, SIZE, SIZE) for shot in (0, 1))
    assert abs(np.corrcoef(np.ravel(plate_noise), np.ravel(scene_noise))[0, 1]) < 0.03


def test_nuisances_follow_the_documented_formulas():
    params = dataclasses.replace(STRONG, prob=0.6)
    u = np.asarray(capture.draws(1, np.arange(64, dtype=np.int32)))
    drawn = capture.nuisances(u, params, 48, 64)
    want = _reference_nuisances(u, params, 48, 64)
    np.testing.assert_array_equal(np.asarray(drawn.selected), want["selected"])
    for field in ("gain", "gamma", "noise", "shift", "angle", "scale"):
        np.testing.assert_allclose(
            np.asarray(getattr(drawn, field)), want[field], rtol=2e-6, atol=1e-7, err_msg=field
        )
    gain = want["gain"]
    balance = gain / gain.mean(-1, keepdims=True)
    assert np.all(np.abs(np.log2(gain.mean(-1))) <= params.exposure + 1e-9)
    assert np.all(np.abs(balance - 1) <= 2 * params.white_balance / (1 - params.white_balance))
    assert np.all((want["gamma"] >= 1 / 1.5) & (want["gamma"] <= 1.5))
    assert np.all(np.abs(want["shift"]) <= params.shift_px * 48 / 224)


@pytest.mark.parametrize("params", [STRONG, capture.Capture()], ids=["strong", "defaults"])
def test_apply_matches_a_numpy_float64_reference(params):
    images = _images()
    index = _index(30, 31, 32, 33)
    out = apply_jit(images, index, 2, params)
    u = np.asarray(capture.draws(2, index))
    want = _reference_nuisances(u, params, SIZE, SIZE)
    normals = np.stack([capture.normals(2, index, shot, SIZE, SIZE) for shot in (0, 1)], 1)
    for i in range(BATCH):
        plate = _bilinear_reference(
            images["bg"][i], want["shift"][i], want["angle"][i], want["scale"][i]
        )
        for shot, (key, x) in enumerate((("bg", plate), ("bg_fg", images["bg_fg"][i]))):
            expected = _record_reference(
                x,
                want["gain"][i, shot],
                want["gamma"][i, shot],
                want["noise"][i, shot],
                normals[i, shot].astype(np.float64),
            )
            np.testing.assert_allclose(
                np.asarray(out[key])[i], expected, atol=3e-5, rtol=0, err_msg=f"sample {i} {key}"
            )


@pytest.mark.parametrize("dx, dy", [(2, -1), (-3, 4), (0, 0)])
def test_an_integer_translation_shifts_with_edge_replication(dx, dy):
    image = _images(1)["bg"]
    out = capture.warp(
        image, np.array([[dx, dy]], np.float32), np.zeros(1, np.float32), np.ones(1, np.float32)
    )
    pad = 5
    padded = np.pad(image[0], ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    want = padded[pad - dy : pad - dy + SIZE, pad - dx : pad - dx + SIZE]
    np.testing.assert_array_equal(np.asarray(out)[0], want)


def test_a_small_rotation_matches_float64_bilinear():
    images = _images(3, size=48)["bg"]
    shift = np.array([[0.3, -0.7], [1.5, 0.25], [0.0, 0.0]], np.float32)
    angle = np.deg2rad(np.array([0.5, -0.4, 1.0])).astype(np.float32)
    scale = np.array([1.01, 0.995, 1.0], np.float32)
    out = np.asarray(jax.jit(capture.warp)(images, shift, angle, scale))
    for i in range(3):
        want = _bilinear_reference(
            images[i], shift[i].astype(np.float64), np.float64(angle[i]), np.float64(scale[i])
        )
        np.testing.assert_allclose(out[i], want, atol=1e-5, rtol=0)


def test_a_quarter_turn_turns_the_content_clockwise_about_the_centre():
    image = _images(1)["bg"]
    no_shift, one = np.zeros((1, 2), np.float32), np.ones(1, np.float32)
    out = capture.warp(image, no_shift, np.full(1, np.pi / 2, np.float32), one)
    np.testing.assert_allclose(np.asarray(out)[0], np.rot90(image[0], k=-1), atol=1e-5)


@pytest.mark.parametrize("grey", [0.2, 0.5, 0.8])
def test_noise_on_flat_grey_has_the_models_std(grey):
    params = dataclasses.replace(capture.Capture.off(), noise=0.05)
    index = np.arange(4, dtype=np.int32)
    flat = np.full((4, 64, 64, 3), grey, np.float32)
    out = apply_jit({"bg": flat, "bg_fg": flat}, index, 9, params)
    strength = np.asarray(capture.nuisances(capture.draws(9, index), params, 64, 64).noise)
    read = 0.25 * strength  # a quarter of the std at white, the model's read noise
    model_std = np.sqrt(read**2 + (strength**2 - read**2) * grey)
    for shot, key in enumerate(("bg", "bg_fg")):
        residual = np.asarray(out[key]).reshape(4, -1) - grey
        np.testing.assert_allclose(residual.std(1), model_std[:, shot], rtol=0.1)
        assert np.all(np.abs(residual.mean(1)) < 0.1 * model_std[:, shot])


def test_targets_and_the_scenes_geometry_are_left_alone():
    images = _images(4)
    targets = {
        "mask": np.ones((4, SIZE, SIZE, 1), np.float32),
        "depth": np.linspace(0, 1, 4 * SIZE * SIZE, dtype=np.float32).reshape(4, SIZE, SIZE, 1),
    }
    geometry_only = dataclasses.replace(
        capture.Capture.off(), shift_px=30.0, rotate_deg=3.0, scale=0.02
    )
    out = apply_jit({**images, **targets}, _index(0, 1, 2, 3), 0, geometry_only)
    for key, target in targets.items():
        np.testing.assert_array_equal(np.asarray(out[key]), target)
    np.testing.assert_array_equal(np.asarray(out["bg_fg"]), images["bg_fg"])
    assert np.all(np.abs(np.asarray(out["bg"]) - images["bg"]).reshape(4, -1).max(1) > 0.1)


def test_jit_gives_what_eager_gives():
    images = _images()
    index = _index(11, 12, 13, 14)
    eager = capture.apply(images, index, 4, STRONG)
    jitted = apply_jit(images, index, 4, STRONG)
    for key in images:  # fused, the warp's float32 coordinates may round otherwise
        assert jitted[key].dtype == np.float32 and jitted[key].shape == images[key].shape
        np.testing.assert_allclose(
            np.asarray(jitted[key]), np.asarray(eager[key]), atol=1e-5, rtol=0
        )
    static_seed = jax.jit(capture.apply, static_argnums=(2, 3))(images, index, 4, STRONG)
    for key in images:
        np.testing.assert_array_equal(np.asarray(static_seed[key]), np.asarray(jitted[key]))
    assert hash(capture.Capture()) == hash(capture.Capture())
