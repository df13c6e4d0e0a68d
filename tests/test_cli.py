"""The `jaxsegdepth` command (cli.py), run in this process on a random-init DSResNet bundle:
its files, the same mask as the Python predictor to the bit, the one-line errors before the
model loads, folders with bad pairs, a clip, export, `--help`."""

import json
import os

import cv2
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from configs import default
from jaxsegdepth import bundle, cli, inference

MAX_SIDE = ["--max-side", "32"]  # the model sees 32x32: one small program


def _write_pair(folder, name, height, width, seed, plate_name=None):
    rng = np.random.default_rng(seed)
    plate = rng.integers(0, 256, (height, width, 3), np.uint8)
    scene = plate.copy()
    scene[height // 4 : height // 2, width // 3 : width // 2] = [230, 20, 40]
    Image.fromarray(plate).save(folder / (plate_name or f"plate_{name}.png"))
    Image.fromarray(scene).save(folder / f"{name}.png")
    return plate, scene


def test_one_pair_writes_every_file_and_the_predictor_s_mask(dsresnet_bundle, tmp_path, capsys):
    plate, scene = _write_pair(tmp_path, "scene", 333, 517, 0)
    out = tmp_path / "out"
    argv = ["predict", str(tmp_path / "plate_scene.png"), str(tmp_path / "scene.png")]
    argv += ["-o", str(out), "--model", dsresnet_bundle, "--replace-bg", "0,0,255", *MAX_SIDE]
    assert cli.main(argv) == 0
    assert sorted(os.listdir(out)) == sorted(
        [
            f"scene_{suffix}"
            for suffix in (
                "mask_prob.png",
                "mask.png",
                "cutout.png",
                "composite.png",
                "depth.png",
                "depth.npy",
                "side_by_side.png",
            )
        ]
        + ["summary.json"]
    )
    assert f"Predicted 1 pair(s) written to {out}" in capsys.readouterr().out
    result = inference.load(dsresnet_bundle, max_side=32)(plate, scene)
    mask = np.asarray(Image.open(out / "scene_mask.png"))
    np.testing.assert_array_equal(mask, result.mask.astype(np.uint8) * 255)
    np.testing.assert_array_equal(np.load(out / "scene_depth.npy"), result.depth)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "scene_cutout.png")), result.cutout())
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "scene_composite.png")), result.composite((0, 0, 255))
    )


