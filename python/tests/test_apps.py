"""`padv.eval`, `padv.select`, `padv.attribute` on scored records equal the CLI commands.

On a scored file both read the same text and agree exactly. Given the dicts
`Scorer.score` returned, the numbers are the scorer's own f64s, while the CLI
re-reads its JSON with serde_json's fast float parser, which can land one
ulp away (0.22241176619475786 → …783): those are compared to 1e-12.
"""

import json

import pytest

import padv
from conftest import cli, cli_lines, close


@pytest.fixture(scope="module")
def scored_file(tmp_path_factory, demo_cli):
    path = tmp_path_factory.mktemp("scored") / "demo.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in demo_cli))
    return path


def test_eval_is_the_cli_json(scored_file, demo_scored, tmp_path):
    out = tmp_path / "eval.json"
    cli("eval", "--input", str(scored_file), "--json", str(out))
    theirs = json.loads(out.read_text())
    assert padv.eval(scored_file) == theirs
    assert close(padv.eval(demo_scored), theirs)


def test_select_is_the_cli_selection(scored_file, demo_scored):
    for method in ("progress_advantage", "entropy"):
        theirs = cli_lines("select", "--input", str(scored_file), "--method", method)
        assert padv.select(scored_file, method=method) == theirs
        assert close(padv.select(demo_scored, method=method), theirs)
        assert len(theirs) == 32  # one per task


def test_attribute_is_the_cli_attribution(scored_file, demo_scored):
    theirs = cli_lines("attribute", "--input", str(scored_file))
    assert padv.attribute(scored_file) == theirs
    assert close(padv.attribute(demo_scored), theirs)


def test_attribute_gives_the_clis_error_lines(demo_cli, tmp_path):
    # A step with tokens but no value, and an error record: no prediction
    # for either, each an error line as the CLI writes it.
    damaged = json.loads(json.dumps(demo_cli[0]))
    damaged["steps"][0]["advantage"] = None
    records = [damaged, demo_cli[1], {"id": "e", "error": "too long"}]
    path = tmp_path / "damaged.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    theirs = cli_lines("attribute", "--input", str(path))
    ours = padv.attribute(path)
    assert ours == theirs
    assert [r["id"] for r in ours] == [r["id"] for r in records]
    assert "has tokens but no progress_advantage value" in ours[0]["error"]
    assert ours[2]["error"] == "too long"


def test_records_that_are_not_scored_are_errors(demo_scored):
    with pytest.raises(padv.PadvError, match=r"records\[0\]: no field `steps`"):
        padv.eval([{"id": "a", "messages": []}])
    with pytest.raises(padv.PadvError, match="method"):
        padv.select(demo_scored, method="oracle")

