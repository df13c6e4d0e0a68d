"""The one place a config becomes a model, an optimizer, a `steps.TrainState` and compiled steps.

Every mode builds here: training (`create_state`, and `abstract_state` to restore into), the
LR range test (with its own sweep as `tx`), the benchmark and the inference modes (through
`restore`); `compiled_steps` compiles the steps with the config's loss, loss weighting and
augmentation. Which checkpoint to read, and reading it, is `restore`'s.
"""

import functools
from typing import Optional, Sequence

import flax.linen as nn
import jax
import ml_collections
import optax
from jax.sharding import Mesh

from jaxsegdepth import (
    errors,
    losses,
    mesh as mesh_lib,
    models,
    optim,
    preprocess,
    steps,
    weighting,
)
from jaxsegdepth.data import datasets

DTYPES = ("float32", "bfloat16")
NORMALIZATIONS = ("auto", "dataset")  # config.input_normalization
INIT_RESOLUTION = 32  # parameter shapes do not depend on it; DSResNet needs a multiple of 32


def validate(
    config: ml_collections.ConfigDict, resolutions: Sequence[int], field: str = "stages"
) -> None:
    """Refuses, in one line, a model, dtype, loss or loss weighting that cannot run at
    `resolutions` (the setting `field` of the config)."""
    if config.model not in models.MODELS:
        raise errors.UsageError(f"model={config.model!r}: expected one of {sorted(models.MODELS)}")
    if config.input_normalization not in NORMALIZATIONS:
        raise errors.UsageError(
            f"input_normalization={config.input_normalization!r}: expected one of {NORMALIZATIONS}"
        )
    preprocess.validate(config.augment)
    if config.dtype not in DTYPES:
        raise errors.UsageError(f"dtype={config.dtype!r}: expected one of {DTYPES}")
    stride = models.MODELS[config.model].STRIDE
    for resolution in resolutions:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution <= 0:
            raise errors.UsageError(
                f"{field}: resolution {resolution!r} must be a positive integer"
            )
        if resolution % stride:
            raise errors.UsageError(
                f"{field}: resolution {resolution} is not a multiple of "
                f"{stride}, which {config.model} needs"
            )
    try:
        spec = losses.validate_spec(config.loss)
    except (ValueError, TypeError) as error:
        raise errors.UsageError(f"loss: {error}") from None
    weighting.validate(config)
    model_heads = models.MODELS[config.model].HEADS
    smallest = min(resolutions, default=None)
    _check_targets(config, spec)
    for head, terms in spec.items():
        if head not in model_heads:
            raise errors.UsageError(
                f"loss has a {head!r} term but model {config.model!r} only predicts {model_heads}"
            )
        for term, size in (("ms_ssim", losses.MS_SSIM_MIN_SIZE), ("ssim", losses.SSIM_WINDOW)):
            if term in terms and smallest is not None and smallest < size:
                raise errors.UsageError(
                    f"{field}: loss term {term} needs resolutions >= {size}, got {smallest}"
                )


def validate_optimizer(config: ml_collections.ConfigDict) -> None:
    """`optim.validate`, and that every `freeze`/`lr_multipliers` regex matches a parameter of
    `config.model` (its shapes traced, nothing compiled)."""
    optim.validate(config)
    if config.freeze or config.lr_multipliers:
        optim.validate_paths(config, parameter_paths(config))


def parameter_paths(config: ml_collections.ConfigDict) -> list[str]:
    """The paths of `config.model`'s parameters, as `optim.parameter_paths` names them."""
    dummy = jax.ShapeDtypeStruct((1, INIT_RESOLUTION, INIT_RESOLUTION, 3), jax.numpy.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    model = create_model(config)
    shapes = jax.eval_shape(lambda a, b: model.init(rngs, a, b, train=False), dummy, dummy)
    return optim.parameter_paths(shapes["params"])


def _check_targets(config: ml_collections.ConfigDict, spec: dict) -> None:
    """Refuses a loss whose every head lacks targets in the dataset (heads without targets
    are left out of `loss_spec`: `missing_targets`)."""
    missing = missing_targets(config)
    if missing and len(missing) == len(spec):
        raise errors.UsageError(
            f"loss: dataset {config.dataset.name} has no targets for {missing}, the only "
            f"heads the loss trains (it has {list(datasets.target_heads(config.dataset))})"
        )


def missing_targets(config: ml_collections.ConfigDict) -> list[str]:
    """The heads of `config.loss` its dataset has no targets for (left out of `loss_spec`)."""
    available = datasets.target_heads(config.dataset)
    return [head for head in losses.validate_spec(config.loss) if head not in available]


def loss_spec(config: ml_collections.ConfigDict) -> dict:
    """`config.loss` as plain dicts, for the heads its dataset has targets for."""
    available = datasets.target_heads(config.dataset)
    return {h: t for h, t in losses.validate_spec(config.loss).items() if h in available}


def heads(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The heads a run trains, reports and predicts: those `config.model` declares that its
    loss spec trains (`loss_spec`)."""
    spec = loss_spec(config)
    return tuple(head for head in models.MODELS[config.model].HEADS if head in spec)


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    return models.create(config.model, config.dtype)


def create_state(
    config: ml_collections.ConfigDict,
    steps_per_epoch: int = 1,
    mesh: Optional[Mesh] = None,
    tx: Optional[optax.GradientTransformation] = None,
) -> steps.TrainState:
    """The model of `config.model` in `config.dtype`, initialised from `config.seed`, under jit.

    The optimizer follows `config.optimizer`/`config.schedule` (`steps_per_epoch` places the
    schedule's boundaries) unless `tx` is given. The state is replicated on `mesh` (default:
    every device).
    """
    mesh = mesh_lib.create_mesh() if mesh is None else mesh
    init = _initializer(config, steps_per_epoch, tx)
    return jax.jit(init, out_shardings=mesh_lib.replicated(mesh))(jax.random.PRNGKey(config.seed))


def abstract_state(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    steps_per_epoch: int = 1,
    tx: Optional[optax.GradientTransformation] = None,
) -> steps.TrainState:
    """The shapes, dtypes and (replicated) shardings of `create_state`'s result, no compute."""
    shapes = jax.eval_shape(
        _initializer(config, steps_per_epoch, tx), jax.random.PRNGKey(config.seed)
    )
    sharding = mesh_lib.replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def _initializer(config, steps_per_epoch, tx):
    if tx is None:
        tx = optim.training_optimizer(config, steps_per_epoch)
    return functools.partial(
        steps.create_train_state,
        create_model(config),
        tx,
        optim.plateau(config),
        resolution=INIT_RESOLUTION,
        weighting=weighting.from_config(config, tuple(loss_spec(config))),
        ema=config.ema_decay > 0,
    )


def compiled_steps(config: ml_collections.ConfigDict, mesh: Mesh, normalization: dict):
    """`steps.jit_steps` for `config`: its loss spec, loss weighting, augmentation, norms and
    moving average, with the dataset's input `normalization` ({input: (mean, std)},
    `pipeline.input_normalization`)."""
    return steps.jit_steps(
        mesh,
        losses.compose(loss_spec(config)),
        preprocess.from_config(config.augment, normalization, config.seed, config.dataset.name),
        weighting.from_config(config, tuple(loss_spec(config))),
        norms=config.log_norms,
        ema_decay=config.ema_decay,
    )
