"""DSResNet and MaskNet: Flax modules for foreground mask and depth from an image pair.

Both take `bg` (background only) and `bg_fg` (the same scene with foreground objects), NHWC,
and return a dict of float32 logits shaped (N, H, W, 1): `{"mask", "depth"}` for DSResNet,
`{"mask"}` for MaskNet. BatchNorm follows PyTorch's defaults (running-average momentum 0.1 there,
0.9 here; eps 1e-5), keeps its statistics in the `batch_stats` collection and has no
`axis_name`: under `jit` over a sharded batch the statistics are already global. One small
difference remains: Flax updates the running variance with the biased batch variance, PyTorch
with the unbiased one (a factor N/(N-1) over N pixels of the batch, negligible at these sizes).

`dtype` is the compute dtype (e.g. bfloat16 for mixed precision); parameters are always float32.

Print a summary: `python -m jaxsegdepth.models --model dsresnet --resolution 224`.
"""
import argparse
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

Dtype = Any
DSRESNET_STRIDE = 32  # five 2x poolings/upsamplings between input and bottleneck
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def upsample_bilinear_2x(x: jax.Array) -> jax.Array:
    """Doubles H and W of an NHWC array like PyTorch's bilinear `align_corners=False`.

    `jax.image.resize` samples at half-pixel centres and renormalises the triangle kernel at
    the borders, which for a 2x enlargement equals PyTorch's clamping of the sample position.
    """
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")


def _max_pool_2x(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _conv(features: int, kernel: int, dtype: Dtype, name: str) -> nn.Conv:
    """A square convolution with bias and "same" padding (PyTorch `padding=kernel // 2`)."""
    return nn.Conv(features, (kernel, kernel), padding=kernel // 2, dtype=dtype,
                   param_dtype=jnp.float32, name=name)


def _batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
    """PyTorch-default BatchNorm: batch statistics when training, running averages otherwise."""
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                        dtype=dtype, param_dtype=jnp.float32, name=name)


class DoubleConv(nn.Module):
    """conv3x3 -> ReLU -> BatchNorm, twice (ReLU before BatchNorm, as the reference)."""
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in (1, 2):
            x = nn.relu(_conv(self.features, 3, self.dtype, f"conv{i}")(x))
            x = _batch_norm(train, self.dtype, f"bn{i}")(x)
        return x


class Encoder(nn.Module):
    """Residual double conv; returns (2x max-pooled output, full-resolution output as skip)."""
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        out = (DoubleConv(dtype=self.dtype, features=self.features, name="convs")(x, train)
               + _conv(self.features, 1, self.dtype, "shortcut")(x))
        return _max_pool_2x(out), out


class Decoder(nn.Module):
    """1x1 reduce and 2x upsample, concat with the skip, residual double conv.

    With `extra`, the skip is first merged with it by a 1x1 convolution (`merge`).
    """
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, skip: jax.Array, train: bool,
                 extra: jax.Array | None = None) -> jax.Array:
        x = upsample_bilinear_2x(_conv(self.features, 1, self.dtype, "reduce")(x))
        if extra is not None:
            skip = _conv(self.features, 1, self.dtype, "merge")(jnp.concatenate([skip, extra], -1))
        x = jnp.concatenate([x, skip], -1)
        return (DoubleConv(dtype=self.dtype, features=self.features, name="convs")(x, train)
                + _conv(self.features, 1, self.dtype, "shortcut")(x))


class Head(nn.Module):
    """One decoder: bottleneck and skips back to input resolution, then a 1x1 conv to logits."""
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, skips: dict[str, jax.Array], train: bool) -> jax.Array:
        def decoder(features, name):
            return Decoder(dtype=self.dtype, features=features, name=name)

        x = decoder(256, "d3")(skips["enc4"], skips["enc3"], train)
        x = decoder(128, "d2")(x, skips["enc2"], train)
        x = decoder(64, "d1")(x, skips["enc1"], train)
        x = decoder(32, "e2")(x, skips["b2"], train, extra=skips["bf2"])
        x = decoder(16, "e1")(x, skips["b1"], train, extra=skips["bf1"])
        return _conv(1, 1, self.dtype, "out")(x).astype(jnp.float32)


def _check_pair(bg: jax.Array, bg_fg: jax.Array) -> None:
    """Both inputs must be NHWC arrays of one shape."""
    if bg.ndim != 4 or bg.shape != bg_fg.shape:
        raise ValueError(f"bg and bg_fg must be NHWC arrays of one shape, got {bg.shape} and "
                         f"{bg_fg.shape}")


