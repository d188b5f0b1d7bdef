"""The PyTorch + PEFT side of the LoRA/full benchmark: the same model, data, batch and steps as
`finetune-studio train`, timed the same way (tokens per second over the steps after the first,
process peak RSS). Prints one JSON object.

usage: peft_train.py MODEL_DIR DATA_JSONL --method lora|full [--steps 4 --batch 4 --threads 1]
                     [--device cpu|cuda --dtype f32|bf16]

On CUDA each step ends with a device synchronisation (so its time is the GPU's), the model's
weights are in --dtype (PEFT keeps the LoRA weights f32, as finetune-studio does) and the peak is
torch's own peak of allocated memory (`gpu_peak_allocated_bytes`).
"""
import argparse, json, resource, time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--r", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    a = ap.parse_args()
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    cuda = a.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    rows = [json.loads(l)["input_ids"] for l in open(a.data)]
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype).to(a.device)
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=2 * a.r, lora_dropout=0.0, target_modules="all-linear"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    model.train()
    times, losses = [], []
    for step in range(a.steps):
        batch = rows[step * a.batch:(step + 1) * a.batch]
        ids = torch.tensor(batch, device=a.device)
        sync()
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    tokens = a.batch * len(rows[0])
    steady = times[1:] if len(times) > 1 else times
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "impl": "peft", "method": a.method, "threads": a.threads, "steps": a.steps,
        "tokens_per_s": tokens / (sum(steady) / len(steady)),
        "step_s": sum(steady) / len(steady),
        "peak_rss_bytes": peak, "rss_after_imports_bytes": baseline,
        "trainable_params": sum(p.numel() for p in params), "losses": losses,
        "device": a.device, "dtype": a.dtype,
        "gpu_peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }))


if __name__ == "__main__":
    main()
