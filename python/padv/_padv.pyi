"""Type stubs of padv's native module (python/src/*.rs)."""

from collections.abc import Iterable, Mapping, Sequence
from os import PathLike
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__version__: str

Record = Mapping[str, Any]
"""An input record: any record kind ``padv score`` reads (messages, token ids, text, Who&When)."""

Scored = dict[str, Any]
"""A scored record: the JSON line ``padv score`` writes, token arrays as NumPy arrays."""

Step = dict[str, Any]
"""One step of a scored record: step, message, n_tokens, advantage, logp_policy,
logp_reference, entropy, self_certainty, truncated, empty, span."""

Path = str | PathLike[str]

class PadvError(ValueError):
    """An input padv cannot score; the message names the file, line, record, field or tensor."""

class Scorer:
    """A policy/reference pair loaded once, scoring records as ``padv score`` does."""

    def __init__(
        self,
        policy: Path,
        reference: Path,
        *,
        device: str = "auto",
        render: Literal["template", "plain"] | None = None,
        token_agg: Literal["mean", "sum", "last", "min", "max"] = "mean",
        step_agg: Literal["mean", "sum", "last", "min", "max", "bottom10"] = "mean",
        beta: float = 1.0,
        max_length: int | None = None,
        batch_tokens: int = 8192,
        tokens: bool = False,
        prefix_cache: bool = True,
        kv_cache_mb: int | None = None,
        compute_dtype: Literal["auto", "f32", "bf16", "f16"] | None = None,
        gpu_dtype: Literal["auto", "f32", "bf16", "f16"] | None = None,
        strict: bool = False,
        format: str | None = None,
        merge: Literal["linear", "ties", "dare_linear", "dare_ties", "emr"] | None = None,
        alpha: float | None = None,
        density: float | None = None,
        merge_seed: int = 0,
    ) -> None: ...
    def score(
        self,
        records: Iterable[Record] | Path,
        *,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> list[Scored]:
        """One dict per record, equal to ``padv score``'s JSON line."""
    def score_sweep(
        self,
        records: Iterable[Record] | Path,
        alphas: Sequence[float],
        *,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> list[list[Scored]]:
        """One list per α (needs ``merge=``), as ``padv score --alpha A,B,...``; the policy is computed once."""
    @property
    def alpha(self) -> float | None: ...
    def set_alpha(self, alpha: float) -> None:
        """Score against π_α from now on (needs ``merge=``)."""
    def score_tokens(
        self,
        token_ids: Sequence[Sequence[int]] | npt.ArrayLike,
        action_mask: Sequence[Sequence[int | bool]] | npt.ArrayLike,
        *,
        attention_mask: Sequence[Sequence[int | bool]] | npt.ArrayLike | None = None,
    ) -> dict[str, Any]:
        """Per-token ``logp_policy``, ``logp_reference``, ``entropy``, ``self_certainty``
        (float32, shaped like ``token_ids``, NaN outside ``action_mask``), per-row
        ``step_advantage`` (list of float64 arrays) and ``score`` (float64 array)."""
    def session(
        self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Mapping[str, Any]] | None = None
    ) -> Session: ...
    def cache_stats(self) -> dict[str, int | float] | None:
        """Prefix-cache counters (hit_tokens, computed_tokens, hit_rate, ...) since loading."""
    @property
    def backend(self) -> str: ...
    @property
    def settings(self) -> dict[str, Any]: ...
    @property
    def render_warning(self) -> str | None: ...

class Session:
    """A conversation scored step by step (``Scorer.session``)."""

    def append(self, messages: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[Step]: ...
    def candidates(
        self,
        actions: Sequence[Mapping[str, Any]],
        *,
        observation: Mapping[str, Any] | None = None,
    ) -> list[Step]: ...
    def fork(self) -> Session: ...
    @property
    def messages(self) -> list[dict[str, Any]]: ...
    def __len__(self) -> int: ...

def eval(
    scored: Iterable[Scored] | Path,
    *,
    group_by: str = "task_id",
    sweep: bool = False,
    skip_invalid: bool = False,
) -> dict[str, Any]:
    """Metrics of every method, as ``padv eval --json`` writes them."""

def select(
    scored: Iterable[Scored] | Path,
    *,
    method: str = "progress_advantage",
    step_agg: str = "mean",
    group_by: str = "task_id",
) -> list[dict[str, Any]]:
    """Best-of-N per group, as ``padv select`` writes it."""

def attribute(scored: Iterable[Scored] | Path, *, method: str = "progress_advantage") -> list[dict[str, Any]]:
    """The decisive-error step per trajectory, as ``padv attribute`` writes it."""
