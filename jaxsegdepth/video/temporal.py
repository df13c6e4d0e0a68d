"""Across frames: the temporal smoothing of the probabilities and the flicker figure that
measures what it buys."""

from typing import Optional

import numpy as np


class TemporalSmoother:
    """Exponential moving average over frames, p_t = alpha p_(t-1) + (1 - alpha) raw_t with
    p_0 = raw_0, in float64; fed (n, h, w) batches in frame order, it carries across them."""

    def __init__(self, alpha: float):
        self.alpha = alpha
        self._previous: Optional[np.ndarray] = None

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        smoothed = np.empty(raw.shape, np.float32)
        for index, frame in enumerate(raw):
            if self._previous is None:
                self._previous = frame.astype(np.float64)
            else:
                self._previous = self.alpha * self._previous + (1.0 - self.alpha) * frame
            smoothed[index] = self._previous
        return smoothed


class FlickerMeter:
    """Mean absolute frame-to-frame change of a probability over the pixels where both frames
    agree with the plate: how much the prediction flickers where nothing moves."""

    def __init__(self):
        self._total = 0.0
        self._pixels = 0
        self._previous: Optional[tuple[np.ndarray, np.ndarray]] = None

    def update(self, probabilities: np.ndarray, static: np.ndarray) -> None:
        """Adds (n, h, w) probabilities with their (n, h, w) bool plate agreement, in order."""
        for probability, still in zip(probabilities, static):
            if self._previous is not None:
                previous_probability, previous_still = self._previous
                both = still & previous_still
                self._total += float(np.abs(probability - previous_probability)[both].sum())
                self._pixels += int(both.sum())
            self._previous = (probability, still)

    @property
    def value(self) -> Optional[float]:
        return self._total / self._pixels if self._pixels else None
