#!/usr/bin/env python3
"""How far the CUDA backend's 16-bit compute path moves log-probs, emulated in NumPy.

With a bf16 checkpoint, or `--gpu-dtype bf16` on an f32 one, the CUDA backend
(src/backend/cuda/forward.rs, kernels/attention.cu) rounds to bf16:
  - every matrix at upload (embedding, q/k/v/o, gate/up/down, LM head);
  - every activation that feeds a GEMM: the normed input of q/k/v, the
    attention output, the normed input of gate/up, silu(gate)·up, and the
    final-normed hidden state fed to the LM head;
  - every projection's output (q/k/v before RoPE, gate/up, and o and down
    before the residual add), and q after RoPE, as transformers rounds them;
  - the K and V cache;
  - with the tensor-core attention kernel (16-bit cache, head_dim 32/64/128):
    Q pre-scaled by log2(e)/sqrt(head_dim) (rounded again), and the softmax
    numerators P before P·V (the row sums stay f32).
Everything else is f32 there (residual stream, GEMM accumulation, RoPE,
softmax, norms' statistics, logits). This script runs a Llama-family pair
(no biases, no q/k norms, default RoPE) twice, in float64: exactly, and with
those roundings (round to nearest even), and reports |Δ log p| per token for
each model and for the difference log π_θ − log π_ref, and per action step
(token sums of that difference, as `--token-agg sum` scores a step).

The exact run stands for transformers' f32 forward: f32-vs-f64 noise is
~1e-5 here, three orders below the bf16 effect. The online softmax rescales P
by a running max per 64-key tile; here P is taken against the row's final
max, which changes which values are rounded but not how finely.

With --cpu it emulates the CPU backend's bf16 compute mode instead
(`--compute-dtype bf16` on the CPU, src/backend/cpu/gemm_bf16.rs and
attention/tile_bf16.rs): every weight GEMM's two inputs rounded to bf16
(the matrices of q/k/v/o, gate/up/down and the LM head; the normed inputs of
q/k/v and gate/up, the attention output, silu(gate)·up and the final-normed
hidden state), the products summed in f32; in attention Q, K and V rounded
to bf16 (scores scaled by 1/sqrt(head_dim) after the product, in f32) and
the softmax numerators P rounded for P·V, the row sums of the unrounded P.
The embedding rows stay exact.

usage: bf16_emulation.py [--cpu] PAIR_DIR TOKENS
  PAIR_DIR  holds trained/ (the policy) and ref/ (config.json, model.safetensors)
  TOKENS    tests/fixtures/expected/tiny_*.json (records[].token_ids), or JSON
            lines with token_ids and action_mask (`padv score --tokens`)

Figures (numpy 2.4), |Δ log p| max / mean:
  tests/fixtures/models/llama_bf16 on tests/fixtures/expected/tiny_llama_bf16.json
    (SIMT attention, head_dim 16): policy 0.078 / 0.013, reference 0.046 /
    0.013 per token (tests/cuda_parity.rs, BF16_TOL 0.15 / 0.025). Before the
    projections' outputs were rounded: 0.060 / 0.010 for each model, and the
    H200 measured 0.060 / 0.006 (run 5), 0.066 / 0.0065 with gate/up rounded
    (run 13).
  assets/toyworld/models on `padv score --tokens --input
    assets/toyworld/demo_ref.jsonl` (`--gpu-dtype bf16`, tensor-core
    attention, head_dim 32; ~4 minutes), over the 7474 action tokens:
    difference 0.214 / 0.00200, policy 0.106 / 0.00150, reference 0.116 /
    0.00092 (tests/toyworld_steps.rs takes its bf16 bounds from these;
    before the projections' outputs and q were rounded: 0.193 / 0.00165,
    0.164 / 0.00117, 0.0446 / 0.00083).
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np


def read_safetensors(path):
    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        buf = body[a:b]
        if t["dtype"] == "F32":
            x = np.frombuffer(buf, dtype="<f4")
        elif t["dtype"] == "F16":
            x = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        elif t["dtype"] == "BF16":
            x = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{path}: {name}: dtype {t['dtype']} not handled")
        out[name] = x.reshape(t["shape"]).astype(np.float64)
    return out


def bf16(x):
    """Round to the nearest bf16 (ties to even), returned as float64."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def exact(x):
    return x


