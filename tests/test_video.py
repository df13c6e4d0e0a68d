"""`jaxsegdepth.video` on small clips made here: a fixed background that a bright square crosses
from frame 3 on, as an MJPG avi, an mp4v mp4 and a folder of PNGs; a fake `predict_fn` whose
"mask" is the frame's difference from the plate and whose "depth" is the grey level."""

import json
import os
import re

import cv2
import numpy as np
import pytest

from jaxsegdepth import align
from jaxsegdepth.data import photo_clips
from jaxsegdepth.video import clips as clips_lib, outputs, pixels, prediction, temporal

SIZE = 96
FRAMES = 20
FIRST_WITH_OBJECT = 3
SQUARE = 24
SQUARE_BGR = (235, 235, 235)
DIFFERENCE_FOR_CERTAIN = 60.0  # the fake mask is 1 from this max-channel difference on


def background_bgr() -> np.ndarray:
    """A smooth colour gradient (it survives JPEG compression nearly unchanged)."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    channels = (60 + 40 * x, 90 + 30 * y, 120 - 20 * x)
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def known_mask(t: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    if t >= FIRST_WITH_OBJECT:
        left = 4 * (t - FIRST_WITH_OBJECT)
        mask[36 : 36 + SQUARE, left : left + SQUARE] = True
    return mask


def frame_bgr(t: int) -> np.ndarray:
    frame = background_bgr()
    frame[known_mask(t)] = SQUARE_BGR
    return frame


def fake_predict(bg: np.ndarray, bg_fg: np.ndarray) -> dict:
    difference = np.abs(bg.astype(np.float32) - bg_fg.astype(np.float32)).max(axis=-1)
    mask = np.clip(difference / DIFFERENCE_FOR_CERTAIN, 0.0, 1.0)
    return {"mask": mask[..., None], "depth": (bg_fg.mean(axis=-1) / 255.0)[..., None]}


def write_video(path: str, fourcc: str, frames: list) -> str:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), 25, (SIZE, SIZE))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def write_folder(folder: str, frames: list) -> str:
    """Frames named frame0.png ... frame19.png: only a natural sort puts them in order."""
    os.makedirs(folder)
    for t, frame in enumerate(frames):
        cv2.imwrite(os.path.join(folder, f"frame{t}.png"), frame)
    return folder


def read_video(path: str) -> np.ndarray:
    capture = cv2.VideoCapture(path)
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    return np.array(frames)


def counting(predict_fn):
    """`predict_fn` that records the shapes and dtypes of its inputs in `.calls`."""

    def wrapper(bg, bg_fg):
        wrapper.calls.append((bg.shape, bg_fg.shape, bg.dtype, bg_fg.dtype))
        wrapper.last_bg_fg = bg_fg.copy()
        return predict_fn(bg, bg_fg)

    wrapper.calls = []
    return wrapper


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clips")
    frames = [frame_bgr(t) for t in range(FRAMES)]
    plate = str(root / "plate.png")
    cv2.imwrite(plate, background_bgr())
    return {
        "avi": write_video(str(root / "clip.avi"), "MJPG", frames),
        "mp4": write_video(str(root / "clip.mp4"), "mp4v", frames),
        "png": write_folder(str(root / "frames"), frames),
        "plate": plate,
    }


@pytest.mark.parametrize("kind", ["avi", "mp4"])
def test_mask_video_matches_the_known_masks(clips, tmp_path, kind):
    summary = prediction.predict_clip(
        fake_predict,
        clips[kind],
        FIRST_WITH_OBJECT,
        str(tmp_path),
        prediction.ClipOptions(model_hw=(64, 64), outputs=outputs.OUTPUTS),
    )
    masks = read_video(summary["outputs"]["mask"])[..., 0] > 127
    assert masks.shape == (FRAMES, SIZE, SIZE)
    for t in range(FRAMES):
        truth = known_mask(t)
        if truth.any():
            assert (masks[t] & truth).sum() / (masks[t] | truth).sum() > 0.8, t
        else:
            assert masks[t].mean() < 0.01, t
    for name in ("mask_prob", "depth", "composite"):
        assert read_video(summary["outputs"][name]).shape == (FRAMES, SIZE, SIZE, 3), name
    assert read_video(summary["outputs"]["side_by_side"]).shape == (FRAMES, SIZE, 3 * SIZE, 3)
    assert summary["frames_read"] == summary["frames_written"] == FRAMES
    assert summary["clip_hw"] == [SIZE, SIZE] and summary["model_hw"] == [64, 64]
    assert summary["fps"] == 25.0 and summary["fps_source"] == "container"
    with open(tmp_path / "summary.json") as f:
        assert json.load(f) == summary


def test_png_outputs_are_the_exact_arrays(clips, tmp_path):
    summary = prediction.predict_clip(
        fake_predict,
        clips["png"],
        clips["plate"],
        str(tmp_path),
        prediction.ClipOptions(
            model_hw=(SIZE, SIZE), outputs=("mask_prob", "mask"), video_format="png"
        ),
    )
    for t in range(FRAMES):
        name = f"{t:06d}.png"
        mask = cv2.imread(os.path.join(summary["outputs"]["mask"], name), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask, known_mask(t).astype(np.uint8) * 255)
        probability = fake_predict(background_bgr()[None], frame_bgr(t)[None])["mask"][0, ..., 0]
        written = cv2.imread(os.path.join(summary["outputs"]["mask_prob"], name), -1)
        np.testing.assert_array_equal(written, pixels.to_uint8(probability))
    assert summary["fps_source"] == "fps argument" and summary["plate"] == clips["plate"]


def test_a_shaky_camera_is_registered_frame_by_frame(tmp_path):
    """A photograph's clip from a hand-held camera (`photo_clips.shaky_clip`): with registration the
    fake model's masks (the plate difference) find the object again; the summary holds one
    estimate per frame, none refused."""
    clip = photo_clips.shaky_clip(0, 8, SIZE, jitter_px=1.5, drift_px=5.0, drift_deg=0.5)
    folder = write_folder(str(tmp_path / "frames"), [f[..., ::-1] for f in clip.frames])
    cv2.imwrite(str(tmp_path / "plate.png"), clip.plate[..., ::-1])
    ious = {}
    for enabled in (False, True):
        summary = prediction.predict_clip(
            fake_predict,
            folder,
            str(tmp_path / "plate.png"),
            str(tmp_path / f"out_{enabled}"),
            prediction.ClipOptions(
                model_hw=(SIZE, SIZE),
                outputs=("mask",),
                video_format="png",
                alignment=align.Settings(enabled=enabled),
            ),
        )
        masks = [
            cv2.imread(os.path.join(summary["outputs"]["mask"], f"{t:06d}.png"), -1) > 0
            for t in range(8)
        ]
        ious[enabled] = np.mean([(m & t).sum() / (m | t).sum() for m, t in zip(masks, clip.masks)])
    registration = summary["registration"]
    assert registration["frames"] == 8 and registration["refused"] == []
    assert [e["status"] for e in registration["estimates"]] == ["aligned"] * 8
    assert ious[True] > 0.8 and ious[True] > ious[False] + 0.3


def test_plate_is_the_median_of_the_first_frames(clips, tmp_path):
    np.testing.assert_array_equal(
        clips_lib.plate_from_frames(clips["png"], FIRST_WITH_OBJECT), background_bgr()[..., ::-1]
    )
    small = str(tmp_path / "small_plate.png")
    cv2.imwrite(small, background_bgr()[::2, ::2])
    plate, source, warning = clips_lib.load_plate(small, clips_lib.probe(clips["png"]))
    assert plate.shape == (SIZE, SIZE, 3) and source == small
    assert "48x48" in warning and f"{SIZE}x{SIZE}" in warning


def test_the_last_batch_is_padded_to_the_fixed_shape(clips, tmp_path):
    predict = counting(fake_predict)
    progress = []
    summary = prediction.predict_clip(
        predict,
        clips["png"],
        clips["plate"],
        str(tmp_path),
        prediction.ClipOptions(
            model_hw=(64, 80), batch_size=8, outputs=("mask",), video_format="png"
        ),
        progress=lambda *args: progress.append(args),
    )
    uint8 = np.dtype(np.uint8)
    assert predict.calls == [((8, 64, 80, 3), (8, 64, 80, 3), uint8, uint8)] * 3
    padding = predict.last_bg_fg[FRAMES % 8 :]
    np.testing.assert_array_equal(padding, np.broadcast_to(padding[0], padding.shape))
    assert summary["frames_written"] == FRAMES == len(os.listdir(summary["outputs"]["mask"]))
    assert progress == [(8, FRAMES), (16, FRAMES), (FRAMES, FRAMES)]


def test_the_smoother_is_an_ema_across_batches():
    raw = np.random.default_rng(0).uniform(size=(13, 4, 5)).astype(np.float32)
    smoother = temporal.TemporalSmoother(0.7)
    smoothed = np.concatenate([smoother(raw[:3]), smoother(raw[3:11]), smoother(raw[11:])])
    expected = [raw[0].astype(np.float64)]
    for frame in raw[1:]:
        expected.append(0.7 * expected[-1] + 0.3 * frame.astype(np.float64))
    np.testing.assert_allclose(smoothed, np.array(expected), atol=1e-6)


def test_temporal_smoothing_reduces_flicker(clips, tmp_path):
    rng = np.random.default_rng(0)
    noise = [rng.normal(0.0, 3.0, (SIZE, SIZE, 3)) for _ in range(FRAMES)]
    frames = [np.clip(frame_bgr(t) + noise[t], 0, 255).astype(np.uint8) for t in range(FRAMES)]
    clip = write_folder(str(tmp_path / "noisy"), frames)

    def predict(alpha):
        return prediction.predict_clip(
            fake_predict,
            clip,
            clips["plate"],
            str(tmp_path / f"out_{alpha}"),
            prediction.ClipOptions(
                model_hw=(SIZE, SIZE),
                outputs=("mask_prob",),
                video_format="png",
                temporal_smoothing=alpha,
            ),
        )

    plain, smoothed = predict(0.0), predict(0.8)
    assert plain["flicker"]["raw"] == plain["flicker"]["smoothed"] == smoothed["flicker"]["raw"]
    assert smoothed["flicker"]["smoothed"] < 0.5 * plain["flicker"]["raw"]
    expected = None
    for t, frame in enumerate(frames):
        raw = fake_predict(background_bgr()[None], frame[None])["mask"][0, ..., 0]
        expected = raw.astype(np.float64) if t == 0 else 0.8 * expected + 0.2 * raw
        written = cv2.imread(os.path.join(smoothed["outputs"]["mask_prob"], f"{t:06d}.png"), -1)
        assert np.abs(written.astype(int) - pixels.to_uint8(expected)).max() <= 1, t


def test_a_file_opencv_cannot_open_fails_before_predicting(clips, tmp_path):
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    predict = counting(fake_predict)
    with pytest.raises(ValueError, match=re.escape(str(not_a_video))):
        prediction.predict_clip(
            predict,
            str(not_a_video),
            clips["plate"],
            str(tmp_path / "out"),
            prediction.ClipOptions(model_hw=(64, 64)),
        )
    assert predict.calls == []


def test_an_empty_folder_is_no_clip(tmp_path):
    with pytest.raises(ValueError, match=re.escape(str(tmp_path)) + ".*no frames"):
        clips_lib.probe(str(tmp_path))


def test_more_plate_frames_than_the_clip_has(clips, tmp_path):
    predict = counting(fake_predict)
    with pytest.raises(ValueError, match=re.escape(clips["avi"]) + ".*plate_frames=30.*20"):
        prediction.predict_clip(
            predict, clips["avi"], 30, str(tmp_path), prediction.ClipOptions(model_hw=(64, 64))
        )
    assert predict.calls == []


def test_an_unreadable_plate_is_named(clips, tmp_path):
    with pytest.raises(ValueError, match=re.escape(clips["mp4"]) + ".*plate"):
        prediction.predict_clip(
            fake_predict,
            clips["avi"],
            clips["mp4"],
            str(tmp_path),
            prediction.ClipOptions(model_hw=(64, 64)),
        )


def cut_in_half(path: str, tmp_path) -> str:
    with open(path, "rb") as f:
        data = f.read()
    truncated = str(tmp_path / f"truncated{os.path.splitext(path)[1]}")
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    return truncated


def test_a_truncated_mp4_cannot_be_opened(clips, tmp_path):
    """mp4v files keep their index at the end: cut, they do not open at all."""
    truncated = cut_in_half(clips["mp4"], tmp_path)
    predict = counting(fake_predict)
    with pytest.raises(ValueError, match=re.escape(truncated)):
        prediction.predict_clip(
            predict,
            truncated,
            clips["plate"],
            str(tmp_path / "out"),
            prediction.ClipOptions(model_hw=(64, 64)),
        )
    assert predict.calls == []


def test_a_truncated_avi_keeps_the_frames_written(clips, tmp_path):
    truncated = cut_in_half(clips["avi"], tmp_path)
    out = tmp_path / "out"
    with pytest.raises(clips_lib.ClipBroken, match=re.escape(truncated)) as caught:
        prediction.predict_clip(
            fake_predict,
            truncated,
            clips["plate"],
            str(out),
            prediction.ClipOptions(model_hw=(64, 64)),
        )
    assert 0 < caught.value.frames_written < FRAMES
    assert f"{caught.value.frames_written} frames written" in str(caught.value)
    for name in outputs.DEFAULT_OUTPUTS:
        assert len(read_video(str(out / f"{name}.mp4"))) == caught.value.frames_written, name
    with open(out / "summary.json") as f:
        assert json.load(f)["error"].startswith("ClipBroken")


def test_a_corrupt_frame_in_a_folder(clips, tmp_path):
    folder = write_folder(str(tmp_path / "frames"), [frame_bgr(t) for t in range(FRAMES)])
    (tmp_path / "frames" / "frame11.png").write_bytes(b"not a png")
    with pytest.raises(
        clips_lib.ClipBroken, match=re.escape("frame11.png") + ".*frame 11"
    ) as caught:
        prediction.predict_clip(
            fake_predict,
            folder,
            clips["plate"],
            str(tmp_path / "out"),
            prediction.ClipOptions(model_hw=(64, 64), outputs=("mask",), video_format="png"),
        )
    assert caught.value.frames_written == caught.value.frame_index == 11
    assert len(os.listdir(tmp_path / "out" / "mask")) == 11


def test_ctrl_c_closes_the_writers(clips, tmp_path):
    def interrupted_on_the_second_batch(bg, bg_fg):
        interrupted_on_the_second_batch.calls += 1
        if interrupted_on_the_second_batch.calls == 2:
            raise KeyboardInterrupt
        return fake_predict(bg, bg_fg)

    interrupted_on_the_second_batch.calls = 0
    with pytest.raises(prediction.ClipInterrupted, match=re.escape(clips["avi"])) as caught:
        prediction.predict_clip(
            interrupted_on_the_second_batch,
            clips["avi"],
            clips["plate"],
            str(tmp_path),
            prediction.ClipOptions(model_hw=(64, 64)),
        )
    assert caught.value.frames_written == 8
    assert len(read_video(str(tmp_path / "side_by_side.mp4"))) == 8


def test_a_failing_writer_stops_the_clip(clips, tmp_path, monkeypatch):
    imwrite = cv2.imwrite

    def full_disk_for_the_mask(path, image, params):
        if os.path.basename(os.path.dirname(path)) == "mask" and path.endswith("000011.png"):
            return False
        return imwrite(path, image, params)

    monkeypatch.setattr(outputs.cv2, "imwrite", full_disk_for_the_mask)
    with pytest.raises(OSError, match=re.escape(str(tmp_path / "mask" / "000011.png"))):
        prediction.predict_clip(
            fake_predict,
            clips["png"],
            clips["plate"],
            str(tmp_path),
            prediction.ClipOptions(
                model_hw=(64, 64), outputs=("mask_prob", "mask"), video_format="png"
            ),
        )
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert summary["frames_written"] == 11 and summary["error"].startswith("OSError")
