"""IoU and depth metrics against float64 NumPy formulas; exact accumulation across batches."""

import math

import jax
import numpy as np
import pytest

from jaxsegdepth import metrics, names

RNG = np.random.default_rng(0)
N = 8
MASK_LOGITS = RNG.normal(0, 3, (N, 12, 12, 1)).astype(np.float32)
MASK = (RNG.uniform(size=(N, 12, 12, 1)) > 0.6).astype(np.float32)
DEPTH_LOGITS = RNG.normal(0, 2, (N, 12, 12, 1)).astype(np.float32)
DEPTH_LOGITS[0, :3] = -50  # predictions of (almost) zero exercise the clip
DEPTH = RNG.uniform(size=(N, 12, 12, 1)).astype(np.float32)
DEPTH[1, :5] = 0  # pixels without depth are left out
OUTPUTS = {"mask": MASK_LOGITS, "depth": DEPTH_LOGITS}
TARGETS = {"mask": MASK, "depth": DEPTH}


def _sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, np.float64)))


def _iou(p, t, threshold):
    p, t = np.asarray(p, np.float64), np.asarray(t, np.float64)
    if threshold is not None:
        p = (p > threshold).astype(np.float64)
    scores = [
        ((a * b).sum() + 1e-6) / (a.sum() + b.sum() - (a * b).sum() + 1e-6) for a, b in zip(p, t)
    ]
    return np.mean(scores)


def _depth(p, t):
    valid = t > 1e-4
    p, t = np.asarray(p, np.float64)[valid], np.asarray(t, np.float64)[valid]
    clipped = np.maximum(p, 1e-4)
    ratio = np.maximum(clipped / t, t / clipped)
    return {
        "rmse": np.sqrt(np.mean((p - t) ** 2)),
        "mae": np.mean(np.abs(p - t)),
        "abs_rel": np.mean(np.abs(p - t) / t),
        "sq_rel": np.mean((p - t) ** 2 / t),
        "log10": np.mean(np.abs(np.log10(clipped) - np.log10(t))),
        "delta1": np.mean(ratio < 1.25),
        "delta2": np.mean(ratio < 1.25**2),
        "delta3": np.mean(ratio < 1.25**3),
    }


def _reference(outputs, targets):
    p_mask = _sigmoid(outputs["mask"])
    return {
        "iou": _iou(p_mask, targets["mask"], 0.5),
        "iou_soft": _iou(p_mask, targets["mask"], None),
        **_depth(_sigmoid(outputs["depth"]), targets["depth"]),
    }


def _assert_metrics(actual, expected):
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert isinstance(actual[name], float)
        assert actual[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def _part(tree, part):
    return {head: x[part] for head, x in tree.items()}


def _add(a, b):
    return {key: np.float64(a[key]) + np.float64(b[key]) for key in a}


@pytest.mark.parametrize("threshold", [0.5, 0.3, None])
def test_iou_matches_numpy(threshold):
    probs = _sigmoid(MASK_LOGITS).astype(np.float32)
    assert float(metrics.iou(probs, MASK, threshold)) == pytest.approx(
        _iou(probs, MASK, threshold), rel=1e-5
    )


def test_depth_metrics_match_numpy():
    preds = _sigmoid(DEPTH_LOGITS).astype(np.float32)
    expected = _depth(preds, DEPTH)
    assert expected["delta1"] < 1 and expected["log10"] > 0.1  # the clipped zeros count
    _assert_metrics(metrics.depth_metrics(preds, DEPTH), expected)


def test_summarize_reports_exactly_the_declared_metric_names():
    outputs = {"mask": MASK_LOGITS, "depth": DEPTH_LOGITS}
    summary = metrics.summarize(metrics.batch_sums(outputs, {"mask": MASK, "depth": DEPTH}))
    assert tuple(summary) == names.metric_names(("mask", "depth"))[1:]  # all but "loss"
    mask_only = metrics.summarize(metrics.batch_sums({"mask": MASK_LOGITS}, {"mask": MASK}))
    assert tuple(mask_only) == names.metric_names(("mask",))[1:]


def test_summed_uneven_batches_equal_the_whole_set():
    first, second = slice(0, 3), slice(3, N)
    batch_sums = jax.jit(metrics.batch_sums)
    sums = _add(
        batch_sums(_part(OUTPUTS, first), _part(TARGETS, first)),
        batch_sums(_part(OUTPUTS, second), _part(TARGETS, second)),
    )
    assert sums["images"] == N and sums["pixels"] == np.sum(DEPTH > 1e-4)
    _assert_metrics(metrics.summarize(sums), _reference(OUTPUTS, TARGETS))
    _assert_metrics(metrics.summarize(batch_sums(OUTPUTS, TARGETS)), _reference(OUTPUTS, TARGETS))


def test_zero_weights_leave_out_padded_samples():
    padded_outputs = {head: np.concatenate([x[:5], 100 * x[5:]]) for head, x in OUTPUTS.items()}
    weights = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    sums = jax.jit(metrics.batch_sums)(padded_outputs, TARGETS, weights)
    expected = _reference(_part(OUTPUTS, slice(5)), _part(TARGETS, slice(5)))
    _assert_metrics(metrics.summarize(sums), expected)


def test_mask_only_model_gets_mask_metrics_only():
    sums = metrics.batch_sums({"mask": MASK_LOGITS}, {"mask": MASK})
    assert set(metrics.summarize(sums)) == {"iou", "iou_soft"}


def test_nothing_counted_gives_nan():
    sums = metrics.batch_sums(OUTPUTS, {"mask": MASK, "depth": np.zeros_like(DEPTH)})
    summary = metrics.summarize(sums)
    assert math.isnan(summary["rmse"]) and math.isnan(summary["delta1"])
    assert summary["iou"] == pytest.approx(_iou(_sigmoid(MASK_LOGITS), MASK, 0.5), rel=1e-5)
