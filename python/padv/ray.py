"""Scale-out on Ray Data: score rollouts on many workers, each loading the pair once.

The recipe groups rollouts by task (``groupby("task_id").map_groups(...)``), so
the N rollouts of a task land on one worker in one call and share its prefix
cache (system prompt, task, first observation): the hit rate of a
single-process run is kept. Without grouping, a task's rollouts are spread
over workers and batches and each worker recomputes the shared prefix.

    import ray, padv.ray
    ds = padv.ray.read_jsonl("rollouts.jsonl")                  # columns: row, task_id, record
    out = padv.ray.score_dataset(ds, "policy/", "reference/", concurrency=4)
    scored = padv.ray.collect(out)                              # dicts, in input order

Records travel as JSON text (the ``record`` column) and results come back
as JSON text (``scored``): Arrow would otherwise unify the nested message
schemas of different records, adding ``None`` for every key a message lacks.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

import padv

if TYPE_CHECKING:
    import ray.data

__all__ = ["ScoreBatch", "collect", "read_jsonl", "score_dataset"]


class ScoreBatch:
    """A callable class for ``Dataset.map_batches`` / ``GroupedData.map_groups``.

    Ray builds one per worker (actor), so the pair is loaded once per worker
    and its prefix cache lives as long as the worker. Each call scores the
    batch's ``column`` (records as JSON text) with ``Scorer.score`` and adds:

    - ``scored``: each record's result as JSON text (``padv score``'s line;
      ``{"id", "error"}`` for a record that could not be scored);
    - ``cache_hit_tokens`` / ``cache_computed_tokens``: the prefix-cache
      tokens this call hit and computed, on the batch's first row (0 on the
      others), so their sums over a dataset are the run's totals.

    The other columns pass through; ``column`` is dropped.
    """

    def __init__(self, policy: str, reference: str, *, column: str = "record", **options: Any):
        self.scorer = padv.Scorer(policy, reference, **options)
        self.column = column

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [json.loads(r) for r in batch[self.column]]
        before = self.scorer.cache_stats() or {}
        scored = self.scorer.score(records, on_error="skip")
        after = self.scorer.cache_stats() or {}
        out = {k: v for k, v in batch.items() if k != self.column}
        out["scored"] = np.array([json.dumps(padv.jsonable(s)) for s in scored], dtype=object)
        for key in ("hit_tokens", "computed_tokens"):
            delta = np.zeros(len(records), dtype=np.int64)
            if len(records):
                delta[0] = after.get(key, 0) - before.get(key, 0)
            out[f"cache_{key}"] = delta
        return out


def read_jsonl(path: str, *, group_by: str = "task_id") -> ray.data.Dataset:
    """A JSONL file of records as a dataset with columns ``row`` (the line's
    index among the records), ``task_id`` (the ``group_by`` field as text,
    ``""`` when absent) and ``record`` (the line as JSON text)."""
    import ray.data

    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            key = record.get(group_by) if isinstance(record, dict) else None
            rows.append({"row": len(rows), "task_id": "" if key is None else str(key),
                         "record": line})
    return ray.data.from_items(rows)


def score_dataset(
    ds: ray.data.Dataset,
    policy: str,
    reference: str,
    *,
    group_by: str | None = "task_id",
    concurrency: int = 1,
    num_gpus: float | None = None,
    batch_size: int = 64,
    column: str = "record",
    **options: Any,
) -> ray.data.Dataset:
    """Score ``ds[column]`` on ``concurrency`` workers, each holding the pair.

    With ``group_by`` (default ``"task_id"``) every group is one call on one
    worker, so a task's rollouts share that worker's prefix cache; with
    ``group_by=None`` rows are scored in batches of ``batch_size`` wherever
    Ray sends them. ``num_gpus`` is per worker (e.g. 1 with
    ``device="cuda"``); ``options`` go to :class:`padv.Scorer`.
    """
    import ray.data

    kwargs: dict[str, Any] = {
        "fn_constructor_args": (str(policy), str(reference)),
        "fn_constructor_kwargs": {"column": column, **options},
        "compute": ray.data.ActorPoolStrategy(size=concurrency),
        "batch_format": "numpy",
    }
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    if group_by is None:
        return ds.map_batches(ScoreBatch, batch_size=batch_size, **kwargs)
    return ds.groupby(group_by).map_groups(ScoreBatch, **kwargs)


def collect(ds: ray.data.Dataset) -> list[dict[str, Any]]:
    """The scored records of :func:`score_dataset`'s output, in ``row`` order."""
    rows = ds.select_columns(["row", "scored"]).take_all()
    rows.sort(key=lambda r: r["row"])
    return [json.loads(r["scored"]) for r in rows]

