"""Reads `finetune-studio train --json` events on stdin; prints steady-state tokens/s (steps after
the first), the process peak RSS in bytes and the last loss, space-separated."""
import json
import sys

steps = [e for e in map(json.loads, sys.stdin) if e.get("event") == "step"]
if not steps:
    sys.exit("no step events")
rest = steps[1:] or steps
tps = sum(s["tokens"] for s in rest) / sum(s["tokens"] / s["tokens_per_s"] for s in rest)
print(f'{tps:.1f} {steps[-1]["mem"]["process_peak_bytes"]} {steps[-1]["loss"]:.5f}')
