#!/usr/bin/env bash
# Where a GPU training step's time goes, without a profiler (the lent machines have no nsys):
# finetune-studio's LoRA on make_bench_model.py's `large` llama at batch 1, 2 and 8 x 512 tokens,
# each run's tokens/s next to its host CPU time (user + system) and wall time, and the GPU's mean
# utilisation while it ran (`nvidia-smi`, sampled every 50 ms). A step whose time hardly grows
# with the batch, with CPU time close to the wall time and a mostly idle GPU, is bound by the host
# issuing kernels, not by the GPU. PyTorch + PEFT at batch 8 runs last, for comparison.
#
#   tools/gpu/diagnose.sh BIN [PYTHON=python3] [WORK=/tmp/gpu-bench]
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:?usage: diagnose.sh BIN [PYTHON] [WORK]}
PY=${2:-python3}
WORK=${3:-/tmp/gpu-bench}
[ -f "$WORK/large/model/model.safetensors" ] || "$PY" tools/bench/make_bench_model.py "$WORK/large" large >/dev/null
model=$WORK/large/model data=$WORK/large/data.jsonl

# timed NAME CMD...: stdout to $WORK/NAME.out; prints "cpu_s wall_s gpu_util_mean".
timed() {
  local name=$1; shift
  nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits -lms 50 >"$WORK/$name.util" &
  local sampler=$!
  "$PY" -c '
import resource, subprocess, sys, time
t = time.time()
with open(sys.argv[1], "w") as out, open(sys.argv[2], "w") as err:
    subprocess.run(sys.argv[3:], stdout=out, stderr=err)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print("%.1f %.1f" % (r.ru_utime + r.ru_stime, time.time() - t))' "$WORK/$name.out" "$WORK/$name.err" timeout 150 "$@" | tr '\n' ' '
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  awk '{s += $1; n++} END {printf "%.0f\n", n ? s / n : 0}' "$WORK/$name.util"
}

echo "| run | tokens/s | host CPU s | wall s | mean GPU util % |"
echo "|---|---:|---:|---:|---:|"
for batch in 1 2 8; do
  name=diag-ours-b$batch
  read -r cpu wall util < <(timed "$name" "$BIN" train --json --model "$model" --data "$data" --output "$WORK/out-$batch" \
    --set model.device=\"cuda\" --set model.dtype=\"bf16\" --set method.kind=\"lora\" --set train.max_steps=6 \
    --set train.batch_size="$batch" --set data.max_len=512 --set lora.targets=all-linear --set lora.r=16 \
    --set lora.dropout=0.0 --set data.shuffle=false --set train.scheduler=\"constant\")
  tps=$("$PY" tools/bench/summarize_events.py <"$WORK/$name.out" | cut -d' ' -f1)
  echo "| finetune-studio LoRA, batch $batch x 512 | $tps | $cpu | $wall | $util |"
done
name=diag-peft-b8
read -r cpu wall util < <(timed "$name" "$PY" tools/bench/peft_train.py "$model" "$data" --method lora --steps 6 \
  --batch 8 --device cuda --dtype bf16)
tps=$("$PY" -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["tokens_per_s"])' "$WORK/$name.out")
echo "| PyTorch + PEFT LoRA, batch 8 x 512 | $tps | $cpu | $wall | $util |"