class DSResNet(nn.Module):
    """Twin-input encoder-decoder (10,343,490 parameters): mask and depth logits.

    Each input has its own two encoder blocks; their pooled outputs are merged by a 1x1 conv
    and go through a shared four-block encoder whose last unpooled output is the bottleneck.
    Two decoders with separate weights (`mask_head`, `depth_head`) use the encoder skips and
    both inputs' first two skips. H and W must be multiples of 32.
    """
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, bg: jax.Array, bg_fg: jax.Array, train: bool = False) -> dict:
        _check_pair(bg, bg_fg)
        height, width = bg.shape[1:3]
        if height % DSRESNET_STRIDE or width % DSRESNET_STRIDE:
            raise ValueError(f"DSResNet input size {height}x{width} is not supported: height and "
                             f"width must each be a multiple of {DSRESNET_STRIDE}")

        def encoder(features, name):
            return Encoder(dtype=self.dtype, features=features, name=name)

        skips = {}
        x, skips["b1"] = encoder(16, "b1")(bg, train)
        pooled_bg, skips["b2"] = encoder(32, "b2")(x, train)
        x, skips["bf1"] = encoder(16, "bf1")(bg_fg, train)
        pooled_bg_fg, skips["bf2"] = encoder(32, "bf2")(x, train)
        x = _conv(32, 1, self.dtype, "merge")(jnp.concatenate([pooled_bg, pooled_bg_fg], -1))
        for i, features in enumerate((64, 128, 256, 512), start=1):
            x, skips[f"enc{i}"] = encoder(features, f"enc{i}")(x, train)
        return {head: Head(dtype=self.dtype, name=f"{head}_head")(skips, train)
                for head in ("mask", "depth")}


class MaskNet(nn.Module):
    """Small mask-only baseline (59,745 parameters); any input size.

    Every 3x3 conv is followed by ReLU, BatchNorm and dropout (`dropout_rate`, default 0.1:
    the reference does not state its rate). Training needs a `"dropout"` rng.
    """
    dtype: Dtype = jnp.float32
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, bg: jax.Array, bg_fg: jax.Array, train: bool = False) -> dict:
        _check_pair(bg, bg_fg)

        def block(x, features, name):
            x = nn.relu(_conv(features, 3, self.dtype, f"{name}_conv")(x))
            x = _batch_norm(train, self.dtype, f"{name}_bn")(x)
            dropout = nn.Dropout(self.dropout_rate, deterministic=not train, name=f"{name}_dropout")
            return dropout(x)

        x = jnp.concatenate([block(bg, 32, "bg"), block(bg_fg, 32, "bg_fg")], -1)
        x = _conv(32, 1, self.dtype, "merge")(x)
        x = block(block(x, 64, "block1"), 64, "block2")
        return {"mask": _conv(1, 1, self.dtype, "out")(x).astype(jnp.float32)}


MODELS = {"dsresnet": DSResNet, "masknet": MaskNet}


def create(name: str, dtype: Dtype = jnp.float32) -> nn.Module:
    """The model called `name` ("dsresnet" or "masknet") computing in `dtype` (e.g. "bfloat16")."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {sorted(MODELS)}")
    return MODELS[name](dtype=jnp.dtype(dtype))


def _param_count(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def summary(model: nn.Module, resolution: int = 224, depth: int = 2) -> str:
    """A table of the layers `depth` levels deep, in call order: output shape and parameters.

    Shapes only (nothing is computed), for one (1, resolution, resolution, 3) input pair.
    """
    rows = []

    def record(call, args, kwargs, context):
        path = context.module.path
        if context.method_name != "__call__" or not 0 < len(path) <= depth:
            return call(*args, **kwargs)
        row = len(rows)
        rows.append(None)  # a block's row comes before those of its layers
        outputs = call(*args, **kwargs)
        rows[row] = ("/".join(path),
                     ", ".join("x".join(map(str, x.shape)) for x in jax.tree.leaves(outputs)))
        return outputs

    dummy = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(functools.partial(model.init, train=False),
                                   jax.random.key(0), dummy, dummy)
    params = traverse_util.flatten_dict(variables["params"], sep="/")
    lines = [f"{type(model).__name__} at {resolution}x{resolution}",
             f"{'layer':<20} {'output shape':<34} {'params':>12}"]
    for name, shapes in rows:
        count = _param_count([v for k, v in params.items() if k.startswith(name + "/")])
        lines.append(f"{name:<20} {shapes:<34} {count:>12,}")
    lines.append(f"Total parameters: {_param_count(variables['params']):,} (plus "
                 f"{_param_count(variables.get('batch_stats', {})):,} BatchNorm statistics)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="dsresnet")
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    print(summary(create(args.model), args.resolution))


if __name__ == "__main__":
    main()
