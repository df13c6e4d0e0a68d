"""Charts as PNG files: metric curves of a run and the LR range test (matplotlib's object API
only: no pyplot, no display needed)."""

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def lr_range(result: dict, path: str) -> str:
    """Loss against learning rate (log axis), raw and smoothed, with the suggestion marked."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    lrs = np.asarray(result["lrs"])
    ax.plot(lrs, result["losses"], color="0.75", linewidth=0.8, label="loss")
    ax.plot(lrs, result["smoothed"], color="C0", linewidth=1.8, label="smoothed loss")
    suggested = result["suggested_lr"]
    ax.axvline(
        suggested,
        color="C3",
        linestyle="--",
        linewidth=1.2,
        label=f"suggested lr {suggested:.3g} (lowest smoothed loss)",
    )
    ax.plot([suggested], [result["min_smoothed_loss"]], "o", color="C3")
    if result.get("steepest_lr"):
        ax.axvline(
            result["steepest_lr"],
            color="C2",
            linestyle=":",
            linewidth=1.0,
            label=f"steepest descent {result['steepest_lr']:.3g}",
        )
    ax.set_xscale("log")
    # Keep the interesting part in view: the diverging tail would squash everything else.
    smoothed = np.asarray(result["smoothed"])
    low, high = float(smoothed.min()), float(smoothed[0])
    span = max(high - low, 1e-6)
    ax.set_ylim(low - 0.1 * span, high + 0.5 * span)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def epoch_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (epochs, values) for every numeric field of the end-of-epoch records.

    A record counts as end-of-epoch when it has an `epoch` and a validation value (`val_*`);
    when an epoch was logged twice (a resumed run), the last record wins.
    """
    by_epoch: dict[float, dict] = {}
    for record in records:
        if "epoch" not in record or not any(k.startswith("val_") for k in record):
            continue
        by_epoch[float(record["epoch"])] = record
    series: dict[str, tuple[list, list]] = {}
    for epoch in sorted(by_epoch):
        for key, value in by_epoch[epoch].items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(epoch)
            ys.append(float(value))
    return {k: (np.asarray(x), np.asarray(y)) for k, (x, y) in series.items()}


def _present(series: dict, *names: str) -> list[str]:
    return [name for name in names if name in series]


def curves(records: list[dict], path: str) -> str:
    """IoU, RMSE, losses and learning rate of a run's epoch records against the epoch, one
    panel each, as a PNG. Raises ValueError when no record has validation metrics."""
    series = epoch_series(records)
    if not series:
        raise ValueError("no end-of-epoch records (with an epoch and validation metrics) to plot")
    panels = [
        ("Mask IoU (higher is better)", _present(series, "val_iou", "val_iou_soft")),
        ("Depth RMSE (lower is better)", _present(series, "val_rmse")),
        ("Loss", _present(series, "train_loss", "val_loss")),
        ("Learning rate", _present(series, "lr")),
    ]
    panels = [(title, keys) for title, keys in panels if keys]
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(6 * cols, 4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            epochs, values = series[key]
            ax.plot(epochs, values, marker="o", markersize=3, label=key)
            if title.startswith(("Mask", "Depth")) and len(values):
                ax.annotate(
                    f"{values[-1]:.4g}",
                    (epochs[-1], values[-1]),
                    fontsize=8,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
        if title == "Learning rate" or (title == "Loss" and _spans_decades(series, keys)):
            ax.set_yscale("log")
        _mark_stages(ax, series)
        ax.margins(x=0.08)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


def _mark_stages(ax, series: dict) -> None:
    """A dashed line where the training resolution changes (progressive resizing)."""
    if "resolution" not in series:
        return
    epochs, resolutions = series["resolution"]
    for i in range(1, len(epochs)):
        if resolutions[i] != resolutions[i - 1]:
            x = (epochs[i] + epochs[i - 1]) / 2
            ax.axvline(x, color="0.6", linestyle="--", linewidth=0.8)
            ax.annotate(
                f"{int(resolutions[i])}px",
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -10),
                textcoords="offset points",
                fontsize=7,
                color="0.4",
            )


def _spans_decades(series: dict, keys: list[str]) -> bool:
    values = np.concatenate([series[k][1] for k in keys])
    return bool(values.size) and values.min() > 0 and values.max() / values.min() > 30
