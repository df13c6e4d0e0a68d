"""Plate registration (jaxsegdepth/align.py): the motion found against the true one, the warp and
its uncovered border, the refusals, the clip tracker, and the moved-camera photo sets."""

import dataclasses
import os
import sys

import ml_collections
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default
from jaxsegdepth import align, errors
from jaxsegdepth.data import photo_clips, photos

SIZE = 160
BOX = (40, 60, 400)  # a window of the astronaut photograph, seen at SIZE pixels


def _views(move=(0.0, 0.0), degrees=0.0):
    """(scene, plate) of one photograph: the plate's camera moved by `move` (dx, dy) pixels and
    turned by `degrees`; a flat grey object covers a third of the scene."""
    image = photos.photo("astronaut")
    scene = photos.view(image, BOX, SIZE).copy()
    scene[30:110, 40:110] = (90, 140, 60)
    return scene, photos.view(image, BOX, SIZE, move, degrees)


def _true_plate_pixel(points: np.ndarray, move, degrees) -> np.ndarray:
    """Where scene pixels (N, 2) are in the moved plate: the inverse of the plate's window map,
    written out in float64 (pixel centres; rotation about the image centre)."""
    turn = np.deg2rad(degrees)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    centre = np.full(2, SIZE / 2 - 0.5)
    return (points - centre) @ rotation - np.asarray(move) + centre


def _mapped(warp: np.ndarray, points: np.ndarray) -> np.ndarray:
    moved = np.c_[points, np.ones(len(points))] @ warp.T
    return moved[:, :2] / moved[:, 2:]


CORNERS = np.array([[0, 0], [SIZE - 1, 0], [0, SIZE - 1], [SIZE - 1, SIZE - 1], [80, 80]], float)


@pytest.mark.parametrize(
    "motion, move, degrees",
    [
        ("translation", (3.4, -2.2), 0.0),
        ("euclidean", (-6.5, 4.0), 0.9),
        ("affine", (2.0, 5.5), -0.6),
        ("homography", (-1.5, -7.0), 0.4),
    ],
)
def test_the_motion_found_is_the_camera_s(motion, move, degrees):
    scene, plate = _views(move, degrees)
    found = align.estimate(plate, scene, align.Settings(motion=motion))
    assert found.status == "aligned"
    error = np.abs(_mapped(found.warp, CORNERS) - _true_plate_pixel(CORNERS, move, degrees))
    assert error.max() < 0.25  # pixels, at every corner and the centre
    assert found.rotation_deg == pytest.approx(-degrees, abs=0.05)  # scene -> plate: undone
    assert found.correlation > 0.95
    assert found.to_json()["dx"] == pytest.approx(found.warp[0, 2], abs=1e-3)


def test_the_registered_plate_matches_the_scene_and_its_border_is_the_scene():
    scene, plate = _views((5.0, 0.0))
    registered, found = align.register(plate, scene, align.Settings(motion="translation"))
    assert found.applied and registered.shape == scene.shape and registered.dtype == np.uint8
    background = np.ones(scene.shape[:2], bool)
    background[30:110, 40:110] = False
    before = np.abs(plate.astype(float) - scene).max(-1)[background].mean()
    after = np.abs(registered.astype(float) - scene).max(-1)[background].mean()
    assert after < before / 4
    # the plate's camera moved 5 px right, so scene pixel x is plate pixel x - 5: the scene's
    # first 5 columns (and the interpolation's neighbourhood) have no plate and keep the scene
    np.testing.assert_array_equal(registered[:, :6], scene[:, :6])
    # inside, the plate's own pixels 5 columns back (the estimate is within 0.05 px of 5)
    inside = registered[2:-2, 8:].astype(int) - plate[2:-2, 3:-5]
    assert np.abs(inside).max() <= 3 and np.abs(inside).mean() < 0.5


def test_an_exact_plate_is_left_untouched():
    scene, plate = _views()
    registered, found = align.register(plate, scene, align.Settings())
    assert found.status == "still" and registered is plate
    off, found_off = align.register(plate, scene, align.Settings(enabled=False))
    assert found_off.status == "off" and off is plate


@pytest.mark.parametrize("nuisance", ["exposure_step", "noise"])
def test_a_plate_that_did_not_move_stays_still_under_a_new_exposure_or_noise(nuisance):
    """Re-exposed (highlights clipped) or noisy shots of an unmoved camera: a sub-pixel warp
    that merely blurs the plate is no motion. Compared without a gain and with no minimum cut
    of the residual, 8 (exposure_step) and 3 (noise) of these 24 pairs got one of 0.1-0.4 px."""
    chosen = photos.SETS[f"photos_{nuisance}"]
    for pair in map(photos.decode, photos.pairs(chosen, 0, 24)):
        registered, found = align.register(pair["bg"], pair["bg_fg"], align.Settings())
        assert found.status == "still" and registered is pair["bg"]


