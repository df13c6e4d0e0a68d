"""Datasets (synthetic and MODEST Museum) and the grain input pipeline, on the host; knows
nothing of models.

- `synthetic`: procedural museum scenes with shadows, deterministic per (seed, index).
- `photos`: held-out pairs made of real photographs, clean or with capture nuisances.
- `modest`: the MODEST Museum folder or zip: finding, reading and checking it (no tfds).
- `builders`: the tfds builders (array_record, original JPEG bytes) and the reference split.
- `datasets`: `prepare(ds_config)` (the one call that builds a set), `load` (opens a built
  one), `validate`.
- `pipeline`: `train_batches(...)`, `eval_batches(...)` (uint8 batches, through
  `create_loader`), `split_size`, `input_normalization`, `loader_settings` ("auto"), `measure_throughput`, `validate` (dataset and loader settings).
- `normalization`: the one `normalize` and the MODEST statistics.

What the steps do to a batch on the device is `jaxsegdepth.preprocess`. See docs/data.md.
"""
