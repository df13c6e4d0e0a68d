"""mode=export: the artifact against the predict step, with only the artifact, its checks."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxsegdepth import artifact, errors
from jaxsegdepth.checkpointing import select
from jaxsegdepth.data import normalization, pipeline
from jaxsegdepth.modes import export
from modes_support import RES, copy_config, mode_config, reference_normalize, sigmoid


@pytest.mark.parametrize(
    "model, field, value, message",
    [
        ("masknet", "resolution", 0, r"export.resolution: resolution 0 must be a positive integer"),
        (
            "dsresnet",
            "resolution",
            48,
            r"export.resolution: resolution 48 is not a multiple of "
            r"32, which dsresnet needs",
        ),
        (
            "masknet",
            "batch_size",
            -1,
            r"export.batch_size=-1: expected 0 \(any batch\) or a "
            r"positive size",
        ),
        (
            "masknet",
            "platforms",
            ("cpu", "metal"),
            r"export.platforms=\('cpu', 'metal'\): "
            r"\['metal'\] unknown, expected names among",
        ),
    ],
)
def test_export_validate_names_the_bad_setting(data_dir, model, field, value, message):
    config = mode_config(data_dir, model)
    config.export.resolution = 64
    export.validate(config)  # the defaults are fine
    config.export[field] = value
    with pytest.raises(errors.UsageError, match=f"^{message}") as raised:
        export.validate(config)
    assert raised.value.exit_code == 2


def test_export_mode_matches_predict_step_for_any_batch(trained, one_device, predict_jit, tmp_path):
    config, workdir, _ = trained
    config = copy_config(config)
    config.export.resolution, config.export.batch_size = RES, 0
    config.export.output_dir = str(tmp_path / "export")
    export.validate(config)
    path = export.run(config, workdir)
    assert path == str(tmp_path / "export" / artifact.ARTIFACT)
    loaded = artifact.load(str(tmp_path / "export"))
    meta = loaded.metadata
    assert meta["step"] == 3 and meta["input_shape"] == [None, RES, RES, 3]
    assert meta["platforms"] == ["cpu", "cuda"] and meta["outputs"] == {"mask": [None, RES, RES, 1]}
    # the artifact takes uint8 and applies the dataset's statistics, which model.json records
    assert meta["input_dtype"] == "uint8"
    assert [aval.dtype for aval in loaded.exported.in_avals] == [np.dtype(np.uint8)] * 2
    norm = pipeline.input_normalization(config.dataset)
    assert sorted(meta["normalization"]) == sorted(norm) == ["bg", "bg_fg"]
    for key, (mean, std) in norm.items():
        np.testing.assert_array_equal(np.float32(meta["normalization"][key][0]), mean)
        np.testing.assert_array_equal(np.float32(meta["normalization"][key][1]), std)
    state = select.load_for_inference(config, workdir, one_device).state
    predict_step = predict_jit(norm)
    rng = np.random.default_rng(0)
    for n in (1, 3):  # the batch dimension is symbolic
        images = {key: rng.integers(0, 256, (n, RES, RES, 3), np.uint8) for key in norm}
        out = loaded(images["bg"], images["bg_fg"])
        ref = predict_step(state, images["bg"], images["bg_fg"])
        assert out["mask"].shape == (n, RES, RES, 1)
        np.testing.assert_allclose(out["mask"], ref["mask"], atol=1e-6)
        # and both are the model on the reference normalisation (float64, then float32)
        inputs = [
            reference_normalize(images[key], *norm[key]).astype(np.float32)
            for key in ("bg", "bg_fg")
        ]
        logits = state.apply_fn(
            {"params": state.params, "batch_stats": state.batch_stats}, *inputs, train=False
        )["mask"]
        np.testing.assert_allclose(out["mask"], sigmoid(logits), atol=1e-5)


def test_export_dsresnet_runs_with_only_the_artifact(dsresnet_state, predict_jit, tmp_path):
    state = dsresnet_state
    norm = normalization.MODEST_NORMALIZATION
    export.export_state(
        state, str(tmp_path / "export"), norm, resolution=RES, batch_size=1, platforms=None
    )
    with open(tmp_path / "export" / artifact.METADATA) as f:
        meta = json.load(f)
    assert meta["input_dtype"] == "uint8"
    assert meta["normalization"] == {k: [list(m), list(s)] for k, (m, s) in norm.items()}
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(tmp_path / "export" / artifact.ARTIFACT, alone)
    rng = np.random.default_rng(1)
    bg, bg_fg = (rng.integers(0, 256, (1, RES, RES, 3), np.uint8) for _ in range(2))
    ref = predict_jit(norm)(state, bg, bg_fg)
    # what a user without this package does: only jax.export, uint8 RGB in
    with open(alone / artifact.ARTIFACT, "rb") as f:
        deserialized = jax.export.deserialize(bytearray(f.read()))
    assert [aval.dtype for aval in deserialized.in_avals] == [np.dtype(np.uint8)] * 2
    out = deserialized.call(bg, bg_fg)
    assert sorted(out) == ["depth", "mask"]
    for head in ("mask", "depth"):
        assert out[head].shape == (1, RES, RES, 1)
        np.testing.assert_allclose(out[head], ref[head], atol=1e-6)
    with pytest.raises(
        ValueError,
        match=r"expected \(1, 32, 32, 3\) and called with "
        r"\(2, 32, 32, 3\)",
    ):  # a fixed batch is fixed
        deserialized.call(np.concatenate([bg, bg]), np.concatenate([bg_fg, bg_fg]))
    # and with the package but without model.json: it runs, normalising inside; other dtypes
    # holding the same 0-255 values are cast to the artifact's uint8
    loaded = artifact.load(str(alone))
    assert loaded.metadata == {}
    np.testing.assert_allclose(loaded(bg, bg_fg)["depth"], ref["depth"], atol=1e-6)
    np.testing.assert_array_equal(
        loaded(bg.astype(np.int64), bg_fg.astype(np.float32))["depth"], loaded(bg, bg_fg)["depth"]
    )
    with pytest.raises(
        ValueError,
        match=r"^bg: this model takes RGB values 0-255 \(uint8\); "
        r"got float32 in \[0.0, 1.0\]",
    ):
        loaded(np.linspace(0, 1, bg.size, dtype=np.float32).reshape(bg.shape), bg_fg)


def test_a_float32_artifact_takes_normalised_floats_and_refuses_uint8(tmp_path):
    """Artifacts of 0.2 took normalised float32: `LoadedModel` still runs them on floats and
    refuses uint8 images, which such a model would take unnormalised."""
    spec = jax.ShapeDtypeStruct((1, 4, 4, 3), np.float32)
    old = jax.export.export(jax.jit(lambda bg, bg_fg: {"mask": (bg - bg_fg)[..., :1]}))(spec, spec)
    (tmp_path / artifact.ARTIFACT).write_bytes(old.serialize())
    loaded = artifact.load(str(tmp_path))
    x = np.full((1, 4, 4, 3), 0.5, np.float32)
    np.testing.assert_array_equal(loaded(x, 0.25 * x)["mask"], np.full((1, 4, 4, 1), 0.375))
    with pytest.raises(
        ValueError,
        match=r"^bg: this model \(input_dtype float32\) takes float32 "
        r"inputs already normalised, not uint8",
    ):
        loaded(np.zeros((1, 4, 4, 3), np.uint8), x)
