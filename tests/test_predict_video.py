"""`mode=predict` on a clip (`predict.video`), through `predict.validate` and `predict.run` with a
tiny trained MaskNet (conftest's `trained`: one epoch at 32 px on 40 synthetic samples).

The clip is made here: one synthetic room at 96x96, its figure cut out along its true mask and
moved across the room over 20 frames, with sensor noise, written as an mp4v mp4; its masks are
known.
"""

import json
import os
import re

import cv2
import ml_collections
import numpy as np
import pytest

from jaxsegdepth import errors, names
from jaxsegdepth.data import synthetic
from jaxsegdepth.modes import predict
from jaxsegdepth.video import pixels

SIZE = 96
FRAMES = 20
SCENE = (0, 11)  # (seed, index) of the synthetic sample whose room and figure make the clip
NOISE = 2.0  # standard deviation of the sensor noise, of 255


def moving_figure(frames: int = FRAMES, size: int = SIZE) -> tuple[np.ndarray, list, list]:
    return synthetic.moving_figure(frames, size, SCENE, NOISE)


def write_mp4(path: str, frames: list, fps: float = 25.0) -> str:
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def read_video(path: str) -> np.ndarray:
    capture = cv2.VideoCapture(path)
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    return np.array(frames)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clip")
    plate, frames, masks = moving_figure()
    plate_path = str(root / "plate.png")
    cv2.imwrite(plate_path, cv2.cvtColor(plate, cv2.COLOR_RGB2BGR))
    video = write_mp4(str(root / "walk.mp4"), frames)
    return {"video": video, "plate": plate_path, "masks": masks, "decoded": read_video(video)}


def _video_config(trained, clip, **fields):
    """The trained run's config predicting `clip`, with `fields` of `predict` or `video`."""
    config = ml_collections.ConfigDict(trained[0].to_dict())
    config.predict.video = clip["video"]
    config.predict.bg = clip["plate"]
    for field, value in fields.items():
        (config.video if field in names.VIDEO_FIELDS else config.predict)[field] = value
    return config


def test_a_clip_becomes_videos_of_its_frames(trained, clip, capsys):
    config = _video_config(trained, clip)
    workdir = trained[1]
    predict.validate(config)
    summary = predict.run(config, workdir)
    out = os.path.join(workdir, "predictions_video", "walk")
    assert sorted(os.listdir(out)) == [
        "mask.mp4",
        "mask_prob.mp4",
        "side_by_side.mp4",
        "summary.json",
    ]
    for name in ("mask", "mask_prob"):
        decoded = read_video(os.path.join(out, f"{name}.mp4"))
        assert decoded.shape == (FRAMES, SIZE, SIZE, 3), name
    assert read_video(os.path.join(out, "side_by_side.mp4")).shape == (FRAMES, SIZE, 2 * SIZE, 3)
    with open(os.path.join(out, "summary.json")) as f:
        written = json.load(f)
    assert written == summary
    assert summary["frames_read"] == summary["frames_written"] == FRAMES
    assert summary["frames_per_s"] > 0 and summary["model_frames_per_s"] > 0
    assert summary["clip_hw"] == summary["model_hw"] == [SIZE, SIZE]  # MaskNet: stride 1
    assert summary["warnings"] == ["the model has no depth head: no depth output"]
    printed = capsys.readouterr()
    assert f"Predicted {FRAMES} frames into {out}" in printed.out
    assert "frames/s end to end" in printed.out
    assert "warning: the model has no depth head: no depth output" in printed.err


def test_png_frames_hold_the_model_s_probabilities(trained, clip, tmp_path):
    """Each frame's mask_prob PNG is the model's probability for (plate, the decoded frame)."""
    config = _video_config(
        trained, clip, output_dir=str(tmp_path), video_format="png", outputs=("mask_prob",)
    )
    predict.validate(config)
    predict.run(config, trained[1])
    predict_fn = predict.load_predictor(config, trained[1]).forward
    plate = cv2.cvtColor(cv2.imread(clip["plate"]), cv2.COLOR_BGR2RGB)
    frames = clip["decoded"][..., ::-1]
    for start in range(0, FRAMES, 8):
        batch = np.stack([frames[min(t, FRAMES - 1)] for t in range(start, start + 8)])
        expected = np.asarray(predict_fn(np.repeat(plate[None], 8, 0), batch)["mask"])[..., 0]
        for t in range(start, min(start + 8, FRAMES)):
            written = cv2.imread(str(tmp_path / "mask_prob" / f"{t:06d}.png"), -1)
            difference = written.astype(int) - pixels.to_uint8(expected[t - start])
            assert np.abs(difference).max() <= 1, t


