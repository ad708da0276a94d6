"""`Scorer.score` returns what `padv score` writes, record for record."""

import json

import numpy as np
import pytest

import padv
from conftest import (
    DEMO,
    FIXTURE_POLICY,
    FIXTURE_REFERENCE,
    FIXTURES,
    TINY,
    TOY_POLICY,
    TOY_REFERENCE,
    cli,
    cli_lines,
    close,
    plain,
    read_jsonl,
)


def test_the_toyworld_demo_scores_as_the_cli_scores_it(demo_scored, demo_cli):
    assert len(demo_scored) == len(demo_cli) == 256
    for ours, theirs in zip(demo_scored, demo_cli):
        assert ours == theirs


def test_a_list_of_dicts_scores_as_the_file_does(toy, demo_cli):
    records = read_jsonl(DEMO)[:40]
    assert close(toy.score(records), demo_cli[:40])


def test_a_fixture_pair_with_token_arrays_scores_as_the_cli(tmp_path):
    theirs = cli_lines(
        "score", "--device", "cpu", "--tokens", "--token-agg", "mean",
        "--policy", str(FIXTURE_POLICY), "--reference", str(FIXTURE_REFERENCE),
        "--input", str(TINY),
    )
    scorer = padv.Scorer(FIXTURE_POLICY, FIXTURE_REFERENCE, device="cpu", tokens=True)
    ours = scorer.score(TINY)
    assert len(ours) == len(theirs) == len(read_jsonl(TINY))
    kinds = set()
    for o, t in zip(ours, theirs):
        for key in ("token_ids", "logp_policy", "logp_reference", "advantage"):
            assert isinstance(o[key], np.ndarray), key
        assert o["token_ids"].dtype == np.int64
        assert o["logp_policy"].dtype == np.float32
        kinds.add("steps" in o)
        assert plain(o) == t
    assert kinds == {True, False}, "both trajectories and text records are covered"


def test_options_reach_the_scores_as_the_cli_flags_do():
    theirs = cli_lines(
        "score", "--device", "cpu", "--token-agg", "mean", "--step-agg", "min",
        "--beta", "0.5", "--max-length", "48",
    )[:16]
    scorer = padv.Scorer(
        TOY_POLICY, TOY_REFERENCE, device="cpu", token_agg="mean", step_agg="min",
        beta=0.5, max_length=48,
    )
    assert scorer.settings == theirs[0]["settings"]
    assert close(scorer.score(read_jsonl(DEMO)[:16]), theirs)


def test_a_bad_record_raises_the_cli_error_message():
    bad = FIXTURES / "formats" / "bad.jsonl"
    run = cli("score", "--device", "cpu", "--input", str(bad), "--output", "-", check=False)
    assert run.returncode != 0
    message = next(l for l in run.stderr.splitlines() if l.startswith("error: "))[len("error: "):]
    scorer = padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="cpu")
    with pytest.raises(padv.PadvError) as e:
        scorer.score(bad)
    assert str(e.value) == message
    assert "bad.jsonl:2" in message


def test_skipped_records_are_the_cli_error_lines():
    bad = FIXTURES / "formats" / "bad.jsonl"
    theirs = cli_lines("score", "--device", "cpu", "--token-agg", "mean", "--input", str(bad),
                       "--on-error", "skip")
    scorer = padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="cpu")
    ours = scorer.score(bad, on_error="skip")
    assert [plain(o) for o in ours] == theirs
    assert sum("error" in o for o in ours) >= 4


def test_errors_in_a_list_name_the_record_by_index(toy):
    records = [read_jsonl(DEMO)[0], {"id": "x", "messages": [{"role": "robot", "content": "hi"}]}]
    with pytest.raises(padv.PadvError, match=r"^records\[1\]"):
        toy.score(records)
    skipped = toy.score(records, on_error="skip")
    assert skipped[1]["id"] == "x" and skipped[1]["error"].startswith("records[1]")
    with pytest.raises(padv.PadvError, match="records: expected a list"):
        toy.score(records[0])
    with pytest.raises(padv.PadvError, match=r"records\[0\]"):
        toy.score([{"id": "a", "messages": [], "x": object()}])


def test_numpy_values_are_taken_and_a_nan_id_is_refused(toy):
    import numpy as np
    ids = [5, 6, 7, 8, 9]
    plain = toy.score([{"id": "t", "token_ids": ids, "action_spans": [[2, 4]]}])
    arrays = toy.score([{"id": np.int64(3), "token_ids": np.array(ids),
                         "action_spans": np.array([[2, 4]])}])
    assert arrays[0]["id"] == "3" and arrays[0]["steps"] == plain[0]["steps"]
    with pytest.raises(padv.PadvError, match=r"^records\[0\]: id: NaN is not an id"):
        toy.score([{"id": float("nan"), "text": "hi"}])
    # The place is said once.
    with pytest.raises(padv.PadvError) as e:
        toy.score([{"id": "a", "messages": [], "x": object()}])
    assert str(e.value).count("records[0]") == 1


def test_bad_options_and_paths_are_python_exceptions():
    with pytest.raises(padv.PadvError, match="beta"):
        padv.Scorer(TOY_POLICY, TOY_REFERENCE, beta=float("inf"))
    with pytest.raises(padv.PadvError, match="token_agg"):
        padv.Scorer(TOY_POLICY, TOY_REFERENCE, token_agg="median")
    with pytest.raises(padv.PadvError, match="device"):
        padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="tpu")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        padv.Scorer(TOY_POLICY / "nowhere", TOY_REFERENCE)
    with pytest.raises(ValueError):  # PadvError is a ValueError
        padv.Scorer(TOY_POLICY, TOY_REFERENCE, max_length=0)


def test_help_and_the_prefix_cache_counters_are_there(demo_scored, toy):
    assert "policy" in padv.Scorer.__doc__ and "token_agg" in padv.Scorer.__doc__
    assert padv.Scorer.score.__doc__ and padv.Session.append.__doc__
    stats = toy.cache_stats()
    assert stats["hit_tokens"] > 0 and 0 < stats["hit_rate"] < 1
    assert "cpu" in toy.backend
    off = padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="cpu", prefix_cache=False)
    off.score(read_jsonl(DEMO)[:8])
    assert off.cache_stats()["hit_tokens"] == 0
    assert json.dumps(demo_scored[0])  # results are plain JSON without token arrays
