"""Datasets (synthetic and MODEST Museum) and the grain input pipeline; knows nothing of models.

- `synthetic`: procedural museum scenes, deterministic per (seed, index); speed command.
- `builders`: tfds builders (array_record, original JPEG bytes), the reference split, MODEST
  validation, `prepare(ds_config)` (the one call that builds a set) and `load` (opens a built
  one), `validate`, `DatasetError`.
- `pipeline`: `create_loader(...)` (uint8 batches), `split_size`, `input_normalization`,
  `loader_settings` ("auto"), `measure_throughput`, `validate` (dataset and loader settings).
- `preprocess`: what the jitted steps do to a batch on the device: photometric augmentation
  (train) and normalisation.
- `normalization`: the one `normalize` and the MODEST statistics.

Submodules are not imported here, so `python -m jaxsegdepth.data.synthetic` stays light.
See docs/data.md.
"""
