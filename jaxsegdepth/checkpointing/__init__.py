"""What a checkpoint holds and how one is chosen: `store` (Orbax save and restore), `card` (the
model card), `select` (which checkpoint a mode reads, for inference or a warm start) and
`resume` (what a run carries across a stop, and whether it may continue).

The saved layout, `WORKDIR/checkpoints/<step>/`, one folder per kept step:
- `state`: the `steps.TrainState` pytree (parameters, BatchNorm statistics, the moving
  average, the loss weighting's state, optimizer and plateau state, RNG, step, non-finite
  sentinel);
- `loop`: JSON, `resume.Progress`: the partial epoch's running train loss (overall and per
  head), the data iterator's state and the stage it reads for, the last finished epoch's
  metrics.jsonl line and the settings a resume must share (`resume.RESUME_FIELDS`);
- `card`: JSON, the model card (`card.create`): model, heads, stride, dtype, the input
  normalisation it trained with, its last resolution, dataset and package version.

Kept: the latest step and the best end-of-epoch step by `checkpoint.monitor` (`store`).
"""
