"""Datasets (synthetic and MODEST Museum) and the grain input pipeline; knows nothing of models.

- `synthetic`: procedural museum scenes, deterministic per (seed, index); preview command.
- `builders`: tfds builders (array_record, original JPEG bytes), the reference split, MODEST
  validation, `prepare(ds_config)` (build once, reuse), `DatasetError`.
- `pipeline`: `default_config()`, `create_loader(...)`, `split_size`, `normalization`,
  `denormalize`, `measure_throughput`; loader benchmark command.

Submodules are not imported here, so `python -m jaxsegdepth.data.synthetic` stays light.
See docs/data.md.
"""
