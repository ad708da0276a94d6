"""Shared paths and the CLI's own output, the reference every binding test compares against.

The CLI is the release build in `target/release/padv` (`PADV_BIN` overrides it):
`.ci/run` builds it with `cargo test --release` before the Python tests run.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

import padv

ROOT = Path(__file__).resolve().parents[2]
TOYWORLD = ROOT / "assets" / "toyworld"
TOY_POLICY = TOYWORLD / "models" / "trained"
TOY_REFERENCE = TOYWORLD / "models" / "ref"
DEMO = TOYWORLD / "demo_trained.jsonl"
FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE_POLICY = FIXTURES / "models" / "qwen2" / "trained"
FIXTURE_REFERENCE = FIXTURES / "models" / "qwen2" / "ref"
TINY = FIXTURES / "inputs" / "tiny_trajectories.jsonl"


def cli_path() -> Path:
    path = Path(os.environ.get("PADV_BIN", ROOT / "target" / "release" / "padv"))
    if not path.exists():
        pytest.fail(f"{path} not found: build the CLI (cargo build --release) or set PADV_BIN")
    return path


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the padv CLI; its stdout and stderr as text."""
    return subprocess.run(
        [str(cli_path()), *args], capture_output=True, text=True, check=check, timeout=600
    )


def cli_lines(*args: str) -> list[dict]:
    """The JSON lines `padv ARGS` writes to stdout (`score` with `--output -`)."""
    out = cli(*args, *(["--output", "-"] if args[0] == "score" else [])).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


plain = padv.jsonable  # a scored dict as its JSON line reads back


def close(a, b) -> bool:
    """Equal structure and text; floats equal to 1e-12 (relative).

    For records given as dicts parsed by Python's json: the CLI reads its
    input and re-reads scored files with serde_json's fast float parser,
    which can land one ulp away from the exact value Python parses
    (0.22241176619475786 → …783), in passed-through fields as in re-read
    scores. Records read from a file by both sides compare with ==.
    """
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    return a == b


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def toy() -> padv.Scorer:
    """The toyworld pair as the CLI's default run scores it (token_agg sum on the demo)."""
    return padv.Scorer(TOY_POLICY, TOY_REFERENCE, device="cpu", token_agg="sum")


@pytest.fixture(scope="session")
def demo_cli() -> list[dict]:
    """`padv score` on the bundled demo, the embedded default pair."""
    return cli_lines("score", "--device", "cpu")


@pytest.fixture(scope="session")
def demo_scored(toy, demo_cli) -> list[dict]:
    return toy.score(DEMO)
