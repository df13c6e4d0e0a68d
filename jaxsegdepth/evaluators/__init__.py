"""Evaluators: `base` (the interface and its registry), one module per kind (`validation`,
`baselines`, `photographs`) and `catalog` (what `config.evals` lists, checked and made)."""