class Llama:
    def __init__(self, model_dir):
        d = Path(model_dir)
        c = json.loads((d / "config.json").read_text())
        scaling = c.get("rope_scaling") or {}
        if scaling and scaling.get("rope_type") != "llama3":
            raise SystemExit(f"{d}: RoPE scaling {scaling.get('rope_type')} is not emulated")
        self.hidden = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.kv_heads = c["num_key_value_heads"]
        self.head_dim = c.get("head_dim") or self.hidden // self.heads
        self.layers = c["num_hidden_layers"]
        self.eps = c["rms_norm_eps"]
        theta = c.get("rope_theta") or c.get("rope_parameters", {}).get("rope_theta")
        half = np.arange(0, self.head_dim, 2, dtype=np.float32) / np.float32(self.head_dim)
        self.inv_freq = (np.float32(1.0) / np.power(np.float32(theta), half)).astype(np.float32)
        if scaling:
            self.inv_freq = llama3_scaled(self.inv_freq, scaling)
        self.w = read_safetensors(d / "model.safetensors")
        if "lm_head.weight" not in self.w:
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]

    def weights(self, rnd):
        """Matrices as uploaded (rounded by `rnd`); norm weights stay exact."""
        return {k: (v if v.ndim == 1 else rnd(v)) for k, v in self.w.items()}

    def proj(self, x, w, p):
        """`x @ Wᵀ (+ bias)` of projection `p` (Qwen2's q/k/v have biases)."""
        y = x @ w[p + ".weight"].T
        return y + w[p + ".bias"] if p + ".bias" in w else y

    def qk_norm(self, x, w, p):
        """Qwen3's per-head RMSNorm of q or k, when the model has one."""
        return self.rms(x, w[p]) if p in w else x

    def rms(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x):
        t = x.shape[0]
        ang = (np.arange(t, dtype=np.float32)[:, None] * self.inv_freq[None, :]).astype(np.float64)
        cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
        sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
        h = self.head_dim // 2
        rot = np.concatenate([-x[..., h:], x[..., :h]], axis=-1)
        return x * cos + rot * sin

    def attention(self, q, k, v, rnd, cpu=False):
        t, hd = q.shape[0], self.head_dim
        tensor_cores = rnd is bf16 and hd in (32, 64, 128) and not cpu
        cpu_bf16 = rnd is bf16 and cpu
        group = self.heads // self.kv_heads
        k = np.repeat(k, group, axis=1)
        v = np.repeat(v, group, axis=1)
        if tensor_cores:
            # The kernel's scores are base-2: exp2(bf16(q·c)·k), c = log2(e)/sqrt(hd).
            c = np.log2(np.e) / np.sqrt(hd)
            s = np.einsum("qhd,khd->hqk", bf16(q * c), k) * np.log(2.0)
        elif cpu_bf16:
            # The CPU tile: bf16(q)·bf16(k) (k arrives rounded), then the scale.
            s = np.einsum("qhd,khd->hqk", bf16(q), k) / np.sqrt(hd)
        else:
            s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        s = np.where(np.tril(np.ones((t, t), dtype=bool))[None], s, -np.inf)
        p = np.exp(s - s.max(axis=-1, keepdims=True))
        den = p.sum(axis=-1, keepdims=True)
        if tensor_cores or cpu_bf16:
            p = bf16(p)
        return np.einsum("hqk,khd->qhd", p / den, v)

    def logprobs(self, ids, rnd, cpu=False):
        w = self.weights(rnd)
        t, hd = len(ids), self.head_dim
        # Both modes round K and V (the CPU's tile when it packs them).
        x = (self.w if cpu else w)["model.embed_tokens.weight"][ids]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            n = rnd(self.rms(x, w[p + "input_layernorm.weight"]))
            # The GPU stores each projection's output in bf16; the CPU keeps f32.
            out = exact if cpu else rnd
            q = out(self.proj(n, w, p + "self_attn.q_proj")).reshape(t, self.heads, hd)
            k = out(self.proj(n, w, p + "self_attn.k_proj")).reshape(t, self.kv_heads, hd)
            v = out(self.proj(n, w, p + "self_attn.v_proj")).reshape(t, self.kv_heads, hd)
            q = self.qk_norm(q, w, p + "self_attn.q_norm.weight")
            k = self.qk_norm(k, w, p + "self_attn.k_norm.weight")
            q, k = out(self.rope(q)), rnd(self.rope(k))
            a = rnd(self.attention(q, k, rnd(v), rnd, cpu).reshape(t, self.heads * hd))
            x = x + out(a @ w[p + "self_attn.o_proj.weight"].T)
            n = rnd(self.rms(x, w[p + "post_attention_layernorm.weight"]))
            g = out(n @ w[p + "mlp.gate_proj.weight"].T)
            u = out(n @ w[p + "mlp.up_proj.weight"].T)
            act = rnd(g / (1.0 + np.exp(-g)) * u)
            x = x + out(act @ w[p + "mlp.down_proj.weight"].T)
        h = rnd(self.rms(x, w["model.norm.weight"]))
        z = h @ w["lm_head.weight"].T
        m = z.max(axis=-1, keepdims=True)
        ls = z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))
        out = np.full(t, np.nan)
        out[1:] = ls[np.arange(t - 1), ids[1:]]
        return out


