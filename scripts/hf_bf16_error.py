#!/usr/bin/env python3
"""transformers run in bf16 against transformers f32, per fixture pair.

For each pair in tests/fixtures/models/ (or the names given), loads both
models with transformers in bfloat16 (weights and every activation in bf16,
as `torch_dtype=torch.bfloat16` runs them), scores the fixture records of
tests/fixtures/expected/tiny_<pair>.json and prints max / mean |Δ logp|
against the f32 log-probs stored there (transformers f32): the column
docs/cpu.md sets beside padv's own bf16 mode (`cargo test --release --test
cpu_bf16 -- --nocapture`).

    python scripts/hf_bf16_error.py [PAIR ...]
    python scripts/hf_bf16_error.py --toyworld TOKENS.jsonl

`--toyworld`: the bundled toyworld pair in bf16 over the demo's steps:
TOKENS.jsonl is `padv score --tokens --output TOKENS.jsonl` (the demo's
token ids and step spans, default settings: `--token-agg sum`, β = 1),
compared per step with assets/toyworld/expected_steps_demo_ref.jsonl
(transformers f32).

Needs torch and transformers (not part of padv's build or tests).
"""
import json
import pathlib
import sys

import torch
from transformers import AutoModelForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def logprobs(model, ids):
    with torch.inference_mode():
        t = torch.tensor([ids])
        logits = model(t).logits[0, :-1].float()
        lp = torch.log_softmax(logits, dim=-1).gather(-1, t[0, 1:, None])[:, 0]
    return [float("nan")] + lp.tolist()


def toyworld(tokens_path):
    assets = ROOT.parent.parent / "assets" / "toyworld"
    models = {
        side: AutoModelForCausalLM.from_pretrained(assets / "models" / side, dtype=torch.bfloat16).eval()
        for side in ("trained", "ref")
    }
    expected = {}
    for line in (assets / "expected_steps_demo_ref.jsonl").read_text().splitlines():
        if line.strip():
            e = json.loads(line)
            expected[e["id"]] = e
    errs = {"steps": [], "logp_policy": [], "logp_reference": []}
    for line in open(tokens_path):
        if not line.strip():
            continue
        r = json.loads(line)
        lp = logprobs(models["trained"], r["token_ids"])
        lr = logprobs(models["ref"], r["token_ids"])
        e = expected[r["id"]]
        for k, step in enumerate(r["steps"]):
            a, b = step["span"]
            p, q = sum(lp[a:b]), sum(lr[a:b])
            for key, got in (("steps", p - q), ("logp_policy", p), ("logp_reference", q)):
                errs[key].append(abs(got - e[key][k]))
    print("| quantity | max |Δ| per step | mean |Δ| per step |")
    print("|---|---|---|")
    for key, name in (("steps", "step advantage"), ("logp_policy", "log π_θ (step sum)"),
                      ("logp_reference", "log π_ref (step sum)")):
        v = errs[key]
        print(f"| {name} | {max(v):.3g} | {sum(v) / len(v):.2g} |  ({len(v)} steps)")


def main():
    if sys.argv[1:2] == ["--toyworld"]:
        return toyworld(sys.argv[2])
    names = sys.argv[1:] or sorted(p.name for p in (ROOT / "models").iterdir())
    print("| pair | transformers bf16, policy | transformers bf16, reference |")
    print("|---|---|---|")
    for name in names:
        expected = json.loads((ROOT / "expected" / f"tiny_{name}.json").read_text())
        cols = []
        for side, key in (("trained", "logprobs_trained"), ("ref", "logprobs_ref")):
            model = AutoModelForCausalLM.from_pretrained(
                ROOT / "models" / name / side, dtype=torch.bfloat16
            ).eval()
            worst, total, count = 0.0, 0.0, 0
            for r in expected["records"]:
                got = logprobs(model, r["token_ids"])
                for t, want in enumerate(r[key]):
                    if t == 0 or want is None:
                        continue
                    d = abs(got[t] - want)
                    worst, total, count = max(worst, d), total + d, count + 1
            cols.append(f"{worst:.3g} / {total / max(count, 1):.2g}")
        print(f"| {name} | {cols[0]} | {cols[1]} |", flush=True)


if __name__ == "__main__":
    main()
