"""`inference.load` and its `Predictor`, and `bundle.py`: a random-init DSResNet written as a
bundle, predicted at odd sizes, in a batch, from grey and RGBA inputs, with a plate of another
size; against a float64 NumPy reference of the resize, normalisation and sigmoid."""

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

import jaxsegdepth
from jaxsegdepth import bundle, inference
from jaxsegdepth.data import normalization

MAX_SIDE = 32  # the model sees 32x32: small programs, compiled once for the file


def _pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    plate = rng.integers(0, 256, (height, width, 3), np.uint8)
    scene = plate.copy()
    scene[height // 4 : height // 2, width // 3 : width // 2] = [230, 20, 40]
    return plate, scene


def _reference(state, plate, scene, model_hw) -> dict:
    """{head: (H, W) float32} without `inference`: PIL bilinear to `model_hw`, float64
    normalisation, the model, float64 sigmoid, PIL bilinear back."""
    inputs = []
    for key, image in (("bg", plate), ("bg_fg", scene)):
        small = np.asarray(Image.fromarray(image).resize(model_hw[::-1], Image.BILINEAR))
        mean, std = (np.asarray(v, np.float64) for v in normalization.MODEST_NORMALIZATION[key])
        inputs.append(((small / 255.0 - mean) / std)[None].astype(np.float32))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    logits = state.apply_fn(variables, *inputs, train=False)
    out = {}
    for head, value in logits.items():
        probability = (1.0 / (1.0 + np.exp(-np.asarray(value, np.float64))))[0, ..., 0]
        back = Image.fromarray(probability.astype(np.float32)).resize(
            scene.shape[1::-1], Image.BILINEAR
        )
        out[head] = np.clip(np.asarray(back, np.float32), 0, 1)
    return out


@pytest.fixture(scope="module")
def predictor(dsresnet_bundle):
    return inference.load(dsresnet_bundle, max_side=MAX_SIDE)


def test_bundle_round_trip_in_float16_and_float32(tmp_path):
    rng = np.random.default_rng(1)
    variables = {
        "params": {"conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32)}},
        "batch_stats": {"bn": {"mean": rng.normal(size=4).astype(np.float32)}},
    }
    for dtype in ("float16", "float32"):
        paths = bundle.save(str(tmp_path / dtype), variables, {"model": "m"}, dtype, {"step": 7})
        assert [os.path.basename(p) for p in paths] == ["model.safetensors", "card.json"]
        loaded, card = bundle.load(str(tmp_path / dtype))
        assert card == {"model": "m", "weights_dtype": dtype, "step": 7}
        kernel = loaded["params"]["conv"]["kernel"]
        assert kernel.dtype == np.float32
        want = variables["params"]["conv"]["kernel"].astype(dtype).astype(np.float32)
        np.testing.assert_array_equal(kernel, want)
        np.testing.assert_array_equal(
            loaded["batch_stats"]["bn"]["mean"],
            variables["batch_stats"]["bn"]["mean"].astype(dtype).astype(np.float32),
        )
    assert os.path.getsize(tmp_path / "float16" / "model.safetensors") < os.path.getsize(
        tmp_path / "float32" / "model.safetensors"
    )
    with pytest.raises(ValueError, match="dtype='int8': expected one of"):
        bundle.save(str(tmp_path / "x"), variables, {}, "int8")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"not safetensors")
    (tmp_path / "broken" / "card.json").write_text("{}")
    with pytest.raises(ValueError, match=f"{tmp_path / 'broken'}: the bundle cannot be read"):
        bundle.load(str(tmp_path / "broken"))


def test_an_odd_size_pair_matches_the_reference(predictor, dsresnet_state):
    plate, scene = _pair(333, 517, 0)
    result = predictor(plate, scene)
    assert predictor.model_hw(333, 517) == (32, 32)  # 517 -> 32, 333 * 32 / 517 = 21 -> 32
    want = _reference(dsresnet_state, plate, scene, (32, 32))
    assert result.mask_prob.shape == result.depth.shape == (333, 517)
    assert result.mask_prob.dtype == result.depth.dtype == np.float32
    np.testing.assert_allclose(result.mask_prob, want["mask"], atol=2e-5)
    np.testing.assert_allclose(result.depth, want["depth"], atol=2e-5)
    assert result.mask_prob.std() > 1e-3  # not constant: the comparison is not vacuous
    np.testing.assert_array_equal(result.mask, result.mask_prob >= 0.5)
    cutout = result.cutout()
    assert cutout.shape == (333, 517, 4) and cutout.dtype == np.uint8
    np.testing.assert_array_equal(cutout[..., :3], scene)
    np.testing.assert_array_equal(cutout[..., 3], np.floor(result.mask_prob * 255 + 0.5))
    weight = result.mask_prob[..., None].astype(np.float64)
    blue = np.floor(scene * weight + np.array([0, 0, 255]) * (1 - weight) + 0.5)
    np.testing.assert_allclose(result.composite((0, 0, 255)), blue, atol=1)
    np.testing.assert_array_equal(result.composite("0,0,255"), result.composite((0, 0, 255)))


def test_a_batch_of_grey_rgba_and_pil_scenes_equals_one_by_one(predictor):
    plate, scene = _pair(333, 517, 2)
    grey = scene[..., 1].copy()
    rgba = np.dstack([scene, np.full(scene.shape[:2], 7, np.uint8)])
    small_plate, small_scene = _pair(40, 70, 3)
    results = predictor(
        [plate, Image.fromarray(plate), small_plate], [grey, rgba, Image.fromarray(small_scene)]
    )
    alone = [
        predictor(plate, np.repeat(grey[..., None], 3, -1)),
        predictor(plate, scene),
        predictor(small_plate, small_scene),
    ]
    assert [r.mask_prob.shape for r in results] == [(333, 517), (333, 517), (40, 70)]
    for batched, single in zip(results, alone):
        np.testing.assert_allclose(batched.mask_prob, single.mask_prob, atol=1e-6)
        np.testing.assert_allclose(batched.depth, single.depth, atol=1e-6)
        np.testing.assert_array_equal(batched.scene, single.scene)


def test_a_plate_of_another_size_is_resized_with_one_warning(predictor, capsys, tmp_path):
    plate, scene = _pair(333, 517, 4)
    Image.fromarray(plate).resize((300, 200)).save(tmp_path / "plate.png")
    Image.fromarray(scene).save(tmp_path / "scene.png")
    result = predictor(str(tmp_path / "plate.png"), str(tmp_path / "scene.png"))
    assert result.mask_prob.shape == (333, 517)
    assert capsys.readouterr().err.splitlines() == [
        f"warning: plate {tmp_path / 'plate.png'} is 300x200 but the scene "
        f"{tmp_path / 'scene.png'} is 517x333: resized to the scene's size"
    ]
    expected = inference.resize(np.asarray(Image.open(tmp_path / "plate.png")), (333, 517))
    prepared, _ = predictor.prepare(str(tmp_path / "plate.png"), scene)
    np.testing.assert_array_equal(prepared, expected)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((4, 5, 3), np.float32), "scene: expected uint8 values 0-255, got float32"),
        (np.zeros((4, 5, 2), np.uint8), r"scene: expected \(H, W\), .* got \(4, 5, 2\)"),
        ("/no/such.png", "/no/such.png: cannot be read as an image"),
    ],
)
def test_bad_inputs_are_named(predictor, image, message):
    with pytest.raises(ValueError, match=message):
        predictor(np.zeros((4, 5, 3), np.uint8), image)


