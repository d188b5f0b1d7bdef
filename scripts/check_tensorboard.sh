#!/usr/bin/env bash
# Trains a tiny model with `finetune-studio train`, stops it at step 5 (an injected exit), resumes
# it, and reads the TensorBoard files back with the `tensorboard` package itself (in its own
# virtualenv under target/): every record's masked CRC-32C is verified, every scalar tag is found,
# and `train/loss` holds exactly the steps 1..10 (what the crashed attempt wrote past its
# checkpoint is purged by TensorBoard). Called by scripts/test.sh; needs target/debug/finetune-studio.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/tensorboard-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import tensorboard" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "tensorboard==2.21.0"
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
bin=target/debug/finetune-studio
common=(--set train.max_steps=10 --set checkpoint.every_steps=3 --set train.eval_every_steps=4 --set data.eval_fraction=0.2)
# The injected exit makes the first attempt fail on purpose.
FINETUNE_FAULT=exit@5 FINETUNE_TELEMETRY_MS=200 "$bin" train --model fixtures/models/llama \
  --data fixtures/data/alpaca.jsonl --output "$out/run" "${common[@]}" >/dev/null 2>&1 || true
FINETUNE_TELEMETRY_MS=200 "$bin" train --resume --output "$out/run" >/dev/null 2>&1
"$venv/bin/python" tools/fixtures/check_tensorboard.py "$out/run/tensorboard" --steps 10 --expect \
  train/loss train/learning_rate train/grad_norm train/tokens_per_s eval/loss \
  memory/process_rss_gib system/memory_used_gib
