#!/usr/bin/env bash
# Benchmark for issue #2: peak memory and tokens/s of LoRA vs full fine-tuning, ours vs
# PyTorch + PEFT, on the same random Llama (113.5 M parameters, 99 % in projections: weight-
# dominated; made by make_bench_model.py), the same data, batch and steps, measured side by side
# in one run, one process per configuration.
#   tools/bench/lora_vs_full.sh [PYTHON=.venv/bin/python] [STEPS=4]
# Needs the fixture venv (tools/fixtures/requirements.txt). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python}
STEPS=${2:-4}
THREADS=${RAYON_NUM_THREADS:-1}
WORK=target/bench/lora-vs-full
MODEL=$WORK/model
DATA=$WORK/data.jsonl
mkdir -p "$WORK"
[ -f "$MODEL/model.safetensors" ] && [ -f "$DATA" ] || "$PY" tools/bench/make_bench_model.py "$WORK" >/dev/null
cargo build -q --release -p finetune-cli
BIN=target/release/finetune-studio

ours() { # method batch checkpointing -> "tok/s peak_bytes final_loss"
  rm -rf "$WORK/out"
  RAYON_NUM_THREADS=$THREADS "$BIN" train --json --model "$MODEL" --data "$DATA" --output "$WORK/out" \
    --set method.kind=\"$1\" --set train.max_steps="$STEPS" --set train.batch_size="$2" --set data.max_len=128 \
    --set lora.targets=all-linear --set lora.r=16 --set lora.dropout=0.0 --set train.grad_checkpointing="$3" \
    --set data.shuffle=false --set train.scheduler=\"constant\" \
    | "$PY" tools/bench/summarize_events.py
}

peft() { # method batch -> "tok/s peak_bytes after_imports_bytes"
  "$PY" tools/bench/peft_train.py "$MODEL" "$DATA" --method "$1" --steps "$STEPS" --batch "$2" --threads "$THREADS" 2>/dev/null \
    | "$PY" -c 'import json,sys; r=json.load(sys.stdin); print("%.1f %d %d" % (r["tokens_per_s"], r["peak_rss_bytes"], r["rss_after_imports_bytes"]))'
}

mib() { echo $(( $1 / 1048576 )); }
echo "| batch x seq | implementation | method | tokens/s | peak RSS (MiB) |"
echo "|---|---|---|---:|---:|"
for batch in 1 4; do
  read -r lt lm _ <<<"$(ours lora "$batch" false)"
  read -r lct lcm _ <<<"$(ours lora "$batch" true)"
  read -r ft fm _ <<<"$(ours full "$batch" false)"
  read -r plt plm pli <<<"$(peft lora "$batch")"
  read -r pft pfm _ <<<"$(peft full "$batch")"
  echo "| $batch x 128 | finetune-studio | LoRA r16 all-linear | $lt | $(mib "$lm") |"
  echo "| $batch x 128 | finetune-studio | LoRA + grad checkpointing | $lct | $(mib "$lcm") |"
  echo "| $batch x 128 | finetune-studio | full | $ft | $(mib "$fm") |"
  echo "| $batch x 128 | PyTorch + PEFT | LoRA r16 all-linear | $plt | $(mib "$plm") (imports alone: $(mib "$pli")) |"
  echo "| $batch x 128 | PyTorch | full | $pft | $(mib "$pfm") |"
  "$PY" -c "print(f'| $batch x 128 | ratios | ours LoRA/full | memory {$lm/$fm:.2f}, step time {$ft/$lt:.2f} | LoRA vs PEFT speed {$lt/$plt:.2f}x |')"
done