def test_a_card_without_a_trained_depth_head_gives_no_depth(dsresnet_bundle, tmp_path):
    variables, card = bundle.load(dsresnet_bundle)
    card["trained_heads"] = ["mask"]
    bundle.save(str(tmp_path), variables, card, "float16")
    result = inference.load(str(tmp_path), max_side=MAX_SIDE)(*_pair(50, 60, 5))
    assert result.depth is None and result.mask_prob.shape == (50, 60)
    with open(tmp_path / "card.json") as f:
        assert json.load(f)["weights_dtype"] == "float16"


def test_load_without_a_path_reads_the_bundled_model(dsresnet_bundle, monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "BUNDLED", dsresnet_bundle)
    predictor = jaxsegdepth.load(max_side=MAX_SIDE)
    assert predictor.source == dsresnet_bundle and predictor.heads == ("mask", "depth")
    monkeypatch.setattr(inference, "BUNDLED", str(tmp_path))
    with pytest.raises(ValueError, match=f"{tmp_path}: this install has no bundled model"):
        inference.load()
    with pytest.raises(ValueError, match=f"{tmp_path}: no model there"):
        inference.load(str(tmp_path))


def test_the_model_compiles_once_per_input_shape(dsresnet_bundle):
    predictor = inference.load(dsresnet_bundle, max_side=64)
    jitted = predictor.model_fn.func
    for size in ((333, 517), (330, 520), (20, 20)):
        predictor(*_pair(*size, 6))
    # 333x517 and 330x520 share the model size 32x64; 20x20 is 32x32
    assert jitted._cache_size() == 2
    assert jax.tree.leaves(predictor.model_fn.args)[0].devices() == {jax.local_devices()[0]}
