#!/usr/bin/env python3
"""PEFT (+ bitsandbytes) on the QLoRA benchmark's model and data, with the settings the Rust
benchmark (`cargo run --release -p finetune-engine --example quant_bench`) uses: LoRA r 16,
alpha 32, all linear layers, no dropout, AdamW lr 1e-3 (constant, no weight decay), gradient
clipping at 1.0, batches of 4 sequences of 128 tokens in file order.

    .venv/bin/python tools/bench/peft_bench.py BENCH_DIR [STEPS] [METHODS]

METHODS: comma-separated subset of `lora,qlora-nf4-dq` (QLoRA: NF4, double quantization, f32
compute, `prepare_model_for_kbit_training` with gradient checkpointing). Each method runs in
its own process; torch uses one thread (like RAYON_NUM_THREADS=1 on the Rust side). Peak RSS
includes the Python interpreter and torch (`import_rss` says how much of it that is).
"""

import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

METHODS = ["lora", "qlora-nf4-dq"]


def rss_now() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_one(method: str, bench: Path, steps: int) -> dict:
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import_rss = rss_now()
    t0 = time.time()
    model_dir = str(bench / "model")
    if method == "lora":
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    elif method == "qlora-nf4-dq":
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)
        model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=q, device_map="cpu",
                                                     dtype=torch.float32)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    else:
        raise SystemExit(f"unknown method {method}")
    cfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    load_s = time.time() - t0
    load_peak = peak_rss()

    rows = [json.loads(line) for line in open(bench / "data.jsonl")]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    losses, times, tokens = [], [], []
    for step in range(steps):
        batch = [rows[(step * 4 + i) % len(rows)] for i in range(4)]
        ids = torch.tensor([b["input_ids"] for b in batch])
        labels = torch.tensor([b["labels"] for b in batch])
        t = time.time()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        times.append(time.time() - t)
        tokens.append(ids.numel())
        print(f"{method} step {step + 1} loss {losses[-1]:.4f} {times[-1]:.2f}s", file=sys.stderr, flush=True)
    tail = min(5, len(losses))
    return {
        "method": f"peft-{method}",
        "steps": steps,
        "first_loss": losses[0],
        "final_loss": sum(losses[-tail:]) / tail,
        "tokens_per_s": sum(tokens[1:]) / sum(times[1:]),
        "load_s": load_s,
        "import_rss": import_rss,
        "load_peak_rss": load_peak,
        "peak_rss": peak_rss(),
        "threads": torch.get_num_threads(),
    }


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print("RESULT " + json.dumps(run_one(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))))
        return
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    bench = Path(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    methods = sys.argv[3].split(",") if len(sys.argv) > 3 else METHODS
    for m in methods:
        out = subprocess.run([sys.executable, __file__, "--one", m, str(bench), str(steps)], capture_output=True,
                             text=True, env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        line = next((l[7:] for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{m} failed:\n{out.stderr[-3000:]}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
