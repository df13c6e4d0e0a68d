"""The synthetic museum scenes: deterministic samples, figure shadows that darken only the room
(never foreground, never brighter), mask and depth of the composite, the mild relighting of
bg_fg and the per-sample JPEG qualities."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxsegdepth.data import synthetic

SIZE = 96
SEED = 3
COUNT = 20


@pytest.fixture(scope="module")
def renders():
    """(with shadows, without) for samples 0..COUNT-1 of SEED at SIZE px."""
    return [
        (synthetic._render(SEED, index, SIZE), synthetic._render(SEED, index, SIZE, shadows=False))
        for index in range(COUNT)
    ]


def _outside(sample):
    return sample["mask"] == 0


def test_samples_are_deterministic_per_seed_and_index():
    first = synthetic.render(SEED, 4, SIZE)
    again = synthetic.render(SEED, 4, SIZE)
    assert sorted(first) == sorted(synthetic.KEYS + (synthetic.QUALITY_KEY,))
    for key, array in first.items():
        assert array.dtype == np.uint8, key
        np.testing.assert_array_equal(again[key], array, err_msg=key)
    assert first["bg_fg"].shape == (SIZE, SIZE, 3) and first["depth"].shape == (SIZE, SIZE)
    assert synthetic.generate(SEED, 4, SIZE) == synthetic.generate(SEED, 4, SIZE)
    assert not np.array_equal(synthetic.render(SEED, 5, SIZE)["bg_fg"], first["bg_fg"])
    assert not np.array_equal(synthetic.render(SEED + 1, 4, SIZE)["bg_fg"], first["bg_fg"])


def test_shadows_leave_the_mask_the_depth_and_the_figures_alone(renders):
    for index, (shadowed, plain) in enumerate(renders):
        for key in ("bg", "mask", "depth", synthetic.QUALITY_KEY):
            np.testing.assert_array_equal(shadowed[key], plain[key], err_msg=f"{index} {key}")
        figures = shadowed["mask"] > 0
        assert 0.001 < figures.mean() < 0.5, index
        np.testing.assert_array_equal(shadowed["bg_fg"][figures], plain["bg_fg"][figures])


def test_shadows_darken_the_room_around_the_figures_and_never_brighten(renders):
    darkened_fractions = []
    for index, (shadowed, plain) in enumerate(renders):
        with_shadow = shadowed["bg_fg"].astype(np.float64)
        without = plain["bg_fg"].astype(np.float64)
        assert np.all(with_shadow <= without), index
        # No shadow takes away more light than the darkest umbra (45% left) allows.
        lit = without >= 40
        assert np.all(with_shadow[lit] >= 0.45 * without[lit] - 1), index
        outside = _outside(shadowed)
        darker = with_shadow.sum(-1) < 0.9 * without.sum(-1)
        darkened_fractions.append((darker & outside).sum() / outside.sum())
    darkened_fractions = np.array(darkened_fractions)
    # Shadows are visible in most samples and large in many (not in all: some lights are faint,
    # and a shadow cast straight away from the camera hides behind its figure).
    assert (darkened_fractions > 0.005).sum() >= 10, darkened_fractions
    assert (darkened_fractions > 0.01).sum() >= 6, darkened_fractions
    assert darkened_fractions.mean() > 0.01, darkened_fractions


def test_shadows_fall_on_the_floor_and_walls_but_not_the_ceiling():
    on_walls = 0
    for index in range(30, 40):
        shadowed = synthetic._render(SEED, index, SIZE)["bg_fg"]
        plain = synthetic._render(SEED, index, SIZE, shadows=False)["bg_fg"]
        room = synthetic._Scene(np.random.default_rng([SEED, index]), SIZE)
        room.render_room()  # the same first draws as the sample's: its room's surfaces
        darkened = (shadowed < plain).any(-1)
        surfaces = room.surface[darkened]
        assert not np.any(surfaces == synthetic._CEILING), index
        walls = (synthetic._LEFT_WALL, synthetic._RIGHT_WALL, synthetic._BACK_WALL)
        on_walls += np.isin(surfaces, walls).sum() > 5
    assert on_walls >= 2


def test_bg_fg_is_bg_outside_the_figures_unless_the_light_changed(renders):
    relit = 0
    for index, (_, plain) in enumerate(renders):
        outside = _outside(plain)
        bg = plain["bg"][outside].astype(np.float64)
        bg_fg = plain["bg_fg"][outside].astype(np.float64)
        if np.array_equal(bg, bg_fg):
            continue
        relit += 1
        bright = bg >= 60  # a gain of 0.9-1.1 with a colour cast of at most 3% per channel
        ratio = bg_fg[bright] / bg[bright]
        assert 0.85 < ratio.min() and ratio.max() < 1.16, (index, ratio.min(), ratio.max())
    assert 2 <= relit <= COUNT // 2, relit


def test_jpeg_qualities_are_drawn_per_sample_and_used_by_encode(renders):
    qualities = np.array([shadowed[synthetic.QUALITY_KEY] for shadowed, _ in renders])
    lowest, highest = synthetic.JPEG_QUALITY_RGB_RANGE
    assert qualities.shape == (COUNT, 2)
    assert lowest <= qualities.min() and qualities.max() <= highest
    assert len(np.unique(qualities)) >= 8
    assert np.sum(qualities[:, 0] != qualities[:, 1]) >= COUNT // 2  # bg and bg_fg apart
    for index in (0, 1, 2):
        sample = synthetic.render(SEED, index, SIZE)
        encoded = synthetic.generate(SEED, index, SIZE)
        assert sorted(encoded) == sorted(synthetic.KEYS)
        for key, quality in zip(("bg", "bg_fg"), sample[synthetic.QUALITY_KEY]):
            assert encoded[key] == synthetic.encode_jpeg(sample[key], int(quality)), key
            assert _quantization(encoded[key]) == _quantization_at(sample[key], int(quality))
        for key in ("mask", "depth"):
            assert encoded[key] == synthetic.encode_jpeg(sample[key], synthetic.JPEG_QUALITY_TARGET)
    # Arrays without qualities of their own are encoded at the default.
    sample = synthetic.render(SEED, 0, SIZE)
    del sample[synthetic.QUALITY_KEY]
    default = synthetic.encode(sample)
    assert default["bg"] == synthetic.encode_jpeg(sample["bg"], synthetic.JPEG_QUALITY_RGB)


def test_quality_changes_the_quantization_tables():
    image = synthetic.render(SEED, 0, SIZE)["bg"]
    assert _quantization_at(image, 75) != _quantization_at(image, 95)


def _quantization(data: bytes) -> dict:
    return {
        table: list(values) for table, values in Image.open(io.BytesIO(data)).quantization.items()
    }


def _quantization_at(image: np.ndarray, quality: int) -> dict:
    return _quantization(synthetic.encode_jpeg(image, quality))
