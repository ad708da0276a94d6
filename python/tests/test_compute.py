"""``compute_dtype`` (``--compute-dtype``) reaches the scores as the CLI flag does."""

import pytest

import padv
from conftest import FIXTURE_POLICY, FIXTURE_REFERENCE, TINY, cli_lines, plain


def scored(**kw) -> list[dict]:
    s = padv.Scorer(FIXTURE_POLICY, FIXTURE_REFERENCE, device="cpu", tokens=True, **kw)
    return [plain(r) for r in s.score(TINY)]


def test_bf16_scores_as_the_cli_and_differ_from_f32():
    theirs = cli_lines(
        "score", "--device", "cpu", "--tokens", "--compute-dtype", "bf16",
        "--policy", str(FIXTURE_POLICY), "--reference", str(FIXTURE_REFERENCE),
        "--input", str(TINY),
    )
    ours = scored(compute_dtype="bf16")
    assert ours == theirs
    assert scored(gpu_dtype="bf16") == ours  # the alias
    exact = scored()
    assert scored(compute_dtype="f32") == exact
    assert any(a["logp_policy"] != b["logp_policy"] for a, b in zip(ours, exact))


def test_bad_compute_dtypes_are_errors():
    with pytest.raises(padv.PadvError, match="compute dtype"):
        scored(compute_dtype="f8")
    with pytest.raises(padv.PadvError, match="f16"):
        scored(compute_dtype="f16")
    with pytest.raises(padv.PadvError, match="alias"):
        scored(compute_dtype="bf16", gpu_dtype="bf16")
