"""On-device preprocessing (`preprocess`): normalisation and photometric augmentation of
uint8 batches, against an independent NumPy float64 formula, and its per-sample determinism."""

import jax
import numpy as np
import pytest

from jaxsegdepth import capture, errors, preprocess
from jaxsegdepth.modes import benchmark
from jaxsegdepth.data import datasets
from jaxsegdepth.data.normalization import MODEST_NORMALIZATION

RES = 8

# NTSC RGB -> YIQ (the hue rotation's colour space) and the Rec. 601 luma, written out here.
YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _batch(n, seed=0, index=None):
    """A loader-like uint8 batch (random images), with these sample indices."""
    batch = benchmark.synthetic_batch(n, RES, seed)
    if index is not None:
        batch["index"] = np.asarray(index, np.int32)
    return batch


def _reference(image, u, params):
    """One sample's augmentation in float64 from its six uniforms `u` (the module's formula:
    hue rotation and saturation in YIQ, value scale, clip; contrast about mean luma, clip)."""
    x = image.astype(np.float64) / 255.0
    if u[0] < params.hsv_prob:
        angle = 2 * np.pi * (2 * u[2] - 1) * params.hue
        saturation = 1 + (2 * u[3] - 1) * params.saturation
        value = 1 + (2 * u[4] - 1) * params.value
        yiq = x @ YIQ.T
        i, q = yiq[..., 1].copy(), yiq[..., 2].copy()
        yiq[..., 1] = saturation * (np.cos(angle) * i - np.sin(angle) * q)
        yiq[..., 2] = saturation * (np.sin(angle) * i + np.cos(angle) * q)
        x = np.clip(value * (yiq @ np.linalg.inv(YIQ).T), 0, 1)
    if u[1] < params.contrast_prob:
        factor = 1 + (2 * u[5] - 1) * params.contrast
        mean = (x @ np.array([0.299, 0.587, 0.114])).mean()
        x = np.clip((x - mean) * factor + mean, 0, 1)
    return x


def _normalised(x, key):
    mean, std = (np.asarray(v, np.float64) for v in MODEST_NORMALIZATION[key])
    return (x - mean) / std


@pytest.mark.parametrize("probability", [1.0, 0.5])
def test_augmented_inputs_match_a_numpy_float64_formula(probability):
    params = preprocess.Photometric(hsv_prob=probability, contrast_prob=probability)
    prep = preprocess.from_normalization(MODEST_NORMALIZATION, params, seed=3)
    batch = _batch(12, index=np.arange(100, 112))
    out = jax.jit(lambda b: prep(b, train=True))(batch)
    u = np.asarray(preprocess.draws(3, batch["index"]), np.float64)
    if probability < 1:  # some samples jittered, some left alone, in both ways
        assert 0 < np.sum(u[:, 0] < probability) < 12 and 0 < np.sum(u[:, 1] < probability) < 12
    for key in ("bg", "bg_fg"):
        want = np.stack(
            [_normalised(_reference(batch[key][i], u[i], params), key) for i in range(12)]
        )
        np.testing.assert_allclose(np.asarray(out[key]), want, atol=3e-5, rtol=0)
    for head in ("mask", "depth"):  # targets never augmented: exactly uint8 / 255
        np.testing.assert_array_equal(
            np.asarray(out[head]), batch[head].astype(np.float32) * np.float32(1 / 255)
        )
    assert "index" not in out and all(v.dtype == np.float32 for v in out.values())


def test_evaluation_normalises_without_augmenting():
    prep = preprocess.from_normalization(MODEST_NORMALIZATION, preprocess.Photometric(1.0, 1.0))
    batch = _batch(3)
    batch["weights"] = np.array([1.0, 1.0, 0.0], np.float32)
    out = prep({k: v for k, v in batch.items() if k != "index"}, train=False)
    for key in ("bg", "bg_fg"):
        np.testing.assert_allclose(
            np.asarray(out[key]), _normalised(batch[key] / 255.0, key), atol=2e-6, rtol=0
        )
    np.testing.assert_array_equal(np.asarray(out["weights"]), batch["weights"])
    # No augmentation set: train normalises only, too.
    plain = preprocess.from_normalization(MODEST_NORMALIZATION)(batch, train=True)
    np.testing.assert_allclose(np.asarray(plain["bg"]), np.asarray(out["bg"]), atol=0, rtol=0)


