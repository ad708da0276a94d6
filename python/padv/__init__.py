"""padv: step-level progress advantage for LLM-agent trajectories.

A_t = β·(log π_θ(a_t|s_t) − log π_ref(a_t|s_t)) between an RL-post-trained
policy and its reference, computed by padv's Rust library (fused, no logits
materialised). This package is a thin binding: the results are the dicts
``padv score`` writes as JSON lines.

    >>> import padv
    >>> scorer = padv.Scorer("path/to/policy", "path/to/reference")
    >>> scored = scorer.score("trajectories.jsonl")      # or a list of dicts
    >>> padv.eval(scored)["methods"]                      # AUROC, Spearman, ...

See ``help(padv.Scorer)``, ``padv.ray`` for scale-out on Ray Data, and
docs/python.md.
"""

import math
from typing import Any

import numpy as np

from ._padv import PadvError, Scorer, Session, __version__, attribute, eval, select

__all__ = [
    "PadvError",
    "Scorer",
    "Session",
    "__version__",
    "attribute",
    "eval",
    "jsonable",
    "select",
]


def jsonable(scored: Any) -> Any:
    """A scored dict (or list of them) as its JSON line reads back: NumPy
    arrays as lists, NaN as ``None`` — what ``json.dumps`` needs to write the
    line ``padv score`` writes."""
    if isinstance(scored, np.ndarray):
        return [jsonable(x) for x in scored.tolist()]
    if isinstance(scored, dict):
        return {k: jsonable(v) for k, v in scored.items()}
    if isinstance(scored, list):
        return [jsonable(v) for v in scored]
    if isinstance(scored, float) and math.isnan(scored):
        return None
    return scored
