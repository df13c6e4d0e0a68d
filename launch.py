"""jaxsegdepth command line: one config, one mode, one run function.

    python launch.py --config configs/rmse_bce_dice.py [--workdir DIR] [--config.FIELD=VALUE ...]
    python launch.py --config configs/rmse_bce_dice.py:published   # the reference's schedule

`--workdir` defaults to `runs/<config file stem>` (`runs/<stem>_<arg>` with a `:arg`).
Modes (`--config.mode`): train, evaluate, predict, lr_range_test, export, plot.

Exit status: 0 done; 1 a run error (e.g. a non-finite loss, no checkpoint to load);
2 a bad config or command line, reported in one line before anything compiles;
130/143 stopped by SIGINT/SIGTERM after saving a checkpoint (rerun to resume).
"""
import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

MODES = {
    "train": "jaxsegdepth.train",
    "evaluate": "jaxsegdepth.evaluate",
    "predict": "jaxsegdepth.predict",
    "lr_range_test": "jaxsegdepth.lr_range",
    "export": "jaxsegdepth.export",
    "plot": "jaxsegdepth.plots",
}
DATA_MODES = ("train", "evaluate", "lr_range_test")
DATASETS = ("synthetic_museum", "modest_museum")
DTYPES = ("float32", "bfloat16")
MODEL_HEADS = {"dsresnet": ("mask", "depth"), "masknet": ("mask",)}
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "jaxsegdepth", "jax")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py), optionally with `:arg`.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, metrics, images). "
    "Default: runs/<config file stem>.")


def default_workdir(config_argument: str) -> str:
    path, _, arg = config_argument.partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join("runs", f"{stem}_{arg}" if arg else stem)


def validate_config(config, device_count: int | None = None,
                    process_count: int | None = None) -> None:
    """Raises ValueError with one line saying what is wrong with `config`, before any compile."""
    from jaxsegdepth import losses, optim
    from jaxsegdepth.models import DSRESNET_STRIDE

    def fail(message):
        raise ValueError(message)

    if config.mode not in MODES:
        fail(f"mode={config.mode!r}: expected one of {sorted(MODES)}")
    if config.model not in MODEL_HEADS:
        fail(f"model={config.model!r}: expected one of {sorted(MODEL_HEADS)}")
    if config.dtype not in DTYPES:
        fail(f"dtype={config.dtype!r}: expected one of {DTYPES}")
    heads = MODEL_HEADS[config.model]

    resolutions, stage_epochs = tuple(config.resolutions), tuple(config.stage_epochs)
    if not resolutions or len(resolutions) != len(stage_epochs):
        fail(f"resolutions {resolutions} and stage_epochs {stage_epochs} must be non-empty and "
             "of the same length (one training stage each)")
    if any(not isinstance(e, int) or e < 0 for e in stage_epochs):
        fail(f"stage_epochs {stage_epochs} must be non-negative integers")
    checked = list(resolutions)
    if config.mode == "lr_range_test" and config.lr_range.resolution:
        checked.append(config.lr_range.resolution)
    if config.mode == "evaluate":
        checked.extend(config.evaluate.resolutions)
    for r in checked:
        if not isinstance(r, int) or r <= 0:
            fail(f"resolution {r!r} must be a positive integer")
        if config.model == "dsresnet" and r % DSRESNET_STRIDE:
            fail(f"resolution {r} is not a multiple of {DSRESNET_STRIDE}, which dsresnet needs "
                 f"(resolutions={resolutions})")

    try:
        spec = losses.validate_spec(config.loss)
    except (ValueError, TypeError) as error:
        fail(f"loss: {error}")
    for head, terms in spec.items():
        if head not in heads:
            fail(f"loss has a {head!r} term but model {config.model!r} only predicts {heads}")
        smallest = min(checked)
        if "ms_ssim" in terms and smallest < losses.MS_SSIM_MIN_SIZE:
            fail(f"loss term ms_ssim needs resolutions >= {losses.MS_SSIM_MIN_SIZE}, "
                 f"got {smallest}")
        if "ssim" in terms and smallest < losses.SSIM_WINDOW:
            fail(f"loss term ssim needs resolutions >= {losses.SSIM_WINDOW}, got {smallest}")

    if config.optimizer.name not in optim.OPTIMIZERS:
        fail(f"optimizer.name={config.optimizer.name!r}: expected one of {optim.OPTIMIZERS}")
    if not config.optimizer.learning_rate > 0:
        fail(f"optimizer.learning_rate={config.optimizer.learning_rate!r} must be > 0")
    if config.schedule.name not in optim.SCHEDULES:
        fail(f"schedule.name={config.schedule.name!r}: expected one of {optim.SCHEDULES}")
    if config.schedule.name == "plateau" and not 0 < config.schedule.factor < 1:
        fail(f"schedule.factor={config.schedule.factor!r} must be in (0, 1) for plateau")

    if config.batch_size <= 0:
        fail(f"batch_size={config.batch_size} must be positive")
    if device_count and config.batch_size % device_count:
        fail(f"batch_size={config.batch_size} must be a multiple of the number of devices "
             f"({device_count})")
    if process_count and config.batch_size % process_count:
        fail(f"batch_size={config.batch_size} must be a multiple of the number of processes "
             f"({process_count})")
    range_batch = config.lr_range.batch_size if config.mode == "lr_range_test" else 0
    if range_batch and device_count and range_batch % device_count:
        fail(f"lr_range.batch_size={range_batch} must be a multiple of the number of devices "
             f"({device_count})")
    if config.log_every_steps < 1:
        fail(f"log_every_steps={config.log_every_steps} must be >= 1")
    if config.steps_per_epoch < 0:
        fail(f"steps_per_epoch={config.steps_per_epoch} must be >= 0 (0: a full pass)")

    if config.checkpoint.mode not in ("min", "max"):
        fail(f"checkpoint.mode={config.checkpoint.mode!r}: expected 'min' or 'max'")
    monitors = {"train_loss", "val_loss", "val_iou", "val_iou_soft"}
    if "depth" in heads:
        monitors |= {f"val_{k}" for k in ("rmse", "mae", "abs_rel", "sq_rel", "log10",
                                          "delta1", "delta2", "delta3")}
    monitors |= {f"val_{head}/{term}" for head, terms in spec.items() for term in terms}
    if config.checkpoint.monitor not in monitors:
        fail(f"checkpoint.monitor={config.checkpoint.monitor!r}: expected one of "
             f"{sorted(monitors)}")

    dataset = config.dataset
    if config.mode in DATA_MODES:
        if dataset.name not in DATASETS:
            fail(f"dataset.name={dataset.name!r}: expected one of {DATASETS}")
        if dataset.name == "modest_museum":
            manual_dir = dataset.manual_dir
            if not manual_dir:
                fail("dataset.name='modest_museum' needs --config.dataset.manual_dir=DIR: the "
                     "folder holding the MODEST Museum zip or its extracted files")
            if not os.path.exists(os.path.expanduser(manual_dir)):
                fail(f"dataset.manual_dir={manual_dir!r} does not exist")
        elif dataset.num_samples <= 0:
            fail(f"dataset.num_samples={dataset.num_samples} must be positive")