def test_one_draw_per_sample_applied_to_both_inputs():
    params = preprocess.Photometric(1.0, 1.0)
    image = _batch(4)["bg"]
    out = preprocess.photometric(
        {"bg": image / 255.0, "bg_fg": image / 255.0}, np.arange(4, dtype=np.int32), 0, params
    )
    np.testing.assert_array_equal(np.asarray(out["bg"]), np.asarray(out["bg_fg"]))
    changed = np.abs(np.asarray(out["bg"]) - image / 255.0).reshape(4, -1).max(1)
    assert np.all(changed > 1e-3)
    grey = np.full((1, RES, RES, 3), 0.5)  # a grey image stays grey (hue/saturation act on chroma)
    out = preprocess.photometric({"bg": grey}, np.array([7], np.int32), 0, params)["bg"]
    np.testing.assert_allclose(np.asarray(out), np.asarray(out)[..., :1].repeat(3, -1), atol=1e-6)
    identity = preprocess.hsv_matrices(np.zeros(1), np.ones(1), np.ones(1))
    np.testing.assert_allclose(np.asarray(identity)[0], np.eye(3), atol=1e-6)


def test_a_samples_augmentation_depends_only_on_the_seed_and_its_index():
    prep = preprocess.from_normalization(
        MODEST_NORMALIZATION, preprocess.Photometric(1.0, 1.0), seed=5
    )
    step = jax.jit(lambda b: prep(b, train=True)["bg"])
    batch = _batch(4, index=[40, 41, 42, 43])
    alone = {k: v[2:3] for k, v in batch.items()}  # sample 42 without its neighbours
    # The draws are bit-identical; the arithmetic is, up to how XLA vectorises each batch
    # shape (a resume repeats the shape, and its result bit for bit: tests/test_train.py).
    np.testing.assert_array_equal(
        np.asarray(preprocess.draws(5, batch["index"]))[2],
        np.asarray(preprocess.draws(5, alone["index"]))[0],
    )
    np.testing.assert_allclose(
        np.asarray(step(batch))[2], np.asarray(step(alone))[0], atol=2e-6, rtol=0
    )
    shuffled = {k: v[::-1] for k, v in batch.items()}
    np.testing.assert_array_equal(np.asarray(step(shuffled))[::-1], np.asarray(step(batch)))
    np.testing.assert_array_equal(np.asarray(step(batch)), np.asarray(step(batch)))
    # Another index, or another seed, draws another augmentation for the same image.
    other = dict(alone, index=np.array([1042], np.int32))
    assert not np.array_equal(np.asarray(step(other)), np.asarray(step(alone)))
    reseeded = preprocess.from_normalization(
        MODEST_NORMALIZATION, preprocess.Photometric(1.0, 1.0), seed=6
    )
    assert not np.array_equal(
        np.asarray(reseeded(alone, train=True)["bg"]), np.asarray(step(alone))
    )


def test_draws_follow_the_configured_probabilities():
    u = np.asarray(preprocess.draws(0, np.arange(20000, dtype=np.int32)))
    assert u.shape == (20000, preprocess.NUM_DRAWS) and u.min() >= 0 and u.max() < 1
    params = preprocess.Photometric()  # 0.25 each, as the reference's recipes
    assert abs(np.mean(u[:, 0] < params.hsv_prob) - 0.25) < 0.015
    assert abs(np.mean(u[:, 1] < params.contrast_prob) - 0.25) < 0.015
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03  # independent draws


