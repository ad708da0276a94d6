#!/usr/bin/env python3
"""Compare two `padv score --output` JSONL files record by record.

Every number must agree within an absolute tolerance (default 1e-4, the
transformers-parity budget); everything else (ids, keys, nulls, flags,
lengths) must be equal. Prints one summary line starting with
`compare_scores:` and exits non-zero on the first structural difference or
when the largest numeric difference exceeds the tolerance.

    scripts/compare_scores.py a.jsonl b.jsonl [--tol 1e-4]
"""
import argparse
import json
import math
import sys


def walk(a, b, path, worst):
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        if a != b:
            raise ValueError(f"{path}: {a!r} vs {b!r}")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if math.isnan(a) or math.isnan(b):
            if not (math.isnan(a) and math.isnan(b)):
                raise ValueError(f"{path}: {a!r} vs {b!r}")
            return
        d = abs(a - b)
        if d > worst[0]:
            worst[0], worst[1] = d, path
    elif isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise ValueError(f"{path}: keys {sorted(a)} vs {sorted(b)}")
        for k in a:
            walk(a[k], b[k], f"{path}.{k}", worst)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise ValueError(f"{path}: length {len(a)} vs {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            walk(x, y, f"{path}[{i}]", worst)
    elif a != b:
        raise ValueError(f"{path}: {a!r} vs {b!r}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    try:
        with open(args.a) as fa, open(args.b) as fb:
            la, lb = fa.read().splitlines(), fb.read().splitlines()
    except OSError as e:
        print(f"compare_scores: FAIL: {e}")
        return 1
    worst = [0.0, ""]
    try:
        if len(la) != len(lb):
            raise ValueError(f"{len(la)} records vs {len(lb)}")
        for n, (x, y) in enumerate(zip(la, lb), 1):
            walk(json.loads(x), json.loads(y), f"line {n}", worst)
    except ValueError as e:
        print(f"compare_scores: FAIL {args.a} vs {args.b}: {e}")
        return 1
    ok = worst[0] <= args.tol
    print(
        f"compare_scores: {'ok' if ok else 'FAIL'}: {len(la)} records, "
        f"max |Δ| = {worst[0]:.2e} (tolerance {args.tol:g}) at {worst[1] or '-'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