@pytest.mark.parametrize("which", ["missing", "corrupt"])
def test_a_bad_file_is_one_line_and_exit_2_before_the_model_loads(
    tmp_path, capsys, monkeypatch, which
):
    _write_pair(tmp_path, "scene", 40, 50, 1)
    bad = tmp_path / "bad.png"
    if which == "corrupt":
        bad.write_bytes(b"\x89PNG cut short")
    monkeypatch.setattr(inference, "load", lambda *a, **k: pytest.fail("the model loaded"))
    assert cli.main(["predict", str(bad), str(tmp_path / "scene.png")]) == 2
    err = capsys.readouterr().err
    expected = "no such file or folder" if which == "missing" else "cannot be read as an image"
    assert err.startswith(f"error: {bad}") and expected in err and err.count("\n") == 1
    assert (
        cli.main(
            [
                "predict",
                str(tmp_path / "scene.png"),
                str(tmp_path / "scene.png"),
                "--threshold",
                "2",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err == "error: --threshold=2.0: expected a probability in [0, 1]\n"
    assert (
        cli.main(
            [
                "predict",
                str(tmp_path / "scene.png"),
                str(tmp_path / "scene.png"),
                "--replace-bg",
                "1,2",
            ]
        )
        == 2
    )
    assert "error: --replace-bg='1,2': expected a colour R,G,B" in capsys.readouterr().err


def test_folders_skip_bad_pairs_name_them_and_exit_1(dsresnet_bundle, tmp_path, capsys):
    plates, scenes = tmp_path / "plates", tmp_path / "scenes"
    plates.mkdir(), scenes.mkdir()
    _write_pair(scenes, "a", 45, 37, 2, plate_name="../plates/a.png")
    _write_pair(scenes, "b", 30, 70, 3, plate_name="../plates/b.jpg")
    (plates / "broken.png").write_text("not an image")
    _write_pair(scenes, "broken", 30, 30, 4, plate_name="../plates/unused.png")
    os.remove(plates / "unused.png")
    out = tmp_path / "out"
    argv = ["predict", str(plates), str(scenes), "-o", str(out), "--model", dsresnet_bundle]
    assert cli.main(argv + MAX_SIDE) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: 1 pair(s) failed (2 pair(s) written to {out}; details in")
    assert f"{plates / 'broken.png'}: cannot be read as an image" in err
    assert sorted(json.loads((out / "summary.json").read_text())["written"]) == ["a", "b"]
    # one plate for a folder of scenes
    assert (
        cli.main(
            [
                "predict",
                str(plates / "a.png"),
                str(scenes),
                "-o",
                str(tmp_path / "one"),
                "--model",
                dsresnet_bundle,
            ]
            + MAX_SIDE
        )
        == 0
    )
    assert sorted(json.loads((tmp_path / "one" / "summary.json").read_text())["written"]) == [
        "a",
        "b",
        "broken",
    ]
    assert "warning: plate" in capsys.readouterr().err  # 45x37 plate for the 30x70 scenes


def test_a_clip_with_a_median_plate(dsresnet_bundle, tmp_path):
    clip = str(tmp_path / "walk.mp4")
    video = cv2.VideoWriter(clip, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 48))
    for t in range(5):
        frame = np.full((48, 64, 3), 90, np.uint8)
        frame[10:30, 5 + 8 * t : 20 + 8 * t] = 250
        video.write(frame)
    video.release()
    out = tmp_path / "out"
    argv = ["predict", "--plate-frames", "3", clip, "-o", str(out), "--model", dsresnet_bundle]
    assert cli.main(argv + ["--replace-bg", "0,0,0"] + MAX_SIDE) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_written"] == 5 and summary["model_hw"] == [32, 32]
    assert sorted(summary["outputs"]) == ["composite", "depth", "mask", "mask_prob", "side_by_side"]


def test_export_a_bundle_and_an_artifact(dsresnet_bundle, tmp_path, capsys):
    half = tmp_path / "half"
    assert cli.main(["export", "--model", dsresnet_bundle, "-o", str(half)]) == 0
    variables, card = bundle.load(str(half))
    original, _ = bundle.load(dsresnet_bundle)
    assert card["weights_dtype"] == "float16" and card["source"] == dsresnet_bundle
    flat, want = (traverse_util.flatten_dict(tree) for tree in (variables, original))
    assert flat.keys() == want.keys()
    for path, value in flat.items():
        np.testing.assert_array_equal(value, want[path].astype(np.float16).astype(np.float32))
    art = tmp_path / "art"
    argv = [
        "export",
        "--model",
        dsresnet_bundle,
        "--format",
        "jax",
        "--resolution",
        "32",
        "-o",
        str(art),
    ]
    assert cli.main(argv) == 0
    assert (
        f"Exported dsresnet ({dsresnet_bundle}): {art / 'model.jax_exported'}"
        in capsys.readouterr().out
    )
    plate, scene = _write_pair(tmp_path, "s", 50, 70, 5)
    from_artifact = inference.load(str(art))(plate, scene)
    from_bundle = inference.load(dsresnet_bundle, resolution=32)(plate, scene)
    np.testing.assert_allclose(from_artifact.mask_prob, from_bundle.mask_prob, atol=1e-5)
    assert cli.main(["export", "--model", str(tmp_path / "none"), "-o", str(art)]) == 2


@pytest.mark.parametrize("command", [[], ["predict"], ["export"]])
def test_help_for_each_command(command, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(command + ["--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: jaxsegdepth {' '.join(command)}".rstrip())


def test_the_command_s_clip_settings_are_the_recipe_s_defaults():
    """The command cannot import configs/, so it keeps the clip settings of configs/default.py's
    `video` block (all but the plate) itself: they must agree."""
    video = default.get_config().video.to_dict()
    assert video.pop("plate_frames") == 0 and video == cli.VIDEO_DEFAULTS