def enable_compilation_cache(config) -> None:
    """JAX's persistent compilation cache, so reruns and resumes skip compiling.

    `config.compilation_cache_dir`: "" for ~/.cache/jaxsegdepth/jax (or $JAX_COMPILATION_CACHE_DIR
    when set), "none" to turn it off, or a folder.
    """
    import jax
    directory = config.get("compilation_cache_dir", "")
    if directory.lower() == "none":
        return
    if not directory:
        directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_CACHE_DIR
    directory = os.path.expanduser(directory)
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def initialize_distributed(config) -> bool:
    """`jax.distributed.initialize()` when `distributed.enabled` or JAXSEGDEPTH_DISTRIBUTED=1.

    Unset fields (empty address, 0 processes, process id -1) are left to JAX: cluster
    auto-detection, or JAX_COORDINATOR_ADDRESS.
    """
    settings = config.distributed
    enabled = settings.enabled or os.environ.get("JAXSEGDEPTH_DISTRIBUTED", "").lower() in (
        "1", "true", "yes")
    if enabled:
        import jax
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address or None,
            num_processes=settings.num_processes or None,
            process_id=settings.process_id if settings.process_id >= 0 else None)
    return enabled


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # Orbax and grain log every save and worker at INFO
    config = _CONFIG.value
    if config is None:
        _fail("--config is required, e.g. --config configs/rmse_bce_dice.py", 2)
    workdir = _WORKDIR.value or default_workdir(flags.FLAGS["config"].config_filename)

    try:  # what needs no devices first, so a typo costs no start-up time
        validate_config(config)
    except ValueError as error:
        _fail(str(error), 2)

    initialize_distributed(config)
    import jax
    enable_compilation_cache(config)
    try:
        validate_config(config, jax.device_count(), jax.process_count())
    except ValueError as error:
        _fail(str(error), 2)

    module = importlib.import_module(MODES[config.mode])
    from jaxsegdepth import train
    from jaxsegdepth.data import builders
    if jax.process_index() == 0:
        print(f"{config.mode}: {config.model} on {config.dataset.name}, workdir {workdir}, "
              f"{jax.device_count()} {jax.devices()[0].platform} device(s)", flush=True)
    try:
        module.run(config, workdir)
    except train.Interrupted as error:
        _fail(str(error), 128 + error.signum)
    except builders.DatasetError as error:  # bad data or data settings, found before training
        _fail(str(error), 2)
    except (train.NonFiniteLoss, FileNotFoundError) as error:
        _fail(str(error), 1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad command line (an unknown flag or config field, a bad value
    or `:arg`, a missing config file) reported in one line and exit status 2."""
    try:
        remaining = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.get("mode")  # the config file loads lazily: fail here, not later
    except (AttributeError, KeyError) as error:  # an override of a field the config lacks
        field = str(error).strip("'\"")
        given = [a.split("=")[0] for a in argv if a.startswith("--config.") and field in a]
        _fail(f"{given[0] if given else field}: the config has no field {field!r} "
              "(the fields are in configs/default.py)", 2)
    except (flags.Error, OSError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        where = "--config" if isinstance(error, OSError) else lines[0].rstrip(":")
        _fail(where if len(lines) == 1 else f"{where}: {lines[-1]}", 2)
    return remaining


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