def llama3_scaled(inv_freq, s):
    """transformers' `llama3` RoPE frequencies (rope_type llama3)."""
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    wavelen = 2 * np.pi / inv_freq
    out = np.where(wavelen > old / lo, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
    return np.where(medium, smoothed, out).astype(np.float32)


def read_tokens(path):
    text = Path(path).read_text()
    if path.endswith(".json"):
        return [(r["token_ids"], None) for r in json.loads(text)["records"]]
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [(r["token_ids"], r.get("action_mask")) for r in rows]


def runs(mask):
    spans, start = [], None
    for i, m in enumerate(list(mask) + [0]):
        if m == 1 and start is None:
            start = i
        elif m != 1 and start is not None:
            spans.append((start, i))
            start = None
    return spans


def main():
    args = sys.argv[1:]
    cpu = "--cpu" in args
    args = [a for a in args if a != "--cpu"]
    if len(args) != 2:
        raise SystemExit(__doc__)
    pair, tokens = Path(args[0]), args[1]
    policy, reference = Llama(pair / "trained"), Llama(pair / "ref")
    per_token = {"policy": [], "reference": [], "diff": []}
    # Per action step and key: the |Δ| of each of its tokens and of their sum.
    keys = {"advantage": "diff", "logp_policy": "policy", "logp_reference": "reference"}
    step_tokens = {k: [] for k in keys}
    step_sums = {k: [] for k in keys}
    step_lens = []
    for ids, mask in read_tokens(tokens):
        ids = np.asarray(ids)
        d = {}
        for name, m in (("policy", policy), ("reference", reference)):
            d[name] = m.logprobs(ids, bf16, cpu) - m.logprobs(ids, exact)
        d["diff"] = d["policy"] - d["reference"]
        for name, v in d.items():
            per_token[name].append(np.abs(v[1:]))
        for a, b in runs(mask or []):
            step_lens.append(b - a)
            for key, name in keys.items():
                step_tokens[key].append(np.abs(d[name][a:b]))
                step_sums[key].append(abs(d[name][a:b].sum()))
    stats = lambda v: {"max": float(v.max()), "mean": float(v.mean()), "n": int(v.size)}
    report = {f"token_{k}": stats(np.concatenate(v)) for k, v in per_token.items()}
    if step_lens:
        report["action_steps"] = {"n": len(step_lens), "mean_tokens": float(np.mean(step_lens))}
        for key in keys:
            report["action_steps"][key] = {
                "token": stats(np.concatenate(step_tokens[key])),
                "step_sum": stats(np.asarray(step_sums[key])),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
