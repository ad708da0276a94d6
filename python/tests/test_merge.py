"""A merged reference π_α (``merge=``) scores as ``padv score --merge`` does."""

import pytest

import padv
from conftest import FIXTURE_POLICY, FIXTURE_REFERENCE, TINY, cli_lines, plain, read_jsonl

MERGE = ["--merge", "ties", "--density", "0.5"]


def cli_merged(alphas: str) -> list[dict]:
    return cli_lines(
        "score", "--device", "cpu", "--token-agg", "mean", *MERGE, "--alpha", alphas,
        "--policy", str(FIXTURE_POLICY), "--reference", str(FIXTURE_REFERENCE),
        "--input", str(TINY),
    )


@pytest.fixture(scope="module")
def merged() -> padv.Scorer:
    return padv.Scorer(
        FIXTURE_POLICY, FIXTURE_REFERENCE, device="cpu", merge="ties", alpha=0.3, density=0.5
    )


def test_one_alpha_scores_as_the_cli(merged):
    merged.set_alpha(0.3)
    theirs = cli_merged("0.3")
    ours = [plain(r) for r in merged.score(TINY)]
    assert len(ours) == len(theirs) == len(read_jsonl(TINY))
    assert ours == theirs
    assert all(r["alpha"] == 0.3 for r in ours)
    assert merged.settings["merge"] == {"method": "ties", "alpha": 0.3, "density": 0.5}


def test_a_sweep_scores_as_the_cli_sweep(merged):
    theirs = cli_merged("0.3,0.7,1")
    sweep = merged.score_sweep(TINY, [0.3, 0.7, 1.0])
    assert [len(s) for s in sweep] == [len(read_jsonl(TINY))] * 3
    # The CLI writes a record's lines for every α next to each other.
    interleaved = [plain(r) for rows in zip(*sweep) for r in rows]
    assert interleaved == theirs
    assert merged.alpha == 1.0
    # set_alpha then score gives the sweep's list for that α.
    merged.set_alpha(0.7)
    assert [plain(r) for r in merged.score(TINY)] == [plain(r) for r in sweep[1]]


def test_alpha_changes_the_reference_side_only(merged):
    merged.set_alpha(0.0)
    at_zero = merged.score(TINY)
    merged.set_alpha(1.0)
    at_one = merged.score(TINY)
    steps = [(a, b) for r0, r1 in zip(at_zero, at_one) if "steps" in r0
             for a, b in zip(r0["steps"], r1["steps"])]
    assert steps
    assert all(a["logp_policy"] == b["logp_policy"] for a, b in steps)
    assert any(a["logp_reference"] != b["logp_reference"] for a, b in steps)


def test_merge_settings_are_checked():
    with pytest.raises(padv.PadvError, match="alpha"):
        padv.Scorer(FIXTURE_POLICY, FIXTURE_REFERENCE, device="cpu", merge="linear")
    with pytest.raises(padv.PadvError, match="merge"):
        padv.Scorer(FIXTURE_POLICY, FIXTURE_REFERENCE, device="cpu", alpha=0.5)
    with pytest.raises(padv.PadvError, match="alpha"):
        padv.Scorer(FIXTURE_POLICY, FIXTURE_REFERENCE, device="cpu", merge="linear", alpha=1.5)
    with pytest.raises(padv.PadvError, match="merge"):
        padv.Scorer(FIXTURE_POLICY, FIXTURE_REFERENCE, device="cpu", merge="avg", alpha=0.5)
    plain_scorer = padv.Scorer(FIXTURE_POLICY, FIXTURE_REFERENCE, device="cpu")
    assert plain_scorer.alpha is None
    with pytest.raises(padv.PadvError, match="merged reference"):
        plain_scorer.score_sweep(TINY, [0.1, 0.2])
    with pytest.raises(padv.PadvError, match="alpha"):
        plain_scorer.set_alpha(0.5)
