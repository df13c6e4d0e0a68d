"""Plate registration: undo the camera's motion between the plate and the scene, before the
network sees them.

A fixed camera is never quite fixed, and a plate shifted by a few pixels lights up every edge of
a busy background. `register(plate, scene, settings)` estimates the global motion of the plate
against the scene and warps the plate onto the scene:

1. both images to grey, scaled down so that the longer side is at most `work_side`;
2. a coarse translation by phase correlation (robust to large foreground and to changes of
   exposure, and outside ECC's basin of convergence where needed);
3. ECC (OpenCV's enhanced correlation coefficient, invariant to gain and offset) refines the
   `motion` model from there on the pixels the warp so far calls background (the residual's
   lower part), coarse to fine (the pair halved, then at the work scale), so that a foreground
   covering much of the frame does not pull it;
4. the warp, scaled to full resolution, resamples the plate (bilinear); pixels the moved plate
   does not cover are taken from the scene (no evidence either way, so no foreground there).

A motion under `min_motion_px` at every corner leaves the plate untouched (no resampling of an
exact plate), and so does a refused estimate on a plate equal to the scene on most of its
pixels (`EXACT_SHARE`, up to JPEG noise: an exact plate on which ECC had too little to hold).
An estimate that fails (ECC diverges), moves beyond the bounds, or leaves the background
poorly correlated (the wrong plate), or a plate much darker or brighter than the scene, is
refused: the plate is used unaligned and `Estimate.status` says why; the caller warns.

`Tracker` registers the frames of a clip one by one against one plate, each estimate starting
from the last good one (a shaky camera moves little between frames), a refused frame holding the
last good estimate.
"""

import dataclasses
import math
from typing import Optional

import cv2
import ml_collections
import numpy as np

from jaxsegdepth import errors

