#!/usr/bin/env bash
# The device check for a CUDA build, run on a lent GPU machine (no Rust, no network there; see
# docs/gpu.md): the engine's reference tests on the GPU, a CLI training run, then
# tools/bench/gpu_bench.sh. Everything it needs travels in BINS/bins.tar.xz (made by
# tools/gpu/build.sh): finetune-studio and the engine's test binaries, built with `--features
# cuda` from /work/main (the test binaries find the fixtures through that path, so it is linked
# here).
#
#   tools/gpu/check.sh BINS OUT [STEPS=6]
#
# Each part runs on when another fails. OUT gets summary.txt, bench.md and logs.tgz (every log).
set -uo pipefail
BINS=$(realpath "${1:?usage: check.sh BINS OUT [STEPS]}")
OUT=$(realpath "${2:?usage: check.sh BINS OUT [STEPS]}")
STEPS=${3:-6}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
L=/tmp/check-logs
mkdir -p /work "$OUT" $L && [ "$ROOT" = /work/main ] || ln -sfn "$ROOT" /work/main
cd /work/main
PY=python3
export LD_LIBRARY_PATH=$($PY -c 'import nvidia,glob,os;print(":".join(sorted(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p,"*","lib")))))')
export RUST_BACKTRACE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
B=/tmp/finetune-bin
mkdir -p $B
$PY -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$BINS/bins.tar.xz" $B
chmod +x $B/*
ldd $B/finetune-studio | grep -E 'not found|cuda|cublas' || true
note() { echo "$1" | tee -a "$OUT/summary.txt"; }
pack() { tar czf "$OUT/logs.tgz" -C $L .; }

# 1. The engine's reference tests (HF/PEFT/bitsandbytes logits, gradients, trajectories) on CUDA.
export FINETUNE_TEST_DEVICE=cuda
for t in "$B"/test-*; do
  n=$(basename "$t")
  timeout 150 "$t" --test-threads=4 >"$L/$n.log" 2>&1
  rc=$?
  note "$n: rc $rc, $(grep -E '^test result' "$L/$n.log" | tail -1)"
  grep -E '^test .* FAILED|panicked' "$L/$n.log" | head -20
done
unset FINETUNE_TEST_DEVICE
pack

# 2. The CLI: a LoRA run on the fixture model on the GPU (bf16 compute by default there), then
#    its adapter evaluated on the GPU and on the CPU in f32 (the two losses must agree).
T=/tmp/cli-check
rm -rf $T
timeout 120 $B/finetune-studio train --json --model fixtures/models/llama --data fixtures/data/alpaca.jsonl \
  --output $T/out --set model.device=\"cuda\" --set train.max_steps=20 --set train.lr=1e-2 >"$L/cli-train.ndjson" 2>"$L/cli-train.err"
note "cli train (cuda, bf16): rc $?, first/last loss $(grep -o '"loss":[0-9.]*' "$L/cli-train.ndjson" | sed -n '1p;$p' | cut -d: -f2 | tr '\n' ' ')"
for dev in cuda cpu; do
  timeout 60 $B/finetune-studio eval --json --model fixtures/models/llama --adapter $T/out \
    --data fixtures/data/alpaca.jsonl --set model.device=\"$dev\" --set model.dtype=\"f32\" >"$L/cli-eval-$dev.json" 2>&1
  note "cli eval ($dev, f32): rc $?, $(tail -1 "$L/cli-eval-$dev.json")"
done

pack

# 3. The benchmark.
tools/bench/gpu_bench.sh $B/finetune-studio $PY "$STEPS" /tmp/gpu-bench | tee "$OUT/bench.md"
cp /tmp/gpu-bench/*.err /tmp/gpu-bench/results.txt $L/ 2>/dev/null
nvidia-smi >"$L/nvidia-smi.txt" 2>&1
pack
cat "$OUT/summary.txt"
