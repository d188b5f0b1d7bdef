#!/usr/bin/env python3
"""Writes the minimal GGUF reproducers of the gguf fuzz target's findings (2026-11-26) into this
folder. Each one is replayed with the fuzz binary:
    fuzz/target/x86_64-unknown-linux-gnu/release/gguf -rss_limit_mb=2048 fuzz/findings/gguf/<file>
They live here, not in fuzz/seeds/gguf/, until the engine is fixed: a seed that crashes stops
every plain `fuzz/run.sh gguf` run at start-up."""
import os
import struct


def s(x):
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def kv_str(k, v):
    return s(k) + struct.pack("<I", 8) + s(v)


def kv_u32(k, v):
    return s(k) + struct.pack("<I", 4) + struct.pack("<I", v)


def tensor(name, dims, dtype=0, offset=0):  # dtype 0 = F32
    return (s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<I", dtype) + struct.pack("<Q", offset))


def gguf(kvs, tensors, data_bytes):
    head = b"GGUF" + struct.pack("<I", 3) + struct.pack("<Q", len(tensors)) + struct.pack("<Q", len(kvs))
    body = head + b"".join(kvs) + b"".join(tensors)
    body += b"\0" * ((-len(body)) % 32)  # default alignment
    return body + b"\0" * data_bytes


LLAMA = [kv_str("general.architecture", "llama"), kv_u32("llama.attention.head_count", 4)]
FILES = {
    # 1. GgufFile::open (model/gguf.rs:97): a tensor whose dims multiply past usize::MAX.
    "overflow-dims.gguf": gguf(LLAMA, [tensor("token_embd.weight", [1 << 32, 1 << 32])], 64),
    # 1b. GgufFile::open (model/gguf.rs:106): elements fit in usize, their bytes do not.
    "overflow-length.gguf": gguf(LLAMA, [tensor("token_embd.weight", [1 << 62])], 64),
    # 2. ModelDims::from_config (model/dims.rs:183): block_count 2^32-1 -> a 64 GiB allocation.
    "huge-block-count.gguf": gguf(
        LLAMA + [kv_u32("llama.embedding_length", 64), kv_u32("llama.feed_forward_length", 128),
                 kv_u32("llama.block_count", 0xFFFFFFFF)],
        [tensor("token_embd.weight", [64, 16])], 64 * 16 * 4),
    # 3. GgufFile::config (model/gguf.rs:212): a zero-dimensional token_embd.weight, no vocab_size.
    "scalar-embedding.gguf": gguf(LLAMA + [kv_u32("llama.embedding_length", 64)],
                                  [tensor("token_embd.weight", [])], 64),
    # 4. ModelDims::parameter_count (model/dims.rs:261): embedding_length 2^32-1, one head.
    "huge-hidden.gguf": gguf(
        [kv_str("general.architecture", "llama"), kv_u32("llama.attention.head_count", 1),
         kv_u32("llama.embedding_length", 0xFFFFFFFF), kv_u32("llama.feed_forward_length", 1),
         kv_u32("llama.block_count", 1)],
        [tensor("token_embd.weight", [64, 16])], 64 * 16 * 4),
}

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    for name, data in FILES.items():
        with open(os.path.join(here, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")