MOTIONS = {
    "translation": cv2.MOTION_TRANSLATION,
    "euclidean": cv2.MOTION_EUCLIDEAN,
    "affine": cv2.MOTION_AFFINE,
    "homography": cv2.MOTION_HOMOGRAPHY,
}
BACKGROUND_QUANTILE = 0.6  # ECC fits the pixels whose residual is below this quantile
MIN_SIDE = 16  # pixels: a smaller image is not registered (too little to fit)
COARSE_LEVELS = 1  # ECC on the pair halved this many times first, then at the work scale
# An estimate refused where this share of the pixels is within EXACT_LEVEL grey levels of the
# scene (JPEG noise) is an exact plate: no motion ("still"), not a failure
EXACT_SHARE, EXACT_LEVEL = 0.7, 3 / 255
# A motion is kept only where it cuts the background's residual by this share: a sub-pixel
# warp blurs the plate, which alone lowers the residual of a noisy, re-exposed or clipped
# shot by a few percent (at most 7% on the photo sets without motion; a 1 px move: 19% or more)
MIN_IMPROVEMENT = 0.1


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a plate is registered (`config.align`; docs/captures.md)."""

    enabled: bool = True
    motion: str = "euclidean"  # translation | euclidean | affine | homography
    work_side: int = 256  # the estimate's longer side, pixels (scaled down to it, never up)
    iterations: int = 40  # ECC iterations per pass
    max_shift: float = 0.08  # the largest translation, a fraction of the longer side
    max_rotation_deg: float = 3.0
    max_scale: float = 0.05  # |scale - 1| at most (affine and homography)
    min_correlation: float = 0.6  # ECC's correlation on the background at least (wrong plate)
    max_brightness_ratio: float = 2.5  # plate and scene mean grey level within this ratio
    min_motion_px: float = 0.1  # a smaller motion leaves the plate as it is

    @classmethod
    def from_config(cls, block: Optional[ml_collections.ConfigDict]) -> "Settings":
        """The settings of a config's `align` block (absent: registration off)."""
        if block is None:
            return cls(enabled=False)
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(block.keys()) - fields)
        if unknown:
            raise errors.UsageError(
                f"align.{unknown[0]}: unknown field, expected one of {sorted(fields)}"
            )
        return cls(**block.to_dict()).checked()

    def checked(self) -> "Settings":
        """These settings, or a UsageError naming the first field out of its range."""
        if self.motion not in MOTIONS:
            raise errors.UsageError(
                f"align.motion={self.motion!r}: expected one of {tuple(MOTIONS)}"
            )
        if self.work_side < 32:
            raise errors.UsageError(f"align.work_side={self.work_side}: expected >= 32 pixels")
        if self.iterations < 1:
            raise errors.UsageError(f"align.iterations={self.iterations}: expected >= 1")
        for name in ("max_shift", "max_rotation_deg", "max_scale", "min_motion_px"):
            if getattr(self, name) < 0:
                raise errors.UsageError(f"align.{name}={getattr(self, name)}: expected >= 0")
        if not 0 <= self.min_correlation <= 1:
            raise errors.UsageError(
                f"align.min_correlation={self.min_correlation}: expected in [0, 1]"
            )
        if self.max_brightness_ratio < 1:
            raise errors.UsageError(
                f"align.max_brightness_ratio={self.max_brightness_ratio}: expected >= 1"
            )
        return self


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The motion found for one pair: `warp` (3x3, scene pixel -> plate pixel, full
    resolution; a plate whose camera turned by +a degrees has rotation_deg -a), its
    translation, rotation and scale, ECC's correlation on the background, and
    `status`: "aligned", "still" (below min_motion_px: plate untouched), "off", "held" (a clip's
    frame refused, the last good estimate applied) or "refused: <why>" (plate used unaligned)."""

    warp: np.ndarray
    status: str
    correlation: float = float("nan")

    @property
    def applied(self) -> bool:
        return self.status in ("aligned", "held")

    @property
    def refused(self) -> bool:
        return self.status.startswith("refused")

    @property
    def shift_px(self) -> tuple[float, float]:
        return float(self.warp[0, 2]), float(self.warp[1, 2])

    @property
    def rotation_deg(self) -> float:
        return math.degrees(math.atan2(self.warp[1, 0], self.warp[0, 0]))

    @property
    def scale(self) -> float:
        return float(math.sqrt(abs(np.linalg.det(self.warp[:2, :2]))))

    def to_json(self) -> dict:
        """The estimate as the summaries record it."""
        dx, dy = self.shift_px
        return {
            "status": self.status,
            "dx": round(dx, 3),
            "dy": round(dy, 3),
            "rotation_deg": round(self.rotation_deg, 4),
            "scale": round(self.scale, 5),
            "correlation": None if math.isnan(self.correlation) else round(self.correlation, 4),
        }


IDENTITY = np.eye(3)


def _grey(image: np.ndarray, scale: float) -> np.ndarray:
    """uint8 (H, W[, C]) -> float32 grey in [0, 1], resized by `scale` (area filter)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
    grey = grey.astype(np.float32) / 255.0
    if scale < 1.0:
        size = (max(8, round(grey.shape[1] * scale)), max(8, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return grey


def _translation(scene: np.ndarray, plate: np.ndarray) -> np.ndarray:
    """The translation (3x3, scene -> plate pixels) by phase correlation."""
    window = cv2.createHanningWindow(scene.shape[::-1], cv2.CV_32F)
    (dx, dy), _ = cv2.phaseCorrelate(scene, plate, window)
    warp = np.eye(3)
    warp[:2, 2] = dx, dy
    return warp


def _ecc(
    scene: np.ndarray,
    plate: np.ndarray,
    warp: np.ndarray,
    settings: Settings,
    background: np.ndarray,
) -> tuple[float, np.ndarray]:
    """ECC from `warp` on the scene's `background` pixels: (correlation, warp). Raises
    cv2.error when it does not converge."""
    motion = MOTIONS[settings.motion]
    start = (
        warp.astype(np.float32) if motion == cv2.MOTION_HOMOGRAPHY else warp[:2].astype(np.float32)
    )
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, settings.iterations, 1e-5)
    everywhere = np.full(plate.shape, 255, np.uint8)
    correlation, found = cv2.findTransformECCWithMask(
        scene, plate, background, everywhere, start, motion, criteria, 5
    )
    full = np.eye(3)
    full[: found.shape[0]] = found
    return float(correlation), full


def _warp_plate(plate: np.ndarray, warp: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`plate` resampled (bilinear) at scene pixel x from plate pixel warp @ x, 0 outside."""
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    if np.allclose(warp[2], (0, 0, 1)):
        return cv2.warpAffine(plate, warp[:2], size, flags=flags, borderMode=cv2.BORDER_CONSTANT)
    return cv2.warpPerspective(plate, warp, size, flags=flags, borderMode=cv2.BORDER_CONSTANT)


def _background(scene: np.ndarray, plate: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """uint8 mask of the scene pixels the residual after `warp` calls background (255), with
    the pixels the moved plate does not cover left out."""
    size = scene.shape[::-1]
    moved = _warp_plate(plate, warp, size)
    covered = _warp_plate(np.ones_like(plate), warp, size) > 0.999
    residual = cv2.GaussianBlur(np.abs(moved - scene), (0, 0), 1.0)
    cut = np.quantile(residual[covered], BACKGROUND_QUANTILE) if covered.any() else np.inf
    return ((residual <= cut) & covered).astype(np.uint8) * 255


def _residual(scene: np.ndarray, plate: np.ndarray, warp: np.ndarray, where: np.ndarray) -> float:
    """Mean |gain * (plate moved by `warp`) + offset - scene| over the pixels `where` (uint8
    mask) it covers, gain and offset fitted there (least squares), so that an exposure change
    is no misfit (as for ECC) and cannot make a slight blur of the plate look like a motion."""
    size = scene.shape[::-1]
    covered = (_warp_plate(np.ones_like(plate), warp, size) > 0.999) & (where > 0)
    if not covered.any():
        return np.inf
    moved, target = _warp_plate(plate, warp, size)[covered], scene[covered]
    moved, target = moved - moved.mean(), target - target.mean()
    spread = np.dot(moved, moved)
    gain = np.dot(moved, target) / spread if spread > 0 else 1.0
    return float(np.abs(gain * moved - target).mean())


def _at_full_resolution(warp: np.ndarray, scale: float) -> np.ndarray:
    """A warp found on images scaled by `scale`, for the full-resolution images."""
    to_work = np.diag([scale, scale, 1.0])
    return np.linalg.inv(to_work) @ warp @ to_work


def _largest_motion(warp: np.ndarray, height: int, width: int) -> float:
    """The largest displacement of an image corner under `warp`, pixels."""
    corners = np.array([[0, 0, 1], [width, 0, 1], [0, height, 1], [width, height, 1]], float)
    moved = corners @ warp.T
    moved = moved[:, :2] / moved[:, 2:]
    return float(np.abs(moved - corners[:, :2]).max())


def _why_implausible(estimate: Estimate, settings: Settings, longer_side: int) -> Optional[str]:
    dx, dy = estimate.shift_px
    if math.hypot(dx, dy) > settings.max_shift * longer_side:
        return f"shift ({dx:.1f}, {dy:.1f}) px beyond align.max_shift={settings.max_shift}"
    if abs(estimate.rotation_deg) > settings.max_rotation_deg:
        return f"rotation {estimate.rotation_deg:.2f} deg beyond align.max_rotation_deg"
    if abs(estimate.scale - 1) > settings.max_scale:
        return f"scale {estimate.scale:.4f} beyond align.max_scale={settings.max_scale}"
    if not estimate.correlation >= settings.min_correlation:
        return (
            f"background correlation {estimate.correlation:.2f} below "
            f"align.min_correlation={settings.min_correlation} (another scene's plate?)"
        )
    return None


def estimate(
    plate: np.ndarray, scene: np.ndarray, settings: Settings, start: Optional[np.ndarray] = None
) -> Estimate:
    """The motion of `plate` against `scene` (uint8 images of one size), from `start` (a
    full-resolution warp, e.g. the previous frame's) or from phase correlation."""
    if not settings.enabled:
        return Estimate(IDENTITY, "off")
    height, width = scene.shape[:2]
    if min(height, width) < MIN_SIDE:
        return Estimate(IDENTITY, f"refused: {width}x{height} is too small to register")
    scale = min(1.0, settings.work_side / max(height, width))
    scene_grey, plate_grey = _grey(scene, scale), _grey(plate, scale)
    ratio = (plate_grey.mean() + 1e-3) / (scene_grey.mean() + 1e-3)
    if not 1 / settings.max_brightness_ratio <= ratio <= settings.max_brightness_ratio:
        return Estimate(IDENTITY, f"refused: plate/scene brightness ratio {ratio:.2f}")
    found = _fit(scene_grey, plate_grey, start, (height, width), settings)
    if found.refused and np.mean(np.abs(plate_grey - scene_grey) <= EXACT_LEVEL) >= EXACT_SHARE:
        return Estimate(IDENTITY, "still")
    return found


def _fit(
    scene_grey: np.ndarray,
    plate_grey: np.ndarray,
    start: Optional[np.ndarray],
    full_hw: tuple[int, int],
    settings: Settings,
) -> Estimate:
    """The estimate on the work-scale grey images of full-resolution size `full_hw`."""
    height, width = full_hw
    scale = scene_grey.shape[1] / width
    if start is None:
        warp = _translation(scene_grey, plate_grey)
    else:
        warp = _at_full_resolution(start, 1 / scale)
    try:
        for level in range(COARSE_LEVELS, -1, -1):  # the coarse pass on a half-size pair
            factor = 0.5**level
            scene_level, plate_level = (
                cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
                if level
                else image
                for image in (scene_grey, plate_grey)
            )
            warp = _at_full_resolution(warp, 1 / factor)
            background = _background(scene_level, plate_level, warp)
            correlation, warp = _ecc(scene_level, plate_level, warp, settings, background)
            warp = _at_full_resolution(warp, factor)
    except cv2.error:
        return Estimate(IDENTITY, "refused: ECC did not converge")
    unmoved = _residual(scene_grey, plate_grey, IDENTITY, background)
    moved = _residual(scene_grey, plate_grey, warp, background)
    if moved > (1 - MIN_IMPROVEMENT) * unmoved and correlation >= settings.min_correlation:
        return Estimate(IDENTITY, "still", correlation)  # the motion found fits hardly better
    found = Estimate(_at_full_resolution(warp, scale), "aligned", correlation)
    why = _why_implausible(found, settings, max(height, width))
    if why:
        return dataclasses.replace(found, warp=IDENTITY, status=f"refused: {why}")
    if _largest_motion(found.warp, height, width) < settings.min_motion_px:
        return dataclasses.replace(found, status="still")
    return found


def apply(plate: np.ndarray, scene: np.ndarray, found: Estimate) -> np.ndarray:
    """The plate moved onto the scene by `found` (uint8, the scene's shape; bilinear: as sharp
    as bicubic here at a fifth of the cost), the pixels it does not wholly cover taken from
    the scene; the plate itself when the estimate is not applied."""
    if not found.applied:
        return plate
    size = (scene.shape[1], scene.shape[0])
    moved = _warp_plate(plate, found.warp, size)
    covered = _warp_plate(np.full(plate.shape[:2], 255, np.uint8), found.warp, size) == 255
    return cv2.copyTo(moved, covered.astype(np.uint8), scene.copy())


def register(
    plate: np.ndarray, scene: np.ndarray, settings: Settings
) -> tuple[np.ndarray, Estimate]:
    """(the plate registered onto the scene, the estimate): `estimate` then `apply`."""
    found = estimate(plate, scene, settings)
    return apply(plate, scene, found), found


class Tracker:
    """Registers the frames of a clip against one plate in order: each estimate starts from the
    last good one; a refused frame holds the last good estimate (or none before the first)."""

    def __init__(self, plate: np.ndarray, settings: Settings):
        self.plate, self.settings = plate, settings
        self.last_good: Optional[Estimate] = None
        self.refused: list[tuple[int, str]] = []  # (frame index, why)
        self.estimates: list[dict] = []  # one per frame, as Estimate.to_json
        self._frames = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The plate registered onto `frame`."""
        start = None if self.last_good is None else self.last_good.warp
        found = estimate(self.plate, frame, self.settings, start)
        if found.refused and start is not None:
            found = estimate(self.plate, frame, self.settings)  # afresh, from phase correlation
        if found.refused:
            self.refused.append((self._frames, found.status))
            if self.last_good is not None:
                found = dataclasses.replace(self.last_good, status="held")
        elif found.status in ("aligned", "still"):
            self.last_good = found
        self._frames += 1
        self.estimates.append(found.to_json())
        return apply(self.plate, frame, found)

    def summary(self) -> dict:
        """Per-frame estimates and the refused frames, for a clip's summary.json."""
        return {
            "frames": self._frames,
            "refused": [{"frame": index, "why": why} for index, why in self.refused],
            "estimates": self.estimates,
        }
