"""mode=predict on user images with the tiny MaskNet run (and an initialised DSResNet for
depth): what it writes, the model's probabilities against NumPy, bad pairs, its checks."""

import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from jaxsegdepth import errors, inference
from jaxsegdepth.checkpointing import select
from jaxsegdepth.data import normalization, pipeline
from jaxsegdepth.modes import predict
from modes_support import (
    copy_config,
    enlarge,
    expected_probabilities,
    mode_config,
    rgb,
    write_image,
)


@pytest.mark.parametrize(
    "model, field, value, message",
    [
        (
            "dsresnet",
            "resolution",
            48,
            r"predict.resolution \(0: each image's own size\): "
            r"resolution 48 is not a multiple of 32, which dsresnet needs",
        ),
        (
            "masknet",
            "resolution",
            -8,
            r"predict.resolution \(0: each image's own size\): "
            r"resolution -8 must be a positive integer",
        ),
        (
            "dsresnet",
            "max_side",
            16,
            r"predict.max_side=16: expected 0 \(no cap\) or >= 32, the "
            r"stride of dsresnet",
        ),
        ("masknet", "max_side", -1, r"predict.max_side=-1: expected 0 \(no cap\) or >= 1"),
        ("masknet", "threshold", 1.5, r"predict.threshold=1.5: expected a probability in \[0, 1\]"),
        ("masknet", "colormap", "nope", r"predict.colormap='nope' is not a matplotlib colour map"),
        ("masknet", "bg", "", r"predict.bg and predict.bg_fg: set both"),
        ("masknet", "bg_fg", "missing.png", r"predict.bg_fg='missing.png': no such file or folder"),
    ],
)
def test_predict_validate_names_the_bad_setting(data_dir, pair, model, field, value, message):
    config = mode_config(data_dir, model)
    config.predict.bg, config.predict.bg_fg = pair
    predict.validate(config)  # the pair and the defaults are fine
    config.predict[field] = value
    with pytest.raises(errors.UsageError, match=f"^{message}") as raised:
        predict.validate(config)
    assert raised.value.exit_code == 2 and "\n" not in str(raised.value)


def test_predict_validate_needs_two_files_or_two_nonempty_folders(data_dir, pair, tmp_path):
    config = mode_config(data_dir)
    config.predict.bg, config.predict.bg_fg = pair[0], str(tmp_path)
    with pytest.raises(errors.UsageError, match=r"expected two files or two folders$"):
        predict.validate(config)
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    config.predict.bg, config.predict.bg_fg = str(tmp_path / "a"), str(tmp_path / "b")
    with pytest.raises(errors.UsageError, match=r": no files in the folders$"):
        predict.validate(config)


@pytest.fixture(scope="module")
def predicted_folders(trained, tmp_path_factory):
    """`predict.run` of the trained MaskNet on two folders: two good pairs (45x37 and 70x50,
    paired by name, not extension), a lonely file, an unreadable one and a plate of another
    size than its scene (resized to it, with a warning).
    Returns (config, workdir, bg folder, bg_fg folder, output folder, the RunError raised)."""
    config, workdir, _ = trained
    base = tmp_path_factory.mktemp("predict")
    bg, bg_fg = base / "bg", base / "bg_fg"
    bg.mkdir(), bg_fg.mkdir()
    write_image(bg / "good.png", 45, 37, 0)
    write_image(bg_fg / "good.jpg", 45, 37, 1)
    write_image(bg / "other.png", 70, 50, 2)
    write_image(bg_fg / "other.png", 70, 50, 3)
    write_image(bg / "sizes.png", 40, 30, 4)
    write_image(bg_fg / "sizes.png", 41, 30, 5)
    write_image(bg / "lonely.png", 40, 30, 6)
    (bg / "broken.png").write_text("not an image")
    write_image(bg_fg / "broken.png", 40, 30, 7)
    config = copy_config(config)
    config.predict.bg, config.predict.bg_fg = str(bg), str(bg_fg)
    config.predict.output_dir = str(base / "out")
    predict.validate(config)
    with pytest.raises(errors.RunError) as raised:
        predict.run(config, workdir)
    return config, workdir, bg, bg_fg, base / "out", raised.value


def test_predict_names_the_bad_pairs_and_writes_the_good_ones(predicted_folders):
    _, _, bg, bg_fg, out, error = predicted_folders
    message = str(error)
    assert error.exit_code == 1 and "\n" not in message
    assert message.startswith(
        f"2 pair(s) failed (3 pair(s) written to {out}; details in summary.json): "
    )
    assert f"{bg / 'broken.png'}: cannot be read as an image" in message
    assert f"{bg / 'lonely.png'}: no partner in {bg_fg} (expected lonely.*)" in message
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["written"]) == ["good", "other", "sizes"]
    assert sorted(f["name"] for f in summary["failed"]) == ["broken", "lonely"]
    # the pairs are unrelated noise: registration refuses each, and the plates stay as they are
    assert sorted(summary["registration"]) == ["good", "other", "sizes"]
    assert all(e["status"].startswith("refused") for e in summary["registration"].values())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            f"{name}_{suffix}"
            for name in ("good", "other", "sizes")
            for suffix in ("mask_prob.png", "mask.png", "cutout.png", "side_by_side.png")
        ]
        + ["summary.json"]
    )


