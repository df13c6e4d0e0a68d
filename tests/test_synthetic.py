"""The synthetic scenes: deterministic samples, figure shadows that darken only the background
(never foreground, never brighter), mask and depth of the composite, the mild relighting of
bg_fg, the per-sample JPEG qualities, the exact plates of the clean share, the plane family's
depth, and the procedural textures' statistics (power-law leaf sizes, 1/f spectra)."""

import io

import numpy as np
import pytest
from PIL import Image

from jaxsegdepth.data import synthetic
from jaxsegdepth.data.synthetic import procedural

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
    # A wall shadow needs a figure near a wall and a light towards it: about 1 room in 11.
    rooms = [index for index in range(30, 100) if synthetic.kind(SEED, index)[0] == "room"][:40]
    assert len(rooms) == 40
    on_walls = 0
    for index in rooms:
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
        assert not synthetic.kind(SEED, index)[1], index  # a clean plate keeps its light
        relit += 1
        bright = bg >= 60  # a gain of 0.9-1.1 with a colour cast of at most 3% per channel
        ratio = bg_fg[bright] / bg[bright]
        assert 0.85 < ratio.min() and ratio.max() < 1.16, (index, ratio.min(), ratio.max())
    assert 2 <= relit <= COUNT // 2, relit


def test_sample_kinds_come_in_their_shares():
    kinds = [synthetic.kind(SEED, index) for index in range(2000)]
    plane = np.mean([family == "plane" for family, _ in kinds])
    clean = np.mean([is_clean for _, is_clean in kinds])
    # Binomial standard deviations at n=2000: 0.011 and 0.010; 4 of them allowed.
    assert abs(plane - synthetic.PLANE_SHARE) < 0.045, plane
    assert abs(clean - synthetic.CLEAN_SHARE) < 0.04, clean
    assert {family for family, _ in kinds} == set(synthetic.FAMILIES)


