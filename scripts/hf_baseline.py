#!/usr/bin/env python3
"""Hugging Face transformers baseline for `padv score` timing (CPU).

Loads a policy/reference pair with transformers (f32 compute, as padv's
default does; `--dtype bf16` runs transformers' bf16 path, weights and
activations in bf16),
runs one teacher-forced forward of each over the same token ids, and takes
log_softmax + gather of the targets: the work `padv score` does on a
`{"token_ids": [...]}` record. Prints tokens/s.

    python scripts/hf_baseline.py POLICY_DIR REFERENCE_DIR IDS.jsonl [--dtype bf16]

Needs torch and transformers (not part of padv's build or tests).
"""
import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    policy_dir, reference_dir, ids_path = sys.argv[1:4]
    dtype = torch.float32
    if sys.argv[4:6] == ["--dtype", "bf16"]:
        dtype = torch.bfloat16
    elif sys.argv[4:]:
        sys.exit(f"unexpected arguments {sys.argv[4:]}; expected --dtype bf16")
    torch.set_num_threads(int(torch.get_num_threads()))
    models = [
        AutoModelForCausalLM.from_pretrained(d, dtype=dtype, attn_implementation="sdpa").eval()
        for d in (policy_dir, reference_dir)
    ]
    records = [json.loads(l) for l in open(ids_path) if l.strip()]
    start = time.perf_counter()
    n = 0
    with torch.inference_mode():
        for r in records:
            ids = torch.tensor([r["token_ids"]])
            for m in models:
                logits = m(ids).logits[0, :-1].float()
                lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])
                del logits, lp
            n += ids.shape[1]
    dt = time.perf_counter() - start
    name = "bf16" if dtype == torch.bfloat16 else "f32"
    print(f"transformers {name}: {n} tokens in {dt:.2f}s = {n / dt:.1f} tokens/s (pair)")


if __name__ == "__main__":
    main()