def test_predict_writes_the_models_probability(predicted_folders):
    config, workdir, bg, bg_fg, out, _ = predicted_folders
    # MaskNet (stride 1) sees each image at its own size
    state = select.load_for_inference(config, workdir).state
    norm = pipeline.input_normalization(config.dataset)
    expected = expected_probabilities(state, bg / "good.png", bg_fg / "good.jpg", norm, (37, 45))[
        "mask"
    ]
    prob = np.asarray(Image.open(out / "good_mask_prob.png"))
    assert prob.shape == (37, 45) and prob.dtype == np.uint8
    np.testing.assert_allclose(prob / 255.0, expected, atol=0.5 / 255 + 1e-5)
    mask = np.asarray(Image.open(out / "good_mask.png"))
    np.testing.assert_array_equal(mask, np.where(expected >= 0.5, 255, 0))


def test_predict_side_by_side_pixels(predicted_folders):
    _, _, bg, bg_fg, out, _ = predicted_folders
    prob = np.asarray(Image.open(out / "good_mask_prob.png"))
    mask = np.asarray(Image.open(out / "good_mask.png"))
    # 45x37 tiles enlarged 3x (nearest) to 135x111, 2 px apart, under a 14 px label row:
    # bg | bg_fg | mask probability | mask >= 0.5 over bg_fg (half red)
    grid = np.asarray(Image.open(out / "good_side_by_side.png"))
    assert grid.shape == (14 + 111 + 2, 4 * (135 + 2), 3)
    tiles = [grid[14 : 14 + 111, col * 137 : col * 137 + 135] for col in range(4)]
    np.testing.assert_array_equal(tiles[0], enlarge(rgb(bg / "good.png"), 3))
    np.testing.assert_array_equal(tiles[1], enlarge(rgb(bg_fg / "good.jpg"), 3))
    np.testing.assert_array_equal(tiles[2], enlarge(np.repeat(prob[..., None], 3, -1), 3))
    red = (0.5 * rgb(bg_fg / "good.jpg") + [127.5, 0, 0]).astype(np.uint8)
    overlay = np.where((mask > 0)[..., None], red, rgb(bg_fg / "good.jpg"))
    np.testing.assert_array_equal(tiles[3], enlarge(overlay, 3))
    assert np.asarray(Image.open(out / "other_side_by_side.png")).shape == (
        14 + 100 + 2,
        4 * (140 + 2),
        3,
    )  # 70x50 enlarged 2x


def test_predict_one_pair_with_depth_at_original_size(dsresnet_state, predict_jit, tmp_path):
    state = dsresnet_state
    write_image(tmp_path / "a.png", 40, 30, 0)
    write_image(tmp_path / "b.jpg", 40, 30, 1)
    pairs, failures = predict.find_pairs(str(tmp_path / "a.png"), str(tmp_path / "b.jpg"))
    assert failures == [] and [p.name for p in pairs] == ["b"]
    norm = normalization.MODEST_NORMALIZATION
    predict_step = predict_jit(norm)
    predictor = inference.Predictor(
        lambda bg, bg_fg: predict_step(state, bg, bg_fg),
        {"model": "dsresnet", "heads": ["mask", "depth"], "stride": 32},
        "the test's state",
    )
    summary = predict.predict_pairs(predictor, pairs, str(tmp_path / "out"), colormap="magma")
    assert summary["failed"] == [] and summary["written"] == {
        "b": [
            str(tmp_path / "out" / f"b_{suffix}")
            for suffix in (
                "mask_prob.png",
                "mask.png",
                "cutout.png",
                "depth.png",
                "depth.npy",
                "side_by_side.png",
            )
        ]
    }

    # 40x30 rounds to 32x32 for the model (each side to the nearest multiple of 32)
    expected = expected_probabilities(state, tmp_path / "a.png", tmp_path / "b.jpg", norm, (32, 32))
    depth = np.load(tmp_path / "out" / "b_depth.npy")
    assert depth.shape == (30, 40) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, expected["depth"], atol=1e-5)
    assert depth.std() > 5e-4  # not constant: the comparison above is not vacuous
    magma = matplotlib.colormaps["magma"](depth.astype(np.float64))[..., :3] * 255
    colour = np.asarray(Image.open(tmp_path / "out" / "b_depth.png"))
    assert colour.shape == (30, 40, 3)
    np.testing.assert_allclose(colour, magma, atol=0.5 + 1e-9)  # rounded to uint8
    prob = np.asarray(Image.open(tmp_path / "out" / "b_mask_prob.png"))
    np.testing.assert_allclose(prob / 255.0, expected["mask"], atol=0.5 / 255 + 1e-5)
    grid = np.asarray(Image.open(tmp_path / "out" / "b_side_by_side.png"))
    assert grid.shape == (14 + 120 + 2, 5 * (160 + 2), 3)  # 40x30 enlarged 4x, five columns
    np.testing.assert_array_equal(grid[14:134, 4 * 162 : 4 * 162 + 160], enlarge(colour, 4))