def test_a_clean_plate_equals_the_scene_outside_the_figures_up_to_jpeg():
    """Clean samples, shadows off: one quality for both shots, so every 16x16 JPEG block (8x8
    luma, chroma subsampled 2x2) with no figure pixel in it or in its 8 neighbours (the
    decoder's chroma upsampling reads across block borders) decodes to the same pixels."""
    side = 192  # 12 x 12 blocks
    clean = [index for index in range(60) if synthetic.kind(SEED, index)[1]][:6]
    assert len(clean) == 6
    for index in clean:
        sample = synthetic._render(SEED, index, side, shadows=False)
        outside = _outside(sample)
        np.testing.assert_array_equal(sample["bg"][outside], sample["bg_fg"][outside])
        first, second = sample[synthetic.QUALITY_KEY]
        assert first == second, index
        decoded = {
            key: np.asarray(Image.open(io.BytesIO(synthetic.encode_jpeg(sample[key], int(first)))))
            for key in ("bg", "bg_fg")
        }
        touched = np.pad(sample["mask"].reshape(side // 16, 16, side // 16, 16).max((1, 3)), 1)
        near = np.max(
            [np.roll(touched, (dy, dx), (0, 1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0
        )
        free = np.kron(near[1:-1, 1:-1] == 0, np.ones((16, 16), bool))
        assert free.mean() > 0.1, index
        np.testing.assert_array_equal(decoded["bg"][free], decoded["bg_fg"][free])
        assert not np.array_equal(decoded["bg"][~free], decoded["bg_fg"][~free])


def test_jpeg_qualities_are_drawn_per_sample_and_used_by_encode(renders):
    qualities = np.array([shadowed[synthetic.QUALITY_KEY] for shadowed, _ in renders])
    lowest, highest = synthetic.JPEG_QUALITY_RGB_RANGE
    assert qualities.shape == (COUNT, 2)
    assert lowest <= qualities.min() and qualities.max() <= highest
    assert len(np.unique(qualities)) >= 8
    clean = np.array([synthetic.kind(SEED, index)[1] for index in range(COUNT)])
    np.testing.assert_array_equal(qualities[clean, 0], qualities[clean, 1])
    apart = qualities[~clean, 0] != qualities[~clean, 1]  # bg and bg_fg drawn apart: 20/21
    assert apart.mean() >= 0.8, qualities
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


# -- the plane family ----------------------------------------------------------------------------


def test_plane_cutouts_are_nearer_than_the_plane_behind_them():
    planes = [index for index in range(40) if synthetic.kind(SEED, index)[0] == "plane"][:6]
    assert len(planes) == 6
    u, v = np.meshgrid(np.arange(SIZE, dtype=np.float64), np.arange(SIZE, dtype=np.float64))
    for index in planes:
        sample = synthetic.render(SEED, index, SIZE)
        plane = synthetic._Plane(np.random.default_rng([SEED, index]), SIZE)
        plane.render_plane()  # the same first draws as the sample's: its plane alone
        assert np.all(np.isfinite(plane.inverse_depth)) and plane.inverse_depth.min() > 0
        # The plane's depth image is a plane in (u, v) (normalised inverse depth is affine in
        # 1/z, which is affine in (u, v) for a plane): least squares in float64.
        plane_depth = synthetic._depth_image(plane.inverse_depth).astype(np.float64)
        design = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 1)
        fit, *_ = np.linalg.lstsq(design, plane_depth.ravel(), rcond=None)
        assert np.abs(design @ fit - plane_depth.ravel()).max() <= 0.6, index
        mask = sample["mask"] > 127
        assert mask.any(), index
        depth = sample["depth"].astype(np.int64)
        assert np.all(depth[mask] > plane_depth[mask]), index  # nearer = brighter
        assert np.mean(depth == plane_depth) > 0.1, index  # the plane itself still shows


# -- procedural textures ------------------------------------------------------------------------


def _spectral_slope(image: np.ndarray, low: int = 4, high: int = 100) -> float:
    """Slope of log power against log frequency of the radially averaged power spectrum of a
    square image, between `low` and `high` cycles per image (NumPy float64)."""
    image = image.astype(np.float64) - image.mean()
    side = image.shape[0]
    power = np.abs(np.fft.fft2(image)) ** 2
    frequency = np.hypot(*np.meshgrid(np.fft.fftfreq(side) * side, np.fft.fftfreq(side) * side))
    edges = np.arange(low, high + 1)
    ring = np.digitize(frequency.ravel(), edges)
    radial = np.array([power.ravel()[ring == k].mean() for k in range(1, len(edges))])
    centres = (edges[:-1] + edges[1:]) / 2
    return float(np.polyfit(np.log(centres), np.log(radial), 1)[0])


def test_dead_leaves_textures_have_a_natural_power_spectrum():
    """Natural images fall as about f^-2 in power; dead leaves with r^-3 sizes do too."""
    rng = np.random.default_rng(0)
    slopes = []
    for _ in range(6):
        source = procedural.source(rng, kinds=("leaves",))
        texture = source.draw(rng, 224, 224)
        assert texture.shape == (224, 224, 3) and texture.dtype == np.float32
        slopes.append(_spectral_slope(texture.mean(-1)))
    assert all(-2.8 < slope < -1.6 for slope in slopes), slopes


def test_pink_fields_have_the_slope_they_are_made_with():
    for slope in procedural.PINK_SLOPES:
        field = procedural.pink_field(np.random.default_rng(1), 256, slope)
        assert field.dtype == np.float32 and abs(float(field.std()) - 1) < 1e-5
        assert abs(_spectral_slope(field) + slope) < 0.1, slope


def test_leaf_radii_follow_the_power_law():
    """P(r > R) of a density ~ r^-3 on [a, b] is (R^-2 - b^-2) / (a^-2 - b^-2)."""
    smallest, largest = procedural.LEAF_RADII
    radii = procedural.power_law_radii(np.random.default_rng(2), 200_000, smallest, largest)
    assert smallest <= radii.min() and radii.max() <= largest
    for bound in (2.0, 4.0, 10.0, 40.0):
        expected = (bound**-2 - largest**-2) / (smallest**-2 - largest**-2)
        assert abs(np.mean(radii > bound) - expected) < 0.004, bound


def test_dead_leaves_ids_cover_the_image_with_many_leaves():
    ids = procedural.dead_leaves_ids(np.random.default_rng(3), 128, 6000, "disc")
    assert ids.shape == (128, 128) and ids.dtype == np.uint8
    assert len(np.unique(ids)) > 100  # many leaves visible, at every scale
    # Edges everywhere: most 8x8 blocks hold more than one leaf.
    blocks = ids.reshape(16, 8, 16, 8).transpose(0, 2, 1, 3).reshape(256, 64)
    assert np.mean(blocks.min(1) != blocks.max(1)) > 0.5