def test_the_plate_can_be_the_median_of_the_first_frames(trained, clip, tmp_path):
    config = _video_config(
        trained, clip, bg="", plate_frames=FRAMES, output_dir=str(tmp_path), outputs=("mask",)
    )
    predict.validate(config)
    summary = predict.run(config, trained[1])
    assert summary["plate"] == f"median of the first {FRAMES} frames of {clip['video']}"
    assert len(read_video(str(tmp_path / "mask.mp4"))) == FRAMES


def test_a_plate_of_another_size_is_one_warning(trained, clip, tmp_path, capsys):
    small = str(tmp_path / "small.png")
    cv2.imwrite(small, cv2.imread(clip["plate"])[::2, ::2])
    predict.validate(_video_config(trained, clip, bg=small))
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        f"warning: plate {small} is 48x48 but the clip is {SIZE}x{SIZE}: resized to the clip's size"
    ]


def _refused(config) -> str:
    with pytest.raises(errors.UsageError) as raised:
        predict.validate(config)
    message = str(raised.value)
    assert raised.value.exit_code == 2 and "\n" not in message
    return message


def test_more_plate_frames_than_the_clip_has_names_the_clip(trained, clip):
    message = _refused(_video_config(trained, clip, bg="", plate_frames=FRAMES + 10))
    assert message == (
        f"{clip['video']}: plate_frames={FRAMES + 10}, but the clip has only {FRAMES} frames"
    )


def test_a_clip_opencv_cannot_open_is_named(trained, clip, tmp_path):
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    message = _refused(_video_config(trained, clip, video=str(notes)))
    assert message.startswith(f"predict.video: {notes}: OpenCV cannot open it as a video")


def test_bg_fg_and_video_together_are_refused(trained, clip):
    message = _refused(_video_config(trained, clip, bg_fg=clip["plate"]))
    assert re.match(r"predict.bg_fg=.* and predict.video=.*: leave predict.bg_fg empty", message)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(bg=""), "predict.video needs a plate: predict.bg=IMAGE"),
        (dict(plate_frames=3), "video.plate_frames=3 with predict.bg="),
        (dict(outputs=("mask", "nope")), "predict.outputs=('mask', 'nope'): expected one or more"),
        (dict(batch_size=0), "video.batch_size=0: expected >= 1"),
        (dict(temporal_smoothing=1.0), "video.temporal_smoothing=1.0: expected alpha in [0, 1)"),
        (dict(video_format="gif"), "video.video_format='gif': expected one of ('mp4', 'png')"),
        (
            dict(outputs=("composite",), replace_bg="0,300,0"),
            "predict.replace_bg='0,300,0': expected a colour R,G,B",
        ),
        (dict(fps=0.0), "video.fps=0.0: expected frames per second > 0"),
    ],
)
def test_bad_video_settings_are_named(trained, clip, fields, message):
    assert _refused(_video_config(trained, clip, **fields)).startswith(message)


def test_a_clip_that_breaks_off_is_a_run_error_with_the_frames_written(trained, clip, tmp_path):
    """An MJPG avi cut in half opens, then fails part-way: exit 1, what was written plays."""
    avi = str(tmp_path / "walk.avi")
    writer = cv2.VideoWriter(avi, cv2.VideoWriter_fourcc(*"MJPG"), 25, (SIZE, SIZE))
    for frame in clip["decoded"]:
        writer.write(frame)
    writer.release()
    with open(avi, "rb") as f:
        data = f.read()
    with open(avi, "wb") as f:
        f.write(data[: len(data) // 2])
    out = tmp_path / "out"
    config = _video_config(trained, clip, video=avi, output_dir=str(out), outputs=("mask",))
    predict.validate(config)
    with pytest.raises(errors.RunError) as raised:
        predict.run(config, trained[1])
    written = json.loads((out / "summary.json").read_text())["frames_written"]
    assert 0 < written < FRAMES and raised.value.exit_code == 1
    assert f"{written} frames written to {out} (playable" in str(raised.value)
    assert len(read_video(str(out / "mask.mp4"))) == written


def test_ctrl_c_is_an_interruption_that_keeps_the_files_playable(
    trained, clip, tmp_path, monkeypatch
):
    load = predict.load_predictor

    def interrupted_on_the_second_batch(config, workdir):
        predictor, calls = load(config, workdir), []
        forward = predictor.model_fn

        def wrapper(bg, bg_fg):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return forward(bg, bg_fg)

        predictor.model_fn = wrapper
        return predictor

    monkeypatch.setattr(predict, "load_predictor", interrupted_on_the_second_batch)
    config = _video_config(trained, clip, output_dir=str(tmp_path))
    with pytest.raises(errors.Interrupted) as raised:
        predict.run(config, trained[1])
    assert raised.value.exit_code == 130
    assert raised.value.message.startswith(
        f"{clip['video']}: interrupted; 8 frames written to {tmp_path} (playable up to there"
    )
    assert len(read_video(str(tmp_path / "mask.mp4"))) == 8