@pytest.mark.parametrize(
    "change, settings, why",
    [
        ("other photograph", align.Settings(), ""),  # a poor fit, or one far off
        ("darker", align.Settings(), "brightness ratio"),
        ("moved", align.Settings(max_shift=0.01), "beyond align.max_shift"),
        ("turned", align.Settings(max_rotation_deg=0.2), "beyond align.max_rotation_deg"),
    ],
)
def test_an_implausible_estimate_is_refused_and_the_plate_kept(change, settings, why):
    scene, plate = _views((4.0, 1.0), 0.8 if change == "turned" else 0.0)
    if change == "other photograph":
        plate = photos.view(photos.photo("coffee"), (0, 0, 400), SIZE)
    if change == "darker":
        plate = plate // 4
    registered, found = align.register(plate, scene, settings)
    assert found.refused and why in found.status
    assert registered is plate
    np.testing.assert_array_equal(found.warp, np.eye(3))


def test_an_image_too_small_to_register_is_refused():
    plate = np.zeros((1, 40, 3), np.uint8)
    registered, found = align.register(plate, plate.copy(), align.Settings())
    assert found.status == "refused: 40x1 is too small to register" and registered is plate


def test_the_recipe_s_align_block_is_the_package_s_defaults():
    """configs/default.py imports nothing of the package, so its `align` block repeats
    `align.Settings`; the installed command uses the latter: they must agree."""
    assert default.get_config().align.to_dict() == dataclasses.asdict(align.Settings())


def test_settings_from_a_config_block_are_checked():
    block = ml_collections.ConfigDict(dict(enabled=True, motion="affine", work_side=128))
    assert align.Settings.from_config(block) == align.Settings(motion="affine", work_side=128)
    assert align.Settings.from_config(None) == align.Settings(enabled=False)
    for field, value, message in [
        ("motion", "perspective", "align.motion='perspective': expected one of"),
        ("work_side", 8, "align.work_side=8: expected >= 32"),
        ("min_correlation", 1.5, r"align.min_correlation=1.5: expected in \[0, 1\]"),
        ("speed", 1, "align.speed: unknown field"),
    ]:
        bad = ml_collections.ConfigDict(dict(enabled=True, **{field: value}))
        with pytest.raises(errors.UsageError, match=message):
            align.Settings.from_config(bad)


def test_the_tracker_follows_a_shaky_camera_and_holds_through_a_bad_frame():
    clip = photo_clips.shaky_clip(0, 8, 96, jitter_px=1.5, drift_px=5.0, drift_deg=0.5)
    tracker = align.Tracker(clip.plate, align.Settings())
    frames = list(clip.frames)
    frames[5] = np.full_like(frames[5], 128)  # a blank frame: nothing to register on
    plates = [tracker(frame) for frame in frames]
    summary = tracker.summary()
    assert summary["frames"] == 8 and [r["frame"] for r in summary["refused"]] == [5]
    assert summary["estimates"][5]["status"] == "held"
    assert summary["estimates"][5]["dx"] == summary["estimates"][4]["dx"]
    for index in (0, 3, 7):
        dx, dy, degrees = clip.motions[index]
        points = np.array([[10.0, 10.0], [85.0, 70.0]])
        got = _mapped(align.estimate(clip.plate, frames[index], align.Settings()).warp, points)
        turn = np.deg2rad(degrees)
        rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
        centre = np.full(2, 96 / 2 - 0.5)
        want = (points - centre + np.array([dx, dy])) @ rotation.T + centre
        assert np.abs(got - want).max() < 0.3, index
        background = ~clip.masks[index]
        residual = np.abs(plates[index].astype(float) - frames[index]).max(-1)
        assert residual[background].mean() < 6


def test_moved_camera_sets_registration_restores_the_threshold():
    """On the 4 px set (at 96 px, where 4 px is a large move), the best |plate - scene|
    threshold after registration comes within 0.1 of the same pairs with no move (the rest is
    the resampling of the moved plate), and far above the unaligned plates."""

    def best_iou(name, settings):
        pairs = [photos.decode(p) for p in photos.pairs(photos.SETS[name], 0, 6, 96)]
        differences, masks = [], []
        for pair in pairs:
            plate, _ = align.register(pair["bg"], pair["bg_fg"], settings)
            differences.append(np.abs(plate / 255.0 - pair["bg_fg"] / 255.0).max(-1))
            masks.append(pair["mask"] / 255.0)
        differences, masks = np.stack(differences), np.stack(masks)
        ious = []
        for threshold in np.arange(0.02, 0.4, 0.02):
            predicted = (differences > threshold).astype(float)
            overlap = (predicted * masks).sum((1, 2))
            union = (predicted + masks).sum((1, 2)) - overlap
            ious.append(np.mean((overlap + 1e-6) / (union + 1e-6)))
        return max(ious)

    still = best_iou("photos_moved_0px", align.Settings())
    aligned = best_iou("photos_moved_4px", align.Settings())
    unaligned = best_iou("photos_moved_4px", align.Settings(enabled=False))
    assert still - 0.1 < aligned and unaligned < aligned - 0.4