def test_capture_nuisances_follow_the_photometric_jitter_in_training_only():
    """`augment.capture` on: the train step's inputs are the photometric jitter's, then each
    shot's capture nuisances (`capture.apply`, its own tests check it against NumPy), then the
    normalisation; evaluation sees the images as they are."""
    from configs import default

    config = default.get_config()
    config.augment.photometric, config.augment.capture.enabled = True, True
    prep = preprocess.from_config(config.augment, MODEST_NORMALIZATION, 5, "synthetic_museum")
    assert prep.capture == capture.Capture(
        **{field: float(config.augment.capture[field]) for field in preprocess.CAPTURE_FIELDS}
    )
    batch = _batch(4, index=np.arange(20, 24))
    jittered = preprocess.photometric(
        {k: preprocess.unit(batch[k]) for k in ("bg", "bg_fg")}, batch["index"], 5, prep.augment
    )
    captured = capture.apply(jittered, batch["index"], 5, prep.capture)
    out = jax.jit(lambda b: prep(b, train=True))(batch)
    for key in ("bg", "bg_fg"):
        want = _normalised(np.asarray(captured[key], np.float64), key)
        np.testing.assert_allclose(out[key], want, atol=2e-4)
    plain = prep(batch, train=False)
    np.testing.assert_allclose(
        plain["bg"], _normalised(batch["bg"].astype(np.float64) / 255, "bg"), atol=1e-5
    )
    config.augment.capture.enabled = False
    assert (
        preprocess.from_config(config.augment, MODEST_NORMALIZATION, 5, "synthetic_museum").capture
        is None
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("noise", -0.1, r"augment.capture.noise=-0.1: expected a number >= 0"),
        ("prob", 1.5, r"augment.capture.prob=1.5: expected a probability"),
        ("scale", 1.0, r"augment.capture.scale=1.0: expected < 1"),
        ("rotate_deg", -0.5, r"augment.capture.rotate_deg=-0.5: expected a number >= 0"),
    ],
)
def test_bad_capture_strengths_are_refused_in_one_line(field, value, message):
    from configs import default

    config = default.get_config()
    config.augment.capture[field] = value
    with pytest.raises(errors.UsageError, match=f"^{message}$"):
        preprocess.validate(config.augment)


def test_bad_photometric_probabilities_are_refused_in_one_line():
    from configs import default

    config = default.get_config()
    config.augment.contrast_prob = 1.5
    with pytest.raises(
        errors.UsageError, match=r"^augment.contrast_prob=1.5: expected a probability in \[0, 1\]$"
    ):
        preprocess.validate(config.augment)


def test_capture_nuisances_are_auto_by_default_without_moving_the_plate():
    """The default recipe: "auto", on for synthetic_museum and off for real captures, the plate
    never moved (registration undoes a nudged camera); off in the published recipes (the
    reference trains without them); a command line's strings are read."""
    from configs import rmse_bce_dice

    augment = rmse_bce_dice.get_config().augment
    on = {name: preprocess.capture_enabled(augment, name) for name in datasets.DATASETS}
    assert on == {"synthetic_museum": True, "modest_museum": False, "folder": False}
    drawn = preprocess.from_config(augment, MODEST_NORMALIZATION, 0, "synthetic_museum").capture
    assert (drawn.shift_px, drawn.rotate_deg, drawn.scale) == (0.0, 0.0, 0.0)
    assert not drawn.moves_plate and drawn.exposure == 0.25 and drawn.noise == 0.02
    published = rmse_bce_dice.get_config("published").augment
    assert not any(preprocess.capture_enabled(published, name) for name in datasets.DATASETS)
    for text, want in (("True", True), ("false", False)):
        augment.capture.enabled = text
        assert preprocess.capture_enabled(augment, "folder") is want
    augment.capture.enabled = 1
    with pytest.raises(
        errors.UsageError, match=r"^augment.capture.enabled=1: expected True, False or 'auto'$"
    ):
        preprocess.validate(augment)
