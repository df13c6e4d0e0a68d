"""The held-out photograph pairs: today's set unchanged, the shape families, the capture
nuisances one by one, the sets' splits and the background-subtraction reference."""

import hashlib

import cv2
import numpy as np
import pytest

from jaxsegdepth import metrics
from jaxsegdepth.data import photos

# sha256 of render's arrays and generate's bytes for (seed, index, size), before the shape
# families and nuisances existed: mode=evaluate's pairs must not move.
DEFAULT_DIGESTS = {
    (0, 0, 96): "84128e1925a1f96ea6818aa5692cb1597543c31d44ba314d5dd3e0998b0d1395",
    (0, 3, 96): "2fc4a21802ea5322d304cae85404d24153fccf11833dbf4c50f4291c5b62060d",
    (1, 5, 224): "d9378463a5374c4f3724044ca11c613828a001a7005915b7749074d316e60104",
}
NEW_FAMILIES = ("blob", "contour")

_THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)  # |bg - bg_fg| cut-offs tried
_IOU_SMOOTH = 1e-6  # as metrics.iou's


def _threshold_ious(
    decoded: list[dict[str, np.ndarray]], thresholds: np.ndarray = _THRESHOLDS
) -> np.ndarray:
    """Mean over pairs of the IoU (smoothed as metrics.iou) of `max_channel |bg - bg_fg| > t`
    with the mask in [0, 1], for each t of `thresholds`: background subtraction's score, in
    float32 arithmetic as the evaluator's (images times 1/255, then the difference)."""
    thresholds = np.asarray(thresholds, np.float32)
    unit = np.float32(1 / 255)
    total = np.zeros(len(thresholds))
    for pair in decoded:
        bg, bg_fg = (pair[key].astype(np.float32) * unit for key in ("bg", "bg_fg"))
        difference = np.abs(bg - bg_fg).max(axis=-1)
        target = pair["mask"].astype(np.float32) * unit
        predicted = difference[None] > thresholds[:, None, None]
        overlap = np.sum(predicted * target, axis=(1, 2))
        union = np.sum(predicted, axis=(1, 2)) + target.sum() - overlap
        total += (overlap + _IOU_SMOOTH) / (union + _IOU_SMOOTH)
    return total / len(decoded)


def _best_threshold(decoded: list[dict[str, np.ndarray]]) -> tuple[float, float]:
    """The threshold of `_THRESHOLDS` with the highest `threshold_ious` on `decoded`, and that
    IoU."""
    ious = _threshold_ious(decoded)
    best = int(np.argmax(ious))
    return float(_THRESHOLDS[best]), float(ious[best])


def _digest(seed: int, index: int, size: int) -> str:
    digest = hashlib.sha256()
    pair = photos.render(seed, index, size)
    for key in ("bg", "bg_fg", "mask"):
        digest.update(pair[key].tobytes())
    for key, data in sorted(photos.generate(seed, index, size).items()):
        digest.update(key.encode())
        digest.update(data)
    return digest.hexdigest()


@pytest.mark.parametrize("args", sorted(DEFAULT_DIGESTS))
def test_the_default_pairs_are_unchanged(args):
    assert _digest(*args) == DEFAULT_DIGESTS[args]


def test_the_photos_set_is_the_default_pairs_and_the_splits_are_disjoint():
    photo_set = photos.SETS["photos"]
    assert photos.pairs(photo_set, 2, 2, 64) == [photos.generate(0, i, 64) for i in (2, 3)]
    capture = photos.SETS["photos_capture"]
    first = photos.pairs(capture, 0, 3, 64)
    assert first == photos.pairs(capture, 0, 3, 64)  # deterministic
    tuning = photos.pairs(capture, 0, 3, 64, split="tuning")
    assert not any(pair == other for pair in first for other in tuning)
    assert tuning[1:] == photos.pairs(capture, 1, 2, 64, split="tuning")
    with pytest.raises(ValueError, match="split"):
        photos.pairs(capture, photos.SPLIT_PAIRS - 1, 2, 64)
    with pytest.raises(ValueError, match="expected"):
        photos.PhotoSet("bad", ("cube",))
    with pytest.raises(ValueError, match="expected"):
        photos.render(0, 0, 64, nuisances=("blur",))


@pytest.mark.parametrize("family", photos.SHAPES)
def test_clean_composites_equal_the_plate_outside_the_mask(family):
    for index in range(4):
        pair = photos.render(0, index, 96, (family,))
        outside = pair["mask"] == 0
        np.testing.assert_array_equal(pair["bg_fg"][outside], pair["bg"][outside])
        assert np.any(pair["bg_fg"][~outside] != pair["bg"][~outside])
        assert set(np.unique(pair["mask"])) == {0, 255}


@pytest.mark.parametrize("family", photos.SHAPES)
def test_each_shape_family_covers_a_fair_share_and_its_own_shapes(family):
    masks = np.stack([photos.render(0, i, 96, (family,))["mask"] > 0 for i in range(16)])
    assert masks.any(axis=(1, 2)).all()
    assert 0.03 < masks.mean() < 0.6
    if family in NEW_FAMILIES:
        figures = np.stack([photos.render(0, i, 96)["mask"] > 0 for i in range(16)])
        overlap = (masks & figures).sum(axis=(1, 2)) / (masks | figures).sum(axis=(1, 2))
        assert not np.any(np.all(masks == figures, axis=(1, 2)))
        assert overlap.mean() < 0.3


