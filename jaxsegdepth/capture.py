"""On the device, inside the jitted train step: the nuisances of a real two-shot capture.

The plate (bg) and the scene (bg_fg) are two photographs. Between them auto-exposure and white
balance move, the tone curve shifts a little, the sensor adds fresh noise and the camera is
nudged. A model trained on pixel-identical plates learns "any difference is foreground"; this
module makes the two shots differ the way real ones do so that it learns to ignore them.

Per shot, independently: exposure gain, white-balance gains, gamma, signal-dependent sensor noise.
The plate alone is also moved by a small affine warp before its exposure (the camera moves, then
the sensor records), so its noise stays fresh and unfiltered. The scene is never moved: the
targets (mask, depth) stay aligned with it and are not touched here.

Sample i's randomness comes from `fold_in(fold_in(PRNGKey(seed), index[i]), STREAM)`, a stream
apart from `preprocess.photometric`'s, so it is a pure function of the seed and the sample's
global index, whatever the batch, device or process count, and a resume repeats it.

Pure JAX, batched: a few elementwise passes and the plate's bilinear gather; no matmuls (GPUs
would run them at TF32), channel gains are elementwise products.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PLATE, SCENE = "bg", "bg_fg"
SHOTS = (PLATE, SCENE)  # shot s of a sample uses the draws and the noise of slot s
STREAM = 1  # fold-in that separates these draws from the photometric augmentation's
REFERENCE_SIZE = 224  # `shift_px` is in pixels of an image of this short side
READ_FRACTION = 0.25  # read-noise std as a fraction of the noise std at white

# Uniforms per sample: selected?; per shot (bg, then bg_fg): exposure, three white-balance
# gains, gamma, noise strength; then the plate's shift x, shift y, rotation, scale.
_SHOT_DRAWS = 6
_WARP_DRAWS = 4
NUM_DRAWS = 1 + _SHOT_DRAWS * len(SHOTS) + _WARP_DRAWS


@dataclasses.dataclass(frozen=True)
class Capture:
    """Strengths of the nuisances (hashable: a static jit argument); each is drawn uniformly per
    sample (and per shot) up to its strength. The defaults mimic a consumer camera on a tripod:
    auto-exposure steps of a third of a stop, a few percent of auto white balance, a slight tone
    curve change, noise of a few grey levels, and a nudge of about a pixel at 224 px."""

    prob: float = 1.0  # probability that a sample gets any nuisance
    exposure: float = 0.25  # exposure change per shot in [-e, e] stops
    white_balance: float = 0.05  # per-channel gain in [1 - w, 1 + w], then normalised to mean 1
    gamma: float = 0.1  # gamma in [1 / (1 + g), 1 + g], log-uniform
    noise: float = 0.02  # sensor noise std at white, [0, 1] units; each shot draws [0, noise]
    shift_px: float = 1.0  # plate translation in [-s, s] pixels per axis at 224 px
    rotate_deg: float = 0.3  # plate rotation in [-r, r] degrees about the centre
    scale: float = 0.005  # plate scale in [1 - s, 1 + s] about the centre

    @classmethod
    def off(cls) -> "Capture":
        """All strengths zero: `apply` returns its inputs unchanged."""
        return cls(**{field.name: 0.0 for field in dataclasses.fields(cls) if field.name != "prob"})

    @property
    def moves_plate(self) -> bool:
        """Whether any plate motion is drawn; without one the plate is not resampled at all."""
        return bool(self.shift_px or self.rotate_deg or self.scale)


class Nuisances(NamedTuple):
    """Per-sample parameters of `apply`; axis 1 of the per-shot fields is (bg, bg_fg)."""

    selected: jax.Array  # (N,) bool: whether the sample gets nuisances
    gain: jax.Array  # (N, 2, 3) exposure times white-balance gain per channel
    gamma: jax.Array  # (N, 2) exponent of the tone curve x ** gamma
    noise: jax.Array  # (N, 2) noise std at white
    shift: jax.Array  # (N, 2) plate translation (x, y) in pixels of this image size
    angle: jax.Array  # (N,) plate rotation in radians (image axes: x right, y down)
    scale: jax.Array  # (N,) plate scale


def _sample_keys(seed: int, index: jax.Array) -> jax.Array:
    key = jax.random.PRNGKey(seed)
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), STREAM))(index)


def draws(seed: int, index: jax.Array, num: int = NUM_DRAWS) -> jax.Array:
    """(N, num) uniforms in [0, 1): row i depends only on `seed` and `index[i]`."""
    keys = _sample_keys(seed, index)
    return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (num,)))(keys)


def normals(seed: int, index: jax.Array, shot: int, height: int, width: int) -> jax.Array:
    """(N, H, W, 3) standard normals, the sensor noise of shot `shot` (0: bg, 1: bg_fg): sample
    i's depend only on `seed`, `index[i]`, the shot and the image size. One call per shot: on
    CPU, slicing the shots out of one draw costs more than drawing them apart."""
    keys = _sample_keys(seed, index)
    shape = (height, width, 3)
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1 + shot), shape))(keys)


def nuisances(u: jax.Array, params: Capture, height: int, width: int) -> Nuisances:
    """The per-sample parameters that the uniforms `u` (N, NUM_DRAWS) draw for images of this
    size."""
    u = jnp.asarray(u, jnp.float32)
    shots = u[:, 1 : 1 + _SHOT_DRAWS * len(SHOTS)].reshape(-1, len(SHOTS), _SHOT_DRAWS)
    warp_u = u[:, 1 + _SHOT_DRAWS * len(SHOTS) :]
    exposure = 2.0 ** ((2 * shots[..., 0] - 1) * params.exposure)
    balance = 1 + (2 * shots[..., 1:4] - 1) * params.white_balance
    balance = balance / (balance.sum(-1, keepdims=True) / 3)
    pixels = min(height, width) / REFERENCE_SIZE
    return Nuisances(
        selected=u[:, 0] < params.prob,
        gain=exposure[..., None] * balance,
        gamma=(1.0 + params.gamma) ** (2 * shots[..., 4] - 1),
        noise=shots[..., 5] * params.noise,
        shift=(2 * warp_u[:, 0:2] - 1) * (params.shift_px * pixels),
        angle=(2 * warp_u[:, 2] - 1) * np.deg2rad(params.rotate_deg),
        scale=1 + (2 * warp_u[:, 3] - 1) * params.scale,
    )


def noise_std(x: jax.Array, std_at_white: jax.Array) -> jax.Array:
    """Sensor noise std at signal `x` in [0, 1]: read noise plus shot noise,
    std^2 = read^2 + shot * x, with read = READ_FRACTION * std_at_white and the std at
    white (x = 1) equal to `std_at_white`."""
    read2 = READ_FRACTION**2
    return std_at_white * jnp.sqrt(read2 + (1 - read2) * x)


def _per_sample(x: jax.Array) -> jax.Array:
    return x[:, None, None, None]


def expose(
    x: jax.Array, gain: jax.Array, gamma: jax.Array, std_at_white: jax.Array, noise: jax.Array
) -> jax.Array:
    """One shot as the camera records it: (N,H,W,3) in [0, 1] times the channel `gain` (N, 3),
    saturated to [0, 1], raised to `gamma` (N,), plus `noise` (N,H,W,3 standard normals) at
    the signal-dependent `noise_std`, clipped to [0, 1]. The power is exp(gamma log x), a
    quarter of the cost of XLA's pow on CPU, and skipped where gamma is 1 so that it is exact."""
    x = jnp.clip(x * gain[:, None, None, :], 0.0, 1.0)
    gamma = _per_sample(gamma)
    x = jnp.where(gamma == 1, x, jnp.exp(gamma * jnp.log(x)))
    return jnp.clip(x + noise_std(x, _per_sample(std_at_white)) * noise, 0.0, 1.0)


