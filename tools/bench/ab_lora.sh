#!/usr/bin/env bash
# A/B check of an engine change: two finetune-studio binaries train LoRA r16 (all linear layers)
# on the model and data of lora_vs_full.sh (run it once first), interleaved, REPS rounds, with 1
# and 2 threads at batch 1 and 4; prints each round's median tokens/s of steps 2..STEPS and the
# change of the medians. Build the "before" binary from the old commit and copy it aside first.
# SET adds config keys to both sides, e.g. SET='model.frozen_dtype="stored"'.
#   [SET=key=value] tools/bench/ab_lora.sh BEFORE_BIN AFTER_BIN [STEPS=6] [REPS=3]
set -euo pipefail
cd "$(dirname "$0")/../.."
BEFORE=$1 AFTER=$2 STEPS=${3:-6} REPS=${4:-3}
WORK=target/bench/lora-vs-full
[ -f "$WORK/model/model.safetensors" ] && [ -f "$WORK/data.jsonl" ] || {
  echo "error: no benchmark model in $WORK: run tools/bench/lora_vs_full.sh once" >&2; exit 1; }
EXTRA=()
[ -n "${SET:-}" ] && EXTRA=(--set "$SET")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

run() { # binary threads batch -> median tokens/s of steps 2..
  rm -rf "$OUT/run"
  RAYON_NUM_THREADS=$2 "$1" train --json --model "$WORK/model" --data "$WORK/data.jsonl" --output "$OUT/run" \
    --set method.kind=\"lora\" --set train.max_steps="$STEPS" --set train.batch_size="$3" --set data.max_len=128 \
    --set lora.targets=all-linear --set lora.r=16 --set lora.dropout=0.0 --set train.grad_checkpointing=false \
    --set data.shuffle=false --set train.scheduler=\"constant\" "${EXTRA[@]}" 2>/dev/null |
    python3 -c '
import json, sys
v = sorted(e["tokens_per_s"] for e in map(json.loads, sys.stdin) if "tokens_per_s" in e)[1:]
print(round(v[len(v) // 2], 1))'
}

for round in $(seq "$REPS"); do
  for cfg in "1 1" "1 4" "2 1" "2 4"; do
    for side in before after; do
      bin=$BEFORE; [ "$side" = after ] && bin=$AFTER
      echo "$cfg $side $(run "$bin" $cfg)" >>"$OUT/results"
    done
  done
done
python3 - "$OUT/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    threads, batch, side, tps = line.split()
    rows.setdefault((threads, batch), {}).setdefault(side, []).append(float(tps))
print("| threads, batch | before (each round) | after (each round) | medians |")
print("|---|---|---|---|")
for (threads, batch), r in sorted(rows.items()):
    b, a = statistics.median(r["before"]), statistics.median(r["after"])
    each = lambda v: ", ".join(f"{x:.1f}" for x in v)
    print(f"| {threads}, {batch} x 128 | {each(r['before'])} | {each(r['after'])} | {100 * (a / b - 1):+.1f} % |")
PY
