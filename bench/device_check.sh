#!/usr/bin/env bash
# Accelerator check: the inference benchmark (random-CP mode, so no trained run or data is
# needed) at batch 1 and 32, and one training-step throughput measurement, on whatever JAX
# sees (a GPU or TPU when one is installed). Sized for under 8 minutes on one GPU.
#
#   bash bench/device_check.sh [OUT_DIR]        # default: bench/results/device
#
# Writes OUT_DIR/inference.json, OUT_DIR/train_step.json and OUT_DIR/devices.json.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results/device}"
stage="$(mktemp -d)"  # OUT_DIR's files are replaced only when every measurement is done.
trap 'rm -rf "$stage"' EXIT

python -c "import jax, json; print(json.dumps({'backend': jax.default_backend(), \
  'devices': [str(d) for d in jax.devices()]}))" > "$stage/devices.json"
cat "$stage/devices.json"

# Inference: the demo task in random-CP mode (embedded MiniLM, scaled random predictors),
# our full-length model against our AdapLeR engine (PyTorch here is a CPU build: left out).
timeout 300 python bench/inference.py --random-cp --task demo --batch-sizes 1,32 \
  --systems ours-full,ours-adapler --repeats 5 --min-seconds 1 --retries 0 \
  --out "$stage/inference.json"

# Training: one MiniLM fine-tuning step and one AdapLeR step, batch 32, length 64.
timeout 150 python bench/train_step.py --batch-size 32 --length 64 --repeats 5 \
  --systems ours-finetune,ours-adapler \
  --min-seconds 1 --out "$stage/train_step.json"

mkdir -p "$out"
mv "$stage"/*.json "$out"/
echo "wrote $out/devices.json, $out/inference.json, $out/train_step.json"
