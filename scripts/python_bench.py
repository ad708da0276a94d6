"""The Python package's numbers: overhead per record against the CLI, and the
prefix-cache hit rate of the Ray recipe against a single-process run.

    python scripts/python_bench.py [--padv target/release/padv] [--no-ray]

Uses the bundled toyworld pair and demo (256 trajectories, 32 tasks × 8
rollouts) on the CPU. Prints a Markdown table per measurement.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import padv

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "assets" / "toyworld"
POLICY, REFERENCE, DEMO = TOY / "models" / "trained", TOY / "models" / "ref", TOY / "demo_trained.jsonl"


def best_of(n, fn):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def overhead(cli: Path, repeats: int) -> None:
    records = [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]
    n = len(records)
    cli_s = best_of(repeats, lambda: subprocess.run(
        [str(cli), "score", "--device", "cpu", "--output", "/dev/null"],
        check=True, capture_output=True))

    def python_run(source):
        scorer = padv.Scorer(POLICY, REFERENCE, device="cpu", token_agg="sum")
        scorer.score(source)

    py_path_s = best_of(repeats, lambda: python_run(DEMO))
    py_list_s = best_of(repeats, lambda: python_run(records))
    print(f"| run ({n} records, load included) | seconds | per record vs CLI |")
    print("|---|---|---|")
    print(f"| `padv score --output /dev/null` (process start, load, score, write) | {cli_s:.3f} | — |")
    for name, s in [("`Scorer(...).score(path)`", py_path_s), ("`Scorer(...).score(list of dicts)`", py_list_s)]:
        print(f"| {name} | {s:.3f} | {1e3 * (s - cli_s) / n:+.3f} ms |")


def hit_rates() -> None:
    import ray
    import padv.ray as padv_ray

    scorer = padv.Scorer(POLICY, REFERENCE, device="cpu", token_agg="sum")
    scorer.score(DEMO)
    single = scorer.cache_stats()
    ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [("one process, `Scorer.score` on the whole file",
             single["hit_tokens"], single["computed_tokens"])]
    for name, group_by in [("Ray, `group_by=\"task_id\"`, 2 workers", "task_id"),
                           ("Ray, shuffled rows, `group_by=None`, batches of 16, 2 workers", None)]:
        ds = padv_ray.read_jsonl(str(DEMO))
        if group_by is None:
            ds = ds.random_shuffle(seed=0)
        t = time.perf_counter()
        out = padv_ray.score_dataset(ds, POLICY, REFERENCE, group_by=group_by, concurrency=2,
                                     batch_size=16, device="cpu", token_agg="sum").materialize()
        s = out.sum(["cache_hit_tokens", "cache_computed_tokens"])
        print(f"{name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
        rows.append((name, s["sum(cache_hit_tokens)"], s["sum(cache_computed_tokens)"]))
    ray.shutdown()
    print("| run | hit tokens | computed tokens | hit rate |")
    print("|---|---|---|---|")
    for name, hit, computed in rows:
        print(f"| {name} | {hit} | {computed} | {100 * hit / (hit + computed):.1f}% |")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--padv", type=Path, default=ROOT / "target" / "release" / "padv")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-ray", action="store_true")
    a = p.parse_args()
    overhead(a.padv, a.repeats)
    if not a.no_ray:
        hit_rates()
