#!/usr/bin/env bash
# Benchmark for issue #2: peak memory and tokens/s of LoRA vs full fine-tuning, ours vs
# PyTorch + PEFT, on the same random Llama (113.5 M parameters, 99 % in projections: weight-
# dominated; made by make_bench_model.py), the same data, batch and steps, one process per
# configuration. The configurations run interleaved, REPS rounds of each, and the table gives the
# median of the rounds: on a shared machine, load that comes and goes then hits every
# configuration alike instead of whichever ran at that moment.
# Each configuration runs with every thread count in THREADS (default "1 2": one core, and
# both cores of the 2-vCPU machines these numbers come from); PyTorch gets the same count.
#   THREADS="1 2" tools/bench/lora_vs_full.sh [PYTHON=.venv/bin/python] [STEPS=6] [REPS=3]
# Needs the fixture venv (tools/fixtures/requirements.txt). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python}
STEPS=${2:-6}
REPS=${3:-3}
THREAD_COUNTS=${THREADS:-1 2}
WORK=target/bench/lora-vs-full
MODEL=$WORK/model
DATA=$WORK/data.jsonl
RESULTS=$WORK/results.txt
mkdir -p "$WORK"
[ -f "$MODEL/model.safetensors" ] && [ -f "$DATA" ] || "$PY" tools/bench/make_bench_model.py "$WORK" >/dev/null
cargo build -q --release -p finetune-cli
BIN=target/release/finetune-studio
: >"$RESULTS"

ours() { # method batch checkpointing [FINETUNE_BLAS] [model.frozen_dtype] -> "tok/s peak_bytes"
  rm -rf "$WORK/out"
  FINETUNE_BLAS=${4:-} RAYON_NUM_THREADS=$threads "$BIN" train --json --model "$MODEL" --data "$DATA" --output "$WORK/out" \
    --set method.kind=\"$1\" --set train.max_steps="$STEPS" --set train.batch_size="$2" --set data.max_len=128 \
    --set model.frozen_dtype=\"${5:-compute}\" \
    --set lora.targets=all-linear --set lora.r=16 --set lora.dropout=0.0 --set train.grad_checkpointing="$3" \
    --set data.shuffle=false --set train.scheduler=\"constant\" \
    | "$PY" tools/bench/summarize_events.py | cut -d' ' -f1,2
}

peft() { # method batch -> "tok/s peak_bytes"
  "$PY" tools/bench/peft_train.py "$MODEL" "$DATA" --method "$1" --steps "$STEPS" --batch "$2" --threads "$threads" 2>/dev/null \
    | "$PY" -c 'import json,sys; r=json.load(sys.stdin); print("%.1f %d" % (r["tokens_per_s"], r["peak_rss_bytes"]))'
}

record() { echo "$threads|$1|$2|$3|$4" >>"$RESULTS"; } # threads|batch|implementation|method|"tok/s peak"

for rep in $(seq "$REPS"); do
  for threads in $THREAD_COUNTS; do
  for batch in 1 4; do
    echo "round $rep/$REPS, $threads thread(s), batch $batch" >&2
    record "$batch" finetune-studio "LoRA r16 all-linear" "$(ours lora "$batch" false)"
    record "$batch" "PyTorch + PEFT" "LoRA r16 all-linear" "$(peft lora "$batch")"
    record "$batch" finetune-studio "LoRA, gemm crate only (FINETUNE_BLAS=off)" "$(ours lora "$batch" false off)"
    record "$batch" finetune-studio "LoRA, bf16 base as stored (model.frozen_dtype=stored)" "$(ours lora "$batch" false "" stored)"
    record "$batch" finetune-studio "LoRA + gradient checkpointing" "$(ours lora "$batch" true)"
    record "$batch" finetune-studio "full" "$(ours full "$batch" false)"
    record "$batch" "PyTorch" "full" "$(peft full "$batch")"
  done
  done
done

"$PY" - "$RESULTS" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    threads, batch, impl, method, result = line.rstrip("\n").split("|")
    tps, peak = result.split()
    runs.setdefault((int(threads), int(batch), impl, method), []).append((float(tps), int(peak)))
print("| threads | batch x seq | implementation | method | tokens/s, median (each run) | peak RSS MiB, median |")
print("|---:|---|---|---|---|---:|")
med = {}
for (threads, batch, impl, method), rs in sorted(runs.items(), key=lambda kv: kv[0][:2]):
    tps = statistics.median(r[0] for r in rs)
    peak = statistics.median(r[1] for r in rs) / 2**20
    med[(threads, batch, impl, method)] = (tps, peak)
    each = ", ".join(f"{r[0]:.0f}" for r in rs)
    print(f"| {threads} | {batch} x 128 | {impl} | {method} | {tps:.1f} ({each}) | {peak:.0f} |")
for threads, batch in sorted({k[:2] for k in med}):
    ours = lambda m: med[(threads, batch, "finetune-studio", m)]
    lora, full, ck = ours("LoRA r16 all-linear"), ours("full"), ours("LoRA + gradient checkpointing")
    st = ours("LoRA, bf16 base as stored (model.frozen_dtype=stored)")
    peft = med[(threads, batch, "PyTorch + PEFT", "LoRA r16 all-linear")]
    print(f"\n{threads} thread(s), batch {batch}: LoRA/full memory {lora[1] / full[1]:.2f} (bf16 base as stored {st[1] / full[1]:.2f}, "
          f"with checkpointing {ck[1] / full[1]:.2f}), step time {full[0] / lora[0]:.2f}; "
          f"LoRA vs PEFT tokens/s {lora[0] / peft[0]:.2f}x (bf16 base as stored {st[0] / peft[0]:.2f}x)")
EOF
