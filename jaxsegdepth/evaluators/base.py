"""What every evaluator is: `config.evals` entries, the `Evaluator` interface and its registry.

`config.evals` maps a name to `{type, every, evaluate, ...}`: `type` a registered evaluator's
`TYPE`, `every` the training epochs between runs (0: never during training), `evaluate` whether
`mode=evaluate` runs it; other fields are the type's own. Each evaluator's
`run(state, resolution)` gives a `Result`: its metrics are reported under the entry's name
(`val_loss`, `photos_model_iou`, ...), its images as `<tag>` pictures. Adding an evaluation set
is one `Evaluator` subclass under `@register` (its `TYPE`, `TITLE`, `check` of its own fields
and `create`), imported by `catalog`, and one config entry; nothing central changes.
"""

import dataclasses
import math
from typing import Callable, Iterator, Optional

import jax
import ml_collections
import numpy as np

from jaxsegdepth import errors, mesh as mesh_lib, names
from jaxsegdepth.data import pipeline


@dataclasses.dataclass
class Result:
    """What one run of an evaluator gives: named numbers and named RGB pictures."""

    metrics: dict = dataclasses.field(default_factory=dict)
    images: dict = dataclasses.field(default_factory=dict)  # tag -> (H, W, 3) uint8
    details: dict = dataclasses.field(default_factory=dict)  # JSON-able records, e.g. per pair


@dataclasses.dataclass(frozen=True)
class Context:
    """What evaluators share in one mode: the config, the mesh, the compiled steps, the heads."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    heads: tuple
    eval_step: Callable
    predict_step: Callable


class Evaluator:
    """What every evaluator type declares: its `config.evals` `type` name, the title its table
    carries in `mode=evaluate`, the check of its own fields and how an entry becomes one."""

    TYPE = ""
    TITLE = ""

    @classmethod
    def check(cls, settings: ml_collections.ConfigDict, field: str) -> None:
        """Refuses, in one line naming `field`.<name>, a bad setting of the type's own."""

    @classmethod
    def create(cls, name: str, settings, context: Context, should_stop: Callable[[], bool]):
        """The evaluator of the entry `name` with `settings`."""
        raise NotImplementedError

    def run(self, state, resolution: int) -> Optional[Result]:
        raise NotImplementedError


REGISTRY: dict[str, type] = {}  # `config.evals` type -> its Evaluator subclass


def register(cls: type) -> type:
    """Class decorator: `cls` evaluates the `config.evals` entries of type `cls.TYPE`."""
    REGISTRY[cls.TYPE] = cls
    return cls


def check_count(settings, field: str, count: str) -> None:
    """Refuses a count setting (`samples`, `pairs`) below 1; a missing one is the type's to
    name."""
    if settings.get(count, 1) < 1:
        raise errors.UsageError(f"{field}.{count}={settings[count]}: expected >= 1")


def validation_batches(context: Context, resolution: int) -> Iterator[tuple[dict, dict, int]]:
    """(sharded batch, this process's padded host batch, its number of real samples) for every
    global batch of the validation split. A process whose slice of a global batch is empty (or
    that has no sample at all) still takes part in every step, with a batch of weight 0."""
    config = context.config
    local_batch = mesh_lib.check_batch_size(context.mesh, config.batch_size)
    keys = names.INPUTS + tuple(context.heads)
    loader = pipeline.eval_batches(
        config.dataset, "validation", config.seed, resolution, local_batch
    )
    global_batches = math.ceil(
        pipeline.split_size(config.dataset, "validation") / (jax.process_count() * local_batch)
    )
    last_real = {
        k: np.zeros((1, resolution, resolution, 3 if k in names.INPUTS else 1), np.uint8)
        for k in keys
    }
    iterator = iter(loader)
    for _ in range(global_batches):
        host = next(iterator, None)
        if host is None:
            host, real = last_real, 0
        else:
            host = {k: np.asarray(host[k]) for k in keys}
            real = len(host["bg"])
            last_real = host
        take = np.arange(local_batch) % len(host["bg"])
        padded = {k: v[take] for k, v in host.items()}
        padded["weights"] = (np.arange(local_batch) < real).astype(np.float32)
        yield mesh_lib.shard_batch(context.mesh, padded), padded, real


def add(totals: dict, values: dict) -> None:
    """Adds `values` into `totals`, key by key."""
    for key, value in values.items():
        totals[key] = totals.get(key, 0.0) + value
