"""Predicting a clip from a fixed camera against a background plate, frame by frame, into
videos; on the host, around any `predict_fn(bg, bg_fg)`. Submodules are imported explicitly.

- `prediction`: `predict_clip` (the threaded run, `summary.json`), `ClipOptions` (its settings),
  `ClipInterrupted`.
- `clips`: `probe` a video file or a folder of numbered frames, read its frames (`ClipBroken`
  where that fails), `load_plate` (an image, or the median of the first frames).
- `batches`: the frames as the model's fixed-shape batches, and its predictions on their way out.
- `threads`: the reader and writer threads and their bounded queues.
- `temporal`: the temporal smoothing (`TemporalSmoother`) and the flicker figure (`FlickerMeter`).
- `outputs`: each output's pictures (`Renderer`) and files (mp4 or PNG folders).
- `pixels`: resizing, probabilities as 0-255, colour-map tables.
- `from_config`: `config.predict.video` for `mode=predict`: its checks and its run.
"""