def test_the_capture_nuisances_cost_background_subtraction_its_threshold():
    scores = {
        name: _best_threshold(
            [photos.decode(pair) for pair in photos.pairs(photos.SETS[name], 0, 24, 96)]
        )
        for name in ("photos_clean", "photos_capture")
    }
    (_, clean), (_, capture) = scores["photos_clean"], scores["photos_capture"]
    assert clean > 0.8
    assert capture < clean - 0.25


def test_shadows_darken_the_background_only():
    darkened = 0
    for index in range(6):
        clean = photos.render(0, index, 96, NEW_FAMILIES)
        shaded = photos.render(0, index, 96, NEW_FAMILIES, ("shadow",))
        np.testing.assert_array_equal(shaded["mask"], clean["mask"])
        np.testing.assert_array_equal(shaded["bg"], clean["bg"])
        inside = clean["mask"] > 0
        np.testing.assert_array_equal(shaded["bg_fg"][inside], clean["bg_fg"][inside])
        assert np.all(shaded["bg_fg"] <= clean["bg_fg"])
        darkened += np.sum(shaded["bg_fg"][~inside] < 0.9 * clean["bg_fg"][~inside].astype(float))
    assert darkened > 0


def test_the_plate_moves_1_to_2_pixels_and_the_composite_stays():
    window = cv2.createHanningWindow((96, 96), cv2.CV_32F)
    for index in range(6):
        clean = photos.render(0, index, 96, ("blob",))
        moved = photos.render(0, index, 96, ("blob",), ("shift",))
        np.testing.assert_array_equal(moved["bg_fg"], clean["bg_fg"])
        np.testing.assert_array_equal(moved["mask"], clean["mask"])
        grey = [pair["bg"].astype(np.float32).mean(axis=-1) for pair in (clean, moved)]
        (dx, dy), _ = cv2.phaseCorrelate(*grey, window)
        assert 0.85 < np.hypot(dx, dy) < 2.15


def test_exposure_noise_and_jpeg_make_two_shots():
    gains, steps, noise = [], [], []
    for index in range(6):
        clean = photos.render(0, index, 96, ("blob",))
        outside = clean["mask"] == 0
        exposed = photos.render(0, index, 96, ("blob",), ("exposure",))
        np.testing.assert_array_equal(exposed["bg"], clean["bg"])
        gains.append(exposed["bg_fg"][outside].mean(axis=0) / clean["bg"][outside].mean(axis=0))
        stepped = photos.render(0, index, 96, ("blob",), ("exposure_step",))
        unclipped = outside & (clean["bg"].max(axis=-1) < 170)  # 170 * 1.5 stays under 255
        steps.append(np.log2(stepped["bg_fg"][unclipped].mean() / clean["bg"][unclipped].mean()))
        noisy = photos.render(0, index, 96, ("blob",), ("noise",))
        difference = noisy["bg_fg"].astype(float) - noisy["bg"]
        noise.append(difference[outside].std())
        compressed = photos.generate(0, index, 96, ("blob",), ("jpeg",))
        assert compressed == photos.generate(0, index, 96, ("blob",), ("jpeg",))
    gains = np.array(gains)
    assert np.all((gains > 0.78) & (gains < 1.22)) and np.abs(gains - 1).max() > 0.05
    # a quarter to half a stop either way, the white balance's mean moving it by 0.08 at most
    assert np.all((np.abs(steps) > 0.17) & (np.abs(steps) < 0.58)), steps
    assert min(steps) < 0 < max(steps)
    assert all(1.2 < std < 6.0 for std in noise)
    qualities_differ = [
        photos.generate(0, i, 64, ("blob",), ("jpeg",))["bg"]
        != photos.generate(0, i, 64, ("blob",))["bg"]
        for i in range(4)
    ]
    assert any(qualities_differ)


def test_best_threshold_scores_the_difference_mask_per_image():
    bg = np.zeros((20, 20, 3), np.uint8)
    bg_fg = bg.copy()
    bg_fg[5:15, 5:15, 1] = 51  # the object: 0.2 away from the plate in one channel
    bg_fg[0, :20, 2] = 26  # a flicker of 0.102 outside it
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 255
    pair = {"bg": bg, "bg_fg": bg_fg, "mask": mask}
    ious = _threshold_ious([pair, pair], np.array([0.05, 0.15, 0.25]))
    np.testing.assert_allclose(ious, [100 / 120, 1.0, 1e-6 / (100 + 1e-6)], rtol=1e-6)
    assert _best_threshold([pair]) == pytest.approx((0.11, 1.0))


def test_threshold_ious_agree_with_metrics_iou():
    decoded = [
        photos.decode(pair) for pair in photos.pairs(photos.SETS["photos_capture"], 0, 6, 64)
    ]
    unit = np.float32(1 / 255)
    bg, bg_fg = (np.stack([pair[key] for pair in decoded]) * unit for key in ("bg", "bg_fg"))
    mask = np.stack([pair["mask"] for pair in decoded])[..., None] * unit
    difference = np.abs(bg - bg_fg).max(axis=-1, keepdims=True)
    for threshold in (0.05, 0.2, 0.33):
        expected = float(metrics.iou(difference, mask, threshold))
        assert _threshold_ious(decoded, [threshold])[0] == pytest.approx(expected, rel=1e-5)
