#!/usr/bin/env bash
# One-command GPU check: on a machine with a GPU, one short run (< 8 minutes on one H100/H200)
# that writes one JSON (default gpu_check.json, or $1) with
#   - the DSResNet train step at 224 px in bfloat16 at the largest batch that fits
#     (--batch max: XLA's planned memory at 64 and 128, extrapolated, then run), its samples/s,
#     FLOP/s and fraction of the chip's dense bf16 peak (steps[0], largest_batch);
#   - the loader on this host at 224 px with the "auto" settings and in one process
#     (loader: samples/s, per core, bytes per sample);
#   (the synthetic set of 6,000 scenes, 4,200 for training, so that a batch of up to 4,096 fits)
#   - whether training is input-bound: the loader alone, the step alone and the two overlapped
#     as the trainer runs them (input[0]: wait_fraction, input_bound).
# Run from anywhere: bash tools/gpu_check.sh [out.json]. Needs `pip install -r requirements.txt`
# and jax with CUDA (`pip install -U "jax[cuda13]"`, or cuda12). See docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-gpu_check.json}")"
if ! python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
  echo "error: no GPU visible to JAX (jax.default_backend() is not gpu); install jax[cuda13]" \
       "or jax[cuda12] on a machine with an NVIDIA GPU" >&2
  exit 2
fi
# Let XLA's allocator take most of the memory so the largest batch is the chip's, not 75% of it.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
python tools/benchmark.py --model dsresnet --resolutions 224 --dtype bfloat16 \
  --batch max --steps 5 --repeats 3 --warmup 2 --compile-cache off \
  --workers auto,0 --threads auto --loader-batch 128 --loader-batches 20 \
  --input-steps 10 --num-samples 6000 --json "$out"
echo "wrote $out"
