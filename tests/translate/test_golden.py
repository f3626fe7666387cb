"""Golden files: every case's whole translator output equals its checked-in ``.out.yaml``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from golden import REPO, TESTDATA, cases, run_case

CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case, update_golden):
    actual = case.render()
    if update_golden:
        case.golden.parent.mkdir(parents=True, exist_ok=True)
        if not case.golden.exists() or case.golden.read_text() != actual:
            case.golden.write_text(actual)
        return
    assert case.golden.exists(), f"{case.golden.relative_to(REPO)} missing: run pytest tests/translate --update-golden"
    expected = case.golden.read_text()
    if actual != expected:
        # Compare parsed documents first: pytest then shows which field differs.
        assert yaml.safe_load(actual) == yaml.safe_load(expected), f"{case.name}: rerun with --update-golden if intended"
        assert actual == expected, f"{case.name}: same data, different bytes (rerun with --update-golden)"


def test_no_stale_goldens():
    """Every .out.yaml belongs to a case: a removed input does not leave a golden nobody checks."""
    wanted = {c.golden for c in CASES}
    stale = sorted(str(p.relative_to(REPO)) for p in TESTDATA.rglob("*.out.yaml") if p not in wanted)
    assert not stale, f"stale goldens (delete them): {stale}"


def test_output_is_deterministic():
    """Rendering twice, in a fresh order of the inputs, gives the same bytes (no timestamps, sorted keys)."""
    examples = REPO / "examples"
    files = sorted(examples.glob("*.yaml"))
    assert run_case(files) == run_case(list(reversed(files)))


@pytest.mark.parametrize("path", sorted((REPO / "tests" / "cases" / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_case_is_rejected_with_its_expected_text(path):
    """Each shared invalid case is one object the translator rejects as InvalidSpec, naming the problem."""
    expect = path.read_text().splitlines()[0].removeprefix("# expect:").strip()
    (verdict,) = run_case([path])["objects"].values()
    assert verdict["Accepted"]["status"] == "False" and verdict["Accepted"]["reason"] == "InvalidSpec"
    assert expect in verdict["Accepted"]["message"]
    assert not verdict["programmable"]
