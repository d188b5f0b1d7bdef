#!/usr/bin/env bash
# GPU side of issue #2's benchmark: tokens/s and peak GPU memory of LoRA vs full fine-tuning,
# finetune-studio (a `cuda` build) vs PyTorch + PEFT, on the same random Llamas, data, batches
# and steps, bf16 weights with f32 adapters on both sides, one process per configuration.
#
#   tools/bench/gpu_bench.sh BIN [PYTHON=python3] [STEPS=6] [WORK=/tmp/gpu-bench]
#
# BIN is a finetune-studio built with `--features cuda`. Ours also runs QLoRA (NF4, double
# quantization; PyTorch's side would need bitsandbytes, which the GPU machine lacks). PYTHON needs torch (CUDA), transformers
# and peft. Models: make_bench_model.py's 113.5 M Llama (batch 4 x 128) and its `large` 0.72 B
# Llama (batch 8 x 512). Peak memory for both sides is one outside measure: `nvidia-smi`'s
# memory.used sampled every 20 ms while the process runs, minus what was used before it started
# (so it includes each side's CUDA context and allocator cache, as a user's nvidia-smi shows).
# Prints a Markdown table and the LoRA/full and LoRA-vs-PEFT ratios.
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=${1:?usage: gpu_bench.sh BIN [PYTHON] [STEPS] [WORK]}
PY=${2:-python3}
STEPS=${3:-6}
WORK=${4:-/tmp/gpu-bench}
mkdir -p "$WORK"
[ -f "$WORK/small/model/model.safetensors" ] || "$PY" tools/bench/make_bench_model.py "$WORK/small" >/dev/null
[ -f "$WORK/large/model/model.safetensors" ] || "$PY" tools/bench/make_bench_model.py "$WORK/large" large >/dev/null

used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }

# measured NAME CMD... : runs CMD with stdout to $WORK/NAME.out, prints the peak MiB it added.
measured() {
  local name=$1; shift
  local idle; idle=$(used_mib)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 20 >"$WORK/$name.mem" &
  local sampler=$!
  timeout 150 "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  local peak; peak=$(sort -n "$WORK/$name.mem" | tail -1)
  [ "$rc" = 0 ] || { echo "FAILED ($rc): $name" >&2; tail -5 "$WORK/$name.err" >&2; }
  echo "$rc $((${peak:-0} - idle))"
}

ours_tps() { "$PY" tools/bench/summarize_events.py <"$WORK/$1.out" | cut -d' ' -f1; }
peft_tps() { "$PY" -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))["tokens_per_s"])' "$WORK/$1.out"; }

echo "| model | batch x seq | implementation | method | tokens/s | peak GPU MiB (nvidia-smi) |"
echo "|---|---|---|---|---:|---:|"
for size in small large; do
  if [ $size = small ]; then batch=4 seq=128; else batch=8 seq=512; fi
  model=$WORK/$size/model data=$WORK/$size/data.jsonl
  for cfg in "lora false" "lora true" "qlora false" "full false"; do
    set -- $cfg
    name=$size-ours-$1-ckpt$2
    read -r rc peak < <(measured "$name" "$BIN" train --json --model "$model" --data "$data" --output "$WORK/out" \
      --set model.device=\"cuda\" --set model.dtype=\"bf16\" \
      --set method.kind=\"$1\" --set train.max_steps="$STEPS" --set train.batch_size="$batch" --set data.max_len="$seq" \
      --set lora.targets=all-linear --set lora.r=16 --set lora.dropout=0.0 --set train.grad_checkpointing="$2" \
      --set data.shuffle=false --set train.scheduler=\"constant\")
    rm -rf "$WORK/out"
    tps=$([ "$rc" = 0 ] && ours_tps "$name" || echo failed)
    label=$1; [ "$2" = true ] && label="$1 + gradient checkpointing"
    echo "| $size | $batch x $seq | finetune-studio | $label | $tps | $peak |"
    echo "$size ours $label $tps $peak" >>"$WORK/results.txt"
  done
  for method in lora full; do
    name=$size-torch-$method
    read -r rc peak < <(measured "$name" "$PY" tools/bench/peft_train.py "$model" "$data" --method "$method" \
      --steps "$STEPS" --batch "$batch" --device cuda --dtype bf16)
    tps=$([ "$rc" = 0 ] && peft_tps "$name" || echo failed)
    impl="PyTorch + PEFT"; [ $method = full ] && impl=PyTorch
    echo "| $size | $batch x $seq | $impl | $method | $tps | $peak |"
    echo "$size torch $method $tps $peak" >>"$WORK/results.txt"
  done
done