def warp(plate: jax.Array, shift: jax.Array, angle: jax.Array, scale: jax.Array) -> jax.Array:
    """(N,H,W,C) images moved by `shift` (N, 2) pixels (x, y), rotated by `angle` (N,) radians
    and scaled by `scale` (N,) about the image centre; bilinear, edges replicated.

    Output pixel q samples the input at c + R(-angle) (q - c - shift) / scale, c the centre; a
    positive angle turns the content clockwise on screen. The sampling is
    `jax.scipy.ndimage.map_coordinates` (order 1, mode "nearest") vmapped over samples and
    channels: on CPU it ties (within 2%) with a hand-written gather of whole RGB pixels, so the
    shorter code wins; it is an exact copy at integer coordinates (weights 1 and 0)."""
    _, height, width, _ = plate.shape
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    cos, sin = (jnp.cos(angle) / scale)[:, None, None], (jnp.sin(angle) / scale)[:, None, None]
    dx = jnp.arange(width, dtype=jnp.float32)[None, None, :] - centre_x - shift[:, 0, None, None]
    dy = jnp.arange(height, dtype=jnp.float32)[None, :, None] - centre_y - shift[:, 1, None, None]
    source_x = centre_x + (cos * dx + sin * dy)
    source_y = centre_y + (cos * dy - sin * dx)

    def sample(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
        return jax.scipy.ndimage.map_coordinates(image, (y, x), order=1, mode="nearest")

    per_channel = jax.vmap(sample, in_axes=(2, None, None), out_axes=2)
    return jax.vmap(per_channel)(plate, source_y, source_x)


def apply(images: dict, index: jax.Array, seed: int, params: Capture) -> dict:
    """{"bg", "bg_fg": (N,H,W,3) float32 in [0, 1]} -> the same with the capture nuisances of
    `params` (module doc); samples not selected by `params.prob` pass through bit for bit.
    Other entries (e.g. targets) are returned as they are."""
    _, height, width, _ = images[PLATE].shape
    drawn = nuisances(draws(seed, index), params, height, width)
    keep = _per_sample(drawn.selected)
    out = dict(images)
    for shot, key in enumerate(SHOTS):
        x = images[key]
        moves = key == PLATE and params.moves_plate
        moved = warp(x, drawn.shift, drawn.angle, drawn.scale) if moves else x
        noise = normals(seed, index, shot, height, width) if params.noise else jnp.zeros_like(x)
        recorded = expose(
            moved, drawn.gain[:, shot], drawn.gamma[:, shot], drawn.noise[:, shot], noise
        )
        out[key] = jnp.where(keep, recorded, x)
    return out
