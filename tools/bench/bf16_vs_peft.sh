#!/usr/bin/env bash
# LoRA r16 (all linear layers) in f32 and bf16, ours against PyTorch + PEFT on the same CPU, with
# ours in f32 both with the default frozen base (`auto`: the stored bf16 values where the CPU
# multiplies them as stored) and with an f32 copy of it (`f32-copy`), and
# full fine-tuning beside them; 1 and 2 threads, batch 1 and 4 (x 128 tokens), ROUNDS
# interleaved rounds, with full fine-tuning in f32 and bf16 (ours) and bf16 (PyTorch). Each line:
# round, threads, batch, implementation, method, dtype, median tokens/s of steps 2..STEPS, step
# 1's loss, peak RSS in MiB. Then QLoRA with and without the AMX tile unit (two threads, batch
# 4). Needs the model and data of lora_vs_full.sh (run it once) and the benchmark venv.
#   tools/bench/bf16_vs_peft.sh [PY=.venv/bin/python] [STEPS=6] [ROUNDS=2]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python} STEPS=${2:-6} ROUNDS=${3:-2}
W=target/bench/lora-vs-full
BIN=target/release/finetune-studio
[ -f "$W/model/model.safetensors" ] || { echo "error: no benchmark model in $W: run tools/bench/lora_vs_full.sh once" >&2; exit 1; }
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

ours() { # threads batch method dtype [key=value]
  local extra=(); [ -n "${5:-}" ] && extra=(--set "$5")
  rm -rf "$OUT/run"
  /usr/bin/time -f "%M" -o "$OUT/rss" env RAYON_NUM_THREADS="$1" "$BIN" train --json --model "$W/model" \
    --data "$W/data.jsonl" --output "$OUT/run" --set method.kind=\""$3"\" --set model.dtype=\""$4"\" \
    --set train.max_steps="$STEPS" --set train.batch_size="$2" --set data.max_len=128 --set lora.targets=all-linear \
    --set lora.r=16 --set lora.dropout=0.0 --set train.grad_checkpointing=false --set data.shuffle=false \
    --set train.scheduler=\"constant\" "${extra[@]}" 2>/dev/null | python3 -c '
import json, sys
ev = [e for e in map(json.loads, sys.stdin) if "tokens_per_s" in e]
v = sorted(e["tokens_per_s"] for e in ev)[1:]
print(round(v[len(v) // 2], 1), round(ev[0]["loss"], 6), end=" ")'
  echo "$(( $(cat "$OUT/rss") / 1024 ))"
}
peft() { # threads batch method dtype
  "$PY" tools/bench/peft_train.py "$W/model" "$W/data.jsonl" --method "$3" --steps "$STEPS" --batch "$2" \
    --threads "$1" --dtype "$4" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(round(d["tokens_per_s"], 1), round(d["losses"][0], 6), d["peak_rss_bytes"] // 2**20)'
}

date -u
for round in $(seq "$ROUNDS"); do
  for cfg in "1 1" "1 4" "2 1" "2 4"; do
    t=${cfg% *} b=${cfg#* }
    echo "r$round t$t b$b ours lora f32 $(ours "$t" "$b" lora f32)"
    echo "r$round t$t b$b ours lora f32-copy $(ours "$t" "$b" lora f32 'model.frozen_dtype="compute"')"
    echo "r$round t$t b$b ours lora bf16 $(ours "$t" "$b" lora bf16)"
    echo "r$round t$t b$b ours lora bf16-stored $(ours "$t" "$b" lora bf16 'model.frozen_dtype="stored"')"
    echo "r$round t$t b$b peft lora f32 $(peft "$t" "$b" lora f32)"
    echo "r$round t$t b$b peft lora bf16 $(peft "$t" "$b" lora bf16)"
    echo "r$round t$t b$b ours full f32 $(ours "$t" "$b" full f32)"
    echo "r$round t$t b$b ours full bf16 $(ours "$t" "$b" full bf16)"
    echo "r$round t$t b$b peft full bf16 $(peft "$t" "$b" full bf16)"
  done
done
echo "t2 b4 ours qlora nf4+dq-bf16-compute $(ours 2 4 qlora f32)"
echo "t2 b4 ours qlora nf4+dq-bf16-compute-amx-off $(FINETUNE_AMX=off ours 2 4 qlora f32)"
date -u
